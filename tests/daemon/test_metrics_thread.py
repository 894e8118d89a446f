"""A scrape is served beside the daemon's event loop, not on it: the HTTP server's thread
builds and encodes the exposition while the loop keeps running, and only the snapshot of
the units (the registry belongs to the loop) is taken on the loop."""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from pathlib import Path

from support import free_port

from ipacctd.daemon import metrics
from ipacctd.daemon.registry import Registry
from ipacctd.manager.config import Config
from ipacctd.manager.engine import Manager


def fetch(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        return resp.read()


def test_scrape_beside_the_loop_snapshot_on_it(tmp_path: Path) -> None:
    config = Config(
        state_dir=str(tmp_path / "state"),
        bpf_dir=str(tmp_path / "bpf"),  # nothing is pinned or read: no units
        cgroup_root="/ipacctd-test-unused",
        unit_dir=str(tmp_path / "units"),
    )
    registry = Registry(Manager(config))
    threads: dict[str, int] = {}

    class Recording(metrics.UnitCollector):
        def snapshot(self):  # type: ignore[override]
            threads["snapshot"] = threading.get_ident()
            return super().snapshot()

    async def main() -> tuple[bytes, int]:
        loop = asyncio.get_running_loop()
        threads["loop"] = threading.get_ident()
        units = Recording(registry, program_stats=False, loop=loop)
        server = metrics.serve(units, "127.0.0.1", free_port())
        ticks = 0

        async def tick() -> None:  # runs only while the loop is free
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        ticker = asyncio.create_task(tick())
        try:
            # The scrape needs the loop (for the snapshot) while the loop awaits it: it
            # could not finish if it ran on the loop.
            body = await asyncio.wait_for(loop.run_in_executor(None, fetch, server.port), 30)
        finally:
            ticker.cancel()
            await loop.run_in_executor(None, server.close)
        return body, ticks

    body, ticks = asyncio.run(main())
    assert threads["snapshot"] == threads["loop"]
    assert ticks > 0
    text = body.decode()
    assert 'ipacctd_units{state="active"} 0.0' in text
    assert "ipacctd_build_info{" in text
