"""``ipacctd run`` loads only what a run needs (issue 13: ``run`` start-up), checked without
root and without a clock: the modules the ``run`` verb imports — its parser, the verb, the
engine and everything they import at module level, the paths — are listed in a fresh
interpreter, and none of those a run has no use for may be among them.

Each of these cost milliseconds of every ``ipacctd run`` (measured in bench/cli.py) and is
imported where it is used instead (or not at all): dataclasses (and with it inspect, ast,
dis, tokenize: ~8 ms; ipacctd's value classes are :class:`ipacctd.record.Record`), typing
(annotations only, under ``TYPE_CHECKING``), threading (``_thread._local`` is
``threading.local``); the unit-file parser only when the unit has a file; the denied-address
log (and hashlib, for list digests) only for a unit with a deny list; logging (and with it
traceback, string, threading) only when something is logged or an error printed; tomllib
(and datetime) only when there is a configuration file; subprocess and shutil only to call
systemctl; the D-Bus client (and asyncio) only when a daemon serves the installation; the
terminal helpers only to print; socket.py not at all (its C core has the address
conversions).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from support import PrivateBus

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
    "dataclasses",
    "inspect",
    "ast",
    "dis",
    "tokenize",
    "typing",
    "threading",
    "difflib",
    "ipacctd.policy.unitfile",
    "ipacctd.datapath.denied",
    "hashlib",
    "locale",  # gettext's, for argparse's catalogue lookups (none under the C locale)
    "argparse",  # a plain run's command line is read by ipacctd.cli.runline
    "gettext",
    "ipacctd.cli.parser",
    "signal",  # its enums: the run path takes the functions and numbers from _signal
    "json",  # and with it re: the records are read and written by ipacctd.jsontext
    "re",
    "warnings",  # os.get_exec_path's: ipacctd.cli.spawn reads PATH itself
    "encodings.utf_8_sig",  # bytes.decode("utf-8-sig"): ipacctd.jsontext drops a BOM itself
    "enum",  # ~1.2 ms, its 14 classes ~1.5 ms more: ipacctd.enums
)
#: What a run with a deny list may load beyond a plain run's modules: the log (and the
#: digest of its list in the unit's metadata).
DENY_LIST_EXTRAS = ("ipacctd.datapath.denied", "hashlib")

# What ``ipacctd run -q [-p ...] -- true`` imports (beyond the interpreter's own start-up)
# before it touches the kernel: the command line read (runline's reader, not argparse), the
# verb's module (and so the engine), the paths, the engine chosen for them, the search for
# the unit's file, the properties, and for a deny list the log that goes with it (imported
# as UnitDatapath.create imports it) and the programs' rules. The engine is chosen for the
# paths as root, with no daemon's runtime file in the state directory: the local one. The
# effective uid is made 0 in the child only so that the choice is root's without root; the
# default configuration file is one of the test's (absent, or one it wrote). Then what
# the run does after the kernel that could import more: read a record back, find the
# command on PATH.
PROBE = """
import sys
before = set(sys.modules)  # what the interpreter's start-up (site, .pth files) loaded
import os  # not json: the probe looks for it (and re)
state_dir, config, unit_dir = sys.argv[1], sys.argv[2], sys.argv[3]
props = sys.argv[4:]
os.environ.pop("IPACCTD_CONFIG", None)
os.geteuid = lambda: 0
from ipacctd.manager import config as config_mod
config_mod.DEFAULT_FILE = config  # the file every ipacctd process reads when it exists
from ipacctd.cli import main
argv = ["--state-dir", state_dir, "--unit-dir", unit_dir, "run", "-q", *props, "--", "true"]
from ipacctd.cli.runline import parse_run
args = parse_run(argv)  # as main() reads a plain run
assert args is not None, argv
from ipacctd.cli import run
from ipacctd.cli.engine import manager_for
manager = manager_for(args)
from ipacctd.manager.engine import parse_assignments
from ipacctd.manager.unit import spec_for
from ipacctd.policy.properties import Properties
source = manager.unit_file("run-u1.service")
base = source.properties() if source else Properties()
spec = spec_for(base.apply(parse_assignments(args.property)))
if spec.deny:
    from ipacctd.datapath import denied
from ipacctd.datapath.rules import compile_rules
compile_rules(spec.allow, spec.deny)
from ipacctd import jsontext
jsontext.loads(b'{"a": 1}')  # a record read back (as bytes, as the store reads it)
from ipacctd.cli import spawn
assert spawn._found("true")  # the command looked up on PATH, as the run does before it forks
print(type(manager).__module__)
print("\\n".join(sorted(set(sys.modules) - before)))
"""


#: The environment, in the C locale (as services and most shells of root run).
C_LOCALE = {
    **{k: v for k, v in os.environ.items() if k not in ("LANGUAGE", "LC_ALL", "LC_MESSAGES")},
    "LANG": "C.UTF-8",
}


def _python(code: str, *args: str, site: bool = True, env: dict[str, str] | None = None) -> str:
    """What ``code`` prints, run in a fresh interpreter on this checkout (``site=False``:
    without the site module, whose .pth files may import what a probe looks for)."""
    res = subprocess.run(
        [sys.executable, *(() if site else ("-S",)), "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**C_LOCALE, "PYTHONPATH": REPO, **(env or {})},
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def _probe(tmp_path, config: str, props: tuple[str, ...] = (), site: bool = True,
           env: dict[str, str] | None = None) -> dict:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    units = tmp_path / "units"
    units.mkdir(exist_ok=True)
    engine, *modules = _python(PROBE, str(state), config, str(units), *props, site=site,
                               env=env).splitlines()
    return {"engine": engine, "modules": modules}


def test_run_imports_nothing_it_does_not_need(tmp_path) -> None:
    found = _probe(tmp_path, str(tmp_path / "no-such.conf"))
    modules = set(found["modules"])
    assert "ipacctd.manager.engine" in modules and "ipacctd.cli.runline" in modules  # it ran
    loaded = sorted(m for m in NOT_ON_THE_RUN_PATH if m in modules)
    assert loaded == [], f"ipacctd run loads {loaded}"
    # No daemon serves this state directory: the engine is the local one, and no bus was
    # tried (the D-Bus client is not even imported, see above).
    assert found["engine"] == "ipacctd.manager.engine"


def test_a_run_with_a_deny_list_loads_only_its_log_more(tmp_path) -> None:
    found = _probe(tmp_path, str(tmp_path / "no-such.conf"), ("-p", "IPAddressDeny=198.51.100.1"))
    modules = set(found["modules"])
    assert "ipacctd.datapath.denied" in modules  # the probe built the deny list's part
    loaded = sorted(m for m in NOT_ON_THE_RUN_PATH if m in modules and m not in DENY_LIST_EXTRAS)
    assert loaded == [], f"ipacctd run -p IPAddressDeny=... loads {loaded}"


def test_a_unit_file_is_still_read(tmp_path) -> None:
    """The unit-file parser is off the run path only while the unit has no file: with one,
    it is parsed and its properties apply."""
    (tmp_path / "units").mkdir()
    (tmp_path / "units" / "run-u1.service").write_text("[Service]\nIPAddressDeny=203.0.113.0/24\n")
    found = _probe(tmp_path, str(tmp_path / "no-such.conf"))
    assert "ipacctd.policy.unitfile" in found["modules"]
    assert "ipacctd.datapath.denied" in found["modules"]  # the file's deny list applied


def test_a_configuration_file_is_still_read(tmp_path) -> None:
    """tomllib is off the run path only while there is no file to parse: with one, it is
    parsed (a file that the engine's paths come from is never skipped)."""
    conf = tmp_path / "ipacctd.conf"
    conf.write_text('[paths]\nunit_dir = "/nonexistent/units"\n')
    found = _probe(tmp_path, str(conf))
    assert "tomllib" in found["modules"]


def test_a_daemons_runtime_file_sends_the_run_to_the_daemon_client(tmp_path) -> None:
    """With a daemon's runtime file in the state directory, the engine comes from the D-Bus
    client (which then proves the daemon on the bus, or falls back to the local engine).
    The client is as lean as the rest: no typing, no socket.py (its enums and selectors),
    no signal.py — the C modules under them serve it (checked to fail with busclient's
    former ``import socket``) — and no json (with it re and enum: ~4 ms of importing),
    whose replies ipacctd.jsontext reads. On a real bus (nobody owns ipacctd's name there: the local
    engine), the interpreter started without site (whose .pth files may load them)."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "daemon.json").write_text(json.dumps({"pid": 1, "starttime": 1}))
    with PrivateBus() as bus:
        found = _probe(tmp_path, str(tmp_path / "no-such.conf"), site=False,
                       env={"DBUS_SYSTEM_BUS_ADDRESS": bus.address})
    assert {"ipacctd.cli.remote", "ipacctd.cli.busclient"} <= set(found["modules"])
    assert found["engine"] == "ipacctd.manager.engine"  # no daemon on that bus
    heavy = sorted(m for m in ("typing", "socket", "selectors", "signal", "json", "re", "enum")
                   if m in found["modules"])
    assert heavy == [], f"the D-Bus client path loads {heavy}"


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
    runs for long, as ``daemon`` or ``top`` may) runs with it on, and with what the modules
    made frozen out of its collections."""
    probe = (
        "import gc, sys\n"
        "from ipacctd.cli import completion, main\n"
        "seen = []\n"
        "completion.dispatch = lambda args: seen.extend(\n"
        "    [gc.isenabled(), gc.get_freeze_count() > 1000]) or 0\n"
        "sys.argv = ['ipacctd', 'completion', 'bash']\n"
        "rc = main.main()\n"
        "print(rc, *seen)\n"
    )
    out = _python(probe)
    assert out.split() == ["0", "True", "True"], out


def test_list_digests_are_sha256_without_hashlib() -> None:
    """The digest of a stored address list comes from the interpreter's built-in SHA-256
    (hashlib would load OpenSSL first): the same digest hashlib gives."""
    import hashlib

    from ipacctd.policy.properties import _digest

    for text in ("", "198.51.100.1/32", "2001:db8::/32 203.0.113.0/24" * 1000):
        assert _digest(text) == hashlib.sha256(text.encode()).hexdigest()


UNTRANSLATED_PROBE = """
import argparse, gettext, json, os, sys
catalogues = sys.argv[1]
if catalogues:
    gettext.bindtextdomain(gettext.textdomain(), catalogues)
from ipacctd.cli import parser
translated = argparse._ is gettext.gettext
parser._untranslated()
print(json.dumps({"before": translated, "after": argparse._ is gettext.gettext,
                  "locale": "locale" in sys.modules}))
"""


def _untranslated(env: dict[str, str], catalogues: str = "") -> dict:
    res = subprocess.run(
        [sys.executable, "-c", UNTRANSLATED_PROBE, catalogues],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env={**{k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG"))},
             "PYTHONPATH": REPO, **env},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_argparse_skips_catalogue_lookups_only_where_gettext_finds_none(tmp_path) -> None:
    """Under the C locale argparse's texts go untranslated without a lookup per text; under
    another language, or with a C.UTF-8 catalogue present, gettext is asked as before."""
    for env in ({}, {"LANG": "C"}, {"LANG": "C.UTF-8"}, {"LC_ALL": "POSIX", "LANG": "de_DE"}):
        found = _untranslated(env)
        assert found == {"before": True, "after": False, "locale": False}, env
    for env in ({"LANG": "de_DE.UTF-8"}, {"LANGUAGE": "fr:C", "LANG": "C"}):
        assert _untranslated(env)["after"] is True, env
    mo = tmp_path / "C.UTF-8" / "LC_MESSAGES"
    mo.mkdir(parents=True)
    (mo / "messages.mo").write_bytes(b"")  # its presence is what counts
    assert _untranslated({"LANG": "C.UTF-8"}, str(tmp_path))["after"] is True
