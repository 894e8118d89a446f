"""Unit names on the command line: mangled like systemctl's, never escaping the state dir."""

from __future__ import annotations

from e2e_helpers import Installation


def test_name_without_suffix_means_service(inst: Installation) -> None:
    inst.ok("run", "-q", "--unit", "web", "--", "true")
    assert inst.show("web")["Id"] == "web.service"
    status = inst.cli("status", "web")  # exit 3: inactive, as systemctl
    assert (status.returncode, status.stdout.splitlines()[0]) == (3, "○ web.service - true")
    assert inst.ok("show", "web", "-p", "ExecMainStatus", "--value").stdout.strip() == "0"
    inst.ok("reset", "web")
    assert inst.cli("show", "web.service").returncode == 4


def test_query_names_cannot_escape_the_state_directory(inst: Installation) -> None:
    (inst.tmp / "evil.json").write_text('{"name": "evil", "cgroup": "/"}')
    for name in ("../evil", "/etc/passwd", "a/b", "..", "x" * 300):
        for verb in ("status", "show", "reset", "inspect"):
            res = inst.cli(verb, name)
            assert res.returncode == 2, (verb, name, res.returncode, res.stderr)
            assert res.stderr.startswith("ipacctd: invalid unit name"), res.stderr
            assert len(res.stderr.strip().splitlines()) == 1
