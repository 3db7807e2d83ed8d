"""Latency and throughput of the inference service, free and paid, next to two floors measured in the same run.

    .venv/bin/python bench/inference.py [--seconds 2] [--sample 1.0] [--free-only] [--quick]

Needs the local stack (Kafka) and, for paid mode, the local Fabric network with the money
contract. A phishing logistic regression is trained with the learning package's own code,
published as a snapshot to a fresh topic, and served by the real `streamledger serve inference`
in two subprocesses: free mode, and paid mode (mutual TLS, acting as the `inference` identity,
`CREDIT_WINDOW_UNITS` 10,000 so that 64 requests of 64 rows in flight fit, `RESERVE_UNITS` the
default). For paid mode Org1's Admin mints credit to Org2's User8, which freezes one hold for the
account `inference` acts for; every paid call carries the hold id and User8's latest receipt as
metadata, and the client counts the rows of each answer and signs a receipt for all of them with
User8's key once 10 rows came since the last one (`streamledger.client`'s default,
`SIGN_EVERY_UNITS`: every 10th 1-row answer, every 64-row answer). The paid server checks each new
receipt's signature in the background, in its hold process (`RECEIPT_CHECK_SECONDS` the default), which
also makes its reservations: the CPU per request below counts that child process and the record writer. For 1-row and 64-row requests at concurrency 1, 8 and 64 it prints
p50/p99 latency, requests/s and rows/s of:
  - river:     the same model's `predict_proba_one` called in-process (no gRPC at all);
  - echo:      a bare grpc.aio server in a subprocess answering each ModelInfer call with the
               request's own bytes (same payload size: the floor Python gRPC sets here);
  - free:      the service in free mode, plaintext (as free mode runs by default);
  - free-mtls: the service in free mode over the very mutual TLS paid mode uses (same server
               certificate, client CAs and client certificate): nobody metered, no ledger;
  - paid:      the service in paid mode (mutual TLS, receipts checked, credit reserved on the ledger,
               a usage record per request).
So paid/free is the issue's ratio (what a paid call costs over a free one, TLS included),
free-mtls/free the part of it mutual TLS takes, and paid/free-mtls the part metering takes.
The client is one grpc.aio process sending pre-serialized requests to every server, so
client costs are the same for all (the paid client also signs its receipts, between its calls, untimed).
Each cell warms every connection up (not measured), then alternates short slices of load
between the targets (the order rotates) until each has had `--seconds`: all see the same
background load of a shared machine, and their ratios compare like with like. Rates are
requests (rows) over the wall time the measured slices took, from their first request sent to
their last answer. Per cell it prints the reservation (Authorize) transactions the paid server
made per 1,000 paid requests, read from its `/metrics`, and the CPU time each server (with its
record writer) spent per request, read from /proc (steadier than latency on a busy machine). At the end it counts the records on
the run's predictions topics against the requests sent (a record dropped because a server's
buffer was full shows there) and the usage records against the paid requests. Asserts nothing.

Goals: 1-row p99 of free mode within 1.5x of the echo floor at each concurrency (issue 7), of
paid mode within 1.2x of free mode (issue 21, the `paid/free` figure); at least 10,000 rows/s with
64-row requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.inference.protocol import SERVICE, InferenceStub, pb  # noqa: E402

INFER = f"/{SERVICE}/ModelInfer"
MODELS = """
[[model]]
id = "phishing-logreg"
task = "binary"
metrics = ["Accuracy"]
pipeline = [ { class = "preprocessing.StandardScaler" }, { class = "linear_model.LogisticRegression" } ]
"""
PAYING_USER = "User8"
"""Org2's user that pays in the bench (the tests pay as User5, User6 and User1)."""
HOLD_AMOUNT = 20_000_000
WINDOW_UNITS = 10_000
"""Paid mode's credit window in the bench: 64 requests of 64 rows in flight, unreceipted, fit."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def echo_server(port: int) -> None:
    """A grpc.aio server whose ModelInfer returns the request bytes untouched."""
    async def echo(request: bytes, context) -> bytes:
        return request

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(echo)  # no (de)serializers: raw bytes in and out
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"ModelInfer": handler}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def request_bytes(rows: list[dict], names: list[str]) -> bytes:
    request = pb.ModelInferRequest(model_name="phishing-logreg")
    for name in names:
        request.inputs.add(name=name, datatype="FP64", shape=[len(rows)])
        request.raw_input_contents.append(np.array([r[name] for r in rows], dtype="<f8").tobytes())
    return request.SerializeToString()


class Target:
    """One server the client loads: how to reach it (a channel) and how to call it (bytes in, bytes out)."""

    def __init__(self, port: int, credentials: grpc.ChannelCredentials | None = None,
                 paying: PaidCalls | None = None) -> None:
        self.port, self.credentials, self.paying = port, credentials, paying

    def channel(self) -> grpc.aio.Channel:
        if self.credentials is None:
            return grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        return grpc.aio.secure_channel(f"127.0.0.1:{self.port}", self.credentials,
                                       options=[("grpc.ssl_target_name_override", "localhost")])

    def caller(self, channel: grpc.aio.Channel, rows: int) -> Callable[[bytes], Awaitable[object]]:
        call = channel.unary_unary(INFER)
        return call if self.paying is None else self.paying.caller(call, rows)


class PaidCalls:
    """A paying client's side: every call carries the hold and the latest receipt; the answers are
    signed for every `SIGN_EVERY_UNITS` rows (`streamledger.client.ReceiptBook`, as `PaidInferenceClient` does)."""

    def __init__(self, book) -> None:
        self.book = book
        self.answers = 0
        self.refused: dict[str, int] = {}
        """Refusals by status and the start of their message (hold id and numbers as N)."""

    def caller(self, call, rows: int) -> Callable[[bytes], Awaitable[Callable[[], None] | None]]:
        from streamledger.core.receipts import HOLD_METADATA, RECEIPT_METADATA

        book, hold = self.book, (HOLD_METADATA, self.book.hold_id)

        def sign() -> None:
            self.answers += 1
            book.received(rows)

        async def paid(payload: bytes) -> Callable[[], None] | None:
            header = book.header
            metadata = (hold,) if header is None else (hold, (RECEIPT_METADATA, header))
            try:
                await call(payload, metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                key = f"{exc.code().name}: {re.sub(r'[0-9a-f]{32}|[0-9]+', 'N', exc.details())[:100]}"
                self.refused[key] = self.refused.get(key, 0) + 1
                return None
            return sign  # signed once the answer's latency is taken, before the next call: client work
        return paid


async def load(call, payload: bytes, concurrency: int, seconds: float) -> tuple[list[float], float]:
    """Latencies of `concurrency` callers sending `payload` back to back for `seconds`, and the wall time
    it took (the calls in flight at the deadline finish after it). `call` may return a function, the
    caller's work after the answer (a receipt to sign): run before the next call, not timed."""
    latencies: list[float] = []
    began = time.perf_counter()
    deadline = began + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            after = await call(payload)
            latencies.append(time.perf_counter() - started)
            if callable(after):
                after()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - began


async def interleaved(targets: dict[str, Target], payload: bytes, rows: int, concurrency: int, seconds: float,
                      slice_seconds: float, warmup: float
                      ) -> tuple[dict[str, list[float]], dict[str, float], dict[str, int]]:
    """Latencies per target, measured in alternating slices until each target had `seconds`, the wall
    time its measured slices took, and the number of requests each target was sent (warm-up included)."""
    channels = {name: target.channel() for name, target in targets.items()}
    try:
        # bytes in, bytes out: the same client work for every server (and a receipt signed for paid answers)
        calls = {name: targets[name].caller(channel, rows) for name, channel in channels.items()}
        sent = {name: 0 for name in targets}
        for name, call in calls.items():
            sent[name] += len((await load(call, payload, concurrency, warmup))[0])  # warm-up: not measured
        latencies: dict[str, list[float]] = {name: [] for name in targets}
        elapsed = {name: 0.0 for name in targets}
        order = list(targets)
        for index in range(max(1, round(seconds / slice_seconds))):
            shift = index % len(order)
            for name in order[shift:] + order[:shift]:
                measured, took = await load(calls[name], payload, concurrency, slice_seconds)
                latencies[name] += measured
                elapsed[name] += took
        for name in targets:
            sent[name] += len(latencies[name])
        return latencies, elapsed, sent
    finally:
        for channel in channels.values():
            await channel.close()


def summary(latencies: list[float], seconds: float, rows: int) -> tuple[float, float, float, float]:
    """p50 and p99 (ms), requests/s and rows/s over `seconds` of measured wall time."""
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    rate = len(ordered) / seconds
    return statistics.median(ordered) * 1000, p99 * 1000, rate, rate * rows


def river_baseline(model, rows: list[dict], seconds: float) -> tuple[float, float, float, float]:
    latencies = []
    began = time.perf_counter()
    while time.perf_counter() < began + seconds:
        started = time.perf_counter()
        for x in rows:
            model.predict_proba_one(x)
        latencies.append(time.perf_counter() - started)
    return summary(latencies, time.perf_counter() - began, len(rows))


def wait_ready(target: Target, timeout: float = 60.0) -> None:
    async def ready() -> bool:
        async with target.channel() as channel:
            stub = InferenceStub(channel)
            return (await stub.ServerReady(pb.ServerReadyRequest(), timeout=1)).ready and \
                (await stub.ModelReady(pb.ModelReadyRequest(name="phishing-logreg"), timeout=1)).ready

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if asyncio.run(ready()):
                return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"server on port {target.port} not ready")


def reservations(metrics_port: int) -> float:
    """Authorize transactions the paid server made so far (its `/metrics`)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "streamledger_inference_reservations":
            return sum(sample.value for sample in family.samples if sample.name.endswith("_total"))
    return 0.0


def cpu_seconds(pid: int, children: bool = True) -> float:
    """User + system CPU time of a process and of its children (the record writer; paid mode's hold
    process) unless `children` is False, from /proc: the server's cost, however busy the shared machine
    is (latency percentiles are not)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # state, ppid, ..., utime (12th), stime (13th)
        except (OSError, IndexError):
            continue
        if stat.parent.name == str(pid) or (children and fields[1] == str(pid)):
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


TLS_SETTINGS = ("STREAMLEDGER_INFERENCE_TLS_CERT", "STREAMLEDGER_INFERENCE_TLS_KEY", "STREAMLEDGER_INFERENCE_CLIENT_CAS")
"""Paid mode's mutual TLS settings, which the free-mtls server takes too."""


def paid_setup(folder: Path, env: dict[str, str]) -> tuple[dict[str, str], PaidCalls, grpc.ChannelCredentials]:
    """Credit frozen by Org2's User8 for the account `inference` acts for, the paid server's
    environment (mutual TLS with a fresh server certificate, Org2's CA for clients: `TLS_SETTINGS`),
    and the paying client's calls and TLS credentials."""
    from streamledger.client import ReceiptBook
    from streamledger.fabric.identity import load_msp
    from streamledger.ledger import LedgerClient
    from streamledger.settings import LedgerSettings, local_org_dir
    from tests.integration.inference.test_inference_paid import Issuer

    async def freeze() -> dict:
        async with (LedgerClient.connect(LedgerSettings(fabric_user="Admin")) as admin,
                    LedgerClient.connect(LedgerSettings(fabric_user="inference")) as server,
                    LedgerClient.connect(LedgerSettings(fabric_msp_id="Org2MSP", fabric_user=PAYING_USER)) as user):
            provider = (await server.who_am_i())["ActsFor"]
            account = (await user.who_am_i())["Account"]
            await admin.mint(account, HOLD_AMOUNT)
            deadline = time.monotonic() + 30
            while await user.balance(account) < HOLD_AMOUNT:  # minted through Org1's peer; User8 uses Org2's
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the credit minted to {account} never reached Org2's peer")
                await asyncio.sleep(0.2)
            return await user.freeze(uuid.uuid4().hex, provider, HOLD_AMOUNT, 1, int(time.time()) + 3600)
    hold = asyncio.run(freeze())
    org2 = local_org_dir("Org2MSP")
    msp = org2 / "users" / f"{PAYING_USER}@{org2.name}" / "msp"
    server_ca = Issuer(folder, "ca.server", "Provider")
    cert, key, _ = server_ca.issue("localhost", server=True)
    paid_env = {**env, "STREAMLEDGER_INFERENCE_MODE": "paid", "STREAMLEDGER_INFERENCE_HOST": "127.0.0.1",
                "STREAMLEDGER_INFERENCE_TLS_CERT": str(cert), "STREAMLEDGER_INFERENCE_TLS_KEY": str(key),
                "STREAMLEDGER_INFERENCE_CLIENT_CAS": json.dumps(
                    {"Org2MSP": str(next((org2 / "msp" / "cacerts").glob("*.pem")))}),
                "STREAMLEDGER_INFERENCE_CREDIT_WINDOW_UNITS": str(WINDOW_UNITS)}
    credentials = grpc.ssl_channel_credentials(
        root_certificates=server_ca.cert_file.read_bytes(),
        private_key=next((msp / "keystore").iterdir()).read_bytes(),
        certificate_chain=next((msp / "signcerts").glob("*.pem")).read_bytes())
    book = ReceiptBook(load_msp(msp, "Org2MSP")[1].sign, hold["hold_id"])
    return paid_env, PaidCalls(book), credentials


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0, help="per cell and target")
    parser.add_argument("--slice", type=float, default=0.5, help="length of one alternating slice")
    parser.add_argument("--warmup", type=float, default=0.25, help="unmeasured load per cell and target")
    parser.add_argument("--sample", type=float, default=1.0, help="share of requests written to the predictions topic")
    parser.add_argument("--free-only", action="store_true", help="no paid mode (no Fabric network needed)")
    parser.add_argument("--quick", action="store_true", help="1 s per cell and target in 0.25 s slices (a noisier, "
                                                             "shorter run)")
    parser.add_argument("--echo-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        asyncio.run(echo_server(args.echo_server))
        return
    if args.quick:
        args.seconds, args.slice = 1.0, 0.25

    from river import datasets

    from streamledger.settings import CommonSettings
    from tests.integration.inference.support import publish, registered, snapshot_record, train

    bootstrap = CommonSettings().kafka_bootstrap
    run_id = uuid.uuid4().hex[:8]
    folder = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    models_file = folder / "models.toml"
    models_file.write_text(MODELS)
    phishing = [({k: float(v) for k, v in x.items()}, y) for x, y in datasets.Phishing()]
    online = train(models_file, "phishing-logreg", phishing)
    topic = f"models.snapshots.bench.{run_id}"
    record = snapshot_record("phishing-logreg", 1, online)
    # Paid mode serves only what the ledger vouches for: registered as the learning service would.
    publish(bootstrap, topic, [record if args.free_only else registered(record)])

    names = sorted(phishing[0][0])
    batches = {n: [{k: x[k] for k in names} for x, _ in phishing[:n]] for n in (1, 64)}
    ports = {"echo": free_port(), "free": free_port(), "free-mtls": free_port(), "paid": free_port()}
    metrics_port = free_port()
    env = {**os.environ, "STREAMLEDGER_INFERENCE_MODELS_FILE": str(models_file),
           "STREAMLEDGER_INFERENCE_SNAPSHOT_TOPIC": topic,
           "STREAMLEDGER_INFERENCE_PREDICTIONS_SAMPLE": str(args.sample), "STREAMLEDGER_LOG_LEVEL": "WARNING"}
    free_env = {**env, "STREAMLEDGER_INFERENCE_PORT": str(ports["free"]), "STREAMLEDGER_INFERENCE_MODE": "free",
                "STREAMLEDGER_INFERENCE_PREDICTIONS_TOPIC": f"predictions.bench.{run_id}"}
    targets = {"echo": Target(ports["echo"]), "free": Target(ports["free"])}
    servers = [
        subprocess.Popen([str(REPO / ".venv/bin/streamledger"), "serve", "inference"], env=free_env, cwd=REPO),
        subprocess.Popen([sys.executable, __file__, "--echo-server", str(ports["echo"])], cwd=REPO),
    ]
    topics = [topic, free_env["STREAMLEDGER_INFERENCE_PREDICTIONS_TOPIC"]]
    server_pids = {"free": servers[0].pid}
    paying = None
    if not args.free_only:
        paid_env, paying, credentials = paid_setup(folder, env)
        paid_env.update({"STREAMLEDGER_INFERENCE_PORT": str(ports["paid"]),
                         "STREAMLEDGER_INFERENCE_PREDICTIONS_TOPIC": f"predictions.bench.paid.{run_id}",
                         "STREAMLEDGER_INFERENCE_USAGE_TOPIC": f"usage.bench.{run_id}",
                         "STREAMLEDGER_METRICS_PORT": str(metrics_port)})
        mtls_env = {**free_env, **{name: paid_env[name] for name in TLS_SETTINGS},
                    "STREAMLEDGER_INFERENCE_PORT": str(ports["free-mtls"]),
                    "STREAMLEDGER_INFERENCE_PREDICTIONS_TOPIC": f"predictions.bench.mtls.{run_id}"}
        for name, server_env in (("free-mtls", mtls_env), ("paid", paid_env)):
            servers.append(subprocess.Popen([str(REPO / ".venv/bin/streamledger"), "serve", "inference"],
                                            env=server_env, cwd=REPO))
            server_pids[name] = servers[-1].pid
        targets["free-mtls"] = Target(ports["free-mtls"], credentials)
        targets["paid"] = Target(ports["paid"], credentials, paying)
        topics += [paid_env["STREAMLEDGER_INFERENCE_PREDICTIONS_TOPIC"], paid_env["STREAMLEDGER_INFERENCE_USAGE_TOPIC"],
                   mtls_env["STREAMLEDGER_INFERENCE_PREDICTIONS_TOPIC"]]
    requests = {name: 0 for name in targets}
    try:
        for name in ("free", "free-mtls", "paid"):
            if name in targets:
                wait_ready(targets[name])
        print(f"inference service: free and {'no paid' if args.free_only else 'paid'} mode, predictions sample "
              f"{args.sample}, {args.seconds:g} s per cell and target in alternating {args.slice:g} s slices after "
              f"{args.warmup:g} s warm-up, {os.cpu_count()} cores shared by client and servers; rates over the "
              f"measured wall time" + ("" if args.free_only else f"; paid: credit window {WINDOW_UNITS} units; "
                                                                  "free-mtls: free mode over paid mode's mutual TLS"))
        print(f"{'rows':>4} {'conc':>4} {'target':<9} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9} {'rows/s':>10}")
        for rows in (1, 64):
            payload = request_bytes(batches[rows], names)
            check = pb.ModelInferResponse.FromString(
                grpc.insecure_channel(f"127.0.0.1:{ports['free']}").unary_unary(INFER)(payload))
            assert check.outputs[1].name == "probabilities", check
            requests["free"] += 1
            p50, p99, rate, row_rate = river_baseline(online.model, batches[rows], args.seconds)
            print(f"{rows:>4} {'1':>4} {'river':<9} {p50:>8.3f} {p99:>8.3f} {rate:>9.0f} {row_rate:>10.0f}")
            for concurrency in (1, 8, 64):
                reserved_before = reservations(metrics_port) if paying else 0.0
                cpu_before = {name: cpu_seconds(pid) for name, pid in server_pids.items()}
                serving_before = {name: cpu_seconds(pid, children=False) for name, pid in server_pids.items()}
                figures = {}
                measured, elapsed, sent = asyncio.run(interleaved(targets, payload, rows, concurrency, args.seconds,
                                                                  args.slice, args.warmup))
                for name, latencies in measured.items():
                    requests[name] += sent[name]
                    figures[name] = summary(latencies, elapsed[name], rows)
                    p50, p99, rate, row_rate = figures[name]
                    print(f"{rows:>4} {concurrency:>4} {name:<9} {p50:>8.3f} {p99:>8.3f} {rate:>9.0f} {row_rate:>10.0f}")
                cpu = {name: (cpu_seconds(pid) - cpu_before[name]) * 1e6 / sent[name] for name, pid in server_pids.items()}
                serving = {name: (cpu_seconds(pid, children=False) - serving_before[name]) * 1e6 / sent[name]
                           for name, pid in server_pids.items()}
                notes = [f"free/echo p99 {figures['free'][1] / figures['echo'][1]:.2f}"]
                if paying:
                    per_1000 = (reservations(metrics_port) - reserved_before) * 1000 / sent["paid"]
                    p99 = {name: figure[1] for name, figure in figures.items()}
                    notes.append(f"paid/free p99 {p99['paid'] / p99['free']:.2f} (of which mutual TLS: free-mtls/free "
                                 f"{p99['free-mtls'] / p99['free']:.2f}, metering: paid/free-mtls "
                                 f"{p99['paid'] / p99['free-mtls']:.2f})")
                    notes.append(f"reservations {per_1000:.2f} per 1,000 paid requests")
                    notes.append(f"server CPU per request (with its child processes; the serving process alone) free "
                                 f"{cpu['free']:.0f} us ({serving['free']:.0f}), free-mtls {cpu['free-mtls']:.0f} us "
                                 f"({serving['free-mtls']:.0f}), paid {cpu['paid']:.0f} us ({serving['paid']:.0f}): "
                                 f"{cpu['paid'] / cpu['free']:.2f}x free, +{cpu['paid'] - cpu['free-mtls']:.0f} us "
                                 f"(+{serving['paid'] - serving['free-mtls']:.0f}) over free-mtls")
                goal = "goals: free/echo <= 1.5, paid/free <= 1.2" if rows == 1 else \
                    f"rows/s free {figures['free'][3]:.0f}" + (f", paid {figures['paid'][3]:.0f}" if paying else "") + \
                    ", goal >= 10000"
                print(f"{'':>10}{'; '.join(notes)} ({goal})")
        if paying:
            total = reservations(metrics_port)
            refused = sum(paying.refused.values())
            print(f"paid: {total:.0f} reservations for {requests['paid']} requests "
                  f"({total * 1000 / max(requests['paid'], 1):.2f} per 1,000); receipts signed {paying.book.sequence} for "
                  f"{paying.answers} answers; "
                  f"refused {refused}" + "".join(f"\n  {count} x {why}" for why, count in paying.refused.items()))
    finally:
        for server in servers:
            server.send_signal(signal.SIGTERM)
        for server in servers:
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        # The servers have drained on SIGTERM: every record they accepted is on the topics by now.
        for name, predictions in (("free", topics[1]), ("paid", topics[2] if paying else None),
                                  ("free-mtls", topics[4] if paying else None)):
            if predictions:
                print(f"{name}: {asyncio.run(records_on(bootstrap, predictions))} prediction records on {predictions} "
                      f"for {requests[name]} requests (sample {args.sample:g})")
        if paying:
            print(f"paid: {asyncio.run(records_on(bootstrap, topics[3]))} usage records for "
                  f"{paying.answers} paid answers")
        asyncio.run(delete_topics(bootstrap, topics))


async def records_on(bootstrap: str, topic: str) -> int:
    from aiokafka import TopicPartition

    from streamledger import kafka

    partitions = [TopicPartition(t, p) for t, p in await kafka.partitions_of(bootstrap, [topic])]
    async with kafka.consumer(bootstrap) as consumer:
        return sum((await consumer.end_offsets(partitions)).values())


async def delete_topics(bootstrap: str, names: list[str]) -> None:
    """The run's own topics: each run makes fresh ones, and a broker loads every topic it has at start."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    from streamledger import kafka

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka.connection())
    try:
        await admin.start()
        await admin.delete_topics(names)
    except KafkaError as exc:
        print(f"could not delete the bench topics {names}: {exc!r}", file=sys.stderr)
    finally:
        await admin.close()


if __name__ == "__main__":
    main()
