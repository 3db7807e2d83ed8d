"""A uvicorn HTTP server run inside a service's own event loop, next to its gRPC server.

    http = EmbeddedHttpServer(app, "127.0.0.1", 8080)              # tls=ServerTls(...): https only
                                                                   # share_port=True: replicas share it
    port = await http.start()   # returns once it listens (the bound port, for port 0)
    ...
    await http.stop()

The service handles SIGINT/SIGTERM itself (`lifecycle.serve`), so uvicorn's own signal
handlers are left out. The port is this process's alone unless `share_port` (SO_REUSEPORT, see
`streamledger.listen`).
"""

from __future__ import annotations

import asyncio
import contextlib

import uvicorn

from streamledger.listen import listening_socket
from streamledger.tls import ServerTls


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # the service handles signals itself
        yield


class EmbeddedHttpServer:
    def __init__(self, app, host: str, port: int, tls: ServerTls | None = None, share_port: bool = False) -> None:
        self.host = host
        self.share_port = share_port
        self.scheme = "https" if tls else "http"
        self.server = _Server(uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                                             lifespan="off", ssl_certfile=tls.cert_file if tls else None,
                                             ssl_keyfile=tls.key_file if tls else None))
        self.task: asyncio.Task | None = None

    async def start(self, timeout: float = 10.0) -> int:
        """Serve in a task; the bound port once it listens. Why it cannot listen (a port in use, an
        address not this machine's) is the bind's OSError, raised here (uvicorn would exit)."""
        listener = listening_socket(self.host, self.server.config.port, shared=self.share_port)
        self.task = asyncio.create_task(self.server.serve(sockets=[listener]))
        async with asyncio.timeout(timeout):
            while not self.server.started:
                if self.task.done():
                    await self.task  # re-raises why it could not start
                    raise RuntimeError(f"HTTP server did not start on {self.host}:{self.server.config.port}")
                await asyncio.sleep(0.02)
        return self.server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.task is not None:
            self.server.should_exit = True
            await self.task
