"""Cancelling and timing out the asyncio layer's connects and handshakes: a cancel is never
dropped, a `timeout=` of ours is never confused with a deadline or cancel around the call."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from typing import Any

import pytest
from test_aio import LOOPS, connect_by, run, server_context

import sslports as S
from sslports import aio
from sslports.errors import SSLTimeoutError


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("how", ["open", "wrap"])
def test_a_cancel_accepted_during_a_timed_connect_is_never_dropped(
    loop_kind: str, how: str
) -> None:
    """open_ssl_connection / wrap_ssl_streams with `timeout=` ran the handshake under
    asyncio.wait_for, which up to Python 3.11 returns the inner result when the cancel comes
    in the turn the handshake ended: cancel() said True, and the task went on with a live
    connection (an asyncio.run() shutdown or a TaskGroup's cancel ignored). Cancel at every
    turn of the loop through the whole connect: each accepted cancel ends the task
    cancelled."""

    async def handler(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> None:
        await reader.read()
        writer.close()

    async def main() -> tuple[list[int], int]:
        server = await aio.start_ssl_server(handler, "127.0.0.1", 0, server_context())
        port = server.sockets[0].getsockname()[1]
        dropped = []
        completed = 0
        try:
            # (60 turns at least, and on to the first connect that ends before its cancel:
            # a loaded machine's connect takes more turns than a quiet one's)
            for turns in range(_MOST_TURNS):
                if turns >= 60 and completed:
                    break
                task = asyncio.ensure_future(connect_by(how, port, timeout=10))
                for _ in range(turns):
                    await asyncio.sleep(0)
                accepted = task.cancel()
                try:
                    _, writer = await task
                except asyncio.CancelledError:
                    continue
                completed += 1
                if accepted:
                    dropped.append(turns)
                writer.close()
        finally:
            server.close()
            await server.wait_closed()
        return dropped, completed

    dropped, completed = run(loop_kind, main)
    assert dropped == []
    assert completed > 0  # (the sweep reached past the end of a connect)


_MOST_TURNS = 3000  # (each turn of the sweep makes one connect, of a few ms)


def _silent_server() -> tuple[socket.socket, int]:
    """A TCP listener that never answers a ClientHello (the kernel accepts the connects)."""
    listener = socket.create_server(("127.0.0.1", 0))
    return listener, listener.getsockname()[1]


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("how", ["open", "wrap"])
def test_our_timeout_is_an_ssl_timeout_and_leaves_the_task_usable(loop_kind: str, how: str) -> None:
    """`timeout=` passing is SSLTimeoutError, and the task it ran in is not left cancelled:
    it goes on awaiting (3.11 on, no cancel stays counted against it)."""
    listener, port = _silent_server()

    async def main() -> tuple[BaseException, int]:
        try:
            await connect_by(how, port, timeout=0.2)
        except BaseException as exc:
            failure: BaseException = exc
        else:
            raise AssertionError("connected to a server that never answered")
        await asyncio.sleep(0.01)  # (a cancel left pending would end the task here)
        task = asyncio.current_task()
        assert task is not None
        return failure, task.cancelling() if sys.version_info >= (3, 11) else 0

    try:
        failure, cancelling = run(loop_kind, main)
    finally:
        listener.close()
    assert isinstance(failure, SSLTimeoutError), repr(failure)
    assert "timed out" in str(failure)
    assert cancelling == 0


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout() is 3.11 on")
@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("how", ["open", "wrap"])
def test_a_deadline_around_a_timed_connect_stays_the_caller_s(loop_kind: str, how: str) -> None:
    """An asyncio.timeout() around a connect with a longer `timeout=` of its own: the outer
    deadline's expiry is the caller's TimeoutError (not our SSLTimeoutError), as asyncio
    makes it; its cancel is neither taken for ours nor dropped."""
    listener, port = _silent_server()

    async def main() -> BaseException:
        try:
            async with asyncio.timeout(0.2):
                await connect_by(how, port, timeout=30)
        except BaseException as exc:
            return exc
        raise AssertionError("connected to a server that never answered")

    try:
        failure = run(loop_kind, main)
    finally:
        listener.close()
    assert type(failure) is TimeoutError, repr(failure)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_close_right_after_a_handshake_neither_runs_the_handler_late_nor_waits_for_it(
    loop_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """server.close() in the turn after a client's handshake ended (the server's default
    handshake_timeout is 30 s): under asyncio.wait_for (up to 3.11) the handshake's task
    swallowed close()'s cancel, client_connected_cb then ran for a closed server, and
    wait_closed() waited for that handler (for as long as the client stayed). Now the
    handler runs before close() and wait_closed() returns while the client is connected."""
    loop_box: list[asyncio.AbstractEventLoop] = []
    closes: list[asyncio.Task[None]] = []
    server_closed_at_handler: list[bool] = []
    client_may_leave = threading.Event()
    handshake = aio.AioConnection.handshake

    async def handshake_then_close(self: aio.AioConnection, func: str) -> None:
        await handshake(self, func)
        if func == "ssl_accept":  # the next turn of the loop closes the server
            loop = loop_box[0]
            loop.call_soon(lambda: closes.append(loop.create_task(close_server())))

    monkeypatch.setattr(aio.AioConnection, "handshake", handshake_then_close)
    server_box: list[aio.SSLServer] = []

    async def close_server() -> None:
        server_box[0].close()
        await server_box[0].wait_closed()

    async def handler(reader: aio.SSLStreamReader, writer: aio.SSLStreamWriter) -> None:
        server_closed_at_handler.append(not server_box[0].is_serving())
        await reader.read()
        writer.close()

    def client(port: int) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        inp, out = S.ports_to_ssl_ports(
            sock.makefile("rb"), sock.makefile("wb"), mode="connect", close_original=True
        )
        client_may_leave.wait(20)
        inp.close()
        out.close()
        sock.close()

    async def main() -> bool:
        loop_box.append(asyncio.get_running_loop())
        server = await aio.start_ssl_server(handler, "127.0.0.1", 0, server_context())
        server_box.append(server)
        port = server.sockets[0].getsockname()[1]
        leaving = asyncio.ensure_future(asyncio.to_thread(client, port))
        try:
            while not closes:
                await asyncio.sleep(0.01)
            done, _ = await asyncio.wait(closes, timeout=10)
            closed_while_connected = bool(done) and not leaving.done()
        finally:
            client_may_leave.set()
            await leaving
        return closed_while_connected

    assert run(loop_kind, main) is True
    assert server_closed_at_handler in ([], [False])


def _run_plain(coro_fn: Any) -> Any:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro_fn())
    finally:
        loop.close()


def test_nested_timeouts_that_expire_in_one_turn_keep_the_outer_one() -> None:
    """open_ssl_connection's timeout holds each address's share inside it. When the loop was
    blocked past both, their two cancels came in one turn: on 3.9 and 3.10, which count no
    cancels, the inner share took both, and the connect went on to the last address with no
    bound at all. The outer timeout must still end the call."""

    async def addresses() -> None:
        try:  # the first address: its share of the deadline
            await aio._wait_for(asyncio.sleep(10), 0.05)
        except asyncio.TimeoutError:
            pass
        await asyncio.sleep(1.0)  # the last address: no bound of its own

    async def main() -> str:
        loop = asyncio.get_running_loop()
        loop.call_soon(time.sleep, 0.3)  # (blocks the loop past both deadlines)
        try:
            await aio._wait_for(addresses(), 0.1)
        except asyncio.TimeoutError:
            return "timed out"
        return "went on past the outer timeout"

    assert _run_plain(main) == "timed out"


def test_a_cancel_that_comes_with_the_timeout_is_a_cancel() -> None:
    """A cancel of the caller in the turn the timer fired (the loop was blocked past it) is
    the caller's: CancelledError, not TimeoutError (on 3.9 and 3.10 the two were one cancel,
    taken for the timeout, and the caller's cancel was dropped)."""

    async def main() -> str:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(aio._wait_for(asyncio.sleep(10), 0.1))
        await asyncio.sleep(0)  # (it waits now)
        loop.call_later(0.1, task.cancel)  # the caller's cancel, due with the timer...
        loop.call_soon(time.sleep, 0.3)  # ...and both overdue in one turn
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        except asyncio.TimeoutError:
            return "timed out"
        return "finished"

    assert _run_plain(main) == "cancelled"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Task.cancelling() is 3.11 on")
def test_the_timer_s_cancel_is_withdrawn_however_the_awaited_call_answers_it() -> None:
    """A call that answers the timer's cancel with an error of its own (a cleanup that
    failed) left the cancel counted against the task: asyncio.Runner and TaskGroup then
    treat the task as cancelled. The count is back where it was."""

    async def fails_when_cancelled() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise ValueError("cleanup failed") from None

    async def main() -> tuple[str, int]:
        try:
            await aio._wait_for(fails_when_cancelled(), 0.05)
        except ValueError as exc:
            said = str(exc)
        task = asyncio.current_task()
        assert task is not None
        return said, task.cancelling()

    assert _run_plain(main) == ("cleanup failed", 0)
