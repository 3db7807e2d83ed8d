"""Fabric ledger throughput over the Python gateway client, two organisations next to one, in
the same run, on the running local network (`streamledger stack up --fabric`).

  two orgs   channel `streamledger`: policy AND('Org1MSP.peer','Org2MSP.peer'), so every
             submit is endorsed by Org1's peer and then, through the gateway, by Org2's
  one org    channel `streamledger-solo`: Org1 alone, policy OR('Org1MSP.peer'); the same
             contract (Org1's installed package, Org1's chaincode server) on the same
             orderers and peer. `ensure_solo_channel` creates it once (idempotent).

The same calls on both, as Org1's Admin, alternating channel level by level so both see the
same machine: committed Mint submits per second at concurrency 1/16/64 (each task mints
into its own account, so tasks never conflict: the figure is the client's and the network's,
not MVCC retries'), divided by the measured wall time; evaluate (Balance) p50/p99; and one
sequential submit step by step (endorse, submit, wait for the commit). The difference is
the cost of the second endorsement. A block is cut when it fills or when the orderer's
BatchTimeout passes (printed, read from the channel's config block), so one sequential
submit waits about that long for its commit and concurrency is what raises throughput.

The official Go client (github.com/hyperledger/fabric-gateway v1.7.1, bench/ledger_go) runs the
same Mint submits on the two-org channel at each level, right after the Python client, as the
same identity against the same peer: the Python client's rate as a share of Go's is printed.
The Go program is built once into the stack's cache folder (`go` is needed; --no-go skips it).

    .venv/bin/python bench/ledger_tx.py --concurrency 1,16,64 --evaluations 400 --sequential 20
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import grpc
import yaml
from fabric_protos.common import common_pb2, configtx_pb2
from fabric_protos.orderer import configuration_pb2

from devstack.fabric import FabricError, FabricNetwork
from devstack.fabric.network import CHAINCODE_NAME, CHAINCODE_VERSION
from devstack.settings import StackSettings
from streamledger.fabric import EndorsementMismatch
from streamledger.ledger import DEFAULT_RETRY, LedgerClient
from streamledger.settings import LedgerSettings

TWO_ORGS = "streamledger"
ONE_ORG = "streamledger-solo"
ONE_ORG_POLICY = "OR('Org1MSP.peer')"


# -- the one-organisation channel --
def _solo_genesis_block(network: FabricNetwork) -> Path:
    """The channel's genesis block: the two-org profile as devstack wrote it (local paths and
    addresses set), with Org1 as its only application organisation."""
    block = network.root / "solo" / f"{ONE_ORG}.block"
    if block.exists():
        return block
    written = network.config / "configtx.yaml"
    if not written.exists():
        raise FabricError(f"{written} is missing: bring the network up first (streamledger stack up --fabric)")
    config = yaml.safe_load(written.read_text())
    profile = config["Profiles"]["StreamLedgerChannel"]
    profile["Application"]["Organizations"] = [o for o in profile["Application"]["Organizations"]
                                               if o["ID"] == "Org1MSP"]
    config["Profiles"] = {"StreamLedgerSolo": profile}
    block.parent.mkdir(parents=True, exist_ok=True)
    (block.parent / "configtx.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    partial = block.with_suffix(".partial")
    made = subprocess.run([network.binaries.tool("configtxgen"), "-profile", "StreamLedgerSolo", "-channelID",
                           ONE_ORG, "-outputBlock", str(partial), "-configPath", str(block.parent)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        raise FabricError(f"configtxgen {ONE_ORG} failed: {made.stderr.strip()}")
    partial.rename(block)
    return block


def _osnadmin(network: FabricNetwork, orderer, *args: str) -> str:
    admin = network.orderer_admin_tls
    done = subprocess.run(
        [network.binaries.tool("osnadmin"), "channel", *args, "-o", f"127.0.0.1:{orderer.admin_port}",
         "--ca-file", str(network.orderer_tls_ca), "--client-cert", str(admin / "client.crt"),
         "--client-key", str(admin / "client.key")], capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


def _wait_for_leader(network: FabricNetwork, channel: str, timeout: float = 60.0) -> None:
    """Until one orderer's metrics say it leads `channel`'s Raft cluster."""
    leader = f'consensus_etcdraft_is_leader{{channel="{channel}"}} 1'
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for orderer in network.orderers:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{orderer.operations_port}/metrics", timeout=2) as r:
                    if leader in r.read().decode():
                        return
            except OSError:
                continue
        time.sleep(0.3)
    raise FabricError(f"no Raft leader for channel {channel} within {timeout:.0f}s")


def ensure_solo_channel(network: FabricNetwork) -> None:
    """Channel `streamledger-solo` with Org1 alone and the contract committed on it under
    OR('Org1MSP.peer'); each step skipped when done, so a second call changes nothing."""
    org1 = network.org("Org1")
    block = _solo_genesis_block(network)
    for orderer in network.orderers:
        if "Status: 200" not in _osnadmin(network, orderer, "list", "--channelID", ONE_ORG):
            joined = _osnadmin(network, orderer, "join", "--channelID", ONE_ORG, "--config-block", str(block))
            if "Status: 201" not in joined:
                raise FabricError(f"osnadmin channel join {ONE_ORG} on {orderer.host} failed: {joined.strip()}")
    _wait_for_leader(network, ONE_ORG)
    if ONE_ORG not in network.peer_cli("channel", "list", org="Org1").split():
        deadline = time.monotonic() + 60
        while True:  # the orderers serve the channel's blocks once they have elected a leader for it
            try:
                network.peer_cli("channel", "join", "-b", str(block), org="Org1", what=f"join {ONE_ORG}")
                break
            except FabricError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(1)
    definition = ["-C", ONE_ORG, "-n", CHAINCODE_NAME, "-v", CHAINCODE_VERSION, "--sequence", "1",
                  "--signature-policy", ONE_ORG_POLICY]
    try:
        network.peer_cli("lifecycle", "chaincode", "querycommitted", "-C", ONE_ORG, "-n", CHAINCODE_NAME)
    except FabricError:
        try:
            network.peer_cli("lifecycle", "chaincode", "queryapproved", "-C", ONE_ORG, "-n", CHAINCODE_NAME,
                             "--sequence", "1")
        except FabricError:
            network.peer_cli("lifecycle", "chaincode", "approveformyorg", *definition, "--package-id",
                             network.package_id_file(org1).read_text().strip(), *network.orderer_flags(),
                             what=f"approveformyorg on {ONE_ORG}")
        network.peer_cli("lifecycle", "chaincode", "commit", *definition, *network.orderer_flags(),
                         *network.endorser_flags((org1,)), what=f"chaincode commit on {ONE_ORG}")
    deadline = time.monotonic() + 60
    while True:  # the peer launches the chaincode connection on first use
        try:
            call = json.dumps({"function": "WhoAmI", "Args": []})
            network.peer_cli("chaincode", "query", "-C", ONE_ORG, "-n", CHAINCODE_NAME, "-c", call)
            return
        except FabricError:
            if time.monotonic() > deadline:
                raise
        time.sleep(1)


# -- the official Go client --
GO_CLIENT_DIR = Path(__file__).parent / "ledger_go"


def go_client(stack: StackSettings) -> Path:
    """The Go client bench program, built once per source version into the stack's cache."""
    digest = hashlib.sha256(b"".join((GO_CLIENT_DIR / name).read_bytes()
                                     for name in ("go.mod", "go.sum", "main.go"))).hexdigest()[:16]
    binary = stack.home / "bench" / f"ledger-go-{digest}"
    if not binary.exists():
        binary.parent.mkdir(parents=True, exist_ok=True)
        partial = binary.with_suffix(".partial")
        built = subprocess.run(["go", "build", "-o", str(partial), "."], cwd=GO_CLIENT_DIR, capture_output=True,
                               text=True, env={**os.environ, "GOFLAGS": "-mod=mod"})
        if built.returncode != 0:
            raise SystemExit(f"building {GO_CLIENT_DIR} failed: {built.stderr.strip()}")
        partial.rename(binary)
    return binary


async def go_submits(binary: Path, settings: LedgerSettings, level: int, total: int, prefix: str) -> dict:
    """Run the Go client's `total` Mint submits over `level` goroutines: its JSON result."""
    process = await asyncio.create_subprocess_exec(
        str(binary), "--peer", settings.peer_endpoint(), "--tls-root", str(settings.tls_root()),
        "--server-name", settings.fabric_peer_server_name, "--msp-id", settings.fabric_msp_id,
        "--msp-dir", str(settings.msp_dir()), "--channel", settings.fabric_channel,
        "--chaincode", settings.fabric_chaincode, "--concurrency", str(level), "--total", str(total),
        "--prefix", prefix, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    if process.returncode not in (0, 1) or not out.strip():
        raise SystemExit(f"the Go client failed ({process.returncode}): {err.decode().strip()}")
    return json.loads(out)


# -- measuring --
class EndorseFailures:
    """Wraps a client's gateway stub to count endorsements that failed and were retried
    (EndorsementMismatch: a peer that had not yet committed the client's previous block)."""

    def __init__(self, ledger: LedgerClient) -> None:
        self.stub = ledger.gateway.client.stub
        self.count = 0
        ledger.gateway.client.stub = self

    def __getattr__(self, name: str):
        return getattr(self.stub, name)

    async def Endorse(self, request, **kwargs):
        try:
            return await self.stub.Endorse(request, **kwargs)
        except grpc.aio.AioRpcError:
            self.count += 1
            raise


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


def line(label: str, seconds: float, latencies: list[float], extra: str = "") -> str:
    return (f"  {label:<30} {len(latencies) / seconds:8.1f}/s   p50 {percentile(latencies, 0.5) * 1000:7.1f} ms"
            f"   p99 {percentile(latencies, 0.99) * 1000:7.1f} ms{extra}")


async def sequential_steps(ledger: LedgerClient, account: str, count: int) -> tuple[dict[str, list[float]], int]:
    """Seconds each step of `count` sequential Mint submits took, by step, and how many
    endorsements were tried again (EndorsementMismatch: the other org's peer had not yet
    committed the previous block; the step's time is the attempt that succeeded)."""
    steps: dict[str, list[float]] = {"endorse": [], "submit": [], "wait for commit": [], "whole submit": []}
    mismatches = 0
    for _ in range(count):
        proposal = ledger.contract.new_proposal("Mint", account, 1)
        for attempt in range(20):
            started = time.perf_counter()
            try:
                transaction = await proposal.endorse()
                break
            except EndorsementMismatch:
                if attempt == 19:
                    raise
                mismatches += 1
        endorsed = time.perf_counter()
        commit = await transaction.submit()
        submitted = time.perf_counter()
        await commit.status()
        done = time.perf_counter()
        for step, seconds in (("endorse", endorsed - started), ("submit", submitted - endorsed),
                              ("wait for commit", done - submitted), ("whole submit", done - started)):
            steps[step].append(seconds)
    return steps, mismatches


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


def transactions_at(level: int, minimum: int, rounds: int) -> int:
    return max(minimum, rounds * level)


async def main(concurrency: list[int], minimum: int, rounds: int, evaluations: int, sequential: int,
               with_go: bool) -> None:
    stack = StackSettings(fabric=True)
    network = FabricNetwork(stack)
    go_binary = go_client(stack) if with_go else None
    started = time.perf_counter()
    await asyncio.to_thread(ensure_solo_channel, network)
    print(f"one-org channel {ONE_ORG} ready in {time.perf_counter() - started:.1f} s (created on first use, "
          f"then reused)")
    run = uuid.uuid4().hex[:8]
    channels = {"two orgs": TWO_ORGS, "one org": ONE_ORG}
    ledgers = {name: LedgerClient.connect(LedgerSettings(fabric_user="Admin", fabric_channel=channel),
                                          retry=DEFAULT_RETRY) for name, channel in channels.items()}
    failures = {name: EndorseFailures(ledger) for name, ledger in ledgers.items()}
    rates: dict[tuple[str, int], float] = {}
    go_rates: dict[int, float] = {}
    try:
        me = (await ledgers["one org"].who_am_i())["Account"]
        for ledger in ledgers.values():
            await ledger.mint(me, 1)  # what Balance reads below
        print(f"submit (Mint, committed) per concurrency level; tx/s = committed / measured wall time; "
              f"{minimum} or {rounds} per task, whichever is more:")
        for level in concurrency:
            total = transactions_at(level, minimum, rounds)
            for name, ledger in ledgers.items():
                before = failures[name].count
                seconds, lat = await timed_calls(
                    level, total, lambda t, n, ledger=ledger: ledger.mint(f"bench-{run}-{level}-{t}", 1))
                rates[name, level] = total / seconds
                print(line(f"{name}, concurrency {level} ({total})", seconds, lat,
                           f"   endorsements retried {failures[name].count - before}"))
            if go_binary is not None:
                go = await go_submits(go_binary, LedgerSettings(fabric_user="Admin", fabric_channel=TWO_ORGS),
                                      level, total, f"bench-{run}-go-{level}")
                go_rates[level] = go["committed"] / go["seconds"]
                print(f"  {f'Go client, two orgs, c{level} ({total})':<30} {go_rates[level]:8.1f}/s   "
                      f"p50 {go['p50_ms']:7.1f} ms   p99 {go['p99_ms']:7.1f} ms   failed {go['failed']}"
                      + (f" (first: {go['first_error']})" if go.get("first_error") else ""))
        print(f"evaluate (Balance, own account), {evaluations} calls per level:")
        for level in (1, 16):
            for name, ledger in ledgers.items():
                seconds, lat = await timed_calls(level, evaluations, lambda t, n, ledger=ledger: ledger.balance(me))
                print(line(f"{name}, concurrency {level}", seconds, lat))
        print(f"one sequential submit, by step, {sequential} submits (measured):")
        endorse_p50 = {}
        for name, ledger in ledgers.items():
            steps, mismatches = await sequential_steps(ledger, f"bench-{run}-steps", sequential)
            endorse_p50[name] = percentile(steps["endorse"], 0.5)
            for step, seconds in steps.items():
                print(f"  {name + ', ' + step:<30} p50 {percentile(seconds, 0.5) * 1000:7.1f} ms   "
                      f"min {min(seconds) * 1000:7.1f} ms   max {max(seconds) * 1000:7.1f} ms")
            print(f"  {name + ', endorsements retried':<30} {mismatches} (peer behind: EndorsementMismatch)")
        two, one = endorse_p50["two orgs"] * 1000, endorse_p50["one org"] * 1000
        print("the cost of the second endorsement:")
        print(f"  endorse p50: {two:.1f} ms with two orgs, {one:.1f} ms with one (+{two - one:.1f} ms)")
        for level in concurrency:
            two, one = rates["two orgs", level], rates["one org", level]
            print(f"  concurrency {level}: {two:.1f} tx/s with two orgs, {one:.1f} with one ({two / one:.0%})")
        if go_rates:
            print("the Python gateway client next to the official Go client (two orgs, same run):")
            for level, go in go_rates.items():
                python = rates["two orgs", level]
                print(f"  concurrency {level}: Python {python:.1f} tx/s, Go {go:.1f} tx/s ({python / go:.2f}x)")
        for name, ledger in ledgers.items():
            print(f"orderer BatchTimeout on {channels[name]}: {await configured_batch_timeout(ledger)} "
                  f"(configuration, read from the channel's config block, not measured)")
    finally:
        for ledger in ledgers.values():
            await ledger.gateway.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated submit concurrency levels")
    parser.add_argument("--minimum", type=int, default=30, help="submits per level at least")
    parser.add_argument("--rounds", type=int, default=6, help="submits per task (when more than --minimum)")
    parser.add_argument("--evaluations", type=int, default=400, help="evaluates per concurrency level")
    parser.add_argument("--sequential", type=int, default=20, help="sequential submits timed step by step")
    parser.add_argument("--no-go", dest="go", action="store_false", help="skip the official Go client")
    args = parser.parse_args()
    asyncio.run(main([int(c) for c in args.concurrency.split(",")], args.minimum, args.rounds, args.evaluations,
                     args.sequential, args.go))
