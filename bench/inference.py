"""Latency and throughput of the inference service next to two floors measured in the same run.

    .venv/bin/python bench/inference.py [--seconds 2] [--sample 1.0]

Needs the local stack (Kafka). A phishing logistic regression is trained with the learning
package's own code, published as a snapshot to a fresh topic, and served by the real
`streamledger serve inference` in a subprocess (free mode). For 1-row and 64-row requests
at concurrency 1, 8 and 64 it prints p50/p99 latency, requests/s and rows/s of:
  - river:     the same model's `predict_proba_one` called in-process (no gRPC at all);
  - echo:      a bare grpc.aio server in a subprocess answering each ModelInfer call with the
               request's own bytes (same payload size: the floor Python gRPC sets here);
  - inference: the service.
The client is one grpc.aio process sending pre-serialized requests to both servers, so
client costs are the same for both. Each cell warms both connections up (not measured),
then alternates short slices of load between echo and inference (which goes first
alternates too) until each has had `--seconds`: both sides see the same background load of
a shared machine, and their ratio compares like with like. Rates are requests (rows) over
the wall time the measured slices took, from their first request sent to their last answer. At the end it counts the records
on the run's predictions topic against the inference requests sent (a record dropped because
the server's buffer was full shows there). Asserts nothing.

Goals (issue 7): 1-row p99 within 1.5x of the echo floor at each concurrency; at least
10,000 rows/s with 64-row requests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
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


async def load(call, payload: bytes, concurrency: int, seconds: float) -> tuple[list[float], float]:
    """Latencies of `concurrency` callers sending `payload` back to back for `seconds`, and the wall time
    it took (the calls in flight at the deadline finish after it)."""
    latencies: list[float] = []
    began = time.perf_counter()
    deadline = began + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await call(payload)
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - began


async def interleaved(ports: dict[str, int], payload: bytes, concurrency: int, seconds: float, slice_seconds: float,
                      warmup: float) -> tuple[dict[str, list[float]], dict[str, float], dict[str, int]]:
    """Latencies per target, measured in alternating slices until each target had `seconds`, the wall
    time its measured slices took, and the number of requests each target was sent (warm-up included)."""
    channels = {target: grpc.aio.insecure_channel(f"127.0.0.1:{port}") for target, port in ports.items()}
    try:
        # bytes in, bytes out: the same client work for both servers
        calls = {target: channel.unary_unary(INFER) for target, channel in channels.items()}
        sent = {target: 0 for target in ports}
        for target, call in calls.items():
            sent[target] += len((await load(call, payload, concurrency, warmup))[0])  # warm-up: not measured
        latencies: dict[str, list[float]] = {target: [] for target in ports}
        elapsed = {target: 0.0 for target in ports}
        order = list(ports)
        for index in range(max(1, round(seconds / slice_seconds))):
            for target in (order if index % 2 == 0 else order[::-1]):
                measured, took = await load(calls[target], payload, concurrency, slice_seconds)
                latencies[target] += measured
                elapsed[target] += took
        for target in ports:
            sent[target] += len(latencies[target])
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


def wait_ready(port: int, timeout: float = 60.0) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = InferenceStub(channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if stub.ServerReady(pb.ServerReadyRequest(), timeout=1).ready and \
                    stub.ModelReady(pb.ModelReadyRequest(name="phishing-logreg"), timeout=1).ready:
                channel.close()
                return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"server on port {port} not ready")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0, help="per cell and target")
    parser.add_argument("--slice", type=float, default=0.5, help="length of one alternating slice")
    parser.add_argument("--warmup", type=float, default=0.25, help="unmeasured load per cell and target")
    parser.add_argument("--sample", type=float, default=1.0, help="share of requests written to the predictions topic")
    parser.add_argument("--echo-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        asyncio.run(echo_server(args.echo_server))
        return

    from river import datasets

    from streamledger.settings import CommonSettings
    from tests.integration.inference.support import publish, snapshot_record, train

    bootstrap = CommonSettings().kafka_bootstrap
    run_id = uuid.uuid4().hex[:8]
    folder = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    models_file = folder / "models.toml"
    models_file.write_text(MODELS)
    phishing = [({k: float(v) for k, v in x.items()}, y) for x, y in datasets.Phishing()]
    online = train(models_file, "phishing-logreg", phishing)
    topic = f"bench.snapshots.{run_id}"
    publish(bootstrap, topic, [snapshot_record("phishing-logreg", 1, online)])

    names = sorted(phishing[0][0])
    batches = {n: [{k: x[k] for k in names} for x, _ in phishing[:n]] for n in (1, 64)}
    inference_port, echo_port = free_port(), free_port()
    env = {**os.environ, "STREAMLEDGER_INFERENCE_PORT": str(inference_port),
           "STREAMLEDGER_INFERENCE_MODELS_FILE": str(models_file), "STREAMLEDGER_INFERENCE_SNAPSHOT_TOPIC": topic,
           "STREAMLEDGER_INFERENCE_PREDICTIONS_TOPIC": f"bench.predictions.{run_id}",
           "STREAMLEDGER_INFERENCE_PREDICTIONS_SAMPLE": str(args.sample), "STREAMLEDGER_LOG_LEVEL": "WARNING",
           "STREAMLEDGER_INFERENCE_MODE": "free"}
    servers = [
        subprocess.Popen([str(REPO / ".venv/bin/streamledger"), "serve", "inference"], env=env, cwd=REPO),
        subprocess.Popen([sys.executable, __file__, "--echo-server", str(echo_port)], cwd=REPO),
    ]
    requests = 0  # inference requests sent, each of which should leave a prediction record
    try:
        wait_ready(inference_port)
        print(f"inference service: free mode, predictions sample {args.sample}, {args.seconds:g} s per cell and target "
              f"in alternating {args.slice:g} s slices after {args.warmup:g} s warm-up, "
              f"{os.cpu_count()} cores shared by client and servers; rates over the measured wall time")
        print(f"{'rows':>4} {'conc':>4} {'target':<9} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9} {'rows/s':>10}")
        for rows in (1, 64):
            payload = request_bytes(batches[rows], names)
            check = pb.ModelInferResponse.FromString(
                grpc.insecure_channel(f"127.0.0.1:{inference_port}").unary_unary(INFER)(payload))
            assert check.outputs[1].name == "probabilities", check
            requests += 1
            p50, p99, rate, row_rate = river_baseline(online.model, batches[rows], args.seconds)
            print(f"{rows:>4} {'1':>4} {'river':<9} {p50:>8.3f} {p99:>8.3f} {rate:>9.0f} {row_rate:>10.0f}")
            for concurrency in (1, 8, 64):
                figures = {}
                measured, elapsed, sent = asyncio.run(interleaved({"echo": echo_port, "inference": inference_port},
                                                                  payload, concurrency, args.seconds, args.slice,
                                                                  args.warmup))
                requests += sent["inference"]
                for target, latencies in measured.items():
                    figures[target] = summary(latencies, elapsed[target], rows)
                    p50, p99, rate, row_rate = figures[target]
                    print(f"{rows:>4} {concurrency:>4} {target:<9} {p50:>8.3f} {p99:>8.3f} {rate:>9.0f} {row_rate:>10.0f}")
                ratio = figures["inference"][1] / figures["echo"][1]
                goal = "goal <= 1.5" if rows == 1 else f"rows/s {figures['inference'][3]:.0f}, goal >= 10000"
                print(f"{'':>10}inference/echo p99 ratio {ratio:.2f} ({goal})")
    finally:
        for server in servers:
            server.send_signal(signal.SIGTERM)
        for server in servers:
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        predictions = env["STREAMLEDGER_INFERENCE_PREDICTIONS_TOPIC"]
        # The server has drained on SIGTERM: every record it accepted is on the topic by now.
        print(f"{asyncio.run(records_on(bootstrap, predictions))} prediction records on {predictions} "
              f"for {requests} inference requests (sample {args.sample:g})")
        asyncio.run(delete_topics(bootstrap, [topic, predictions]))


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

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        await admin.delete_topics(names)
    except KafkaError as exc:
        print(f"could not delete the bench topics {names}: {exc!r}", file=sys.stderr)
    finally:
        await admin.close()


if __name__ == "__main__":
    main()
