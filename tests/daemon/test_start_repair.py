"""The daemon's start completes what a crashed ipacctd left half done, though it reconciles
only the units whose status shows something to repair (``recovery.due``): a policy change
cut off on a live cgroup (re-applied: real packets are refused by the recorded policy), one
cut off while the cgroup is gone (records settled), a rollback left behind, an interrupted
removal; sound units beside them stay enforced and unchanged."""

from __future__ import annotations

import os

import pytest
from daemon_support import DaemonEnv
from test_identity import ENFORCED, metric, refused

from ipacctd import cgroup
from ipacctd.manager import generation

pytestmark = pytest.mark.kernel

DENIED = "198.51.100.1"
OTHER = "198.51.100.7"


def test_start_repairs_what_a_crash_left(env: DaemonEnv) -> None:
    m = env.inst.manager()
    deny = [("IPAddressDeny", DENIED)]
    cut = m.start_transient(deny, name="rep-cut").name
    gone = m.start_transient(deny, name="rep-gone").name
    rb = m.start_transient(deny, name="rep-rb").name
    rm = m.start_transient(deny, name="rep-rm").name
    sound = m.start_transient(deny, name="rep-ok").name
    wider = m.store.read(m.start_transient([("IPAddressDeny", f"{DENIED} {OTHER}")]).name)
    store = m.store

    # rep-cut: the intent of a change to the wider policy is written, the kernel still
    # enforces the previous generation (the crash came before the swap).
    d = store.read(cut)
    d["rollback"], d["properties"] = d["properties"], wider["properties"]
    d["generation"] += 1
    store.write(cut, d)
    # rep-gone: the same, while its cgroup is gone (nothing to swap on).
    gone_fs = m.cgroup_fs(m.unit(gone))
    cgroup.remove(gone_fs)
    d = store.read(gone)
    d["rollback"], d["generation"] = d["properties"], d["generation"] + 1
    store.write(gone, d)
    # rep-rb: the change completed but for its last step (the rollback left in the record).
    d = store.read(rb)
    d["rollback"] = d["properties"]
    store.write(rb, d)
    # rep-rm: a removal cut off.
    d = store.read(rm)
    d["removing"] = True
    store.write(rm, d)
    sound_meta = store.read(sound)

    env.start()

    m = env.inst.manager()
    for name in (cut, gone, rb):
        u = m.unit(name)
        assert u.rollback is None, name
        assert generation.read(store.pin_dir(name)) == u.generation, name
    assert m.unit(cut).generation == 2 and m.unit(gone).generation == 2
    assert rm not in m.names() and not os.path.lexists(store.pin_dir(rm))
    assert store.read(sound) == sound_meta
    st = m.status(cut)
    assert st.enforcement.enforced and st.policy_in_force, st.enforcement
    assert m.status(sound).enforcement.enforced
    assert metric(env, ENFORCED, unit=cut) == 1.0
    assert metric(env, ENFORCED, unit=sound) == 1.0
    assert "repaired after a crash" in env.log()
    # The recorded (wider) policy is what the kernel enforces on rep-cut's cgroup now.
    ns = env.inst.netns([DENIED, OTHER])
    refused(env.inst, ns, m.cgroup_fs(m.unit(cut)), DENIED, OTHER)
