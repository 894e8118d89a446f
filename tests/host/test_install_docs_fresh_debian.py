"""``contrib/install.sh`` on a brand-new Debian 12 root installs the manual pages and the
completion of bash, zsh and fish where each finds them by itself: ``man ipacctd`` and
``man 5 ipacctd.unit`` render, bash-completion's on-demand loader, zsh's ``compinit`` and
fish pick the scripts up; the command is contrib/launcher.py; a second run changes nothing
that matters, ``--uninstall`` removes them.

Runs ``shared/tools/fresh-debian/fresh-debian.sh`` from the host, so it is collected only
with ``IPACCTD_HOST_TESTS=1`` (see ``tests/conftest.py``). Nothing here touches the kernel.
"""

from __future__ import annotations

import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MAN1 = "/usr/local/share/man/man1/ipacctd.1"
MAN5 = "/usr/local/share/man/man5/ipacctd.unit.5"
BASH = "/usr/share/bash-completion/completions/ipacctd"
ZSH = "/usr/local/share/zsh/site-functions/_ipacctd"
FISH = "/usr/share/fish/vendor_completions.d/ipacctd.fish"

SCRIPT = f"""
set -e
apt-get update -q >/dev/null
apt-get install -y -q python3-venv bash-completion man-db zsh fish >/dev/null
cd /srv/project
contrib/install.sh
contrib/install.sh >/dev/null
head -1 /opt/ipacctd/bin/ipacctd
tail -n +2 /opt/ipacctd/bin/ipacctd | cmp - contrib/launcher.py && echo launcher in place
PYTHONPROFILEIMPORTTIME=1 ipacctd --version 2>&1 >/dev/null | grep -qE '[|] +site$' \\
    && echo site imported || echo without site
ipacctd --version
for f in {MAN1} {MAN5} {BASH} {ZSH} {FISH}; do test -s $f; echo "present $f"; done
MANWIDTH=80 man ipacctd | head -1
MANWIDTH=80 man 5 ipacctd.unit | head -1
bash -n {BASH} && zsh -n {ZSH} && fish -n {FISH} && echo parsed
bash -c 'source /usr/share/bash-completion/bash_completion; _completion_loader ipacctd; \
complete -p ipacctd'
zsh -fc 'autoload -Uz compinit; compinit -u; print -- zsh=${{_comps[ipacctd]}}'
fish -c 'complete -C "ipacctd list-"'
contrib/install.sh --uninstall
for f in {MAN1} {MAN5} {BASH} {ZSH} {FISH}; do if [ -e $f ]; then echo "left $f"; fi; done
"""


def test_install_puts_manual_and_completion_where_the_tools_look() -> None:
    if os.geteuid() != 0:
        pytest.fail("needs root (fresh-debian.sh)")
    tool = os.environ.get("IPACCTD_FRESH_DEBIAN") or os.path.join(
        os.path.dirname(REPO), "shared", "tools", "fresh-debian", "fresh-debian.sh"
    )
    if not os.access(tool, os.X_OK):
        pytest.fail(f"fresh-debian.sh not found at {tool} (set IPACCTD_FRESH_DEBIAN)")
    root = os.environ.get("FRESH_ROOT", "/var/tmp/fresh-debian-root") + "-docs"
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "FRESH_ROOT": root,
        **{k: v for k, v in os.environ.items() if k in ("FRESH_CACHE", "CI")},
    }
    try:
        res = subprocess.run(
            [tool, "bash", "-c", SCRIPT],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,  # apt-get and pip on a new machine
            check=False,
        )
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", root], check=False)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    for f in (MAN1, MAN5, BASH, ZSH, FISH):
        assert f"present {f}" in out, out[-4000:]
        assert f"left {f}" not in out, out[-4000:]
        assert f"install.sh: removed {f}" in out, out[-4000:]
    lines = out.splitlines()
    assert any(ln.startswith("IPACCTD(1)") for ln in lines), out[-4000:]
    assert any(ln.startswith("IPACCTD.UNIT(5)") for ln in lines), out[-4000:]
    assert "parsed" in lines
    # The command is contrib/launcher.py (not pip's console script), and it runs.
    assert "#!/opt/ipacctd/bin/python3 -S" in lines and "launcher in place" in lines, out[-4000:]
    assert "without site" in lines, out[-4000:]  # -S: the launcher puts site-packages on the path
    assert any(ln.startswith("ipacctd 0.") for ln in lines), out[-4000:]
    assert "complete -o bashdefault -F _shtab_ipacctd ipacctd" in lines, out[-4000:]
    assert "zsh=_ipacctd" in lines, out[-4000:]
    assert any(ln.startswith("list-units\t") for ln in lines), out[-4000:]
