"""Fabric ledger throughput over the Python gateway client: submits committed per second
at a few concurrency levels, and evaluate latency, on the running local network
(`streamledger stack up --fabric`).

Each concurrent task mints into its own account, so tasks never conflict (MVCC) and the
figure is the client's and the network's, not retries'. The floor of one sequential
submit is the orderer's batch timeout (deploy/fabric/configtx.yaml, 500 ms): a block is
cut when it fills or when that timeout passes, so concurrency is what raises throughput.

    .venv/bin/python bench/ledger_tx.py --concurrency 1,4,16 --transactions 120
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from streamledger.ledger import LedgerClient
from streamledger.settings import LedgerSettings


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed_calls(concurrency: int, total: int, call) -> tuple[float, list[float]]:
    """Run `call(task, n)` `total` times over `concurrency` tasks; wall seconds and latencies."""
    latencies: list[float] = []

    async def task(t: int) -> None:
        for n in range(t, total, concurrency):
            started = time.perf_counter()
            await call(t, n)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(task(t) for t in range(concurrency)))
    return time.perf_counter() - started, latencies


def line(label: str, seconds: float, latencies: list[float]) -> str:
    return (f"  {label:<28} {len(latencies) / seconds:8.1f}/s   p50 {percentile(latencies, 0.5) * 1000:7.1f} ms"
            f"   p99 {percentile(latencies, 0.99) * 1000:7.1f} ms")


async def main(concurrency: list[int], transactions: int, evaluations: int) -> None:
    run = uuid.uuid4().hex[:8]
    async with LedgerClient.connect(LedgerSettings()) as ledger:
        await ledger.mint(f"bench-{run}-read", 1)
        print(f"submit (Mint, committed), {transactions} transactions per level:")
        for level in concurrency:
            seconds, lat = await timed_calls(level, transactions,
                                             lambda t, n: ledger.mint(f"bench-{run}-{level}-{t}", 1))
            print(line(f"concurrency {level}", seconds, lat))
        print(f"evaluate, {evaluations} calls per level:")
        for level in (1, 8):
            seconds, lat = await timed_calls(level, evaluations, lambda t, n: ledger.balance(f"bench-{run}-read"))
            print(line(f"Balance, concurrency {level}", seconds, lat))
            seconds, lat = await timed_calls(level, evaluations, lambda t, n: ledger.who_am_i())
            print(line(f"WhoAmI (baseline), conc. {level}", seconds, lat))
        print("floor of one sequential submit: the orderer's BatchTimeout, 500 ms (compare the concurrency-1 p50)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated submit concurrency levels")
    parser.add_argument("--transactions", type=int, default=120, help="submits per concurrency level")
    parser.add_argument("--evaluations", type=int, default=400, help="evaluates per concurrency level")
    args = parser.parse_args()
    asyncio.run(main([int(c) for c in args.concurrency.split(",")], args.transactions, args.evaluations))
