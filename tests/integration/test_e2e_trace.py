"""One event end to end on the real stack (issue 25): ingested over HTTP, cleaned, stored and
anchored, learned from by a model whose snapshots the learning service registers on the ledger,
served to a paying client (paid mode, mutual TLS, a client-signed receipt), settled; then
`streamledger audit trace` of that event names the model version that served and the hold that
paid for it, and `streamledger audit bill` of that hold verifies.

Every service is a real `streamledger serve NAME` child on topics, groups, a database and a
model id of this run; the client is an Org2 identity issued for this run. Kafka, FerretDB and
the two-organisation Fabric network are the shared stack's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from river import datasets
from tritonclient.utils import InferenceServerException

from devstack.demo import inference_tls
from devstack.fabric import FabricNetwork
from services.ingestion.auth import hash_key
from streamledger.client import PaidInferenceClient
from streamledger.ledger import LedgerClient
from tests.integration.conftest import identity
from tests.integration.paying import issue_identity
from tests.integration.pipeline.conftest import pipeline_env, services, wait_until  # noqa: F401 - fixtures
from tests.integration.test_ledger_seams import free_port

pytestmark = [pytest.mark.integration, pytest.mark.fabric, pytest.mark.timeout(240)]

CLI = str(Path(sys.executable).with_name("streamledger"))
TENANT = "e2e-trace"
EVENTS = 60
PRICE = 1


def models_file(folder: Path, model_id: str) -> Path:
    path = folder / "models.toml"
    path.write_text(f'''
[[model]]
id = "{model_id}"
task = "binary"
tenant = "{TENANT}"
source = "phishing"
metrics = ["Accuracy"]
pipeline = [
  {{ class = "preprocessing.StandardScaler" }},
  {{ class = "linear_model.LogisticRegression" }},
]
''')
    return path


def phishing_events(unique: str) -> list[dict[str, Any]]:
    rows = list(zip(range(EVENTS), datasets.Phishing(), strict=False))
    return [{"event_id": f"e2e-{unique}-{i}", "tenant": TENANT, "source": "phishing", "ts": int(time.time() * 1000),
             "features": {k: float(v) for k, v in x.items()}, "label": bool(y)} for i, (x, y) in rows]


def cli(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run([CLI, *args, "--json"], check=False, capture_output=True, text=True, timeout=90, env=env)
    try:
        return done.returncode, json.loads(done.stdout)
    except ValueError:
        raise AssertionError(f"not JSON (exit {done.returncode}): {done.stdout!r} {done.stderr[-2000:]}") from None


def paid_call(port: int, tls: Path, client_ledger, provider: str, model_id: str,
              rows: list[dict[str, float]]) -> tuple[str, int, Any]:
    """As a paying application would: wait for the model, freeze a hold, call once over mutual TLS,
    sign for the rows received. The hold id, the model version that answered, the receipt."""
    with PaidInferenceClient(f"127.0.0.1:{port}", msp_dir=client_ledger.fabric_msp_dir, msp_id="Org2MSP",
                             server_ca=tls / "ca.crt", ledger=client_ledger) as client:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(InferenceServerException):  # the server is still starting
                if client.triton.is_model_ready(model_id):
                    break
            assert time.monotonic() < deadline, f"inference never served {model_id}"
            time.sleep(0.5)
        names = [t.name for t in client.triton.get_model_metadata(model_id).inputs]
        hold = client.freeze(provider=provider, amount=100, price_per_unit=PRICE, expires_in=3600)
        inputs = []
        for name in names:
            tensor = triton.InferInput(name, [len(rows)], "FP64")
            tensor.set_data_from_numpy(np.array([float(r.get(name, 0.0)) for r in rows]))
            inputs.append(tensor)
        result = client.infer(model_id, inputs)
        return hold, int(result.get_response().model_version), client.receipt


async def test_an_events_trace_names_the_model_version_and_the_hold_that_paid_and_the_bill_verifies(
        network: FabricNetwork, bootstrap, mongo_db, pipeline_env, services, unique, tmp_path) -> None:  # noqa: F811
    started = time.monotonic()
    model_id = f"e2e-trace-{unique}"
    models = models_file(tmp_path, model_id)
    tls, paid = inference_tls()
    api_key, http_port, inference_port = f"key-{unique}", free_port(), free_port()
    raw, clean, usage = f"raw-{unique}", f"clean-{unique}", f"usage-{unique}"
    pipeline_env.update({
        "STREAMLEDGER_INGESTION_RAW_TOPIC": raw,
        "STREAMLEDGER_INGESTION_HTTP_PORT": str(http_port),
        "STREAMLEDGER_INGESTION_GRPC_PORT": str(free_port()),
        "STREAMLEDGER_INGESTION_API_KEYS": json.dumps({TENANT: [hash_key(api_key)]}),
        "STREAMLEDGER_LEDGER_ANCHOR_GROUP": f"anchoring-{unique}",
        "STREAMLEDGER_LEDGER_SETTLEMENT": "false",  # settled below, as the provider
        "STREAMLEDGER_LEARNING_MODELS_FILE": str(models),
        "STREAMLEDGER_LEARNING_INPUT_TOPICS": json.dumps([clean]),
        "STREAMLEDGER_LEARNING_GROUP_ID": f"learning-{unique}",
        "STREAMLEDGER_LEARNING_SNAPSHOT_TOPIC": pipeline_env["STREAMLEDGER_STORAGE_SNAPSHOTS_TOPIC"],
        "STREAMLEDGER_LEARNING_METRICS_TOPIC": f"metrics-{unique}",
        "STREAMLEDGER_LEARNING_DEADLETTER_TOPIC": pipeline_env["STREAMLEDGER_CLEANING_DEADLETTER_TOPIC"],
        "STREAMLEDGER_LEARNING_SNAPSHOT_EVERY_EVENTS": "20",
        "STREAMLEDGER_LEARNING_SNAPSHOT_EVERY_SECONDS": "1",
        **paid,
        "STREAMLEDGER_INFERENCE_PORT": str(inference_port),
        "STREAMLEDGER_INFERENCE_MODELS_FILE": str(models),
        "STREAMLEDGER_INFERENCE_SNAPSHOT_TOPIC": pipeline_env["STREAMLEDGER_STORAGE_SNAPSHOTS_TOPIC"],
        "STREAMLEDGER_INFERENCE_PREDICTIONS_TOPIC": pipeline_env["STREAMLEDGER_STORAGE_PREDICTIONS_TOPIC"],
        "STREAMLEDGER_INFERENCE_USAGE_TOPIC": usage,
    })
    assert pipeline_env["STREAMLEDGER_CLEANING_RAW_TOPIC"] == f"raw-{unique}" and \
        pipeline_env["STREAMLEDGER_CLEANING_CLEAN_TOPIC"] == clean
    storage, ledger, ingestion = services("storage"), services("ledger"), services("ingestion")
    for name in ("cleaning", "learning", "inference"):
        services(name)
    await storage.logged('"event": "started"')
    await ledger.logged('"event": "anchoring_started"')

    # The paying client: an Org2 identity issued for this run, with the client role and credit.
    client_ledger = issue_identity(network, "Org2", f"e2e-client-{unique}", tmp_path / "identities")
    async with LedgerClient.connect(client_ledger) as own:
        account = (await own.who_am_i())["Account"]
    async with LedgerClient.connect(identity("Admin", "Org2")) as org2_admin:
        await org2_admin.grant_role(account, "client")
    async with LedgerClient.connect(identity("Admin")) as org1_admin:
        await org1_admin.mint(account, 1000)
    provider = network.account_of("provider", "Org1")  # whom `inference` and `settlement` act for

    events = phishing_events(unique)
    async with httpx.AsyncClient(timeout=10) as http:
        async def ingesting() -> bool:
            assert ingestion.alive(), ingestion.tail()
            try:
                return (await http.get(f"http://127.0.0.1:{http_port}/healthz")).status_code == 200
            except httpx.HTTPError:
                return False
        await wait_until(ingesting, 60, "ingestion to answer", ingestion.tail)
        answer = await http.post(f"http://127.0.0.1:{http_port}/v1/events", json=events,
                                 headers={"Authorization": f"Bearer {api_key}"})
        assert answer.status_code == 200 and len(answer.json()["event_ids"]) == EVENTS, answer.text

    async def proven_and_learned() -> bool:
        return (await mongo_db["proofs"].count_documents({}) >= EVENTS
                and await mongo_db["models"].count_documents({"model_id": model_id}) >= 1)
    await wait_until(proven_and_learned, 90, "every event proven and a snapshot stored", ledger.tail)

    rows = [{k: float(v) for k, v in events[i]["features"].items()} for i in range(3)]
    hold, served_version, receipt = await asyncio.to_thread(paid_call, inference_port, tls, client_ledger,
                                                            provider, model_id, rows)
    assert served_version >= 1 and receipt.units == len(rows) * PRICE
    async with LedgerClient.connect(identity("settlement")) as settlement:
        settled = await settlement.settle(hold, receipt)
    settle_tx = settled.json()["tx_id"]

    env = {**pipeline_env, "STREAMLEDGER_AUDIT_RAW_TOPIC": raw, "STREAMLEDGER_AUDIT_USAGE_TOPIC": usage}
    traced = events[0]["event_id"]

    trace: dict[str, Any] = {}

    async def the_trace_names_the_hold() -> bool:  # the usage record is written just after the answer
        nonlocal trace
        code, trace = await asyncio.to_thread(cli, env, "audit", "trace", TENANT, traced, "--limit", "200")
        assert code in (0, 5), trace
        return any(h["hold_id"] == hold for h in trace.get("holds", []))
    await wait_until(the_trace_names_the_hold, 30, f"the trace of {traced} to name hold {hold}")

    assert trace["status"] == "VERIFIED", trace["detail"]
    links = {link["link"]: link for link in trace["links"]}
    assert links["ingested"]["verdict"] == "PRESENT" and links["ingested"]["evidence"]["topic"] == raw
    assert [links[k]["verdict"] for k in ("clean", "proof", "anchor")] == ["MATCH"] * 3
    assert links["transaction"]["verdict"] == "VALID"
    assert links["transaction"]["evidence"]["endorsers"] == ["Org1MSP", "Org2MSP"]  # the contract needs both
    assert links["transaction"]["evidence"]["block_number"] > 0
    versions = {m["version"]: m for m in trace["models"] if m["model_id"] == model_id}
    assert served_version in versions, trace["models"]
    served = versions[served_version]
    assert served["status"] == "MATCH" and served["registered_sha256"] == served["snapshot_sha256"]
    assert served["predictions"] == 1 and served["holds"] == [hold]
    [paying] = [h for h in trace["holds"] if h["hold_id"] == hold]
    assert (paying["status"], paying["charged"], paying["units"], paying["close_tx_id"]) == \
        ("SETTLED", len(rows) * PRICE, len(rows), settle_tx)

    code, bill = await asyncio.to_thread(cli, env, "audit", "bill", hold)
    assert (code, bill["status"]) == (0, "VERIFIED"), bill
    assert [(m["model_id"], m["version"], m["status"]) for m in bill["models"]] == [(model_id, served_version, "MATCH")]
    assert bill["settlement"]["tx_id"] == settle_tx
    print(f"ingest -> learn -> paid call -> settle -> trace and bill in {time.monotonic() - started:.0f} s")
