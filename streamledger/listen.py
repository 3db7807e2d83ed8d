"""How a service listens on its ports: alone (the default) or sharing them with its replicas.

    listener = listening_socket(host, port, shared=settings.share_port)        # HTTP (uvicorn)
    server = grpc.aio.server(options=[*grpc_listen_options(settings.share_port), ...])

Shared: SO_REUSEPORT, so that N replicas on one machine bind the same port and the kernel spreads
new connections over them (by a hash of each connection's addresses); only a process of the same
user that asks for SO_REUSEPORT too can join. Alone: no SO_REUSEPORT, so a second process binding
the port fails ("address already in use") instead of silently taking part of the connections.
gRPC sets SO_REUSEPORT on Linux by default (its `grpc.so_reuseport` is 1): here it is on only when
shared. In Kubernetes each pod has its own address and none of this matters.
"""

from __future__ import annotations

import socket


def listening_socket(host: str, port: int, shared: bool = False) -> socket.socket:
    """A TCP socket listening on `host:port` (an IPv6 address with or without brackets); `shared`: with
    SO_REUSEPORT. Why it cannot listen (the port in use, an address not this machine's) is the bind's OSError."""
    host = host.strip("[]")
    return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                reuse_port=shared)


def grpc_listen_options(shared: bool = False) -> list[tuple[str, int]]:
    """The grpc server options that make its ports shared (SO_REUSEPORT) or its own."""
    return [("grpc.so_reuseport", 1 if shared else 0)]
