"""Fabric ledger throughput over the Python gateway client: submits committed per second
at a few concurrency levels, and evaluate latency, on the running local network
(`streamledger stack up --fabric`).

Each concurrent task mints into its own account, so tasks never conflict (MVCC) and the
figure is the client's and the network's, not retries'. A block is cut when it fills or
when the orderer's BatchTimeout passes, so one sequential submit waits about that long
for its commit and concurrency is what raises throughput. The bench measures sequential
submits step by step (endorse, submit, wait for the commit) and prints the BatchTimeout
next to them as configuration: read from the channel's config block, not measured.

    .venv/bin/python bench/ledger_tx.py --concurrency 1,4,16 --transactions 120 --sequential 20
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from fabric_protos.common import common_pb2, configtx_pb2
from fabric_protos.orderer import configuration_pb2

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


async def sequential_steps(ledger: LedgerClient, account: str, count: int) -> dict[str, list[float]]:
    """Seconds each step of `count` sequential Mint submits took, by step."""
    steps: dict[str, list[float]] = {"endorse": [], "submit": [], "wait for commit": [], "whole submit": []}
    for _ in range(count):
        started = time.perf_counter()
        transaction = await ledger.contract.new_proposal("Mint", account, 1).endorse()
        endorsed = time.perf_counter()
        commit = await transaction.submit()
        submitted = time.perf_counter()
        await commit.status()
        done = time.perf_counter()
        for step, seconds in (("endorse", endorsed - started), ("submit", submitted - endorsed),
                              ("wait for commit", done - submitted), ("whole submit", done - started)):
            steps[step].append(seconds)
    return steps


async def configured_batch_timeout(ledger: LedgerClient) -> str:
    """The orderer's BatchTimeout as the channel's latest config block sets it (e.g. "500ms")."""
    qscc, channel = ledger.gateway.network(ledger.contract.channel).contract("qscc"), ledger.contract.channel

    async def block(number: int) -> common_pb2.Block:
        return common_pb2.Block.FromString(await qscc.evaluate("GetBlockByNumber", channel, number))

    newest = await block(await ledger.chain_height() - 1)
    signatures = common_pb2.Metadata.FromString(newest.metadata.metadata[common_pb2.SIGNATURES])
    config_block = await block(common_pb2.OrdererBlockMetadata.FromString(signatures.value).last_config.index)
    payload = common_pb2.Payload.FromString(common_pb2.Envelope.FromString(config_block.data.data[0]).payload)
    orderer = configtx_pb2.ConfigEnvelope.FromString(payload.data).config.channel_group.groups["Orderer"]
    return configuration_pb2.BatchTimeout.FromString(orderer.values["BatchTimeout"].value).timeout


async def main(concurrency: list[int], transactions: int, evaluations: int, sequential: int) -> None:
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
        print(f"one sequential submit, by step, {sequential} submits (measured):")
        for step, seconds in (await sequential_steps(ledger, f"bench-{run}-steps", sequential)).items():
            print(f"  {step:<28} p50 {percentile(seconds, 0.5) * 1000:7.1f} ms   "
                  f"min {min(seconds) * 1000:7.1f} ms   max {max(seconds) * 1000:7.1f} ms")
        print(f"orderer BatchTimeout: {await configured_batch_timeout(ledger)} (configuration, read from the "
              f"channel's config block, not measured): bounds the wait for commit above")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated submit concurrency levels")
    parser.add_argument("--transactions", type=int, default=120, help="submits per concurrency level")
    parser.add_argument("--evaluations", type=int, default=400, help="evaluates per concurrency level")
    parser.add_argument("--sequential", type=int, default=20, help="sequential submits timed step by step")
    args = parser.parse_args()
    asyncio.run(main([int(c) for c in args.concurrency.split(",")], args.transactions, args.evaluations,
                     args.sequential))
