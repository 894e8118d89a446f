"""Bad input from callers (issue 10 items 7 and 8): a clear error, nothing logged in bulk.

- D-Bus calls with missing or wrongly typed arguments, sent as uid 65534 (the shipped
  policy lets anyone read): ``org.freedesktop.DBus.Error.InvalidArgs`` naming the expected
  signature, no traceback in the daemon's log, and the log bounded however many calls come
  (before: ``internal error: IndexError`` and ~21 traceback lines per call).
- Unit names that pass validation must fit every place they are stored: names whose
  escaped form would be too long are refused with the limit in the message, by the CLI and
  over D-Bus (before: ``File name too long``, over D-Bus ``internal error: OSError``).
"""

from __future__ import annotations

import json
import os

import pytest
from e2e_helpers import Installation
from rel import count, report

pytestmark = pytest.mark.kernel

INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"
#: NAME_MAX less the longest decoration of a stored name (``~tmp-PIN-PID``, 7-digit PID)
MAX_PIN_NAME_LENGTH = 255 - 13
PROPS = "org.freedesktop.DBus.Properties"
MANAGER = "org.ipacctd1.Manager"


def _bad_calls(unit: str) -> list[tuple[str, str, str, str, list]]:
    root = "/org/ipacctd1"
    return [
        (root, PROPS, "Get", "s", [MANAGER]),
        (root, PROPS, "Get", "", []),
        (root, PROPS, "Get", "su", [MANAGER, 1]),
        (root, PROPS, "GetAll", "", []),
        (root, PROPS, "Set", "ss", ["a", "b"]),
        (unit, PROPS, "Get", "s", ["org.ipacctd1.Unit"]),
        (unit, PROPS, "GetAll", "u", [7]),
        (root, MANAGER, "GetUnit", "", []),
        (root, MANAGER, "GetUnit", "u", [3]),
        (root, MANAGER, "StartTransientUnit", "s", ["x"]),
        (root, "org.freedesktop.DBus.Peer", "GetMachineId", "s", ["x"]),
        (root, "org.freedesktop.DBus.Introspectable", "Introspect", "s", ["x"]),
    ]


def _as_nobody(address: str, calls: list, rounds: int) -> dict[str, list[str]]:
    """Send each call ``rounds`` times over one connection made as uid/gid 65534; the
    distinct (error name, message) per call. A forked child drops to nobody after dbus-fast
    is imported (nobody cannot read root's site-packages here)."""
    import asyncio

    from dbus_fast import Message, MessageType
    from dbus_fast.aio import MessageBus

    async def main() -> dict[str, list[str]]:
        bus = await MessageBus(bus_address=address).connect()
        seen: dict[str, list[str]] = {}
        for _ in range(rounds):
            for path, iface, member, sig, body in calls:
                reply = await bus.call(
                    Message(
                        destination="org.ipacctd1",
                        path=path,
                        interface=iface,
                        member=member,
                        signature=sig,
                        body=body,
                    )
                )
                key = f"{path} {iface}.{member}({sig})"
                ok = reply.message_type == MessageType.METHOD_RETURN
                seen[key] = ["return", ""] if ok else [reply.error_name, (reply.body or [""])[0]]
        bus.disconnect()
        return seen

    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(rfd)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            out = json.dumps(asyncio.run(main())).encode()
            with os.fdopen(wfd, "wb") as f:
                f.write(out)
            code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and data, "the caller as nobody failed"
    return json.loads(data)


EXPECTED_SIG = {
    "Get(": "(ss)",
    "GetAll(": "(s)",
    "Set(": "(ssv)",
    "GetUnit(": "(s)",
    "StartTransientUnit(": "(ssa(sv)a(sa(sv)))",
    "GetMachineId(": "()",
    "Introspect(": "()",
}


def test_dbus_bad_arguments_as_nobody(denv) -> None:
    inst: Installation = denv.inst
    denv.start()
    inst.ok("run", "--unit", "ba", "--", "true")
    rounds = count(30, 300)
    seen = _as_nobody(denv.address, _bad_calls("/org/ipacctd1/unit/ba_2eservice"), rounds)
    assert len(seen) == 12
    for call, (name, *message) in seen.items():
        assert name == INVALID_ARGS, (call, name, message)
        sig = next(v for k, v in EXPECTED_SIG.items() if f".{k}" in call)
        assert f"takes {sig}" in message[0], (call, message)
    log = denv.log()
    assert "Traceback" not in log, log[-3000:]
    assert "internal error" not in log
    calls = rounds * len(seen)
    refused_lines = [ln for ln in log.splitlines() if "refused" in ln]
    # rate-limited per sender: a burst, then a line per minute at most (+ a summary line)
    assert len(refused_lines) <= 12, refused_lines
    report(
        "dbus_bad_arguments",
        calls=calls,
        inputs_tried=calls,
        log_lines=len(log.splitlines()),
        refused_lines=len(refused_lines),
    )


def test_long_names_fit_or_are_refused(denv) -> None:
    """The longest accepted names work end to end; longer ones get the limit, not ENAMETOOLONG."""
    from dbus_fast import Variant

    inst: Installation = denv.inst
    # 200 characters with many dots passed the old validator and then failed to be stored
    for name in ("a." * 95 + "x", "a_" * 95 + "x"):
        res = inst.cli("run", "--unit", name, "--", "true", env={"IPACCTD_NO_DAEMON": "1"})
        assert res.returncode != 0
        assert f"at most {MAX_PIN_NAME_LENGTH}" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr and "too long" in res.stderr
    # the longest names accepted are usable: run, status, reset
    from ipacctd.policy.names import pin_name

    longest = [
        "x" * (MAX_PIN_NAME_LENGTH - len("_dservice")),
        "a." * ((MAX_PIN_NAME_LENGTH - len("_dservice")) // 3),
    ]
    for name in longest:
        assert len(pin_name(name + ".service")) <= MAX_PIN_NAME_LENGTH
        inst.ok(
            "run",
            "--unit",
            name,
            "-p",
            "IPAddressDeny=198.51.100.9",
            "--",
            "true",
            env={"IPACCTD_NO_DAEMON": "1"},
        )
        assert inst.cli("status", name, env={"IPACCTD_NO_DAEMON": "1"}).returncode == 3
        inst.ok("reset", name, env={"IPACCTD_NO_DAEMON": "1"})
    assert inst.unit_names() == []
    # over D-Bus: the same refusal as InvalidArgs, no internal error
    denv.start()
    err, msg = denv.client.manager_error(
        "StartTransientUnit", "sa(sv)", "b." * 95 + "x", [["ExecCommand", Variant("as", ["true"])]]
    )
    assert err == INVALID_ARGS, (err, msg)
    assert f"at most {MAX_PIN_NAME_LENGTH}" in msg
    assert "Traceback" not in denv.log()
    assert inst.unit_names() == [] and inst.pin_dirs() == []
