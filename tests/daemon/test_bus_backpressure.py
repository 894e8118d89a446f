"""The daemon's bus connection survives a burst larger than its socket's buffer.

dbus-fast's writer sends a new message at once while the one before is only partly
written; the full, non-blocking socket raises EAGAIN and the writer closed the bus (the
daemon lost its name mid-call: "Message recipient disconnected from message bus without
replying"). ``open_bus`` gives the daemon a bus whose writer waits for the socket instead
(:func:`ipacctd.daemon.contract.wait_when_full`). Against a real ``dbus-daemon``: the same
burst on a plain dbus-fast connection loses it (the failure this guards against is real
on this dbus-fast), on the daemon's connection every message arrives and the bus answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from support import PrivateBus

from ipacctd.daemon.contract import open_bus

BURST = 40  # signals of BIG bytes each, sent without waiting: ~16 MB, far over the buffer
BIG = 400_000


async def _burst(bus, listener) -> int:
    """Send the burst on ``bus``; how many of its signals ``listener`` received."""
    got = 0
    done = asyncio.get_running_loop().create_future()

    def on_message(msg) -> None:
        nonlocal got
        if msg.member == "Big":
            got += 1
            if got == BURST and not done.done():
                done.set_result(None)

    listener.add_message_handler(on_message)
    await listener.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="AddMatch",
            signature="s",
            body=["type='signal',member='Big'"],
        )
    )
    payload = "x" * BIG
    for _ in range(BURST):
        bus.send(
            Message.new_signal("/org/ipacctd1/test", "org.ipacctd1.Test", "Big", "s", [payload])
        )
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done, 60)
    return got


def test_a_burst_over_the_socket_buffer_keeps_the_bus() -> None:
    async def main() -> None:
        # The plain connection dies with futures whose exception nobody reads: collected
        # here, quietly, not in a later test (a finalizer logging in the middle of another
        # test's ast.parse trips CPython 3.11's recursion check).
        asyncio.get_running_loop().set_exception_handler(lambda _loop, _context: None)
        bus_daemon = PrivateBus()
        try:
            listener = await MessageBus(bus_address=bus_daemon.address).connect()
            plain = await MessageBus(bus_address=bus_daemon.address).connect()
            payload = "x" * BIG
            broke = False
            for _ in range(BURST):
                try:
                    plain.send(
                        Message.new_signal(
                            "/org/ipacctd1/test", "org.ipacctd1.Test", "Plain", "s", [payload]
                        )
                    )
                except OSError:  # the writer closed the bus mid-burst: a later send fails
                    broke = True
                    break
            for _ in range(200):  # bounded: up to 20 s for the writer to give up
                if broke or not plain.connected:
                    break
                await asyncio.sleep(0.1)
            assert broke or not plain.connected, "a plain connection survived: nothing tested"

            ours = await open_bus(bus_daemon.address)
            assert await _burst(ours, listener) == BURST
            assert ours.connected
            reply = await asyncio.wait_for(
                ours.call(
                    Message(
                        destination="org.freedesktop.DBus",
                        path="/org/freedesktop/DBus",
                        interface="org.freedesktop.DBus.Peer",
                        member="Ping",
                    )
                ),
                20,
            )
            assert reply.message_type == MessageType.METHOD_RETURN
            for b in (listener, ours):
                b.disconnect()
            del plain
            gc.collect()
        finally:
            bus_daemon.close()

    asyncio.run(main())
