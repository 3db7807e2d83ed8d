"""FerretDB 1.24 on SQLite (the local stack's backend) next to FerretDB 1.24 on PostgreSQL, by
measurement, in one run: the same FerretDB binary the stack built, each backend started fresh
for the run on ports of its own, the same documents and calls, alternating backend by step.

    .venv/bin/python bench/storage_backend.py [--documents 20000]

Steps, on each backend:
1. insert: `--documents` clean-event documents in unordered bulk inserts of 2,000 (what the
   storage service does), docs/s over the measured wall time;
2. lookup: 2,000 `find_one` by `_id` at random, one at a time: p50/p99 and lookups/s;
3. concurrent writers: 4 clients inserting 5,000 documents each at once, total docs/s;
4. the update wedge: one `update` command of 150 statements hitting existing documents (the
   SQLite backend's pool holds 100 connections, README "FerretDB caveat"), bounded by 20 s,
   then a read on the same collection: finished, or wedged.

PostgreSQL comes from Debian's `postgresql` package (`apt-get install postgresql`); it refuses
to run as root, so as root the bench runs it as the `postgres` user in a folder that user owns.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pymongo import AsyncMongoClient, InsertOne, UpdateOne

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devstack.ferretdb import FerretDBPart  # noqa: E402
from devstack.settings import StackSettings  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        raise SystemExit("PostgreSQL is not installed: apt-get install postgresql")
    return Path(found[-1]).parent


def as_postgres(argv: list[str]) -> list[str]:
    """`argv` run as the `postgres` user when we are root (PostgreSQL refuses root)."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


async def wait_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{log.name} exited: {log.read_text(errors='replace')[-1500:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        await asyncio.sleep(0.2)
    raise SystemExit(f"nothing listens on {port} after {timeout:.0f} s: {log.read_text(errors='replace')[-1500:]}")


class Backends(contextlib.AsyncExitStack):
    """A fresh FerretDB on SQLite and a fresh FerretDB on a fresh PostgreSQL cluster; their URLs."""

    def __init__(self, scratch: Path) -> None:
        super().__init__()
        self.scratch = scratch
        self.binary = FerretDBPart(StackSettings()).binary
        if not self.binary.exists():
            raise SystemExit(f"{self.binary} is missing: run `streamledger stack up` once to build FerretDB")
        self.urls: dict[str, str] = {}

    async def start(self) -> dict[str, str]:
        sqlite_dir = self.scratch / "sqlite"
        sqlite_dir.mkdir()
        self.urls["SQLite"] = await self._ferretdb("sqlite", ["--handler=sqlite", f"--sqlite-url=file:{sqlite_dir}/"])
        pg = await self._postgres()
        self.urls["PostgreSQL"] = await self._ferretdb("pg", ["--handler=pg", f"--postgresql-url={pg}"])
        return self.urls

    async def _postgres(self) -> str:
        folder, port = self.scratch / "pg", free_port()
        folder.mkdir()
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres")
            self.scratch.chmod(0o755)
        bin_dir = postgres_bin()
        subprocess.run(as_postgres([str(bin_dir / "initdb"), "-D", str(folder / "data"), "-A", "trust", "-U",
                                    "postgres"]), check=True, capture_output=True)
        log = folder / "postgres.log"
        process = subprocess.Popen(as_postgres([str(bin_dir / "postgres"), "-D", str(folder / "data"), "-p", str(port),
                                                "-k", str(folder), "-c", "listen_addresses=127.0.0.1"]),
                                   stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
        self.callback(self._stop, process)
        await wait_port(port, process, log)
        for _ in range(50):  # accepting connections a moment after it listens
            made = subprocess.run([str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c",
                                   "CREATE DATABASE ferretdb"], capture_output=True, text=True)
            if made.returncode == 0:
                break
            await asyncio.sleep(0.2)
        else:
            raise SystemExit(f"CREATE DATABASE failed: {made.stderr}")
        return f"postgres://postgres@127.0.0.1:{port}/ferretdb"

    async def _ferretdb(self, name: str, handler: list[str]) -> str:
        port, state = free_port(), self.scratch / f"state-{name}"
        state.mkdir()
        log = self.scratch / f"ferretdb-{name}.log"
        process = subprocess.Popen([str(self.binary), *handler, f"--state-dir={state}", f"--listen-addr=127.0.0.1:{port}",
                                    "--debug-addr=-", "--telemetry=disable", "--log-level=warn"],
                                   stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
                                   env={**os.environ, "FERRETDB_TELEMETRY": "disable", "DO_NOT_TRACK": "1"})
        self.callback(self._stop, process)
        await wait_port(port, process, log)
        return f"mongodb://127.0.0.1:{port}/"

    @staticmethod
    def _stop(process: subprocess.Popen) -> None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def document(i: int, run: str) -> dict:
    return {"_id": f"{run}-{i:08d}", "tenant": "bench", "source": "phishing", "ts": 1_767_225_600_000 + i,
            "features": {f"f{k}": (i * 0.37 + k) % 1 for k in range(9)}, "label": bool(i % 2),
            "content_hash": f"{i:064x}", "raw_partition": 0, "raw_offset": i}


async def insert(url: str, count: int) -> float:
    async with AsyncMongoClient(url) as client:
        collection = client["bench"]["insert"]
        started = time.perf_counter()
        for first in range(0, count, 2000):
            await collection.bulk_write([InsertOne(document(i, "i")) for i in range(first, min(count, first + 2000))],
                                        ordered=False)
        return count / (time.perf_counter() - started)


async def lookup(url: str, count: int, lookups: int = 2000) -> tuple[float, float, float]:
    async with AsyncMongoClient(url) as client:
        collection, rng, took = client["bench"]["insert"], random.Random(7), []
        started = time.perf_counter()
        for _ in range(lookups):
            began = time.perf_counter()
            found = await collection.find_one({"_id": f"i-{rng.randrange(count):08d}"})
            took.append(time.perf_counter() - began)
            assert found is not None
        rate = lookups / (time.perf_counter() - started)
    took.sort()
    return rate, took[len(took) // 2] * 1000, took[int(len(took) * 0.99)] * 1000


async def concurrent_writers(url: str, writers: int = 4, each: int = 5000) -> float:
    async def writer(client: AsyncMongoClient, w: int) -> None:
        collection = client["bench"]["concurrent"]
        for first in range(0, each, 500):
            await collection.bulk_write([InsertOne(document(i, f"w{w}")) for i in range(first, first + 500)],
                                        ordered=False)

    clients = [AsyncMongoClient(url) for _ in range(writers)]
    try:
        started = time.perf_counter()
        await asyncio.gather(*(writer(c, w) for w, c in enumerate(clients)))
        return writers * each / (time.perf_counter() - started)
    finally:
        for client in clients:
            await client.close()


async def update_wedge(url: str, statements: int = 150, bound: float = 20.0) -> str:
    async with AsyncMongoClient(url, serverSelectionTimeoutMS=5000, socketTimeoutMS=int(bound * 1000)) as client:
        collection = client["bench"][f"update{statements}"]
        await collection.insert_many([document(i, "u") for i in range(statements)])
        started = time.perf_counter()
        try:
            await asyncio.wait_for(collection.bulk_write(
                [UpdateOne({"_id": f"u-{i:08d}"}, {"$set": {"label": True}}) for i in range(statements)]), bound)
        except Exception as exc:  # noqa: BLE001 - what happened is the finding
            return f"wedged: {type(exc).__name__} after {time.perf_counter() - started:.1f} s"
        updated = time.perf_counter() - started
        try:
            await asyncio.wait_for(collection.find_one({"_id": "u-00000001"}), bound)
        except Exception as exc:  # noqa: BLE001
            return f"update took {updated:.2f} s, then a read wedged: {type(exc).__name__}"
        return f"finished in {updated:.2f} s, reads go on"


async def main(count: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as scratch:
        async with Backends(Path(scratch)) as backends:
            urls = await backends.start()
            results: dict[str, dict[str, str]] = {name: {} for name in urls}
            for step, run in (("insert (docs/s)", lambda u: insert(u, count)),
                              ("lookup by _id (lookups/s, p50 ms, p99 ms)", lambda u: lookup(u, count)),
                              ("4 concurrent writers (docs/s)", concurrent_writers),
                              ("one update of 50 statements", lambda u: update_wedge(u, 50)),
                              ("one update of 150 statements", update_wedge)):
                order = list(urls) if len(results["SQLite"]) % 2 == 0 else list(reversed(urls))
                for name in order:
                    value = await run(urls[name])
                    if isinstance(value, tuple):
                        value = f"{value[0]:,.0f}/s  p50 {value[1]:.2f} ms  p99 {value[2]:.2f} ms"
                    elif isinstance(value, float):
                        value = f"{value:,.0f}"
                    results[name][step] = value
            print(f"FerretDB {FerretDBPart(StackSettings()).version}, {count:,} documents, fresh backends, same run")
            for step in results["SQLite"]:
                print(f"{step}:")
                for name in urls:
                    print(f"  {name:<11} {results[name][step]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=20_000)
    asyncio.run(main(parser.parse_args().documents))
