"""contrib/launcher.py, the ``ipacctd`` command contrib/install.sh writes over pip's console
script: the same entry point, and it imports nothing but ``sys`` and that entry point (pip's
imports re: ~1.5 ms of every ``ipacctd run``). Whether install.sh puts it in place on a new
machine: tests/host/test_install_docs_fresh_debian.py."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCHER = os.path.join(REPO, "contrib", "launcher.py")

# What pip 23 (Debian 12's python3-venv) writes for a console script, for contrast.
PIP_SCRIPT = """# -*- coding: utf-8 -*-
import re
import sys
from ipacctd.cli.main import command
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(command())
"""

# An ipacctd.cli.main whose command() reports what was imported before it ran, and its argv.
FAKE_MAIN = """import sys
def command():
    print(" ".join(sorted(m for m in sys.modules
                          if m.partition(".")[0] not in sys.stdlib_module_names
                          or m in ("re", "json", "enum"))))
    print(" ".join(sys.argv[1:]))
    sys.exit(7)
"""


def _run(script_text: str, tmp_path) -> tuple[int, list[str]]:
    fake = tmp_path / "fake"
    (fake / "ipacctd" / "cli").mkdir(parents=True)
    (fake / "ipacctd" / "__init__.py").write_text("")
    (fake / "ipacctd" / "cli" / "__init__.py").write_text("")
    (fake / "ipacctd" / "cli" / "main.py").write_text(FAKE_MAIN)
    script = tmp_path / "ipacctd"
    script.write_text(f"#!{sys.executable} -S\n" + script_text)
    script.chmod(0o755)
    res = subprocess.run(
        [str(script), "run", "-q", "--", "true"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(fake), "PATH": os.environ.get("PATH", "")},
        timeout=60,
    )
    return res.returncode, res.stdout.splitlines()


def test_the_launcher_calls_the_entry_point_pip_would() -> None:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        entry = tomllib.load(f)["project"]["scripts"]["ipacctd"]
    module, func = entry.split(":")
    text = Path(LAUNCHER).read_text()
    assert f"from {module} import {func}\n" in text
    assert f"\n{func}()\n" in text


def test_the_launcher_imports_only_the_entry_point(tmp_path) -> None:
    rc, (modules, argv) = _run(Path(LAUNCHER).read_text(), tmp_path)
    assert rc == 7  # the entry point's exit status
    assert argv == "run -q -- true"
    assert modules.split() == ["__main__", "ipacctd", "ipacctd.cli", "ipacctd.cli.main"]
    rc, (modules, _argv) = _run(PIP_SCRIPT, tmp_path / "pip")
    assert rc == 7 and "re" in modules.split()  # what the launcher spares


# An ipacctd.cli.main that reports whether site ran, where it was found, and sys.path's tail.
SITE_MAIN = """import sys
import ipacctd
def command():
    print("site" in sys.modules)
    print(ipacctd.__file__)
    print(sys.path[-1])
    sys.exit(3)
"""


def _venv_command(tmp_path, where: str) -> tuple[Path, Path]:
    """A virtual environment (no pip) as install.sh makes one, the launcher as its command
    under ``#!<env>/bin/python3 -S``, and a stand-in ipacctd package: in its site-packages
    (``where`` = "site-packages", as pip installs it) or in a directory a .pth file there
    names ("pth", as an editable install does)."""
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True,
                   timeout=120)
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    site_packages = env / "lib" / version / "site-packages"
    home = site_packages if where == "site-packages" else tmp_path / "src"
    (home / "ipacctd" / "cli").mkdir(parents=True)
    (home / "ipacctd" / "__init__.py").write_text("")
    (home / "ipacctd" / "cli" / "__init__.py").write_text("")
    (home / "ipacctd" / "cli" / "main.py").write_text(SITE_MAIN)
    if where == "pth":
        (site_packages / "editable.pth").write_text(f"{home}\n")
    command = env / "bin" / "ipacctd"
    command.write_text(f"#!{env}/bin/python3 -S\n" + Path(LAUNCHER).read_text())
    command.chmod(0o755)
    return command, home


def _call(command: Path | str) -> tuple[int, list[str]]:
    res = subprocess.run([str(command), "--version"], capture_output=True, text=True,
                         env={"PATH": os.environ.get("PATH", "")}, timeout=60)
    assert res.stderr == ""
    return res.returncode, res.stdout.splitlines()


def test_the_launcher_finds_its_environment_without_site(tmp_path) -> None:
    command, home = _venv_command(tmp_path, "site-packages")
    rc, (site_ran, found, last) = _call(command)
    assert rc == 3
    assert site_ran == "False"  # -S held: no .pth, no sitecustomize, no user site
    assert found == str(home / "ipacctd" / "__init__.py")
    assert Path(last).parent.parent.parent == command.parent.parent  # <env>/lib*/pythonX.Y/...
    # Called through a link elsewhere (install.sh links /usr/local/bin/ipacctd to it): the
    # environment is the interpreter's, not the link's.
    link = tmp_path / "elsewhere" / "ipacctd"
    link.parent.mkdir()
    link.symlink_to(command)
    assert _call(link) == (rc, [site_ran, found, last])


def test_the_launcher_falls_back_to_site_for_an_editable_install(tmp_path) -> None:
    command, home = _venv_command(tmp_path, "pth")
    rc, (site_ran, found, _last) = _call(command)
    assert rc == 3
    assert site_ran == "True"  # the package is where only the .pth file says
    assert found == str(home / "ipacctd" / "__init__.py")


# ---- ipacctd.cli.main.command: main(), then an exit without finalization when safe ----------

# A program that patches main() to print and return a status, sets up what the case asks
# for, and calls the real command(). A module-level object whose finalizer writes to the
# output shows whether the interpreter's finalization ran.
COMMAND_PROBE = """
import os, sys
import ipacctd.cli.main as m
case = sys.argv[1]
class Witness:
    def __del__(self):
        os.write(1, b"finalized\\n")
witness = Witness()
def fake_main():
    sys.stdout.write("output of the verb\\n")  # buffered: command() must flush it
    return None if case == "none" else 4
m.main = fake_main
if case == "handler":
    import atexit
    atexit.register(lambda: os.write(1, b"handler ran\\n"))
elif case == "thread":
    import threading, time
    threading.Thread(target=lambda: (time.sleep(0.3), os.write(1, b"thread done\\n"))).start()
m.command()
"""


# Without the site module: an interpreter's site may register exit handlers of its own
# (this one's does), and then command() rightly exits as usual in every case.
ENV = {"PYTHONPATH": REPO, "PATH": os.environ.get("PATH", "")}


def _command(case: str, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-S", "-c", COMMAND_PROBE, case],
        stdout=stdout, stderr=subprocess.PIPE, text=True, env=ENV, timeout=60,
    )


def test_command_exits_with_mains_status_without_finalization() -> None:
    res = _command("plain")
    assert res.returncode == 4
    assert res.stdout == "output of the verb\n"  # flushed; no finalizer ran
    assert res.stderr == ""


def test_command_exits_with_success_for_a_status_of_none_as_sys_exit_does() -> None:
    res = _command("none")
    assert (res.returncode, res.stdout, res.stderr) == (0, "output of the verb\n", "")


def test_command_exits_as_usual_when_an_exit_handler_is_registered() -> None:
    res = _command("handler")
    assert res.returncode == 4
    lines = res.stdout.splitlines()
    assert "output of the verb" in lines and "handler ran" in lines
    assert "finalized" in lines  # the interpreter finished as it always has


def test_command_exits_as_usual_while_another_thread_runs() -> None:
    res = _command("thread")
    assert res.returncode == 4
    lines = res.stdout.splitlines()
    assert "output of the verb" in lines and "thread done" in lines  # joined, not killed


def test_command_under_a_profiler_exits_as_usual_so_the_profile_is_written(tmp_path) -> None:
    out = tmp_path / "run.prof"
    script = tmp_path / "probe.py"
    script.write_text(COMMAND_PROBE)
    res = subprocess.run(
        [sys.executable, "-S", "-m", "cProfile", "-o", str(out), str(script), "plain"],
        capture_output=True, text=True, env=ENV, timeout=60,
    )
    # (cProfile's runner swallows the SystemExit: its status is its own.)
    assert "output of the verb" in res.stdout
    assert out.stat().st_size > 0  # cProfile wrote it after the script


def test_command_with_a_closed_stdout_fails_as_the_interpreter_does() -> None:
    r, w = os.pipe()
    os.close(r)  # the reader is gone: the flush gets EPIPE
    try:
        res = _command("plain", stdout=w)
        usual = subprocess.run(
            [sys.executable, "-S", "-c", "import sys; sys.stdout.write('x\\n'); sys.exit(4)"],
            stdout=w, stderr=subprocess.PIPE, text=True, env=ENV, timeout=60,
        )
    finally:
        os.close(w)
    assert res.returncode == usual.returncode == 120  # Python's status for a failed flush
    assert "BrokenPipeError" in res.stderr and "BrokenPipeError" in usual.stderr
