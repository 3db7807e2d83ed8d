"""The local stack: Kafka, FerretDB (and later Fabric) installed into a cache and run as
local processes on 127.0.0.1. `Stack` is the entry point; each server is a `Part`."""

from devstack.stack import Stack, StackError

__all__ = ["Stack", "StackError"]
