"""Child processes that work beside a service: one way to start them and talk to them.

    # the service (parent)
    async with await Child.start("services.inference.record_writer", WriterHello(...),
                                 name="record writer") as writer:
        writer.send(("frame", 1))                  # never blocks; `await writer.drain()` to wait
        answer = await writer.receive(timeout=1)   # TimeoutError if none came; ChildDied if it ended

    # the child's module: `if __name__ == "__main__": child.run(serve, WriterHello)`
    async def serve(hello: WriterHello, parent: Parent) -> None:
        ...                                        # connect what it needs, then:
        parent.ready()
        while (message := await parent.receive()) is not None:   # None: the parent closed
            parent.send(("ack", message))

A child is a fresh interpreter, `python -m MODULE FD [LABEL...]` with this process's import path
(`lifecycle.child_environment`): nothing of the parent is inherited but its end of a Unix socket
pair (FD) and the descriptors named in `pass_fds`. LABEL only names the child in `ps`.

On the socket, each frame is a 4-byte big-endian length, then one byte of kind, then the body:
    H  hello    parent -> child, first: the child's settings as JSON (a `Hello` model's dump)
    R  ready    child -> parent, once: the child is connected and working
    M  message  either way: a pickle of plain data (tuples, lists, bytes...) between two
                processes of the same checkout, over a socket no one else holds
    F  failed   child -> parent: why it stops (it exits with code 1 right after)

Whatever ends the child before the parent closes it (a crash, a kill, an error it reported),
the parent's next `receive` raises `ChildDied` with its exit code; a child that fails before
`ready()` makes `Child.start` raise it. The child ends when the parent closes the connection
(`finish()`: it finishes and answers what it owes first; `close()`: at once) or dies, so no
child outlives its parent. It ignores SIGINT: a terminal's Ctrl-C reaches the whole process
group, and the parent decides when its child stops.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import signal
import socket
import struct
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel

from streamledger.lifecycle import child_environment
from streamledger.logging import configure_logging, get_logger

log = get_logger("child")

_HEADER = struct.Struct(">IB")
"""Frame length (the kind byte and the body), then the kind."""
HELLO, READY, MESSAGE, FAILED = b"HRMF"
_READ_SIZE = 1024 * 1024
_STOP_WAIT_SECONDS = 5.0
"""After its connection ended, how long a child has to exit before it is killed."""


class Hello(BaseModel):
    """The first frame: a child's settings, sent as data. Each child declares its own subclass."""

    log_level: str = "INFO"


H = TypeVar("H", bound=Hello)


class ChildDied(RuntimeError):
    """A child process ended while its parent needed it, or never started."""

    def __init__(self, name: str, exit_code: int | None, reason: str = "", started: bool = True) -> None:
        what = "exited" if started else "did not start"
        detail = f": {reason}" if reason else ""
        super().__init__(f"{name} process {what}{detail} (exit code {exit_code})")
        self.name = name
        self.exit_code = exit_code
        self.reason = reason


class Channel:
    """Frames over one end of the socket pair, on the running event loop (either side uses it)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._input = bytearray()
        self._read_at = 0
        self._eof = False
        self._output: deque[memoryview] = deque()
        self._drained: asyncio.Future | None = None
        self._readable_now: asyncio.Future | None = None
        self._write_error: OSError | None = None
        self._finish_when_sent = False

    @property
    def peer_gone(self) -> bool:
        """Whether the other side closed the connection (or died): read its end, or failed a write."""
        return self._eof or self._write_error is not None

    # -- sending ----------------------------------------------------------------------------

    def send(self, message: Any) -> None:
        """Queue a message; never blocks. A broken connection is reported by `drain` and `receive`."""
        self.send_frame(MESSAGE, pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))

    def send_frame(self, kind: int, body: bytes) -> None:
        if self._write_error is not None or self._sock.fileno() < 0:
            return
        parts = [memoryview(_HEADER.pack(len(body) + 1, kind)), memoryview(body)]
        if not self._output:
            parts = self._write(parts)
            if not parts:
                return
            self._loop.add_writer(self._sock.fileno(), self._on_writable)
        self._output.extend(parts)

    async def drain(self) -> None:
        """Wait until the kernel has taken every queued frame; `ConnectionError` if the other side is gone."""
        if self._output:
            if self._drained is None:
                self._drained = self._loop.create_future()
            await asyncio.shield(self._drained)
        if self._write_error is not None:
            raise ConnectionError(f"the other side is gone: {self._write_error}") from self._write_error

    def finish(self) -> None:
        """Send nothing more: once the queued frames are out, the other side reads the end of the stream."""
        if self._output:
            self._finish_when_sent = True
        else:
            self._shutdown_writing()

    def _write(self, parts: list[memoryview] | deque[memoryview]) -> list[memoryview]:
        """Write what the kernel takes now; returns what is left."""
        parts = list(parts)
        while parts:
            try:
                sent = self._sock.sendmsg(parts[:64])
            except (BlockingIOError, InterruptedError):
                return parts
            except OSError as exc:  # the other side is gone
                self._write_error = exc
                return []
            while parts and sent >= len(parts[0]):  # (an empty body goes too)
                sent -= len(parts.pop(0))
            if sent:
                parts[0] = parts[0][sent:]
        return parts

    def _on_writable(self) -> None:
        left = self._write(self._output)
        self._output.clear()
        self._output.extend(left)
        if left:
            return
        self._loop.remove_writer(self._sock.fileno())
        if self._drained is not None:
            self._drained.set_result(None)
            self._drained = None
        if self._finish_when_sent:
            self._shutdown_writing()

    def _shutdown_writing(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # already gone

    # -- receiving --------------------------------------------------------------------------

    def poll(self) -> bool:
        """Whether a frame (or the end of the stream) can be received without waiting."""
        if self._frame_size() is None and not self._eof:
            self._read_available()
        return self._frame_size() is not None or self._eof

    async def receive_frame(self, timeout: float | None = None) -> tuple[int, Any]:
        """The next (kind, body) frame, a message's body unpickled; `EOFError` at the end of the stream,
        `TimeoutError` if none came within `timeout`."""
        deadline = None if timeout is None else self._loop.time() + timeout
        while True:
            size = self._frame_size()
            if size is not None:
                return self._take(size)
            if self._eof:
                raise EOFError("connection closed")
            if not self._read_available():
                await self._readable(None if deadline is None else deadline - self._loop.time())

    def _frame_size(self) -> int | None:
        available = len(self._input) - self._read_at
        if available < _HEADER.size:
            return None
        size = _HEADER.unpack_from(self._input, self._read_at)[0]
        return size if available >= 4 + size else None

    def _take(self, size: int) -> tuple[int, Any]:
        start = self._read_at + 4
        kind = self._input[start]
        with memoryview(self._input)[start + 1:start + size] as body:
            value = pickle.loads(body) if kind == MESSAGE else bytes(body)
        self._read_at = start + size
        if self._read_at > _READ_SIZE and self._read_at * 2 > len(self._input):
            del self._input[:self._read_at]  # keep the buffer from growing: drop what was read
            self._read_at = 0
        return kind, value

    def _read_available(self) -> bool:
        """Read (once) what the socket holds; False when it held nothing yet."""
        if self._eof:
            return False
        try:
            chunk = self._sock.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:  # reset by a dying peer, or closed here: the end of the stream
            chunk = b""
        if chunk:
            self._input += chunk
        else:
            self._eof = True
        return True

    async def _readable(self, timeout: float | None) -> None:
        if timeout is not None and timeout <= 0:
            raise TimeoutError
        fd = self._sock.fileno()
        if fd < 0:
            return  # closed here: the next read says so
        ready = self._readable_now = self._loop.create_future()
        self._loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
        try:
            await asyncio.wait_for(ready, timeout)
        finally:
            self._loop.remove_reader(fd)
            self._readable_now = None

    def close(self) -> None:
        """Close both directions at once; a `receive_frame` waiting meanwhile raises `EOFError`."""
        fd = self._sock.fileno()
        if fd >= 0:
            self._loop.remove_writer(fd)
            if self._readable_now is not None:
                self._loop.remove_reader(fd)
                if not self._readable_now.done():
                    self._readable_now.set_result(None)
            self._sock.close()
        self._output.clear()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)


class Child:
    """A child process seen from its parent: start it, exchange messages, learn when it dies."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, channel: Channel) -> None:
        self.name = name
        self.process = process
        self._channel = channel
        self._finishing = False
        self._died: ChildDied | None = None

    @classmethod
    async def start(cls, module: str, hello: Hello, *, name: str, label: tuple[str, ...] = (),
                    pass_fds: tuple[int, ...] = (), buffer_bytes: int | None = None, timeout: float = 60.0) -> Child:
        """Run `python -m module`, send it `hello`, and return once it said ready (`ChildDied` if it did not).

        `buffer_bytes` sizes the kernel's buffer of each direction (SO_SNDBUF, which Linux doubles,
        up to its limit): how far one side can run ahead of the other before its sends wait.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        if buffer_bytes is not None:
            for end in (ours, theirs):
                end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_bytes)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", module, str(theirs.fileno()), *label, pass_fds=(theirs.fileno(), *pass_fds),
                stdin=asyncio.subprocess.DEVNULL, env=child_environment())
        finally:
            theirs.close()
        child = cls(name, process, Channel(ours))
        child._channel.send_frame(HELLO, hello.model_dump_json().encode())
        try:
            kind, body = await child._channel.receive_frame(timeout)
        except (EOFError, TimeoutError) as exc:
            kind, body = FAILED, (b"" if isinstance(exc, EOFError) else f"no answer in {timeout:g} s".encode())
        if kind != READY:
            await child.close(timeout=_STOP_WAIT_SECONDS)
            raise ChildDied(name, process.returncode, body.decode(errors="replace") if kind == FAILED else
                            f"unexpected first frame {chr(kind)!r}", started=False)
        log.info("child_started", extra={"child": name, "pid": process.pid})
        return child

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, message: Any) -> None:
        """Queue a message for the child; never blocks (see `drain`)."""
        self._channel.send(message)

    async def drain(self) -> None:
        await self._channel.drain()

    def poll(self) -> bool:
        """Whether `receive` would return (or raise) without waiting."""
        return self._channel.poll()

    async def receive(self, timeout: float | None = None) -> Any:
        """The child's next message. After `finish()`, None once the child has said all and exited 0.

        Raises `ChildDied` when the child ended otherwise, `TimeoutError` if nothing came within `timeout`.
        """
        if self._died is not None:
            raise self._died
        try:
            kind, body = await self._channel.receive_frame(timeout)
        except EOFError:
            kind, body = None, b""
        if kind == MESSAGE:
            return body
        if kind not in (None, FAILED):
            raise RuntimeError(f"{self.name}: unexpected frame of kind {chr(kind)!r} from the child")
        exit_code = await self._exit_code()
        if kind is None and self._finishing and exit_code == 0:
            return None
        reason = body.decode(errors="replace") if kind == FAILED else ""
        self._died = ChildDied(self.name, exit_code, reason)
        raise self._died

    def finish(self) -> None:
        """Send nothing more: the child finishes its work, sends what it owes, and exits."""
        self._finishing = True
        self._channel.finish()

    async def close(self, timeout: float = 30.0) -> int | None:
        """Close the connection and wait for the child to exit (killed after `timeout`); its exit code."""
        self._finishing = True
        self._channel.close()
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            log.error("child_stuck", extra={"child": self.name, "pid": self.process.pid, "waited_s": timeout})
            self.process.kill()
            return await self.process.wait()

    async def _exit_code(self) -> int | None:
        """The exit code of a child whose connection ended: it is about to exit, or is stuck and killed."""
        try:
            return await asyncio.wait_for(self.process.wait(), _STOP_WAIT_SECONDS)
        except TimeoutError:
            self.process.kill()
            return await self.process.wait()

    async def __aenter__(self) -> Child:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class Parent:
    """The parent process seen from its child (the `parent` argument of the child's `serve`)."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    def ready(self) -> None:
        """Tell the parent this child is working (`Child.start` returns)."""
        self._channel.send_frame(READY, b"")

    def send(self, message: Any) -> None:
        self._channel.send(message)

    async def drain(self) -> None:
        """Wait until the parent's side has taken every message; `ConnectionError` once it is gone."""
        await self._channel.drain()

    async def receive(self) -> Any:
        """The parent's next message; None once it closed the connection (or died): time to finish."""
        try:
            return (await self._channel.receive_frame())[1]
        except EOFError:
            return None


def run(serve: Callable[[H, Parent], Awaitable[None]], hello_type: type[H]) -> None:
    """The child's main (`python -m MODULE FD`): read the hello, run `serve(hello, parent)`, exit.

    An error `serve` raises is logged and sent to the parent (which raises it as `ChildDied`),
    and the child exits 1; a parent gone away ends it quietly with 0.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(sys.argv[1]))
    raise SystemExit(asyncio.run(_run(sock, serve, hello_type)))


async def _run(sock: socket.socket, serve: Callable[[H, Parent], Awaitable[None]], hello_type: type[H]) -> int:
    channel = Channel(sock)
    try:
        kind, body = await channel.receive_frame()
    except EOFError:
        return 0  # the parent went away before saying hello
    try:
        if kind != HELLO:
            raise ValueError(f"the first frame must be the hello, got kind {chr(kind)!r}")
        hello = hello_type.model_validate(json.loads(body))
        configure_logging(hello.log_level)
        await serve(hello, Parent(channel))
        await channel.drain()
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which stops with it
        if isinstance(exc, ConnectionError) and channel.peer_gone:
            return 0  # the parent closed the connection or died: nobody is left to work for
        log.error("child_failed", extra={"program": sys.argv[0], "error": repr(exc)})
        channel.send_frame(FAILED, repr(exc).encode())
        try:
            await channel.drain()
        except ConnectionError:
            pass
        return 1
    finally:
        channel.close()
    return 0
