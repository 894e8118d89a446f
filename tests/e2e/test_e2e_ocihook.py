"""``ipacctd oci-hook`` driven as a runtime drives it (OCI state on stdin), without podman:
a process in a container-like cgroup the test made, real packets in a private namespace.
(tests/containers/ runs the same hook under real podman + runc.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from e2e_helpers import UDP4

DENIED = "198.51.100.9"
ALLOWED = "198.51.100.2"
CID = "ab12cd34ef56" + "0" * 52


def hook(inst, state, env: dict | None = None) -> subprocess.CompletedProcess:
    data = state if isinstance(state, str) else json.dumps(state)
    return subprocess.run(
        inst.argv("oci-hook"),
        input=data,
        env=inst.environ(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def write_unit(inst, parent: str, extra: str = "") -> None:
    Path(inst.unit_dir, "ctr.unit").write_text(
        f"[Match]\nControlGroup={parent}/libpod-*\n[Service]\nIPAddressDeny={DENIED}\n{extra}"
    )


def test_no_unit_file_means_nothing_to_do(inst) -> None:
    res = hook(inst, "not even JSON")
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
    assert inst.unit_names() == []


def test_bad_state_is_refused_when_a_unit_file_could_match(inst) -> None:
    write_unit(inst, "/somewhere")
    res = hook(inst, "not JSON")
    assert res.returncode == 2 and "OCI state on stdin is not JSON" in res.stderr
    res = hook(inst, {"id": CID, "status": "creating"})
    assert res.returncode == 1 and "no process id" in res.stderr, res.stderr
    assert inst.unit_names() == []


def test_binds_before_the_first_packet_and_rebinds_a_recreated_cgroup(inst) -> None:
    parent = f"/ipacctd-test-{inst.id}-ctr"
    rel = f"{parent}/libpod-{CID}"
    fs = inst.make_cgroup(rel)
    write_unit(inst, parent)
    ns = inst.netns([DENIED, ALLOWED])
    state = {
        "ociVersion": "1.0.2",
        "id": CID,
        "status": "creating",
        "annotations": {"org.ipacctd.container.name": "demo"},
    }
    name = "podman-demo-ab12cd34ef56.service"
    for sent in range(1, 4):
        agent = inst.start_in_cgroup(ns, fs)  # waits for its first command: not sent yet
        res = hook(inst, {**state, "pid": agent.pid})
        assert res.returncode == 0, res.stderr
        assert inst.unit_names() == [name]
        assert agent.send(DENIED, 10).startswith("err ")  # EPERM: denied from the start
        assert agent.send(ALLOWED, 10) == "ok 10"
        c = inst.manager().counters(name)
        assert (c.egress_dropped_packets, c.egress_packets) == (sent, sent)
        assert c.egress_bytes == sent * (10 + UDP4)
        # The container stops; its runtime makes the cgroup again at the same path.
        agent.proc.send_signal(signal.SIGKILL)
        agent.wait()
        os.rmdir(fs)
        os.mkdir(fs)
        if sent == 1:
            assert inst.show("demo")["Id"] == name  # found by the container's name
    meta = json.loads(inst.ok("status", "--json", "ab12cd34").stdout)[0]
    assert meta["container"] == {"engine": "podman", "id": CID, "name": "demo", "pod": None}
