"""The CLI and the daemon read the same configuration file and resolve the same paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ipacctd import cgroup
from ipacctd.daemon.config import DaemonConfig
from ipacctd.errors import InvalidInput
from ipacctd.manager import config as cfgmod
from ipacctd.manager.config import Config, check_trusted


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in (*cfgmod.ENV.values(), cfgmod.ENV_FILE):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_cli_and_daemon_take_paths_from_the_same_file(clean_env, tmp_path: Path) -> None:
    conf = tmp_path / "ipacctd.conf"
    conf.write_text(
        '[daemon]\nlisten = ""\n[paths]\nstate_dir = "/run/x-state"\n'
        'cgroup_root = "/somewhere/else"\n'
    )
    clean_env.setenv(cfgmod.ENV_FILE, str(conf))
    cli = Config.from_env()
    daemon = DaemonConfig.load().paths
    assert cli == daemon
    assert cli.cgroup_root == "/somewhere/else" and cli.state_dir == "/run/x-state"
    # the environment overrides the file, options override both — for both
    clean_env.setenv("IPACCTD_UNIT_DIR", str(tmp_path))
    assert Config.from_env(state_dir="/run/y").state_dir == "/run/y"
    assert Config.from_env().unit_dir == DaemonConfig.load().paths.unit_dir == str(tmp_path)


def test_bad_file_is_one_clear_error(clean_env, tmp_path: Path) -> None:
    conf = tmp_path / "ipacctd.conf"
    conf.write_text('[paths]\nstatedir = "/x"\n')
    clean_env.setenv(cfgmod.ENV_FILE, str(conf))
    with pytest.raises(InvalidInput, match=r"unknown key.*statedir"):
        Config.from_env()
    clean_env.setenv(cfgmod.ENV_FILE, str(tmp_path / "missing.conf"))
    with pytest.raises(InvalidInput, match="does not exist"):
        Config.from_env()


def test_auto_cgroup_root_without_systemd_stays_ipacctd(clean_env, tmp_path: Path) -> None:
    clean_env.setattr(cgroup, "SYSTEMD_RUNTIME", str(tmp_path / "no-systemd"))
    conf = tmp_path / "ipacctd.conf"
    conf.write_text('[paths]\ncgroup_root = "auto"\n')
    clean_env.setenv(cfgmod.ENV_FILE, str(conf))
    assert Config.from_env().cgroup_root == "/ipacctd"
    assert cgroup.default_root() == "/ipacctd"


def test_service_cgroup_of_a_path() -> None:
    assert (
        cgroup.service_cgroup("/system.slice/ipacctd.service/daemon")
        == "/system.slice/ipacctd.service"
    )
    assert (
        cgroup.service_cgroup("/system.slice/x.service/job.service")
        == "/system.slice/x.service/job.service"
    )
    assert cgroup.service_cgroup("/user.slice/user-0.slice/session-1.scope") is None
    assert (
        cgroup.service_cgroup("/user.slice/user-1.slice/user@1.service/app.slice/vte-spawn-1.scope")
        is None
    )
    assert cgroup.service_cgroup("/") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_directories_others_control_are_refused(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    ok = tmp_path / "ok"
    ok.mkdir(mode=0o755)
    check_trusted(str(ok / "not-yet"), "X")  # nearest existing ancestor: root's, 0755
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    with pytest.raises(InvalidInput, match="owned by uid 65534"):
        check_trusted(str(theirs / "state"), "IPACCTD_STATE_DIR")
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    with pytest.raises(InvalidInput, match="writable by group or others"):
        check_trusted(str(open_dir), "IPACCTD_STATE_DIR")
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    inner = sticky / "root-owned"
    inner.mkdir(mode=0o700)
    check_trusted(str(inner), "X")  # like /tmp/pytest-of-root: root's entry in a sticky dir
    with pytest.raises(InvalidInput, match="writable by group or others"):
        check_trusted(str(sticky / "missing"), "X")  # anyone could create it first
