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
from ipacctd.cli.main import main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(main())
"""

# An ipacctd.cli.main whose main() reports what was imported before it ran, and its argv.
FAKE_MAIN = """import sys
def main():
    print(" ".join(sorted(m for m in sys.modules
                          if m.partition(".")[0] not in sys.stdlib_module_names
                          or m in ("re", "json", "enum"))))
    print(" ".join(sys.argv[1:]))
    return 7
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
    assert f"sys.exit({func}())" in text


def test_the_launcher_imports_only_the_entry_point(tmp_path) -> None:
    rc, (modules, argv) = _run(Path(LAUNCHER).read_text(), tmp_path)
    assert rc == 7  # main()'s return is the exit status
    assert argv == "run -q -- true"
    assert modules.split() == ["__main__", "ipacctd", "ipacctd.cli", "ipacctd.cli.main"]
    rc, (modules, _argv) = _run(PIP_SCRIPT, tmp_path / "pip")
    assert rc == 7 and "re" in modules.split()  # what the launcher spares
