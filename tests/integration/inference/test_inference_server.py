"""The inference server on the real Kafka, called by Triton's own gRPC client (tritonclient).

Models are trained in the test with the learning package's `OnlineModel`, sealed with its
`seal` and published as ModelSnapshots to a unique topic; the server (app.run in a thread)
follows that topic. Answers are compared with the same River model called in-process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from aiokafka import AIOKafkaConsumer
from tritonclient.utils import InferenceServerException

from services.inference.protocol import SERVICE
from services.inference.settings import InferenceSettings
from streamledger import kafka
from streamledger.child import ChildDied

from .support import (  # noqa: F401
    PHISHING,
    TRUMP,
    ServerThread,
    codec,
    models_file,
    publish,
    snapshot_record,
    train,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def trained(models_file):  # noqa: F811
    return {
        "logreg_v1": train(models_file, "phishing-logreg", PHISHING[:400]),
        "logreg_v2": train(models_file, "phishing-logreg", PHISHING),
        "linreg_v1": train(models_file, "trump-linreg", TRUMP),
    }


def server_settings(bootstrap, unique, models_file, trained):  # noqa: F811
    topics = {"snapshots": f"test.snapshots.{unique}", "predictions": f"test.predictions.{unique}"}
    publish(bootstrap, topics["snapshots"], [
        snapshot_record("phishing-logreg", 1, trained["logreg_v1"]),
        snapshot_record("trump-linreg", 1, trained["linreg_v1"]),
    ])
    settings = InferenceSettings(
        kafka_bootstrap=bootstrap, inference_port=0, inference_models_file=models_file,
        inference_snapshot_topic=topics["snapshots"], inference_predictions_topic=topics["predictions"],
        inference_max_request_bytes=4 * 1024 * 1024, inference_mode="free",
    )
    return settings, topics


@pytest.fixture
def server(stack, bootstrap, unique, models_file, trained):  # noqa: F811
    settings, topics = server_settings(bootstrap, unique, models_file, trained)
    running = ServerThread.of(settings).start()
    running.topics = topics
    client = triton.InferenceServerClient(running.url)
    wait_for(lambda: client.is_server_ready(), "server ready")
    running.client = client
    yield running
    client.close()
    running.stop()


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def inputs_for(rows: list[dict], names: list[str]) -> list[triton.InferInput]:
    tensors = []
    for name in names:
        tensor = triton.InferInput(name, [len(rows)], "FP64")
        tensor.set_data_from_numpy(np.array([r[name] for r in rows], dtype=np.float64))
        tensors.append(tensor)
    return tensors


def test_every_rpc_and_river_parity(server, trained):
    client = server.client
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("phishing-logreg")
    assert client.is_model_ready("phishing-logreg", "1")
    assert not client.is_model_ready("phishing-logreg", "9")
    assert not client.is_model_ready("no-such-model")
    assert client.get_server_metadata().name == "streamledger-inference"

    metadata = client.get_model_metadata("phishing-logreg")
    names = sorted(PHISHING[0][0])
    assert [i.name for i in metadata.inputs] == names
    assert {i.datatype for i in metadata.inputs} == {"FP64"}
    assert [(o.name, o.datatype) for o in metadata.outputs] == [("label", "BYTES"), ("probabilities", "FP64")]
    assert list(metadata.versions) == ["1"]

    # A client sends one tensor per feature; the server forms rows in the metadata's (sorted) order.
    rows = [{k: x[k] for k in names} for x, _ in PHISHING[1000:1064]]
    result = client.infer("phishing-logreg", inputs_for(rows, names), request_id="parity-1")
    response = result.get_response()
    assert response.model_version == "1" and response.id == "parity-1"
    classes = json.loads(response.parameters["classes"].string_param)
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (64, len(classes))
    river = trained["logreg_v1"].model
    expected = np.array([[river.predict_proba_one(x).get(c, 0.0) for c in (False, True)] for x in rows])
    assert classes == ["False", "True"]
    np.testing.assert_array_equal(probabilities, expected)  # same bytes, not just close
    labels = [str(river.predict_one(x)).encode() for x in rows]
    assert list(result.as_numpy("label")) == labels

    trump_names = sorted(TRUMP[0][0])
    trump_rows = [{k: x[k] for k in trump_names} for x, _ in TRUMP[:10]]
    result = client.infer("trump-linreg", inputs_for(trump_rows, trump_names),
                          outputs=[triton.InferRequestedOutput("value")])
    expected = [trained["linreg_v1"].model.predict_one(x) for x in trump_rows]
    np.testing.assert_array_equal(result.as_numpy("value"), np.array(expected))


def test_hot_swap_under_load_fails_no_request(server, trained, bootstrap):
    client_url = server.url
    names = sorted(PHISHING[0][0])
    rows = [{k: x[k] for k in names} for x, _ in PHISHING[1100:1108]]
    seen: list[tuple[str, np.ndarray]] = []
    failures: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        try:
            client = triton.InferenceServerClient(client_url)
            try:
                while not stop.is_set():
                    result = client.infer("phishing-logreg", inputs_for(rows, names))
                    seen.append((result.get_response().model_version, result.as_numpy("probabilities")))
            finally:
                client.close()
        except BaseException as exc:  # whatever its type, a failed call fails the test
            failures.append(f"{type(exc).__name__}: {exc}")

    def served(count: int) -> bool:
        assert failures == [], failures  # stop waiting at the first failure
        return len(seen) >= count

    clients = [threading.Thread(target=loop) for _ in range(4)]
    for thread in clients:
        thread.start()
    try:
        wait_for(lambda: served(50), "load before the swap")
        publish(bootstrap, server.topics["snapshots"], [snapshot_record("phishing-logreg", 2, trained["logreg_v2"])])
        wait_for(lambda: served(1) and any(v == "2" for v, _ in seen[-20:]), "requests served by version 2")
        after = len(seen)
        wait_for(lambda: served(after + 50), "load after the swap")
    finally:
        stop.set()
        for thread in clients:
            thread.join(30)

    assert failures == []
    assert not any(thread.is_alive() for thread in clients)
    versions = [v for v, _ in seen]
    first_new = versions.index("2")
    assert set(versions[:first_new]) == {"1"}
    assert set(versions[first_new + 20:]) == {"2"}  # a few concurrent stragglers may finish on v1
    expected = {version: np.array([[model.predict_proba_one(x)[c] for c in (False, True)] for x in rows])
                for version, model in (("1", trained["logreg_v1"].model), ("2", trained["logreg_v2"].model))}
    assert not np.array_equal(expected["1"], expected["2"]), "the two versions must answer differently"
    for index, (version, probabilities) in enumerate(seen):  # every answer is exactly its version's
        np.testing.assert_array_equal(probabilities, expected[version], err_msg=f"response {index} (v{version})")
    print(f"hot swap: {len(seen)} requests, 0 failed, {first_new} on v1 before the first v2 answer")
    # The old version stays pinnable.
    client = server.client
    assert client.infer("phishing-logreg", inputs_for(rows, names), model_version="1").get_response().model_version == "1"
    assert list(client.get_model_metadata("phishing-logreg").versions) == ["1", "2"]


def test_predictions_land_on_the_predictions_topic(server, bootstrap):
    names = sorted(PHISHING[0][0])
    rows = [{k: x[k] for k in names} for x, _ in PHISHING[:3]]
    ids = [f"req-{i}" for i in range(5)]
    for request_id in ids:
        server.client.infer("phishing-logreg", inputs_for(rows, names), request_id=request_id)

    async def read() -> dict[str, dict]:
        consumer = AIOKafkaConsumer(server.topics["predictions"], bootstrap_servers=bootstrap, **kafka.connection(),
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        found: dict[str, dict] = {}
        try:
            async with asyncio.timeout(30):
                while not set(ids) <= set(found):
                    for messages in (await consumer.getmany(timeout_ms=500)).values():
                        for m in messages:
                            record = codec.decode(m.value, reader="Prediction")
                            found[m.key.decode()] = record
        finally:
            await consumer.stop()
        return found

    found = asyncio.run(read())
    record = found["req-3"]
    assert record["model_id"] == "phishing-logreg" and record["model_version"] == 1
    assert json.loads(record["inputs"]) == rows
    outputs = json.loads(record["outputs"])
    assert outputs["classes"] == ["False", "True"] and len(outputs["probabilities"]) == 3
    assert record["latency_ms"] > 0


def record_writers() -> list[int]:
    """Pids of the record writer processes this test process started (through its servers)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if parent == os.getpid() and b"services.inference.record_writer" in command:
            pids.append(int(stat.parent.name))
    return pids


def test_a_dead_record_writer_stops_the_server_with_an_error(stack, bootstrap, unique, models_file, trained):  # noqa: F811
    settings, _ = server_settings(bootstrap, unique, models_file, trained)
    events: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: events.append(record.getMessage())
    logging.getLogger("streamledger.inference").addHandler(handler)
    running = ServerThread.of(settings).start()
    try:
        client = triton.InferenceServerClient(running.url)
        wait_for(lambda: client.is_server_ready(), "server ready")
        names = sorted(PHISHING[0][0])
        client.infer("phishing-logreg", inputs_for([{k: PHISHING[0][0][k] for k in names}], names))
        (writer,) = record_writers()
        os.kill(writer, signal.SIGKILL)
        wait_for(lambda: not running._thread.is_alive(), "the server to stop")
        client.close()
    finally:
        logging.getLogger("streamledger.inference").removeHandler(handler)
    with pytest.raises(ChildDied, match=r"record writer process exited \(exit code -9\)"):
        running.stop()
    assert "record_writer_died" in events


def expect_error(call, code: str, *fragments: str) -> str:
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert caught.value.status() == f"StatusCode.{code}", caught.value
    for fragment in fragments:
        assert fragment in caught.value.message(), caught.value.message()
    return caught.value.message()


def test_bad_inputs_get_clear_errors_and_the_server_keeps_serving(server):
    client = server.client
    names = sorted(PHISHING[0][0])
    rows = [x for x, _ in PHISHING[:4]]
    good = inputs_for(rows, names)

    wrong_dtype = inputs_for(rows, names)
    wrong_dtype[2] = triton.InferInput(names[2], [4], "FP32")
    wrong_dtype[2].set_data_from_numpy(np.zeros(4, dtype=np.float32))
    expect_error(lambda: client.infer("phishing-logreg", wrong_dtype), "INVALID_ARGUMENT", repr(names[2]), "FP32", "FP64")

    wrong_shape = inputs_for(rows, names)
    wrong_shape[0] = triton.InferInput(names[0], [2, 2], "FP64")
    wrong_shape[0].set_data_from_numpy(np.zeros((2, 2)))
    expect_error(lambda: client.infer("phishing-logreg", wrong_shape), "INVALID_ARGUMENT", repr(names[0]), "shape")

    expect_error(lambda: client.infer("phishing-logreg", good[1:]), "INVALID_ARGUMENT", repr(names[0]), "missing")

    unknown = inputs_for(rows, names) + inputs_for([{"bogus": 1.0}] * 4, ["bogus"])
    expect_error(lambda: client.infer("phishing-logreg", unknown), "INVALID_ARGUMENT", "'bogus'", "not an input")

    empty = inputs_for([], names)
    expect_error(lambda: client.infer("phishing-logreg", empty), "INVALID_ARGUMENT", "empty batch")

    expect_error(lambda: client.infer("phishing-logreg", good, outputs=[triton.InferRequestedOutput("nope")]),
                 "INVALID_ARGUMENT", "'nope'")
    expect_error(lambda: client.infer("no-such-model", good), "NOT_FOUND", "'no-such-model'")
    expect_error(lambda: client.infer("phishing-logreg", good, model_version="42"), "NOT_FOUND", "version 42")
    expect_error(lambda: client.get_model_metadata("no-such-model"), "NOT_FOUND", "'no-such-model'")

    # The same layout as a served request (then read from its bytes), with a NaN in it.
    client.infer("phishing-logreg", good)
    not_finite = inputs_for(rows, names)
    not_finite[1].set_data_from_numpy(np.array([1.0, 2.0, float("nan"), 4.0]))
    expect_error(lambda: client.infer("phishing-logreg", not_finite), "INVALID_ARGUMENT", repr(names[1]), "row 2",
                 "not a finite number")
    with grpc.insecure_channel(server.url) as channel:
        garbage = channel.unary_unary(f"/{SERVICE}/ModelInfer")
        with pytest.raises(grpc.RpcError) as caught:
            garbage(b"\x2a\xff\xff", timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a ModelInferRequest" in caught.value.details(), caught.value.details()

    huge = triton.InferInput(names[0], [100 * 1024 * 1024 // 8], "FP64")
    huge.set_data_from_numpy(np.zeros(100 * 1024 * 1024 // 8))
    expect_error(lambda: client.infer("phishing-logreg", [huge] + good[1:]), "RESOURCE_EXHAUSTED")

    assert client.infer("phishing-logreg", good).as_numpy("probabilities").shape == (4, 2)


def test_streamledger_serve_inference_starts_serves_and_stops_cleanly(stack, bootstrap, unique, models_file, trained):  # noqa: F811
    import os
    import signal
    import socket
    import subprocess
    from pathlib import Path

    topic = f"test.snapshots.{unique}"
    publish(bootstrap, topic, [snapshot_record("trump-linreg", 4, trained["linreg_v1"])])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = Path(__file__).resolve().parents[3]
    env = {**os.environ, "STREAMLEDGER_KAFKA_BOOTSTRAP": bootstrap, "STREAMLEDGER_INFERENCE_PORT": str(port),
           "STREAMLEDGER_INFERENCE_MODELS_FILE": str(models_file), "STREAMLEDGER_INFERENCE_SNAPSHOT_TOPIC": topic,
           "STREAMLEDGER_INFERENCE_PREDICTIONS_TOPIC": f"test.predictions.{unique}", "STREAMLEDGER_INFERENCE_MODE": "free"}
    process = subprocess.Popen([str(repo / ".venv/bin/streamledger"), "serve", "inference"], env=env, cwd=repo,
                               stderr=subprocess.PIPE, text=True)
    try:
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")

        def ready() -> bool:
            try:
                return client.is_model_ready("trump-linreg")
            except InferenceServerException:
                return False
        wait_for(ready, "the subprocess to serve trump-linreg", timeout=60)
        names = sorted(TRUMP[0][0])
        result = client.infer("trump-linreg", inputs_for([{k: x[k] for k in names} for x, _ in TRUMP[:2]], names))
        assert result.get_response().model_version == "4"
        assert not client.is_model_ready("phishing-logreg")  # declared, no snapshot yet
        expect_error(lambda: client.infer("phishing-logreg", []), "UNAVAILABLE", "no verified snapshot yet")
        client.close()
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr[-2000:]
    assert '"event": "inference_stopped"' in stderr
