"""``ipacctd run`` loads only what a run needs (issue 13: ``run`` start-up), checked without
root and without a clock: the modules the ``run`` verb imports — its parser, the verb, the
engine and everything they import at module level, the paths — are listed in a fresh
interpreter, and none of those a run has no use for may be among them.

Each of these cost milliseconds of every ``ipacctd run`` (measured in bench/cli.py) and is
imported where it is used instead: logging (and with it traceback, string, threading) only
when something is logged or an error printed; tomllib (and datetime) only when there is a
configuration file; subprocess and shutil only to call systemctl; the D-Bus client (and
asyncio) only when a daemon serves the installation; the terminal helpers only to print;
socket.py not at all (its C core has the address conversions).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Modules a plain ``ipacctd run -- CMD`` must not load.
NOT_ON_THE_RUN_PATH = (
    "logging",
    "traceback",
    "tomllib",
    "datetime",
    "subprocess",
    "shutil",
    "asyncio",
    "socket",
    "dbus_fast",
    "ipacctd.journal",
    "ipacctd.cli.remote",
    "ipacctd.cli.format",
    "ipacctd.cli.terminal",
    "ipacctd.containers",
    "ipacctd.manager.recovery",
    "ipacctd.manager.stats",
    "ipacctd.bpf.info",
)

# What ``ipacctd run -q -- true`` imports (beyond the interpreter's own start-up) before it
# touches the kernel: the parser built for the verb and the arguments parsed, the verb's
# module (and so the engine), the unit file reader the engine loads to look for a unit
# file, the paths, and the engine chosen for them (as root, with no daemon's runtime file
# in the state directory: the local one). The effective uid is made 0 in the child only so
# that the choice is root's without root; the default configuration file is one of the
# test's (absent, or one it wrote).
PROBE = """
import sys
before = set(sys.modules)  # what the interpreter's start-up (site, .pth files) loaded
import json, os
state_dir, config = sys.argv[1], sys.argv[2]
os.environ.pop("IPACCTD_CONFIG", None)
os.geteuid = lambda: 0
from ipacctd.manager import config as config_mod
config_mod.DEFAULT_FILE = config  # the file every ipacctd process reads when it exists
from ipacctd.cli import main
argv = ["--state-dir", state_dir, "run", "-q", "--", "true"]
args = main.build_parser(main._verb_of(argv)).parse_args(argv)
from ipacctd.cli import run
from ipacctd.cli.engine import manager_for
import ipacctd.policy.unitfile
manager = manager_for(args)
print(json.dumps({"modules": sorted(set(sys.modules) - before),
                  "engine": type(manager).__module__}))
"""


def _python(code: str, *args: str) -> str:
    """What ``code`` prints, run in a fresh interpreter on this checkout."""
    res = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def _probe(tmp_path, config: str) -> dict:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    return json.loads(_python(PROBE, str(state), config))


def test_run_imports_nothing_it_does_not_need(tmp_path) -> None:
    found = _probe(tmp_path, str(tmp_path / "no-such.conf"))
    modules = set(found["modules"])
    assert "ipacctd.manager.engine" in modules and "argparse" in modules  # the probe ran
    loaded = sorted(m for m in NOT_ON_THE_RUN_PATH if m in modules)
    assert loaded == [], f"ipacctd run loads {loaded}"
    # No daemon serves this state directory: the engine is the local one, and no bus was
    # tried (the D-Bus client is not even imported, see above).
    assert found["engine"] == "ipacctd.manager.engine"


def test_a_configuration_file_is_still_read(tmp_path) -> None:
    """tomllib is off the run path only while there is no file to parse: with one, it is
    parsed (a file that the engine's paths come from is never skipped)."""
    conf = tmp_path / "ipacctd.conf"
    conf.write_text('[paths]\nunit_dir = "/nonexistent/units"\n')
    found = _probe(tmp_path, str(conf))
    assert "tomllib" in found["modules"]


def test_a_daemons_runtime_file_sends_the_run_to_the_daemon_client(tmp_path) -> None:
    """With a daemon's runtime file in the state directory, the engine comes from the D-Bus
    client (which then proves the daemon on the bus, or falls back to the local engine)."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "daemon.json").write_text(json.dumps({"pid": 1, "starttime": 1}))
    found = _probe(tmp_path, str(tmp_path / "no-such.conf"))
    assert "ipacctd.cli.remote" in found["modules"]


FREEZE_PROBE = """
import gc, sys
from ipacctd.cli.main import main
as_program = sys.argv[1] == "program"
sys.argv = ["ipacctd", "--version"]
try:
    main() if as_program else main(["--version"])
except SystemExit:
    pass
print(gc.get_freeze_count(), gc.isenabled())
"""


def test_the_program_leaves_its_objects_out_of_the_last_collection() -> None:
    """Run as the program, main() freezes what is alive when it returns (gc.freeze), so the
    interpreter's final collection does not walk every module's objects again; called
    in-process with an argv (tests), it leaves the collector alone."""
    counts = {}
    for how in ("program", "in-process"):
        out = _python(FREEZE_PROBE, how)
        assert out.startswith("ipacctd "), out  # --version ran
        frozen, enabled = out.split()[-2:]
        counts[how] = int(frozen)
        assert enabled == "True", how  # the collector is on again afterwards
    assert counts["program"] > 1000 and counts["in-process"] == 0, counts


def test_the_verb_runs_with_the_collector_on() -> None:
    """The collector is off only while the modules load: the verb itself (here one that
    runs for long, as ``daemon`` or ``top`` may) runs with it on."""
    probe = (
        "import gc, sys\n"
        "from ipacctd.cli import completion, main\n"
        "seen = []\n"
        "completion.dispatch = lambda args: seen.append(gc.isenabled()) or 0\n"
        "sys.argv = ['ipacctd', 'completion', 'bash']\n"
        "rc = main.main()\n"
        "print(rc, seen)\n"
    )
    out = _python(probe)
    assert out.split() == ["0", "[True]"], out
