"""Ingestion with its TLS settings, on real servers and the real Kafka: https and gRPC over TLS
are served with a throwaway self-signed certificate, plaintext is refused on both ports."""

from __future__ import annotations

import ssl
import uuid
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest

from services.ingestion.app import IngestionService
from streamledger.protos import load
from tests.integration.ingest.conftest import KEYS, decoded_events, ingestion_settings
from tests.tls_certs import self_signed

pytestmark = pytest.mark.integration
pb2, pb2_grpc = load("ingest.proto")
ACME = {"Authorization": f"Bearer {KEYS['acme']}"}


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple:
    return self_signed(tmp_path_factory.mktemp("ingestion-tls"))


@pytest.fixture(scope="module")
async def tls_service(stack, certificate) -> AsyncIterator[IngestionService]:
    cert, key = certificate
    settings = ingestion_settings(f"test.ingest.tls.{uuid.uuid4().hex[:10]}", tls_cert=cert, tls_key=key)
    async with IngestionService(settings) as running:
        yield running


def event(event_id: str) -> dict:
    return {"event_id": event_id, "source": "pos", "ts": 1_700_000_000_000, "features": {"amount": 1.5}}


async def test_https_with_the_ca_is_served_and_lands_in_kafka(tls_service, certificate, bootstrap) -> None:
    sent = f"tls-{uuid.uuid4().hex}"
    verify = ssl.create_default_context(cafile=str(certificate[0]))
    async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{tls_service.http_port}", verify=verify,
                                 timeout=30) as https:
        assert (await https.get("/healthz")).status_code == 200
        answer = await https.post("/v1/events", json=[event(sent)], headers=ACME)
    assert answer.status_code == 200 and answer.json()["accepted"] == 1
    landed = await decoded_events(bootstrap, tls_service.settings.ingestion_raw_topic, {sent})
    assert landed[sent]["tenant"] == "acme"


async def test_plain_http_is_refused(tls_service) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{tls_service.http_port}", timeout=10) as http:
        with pytest.raises(httpx.TransportError):
            await http.post("/v1/events", json=[event(f"plain-{uuid.uuid4().hex}")], headers=ACME)


async def test_https_without_trusting_the_ca_is_refused(tls_service) -> None:
    async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{tls_service.http_port}", timeout=10) as https:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await https.get("/healthz")


async def _one_frame(event_id: str):
    yield pb2.IngestRequest(events=[pb2.Event(event_id=event_id, source="pos", ts_millis=1_700_000_000_000,
                                              features={"amount": pb2.Value(number=2.5)})])


async def test_grpc_over_tls_with_the_ca_is_served_and_lands(tls_service, certificate, bootstrap) -> None:
    sent = f"tls-grpc-{uuid.uuid4().hex}"
    credentials = grpc.ssl_channel_credentials(root_certificates=certificate[0].read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{tls_service.grpc_port}", credentials) as channel:
        answer = await pb2_grpc.IngestionStub(channel).Ingest(_one_frame(sent), metadata=[("x-api-key", KEYS["acme"])],
                                                             timeout=30)
    assert answer.accepted == 1 and list(answer.event_ids) == [sent]
    assert set(await decoded_events(bootstrap, tls_service.settings.ingestion_raw_topic, {sent})) == {sent}


async def test_an_insecure_grpc_channel_is_refused(tls_service) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tls_service.grpc_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pb2_grpc.IngestionStub(channel).Ingest(_one_frame(f"plain-{uuid.uuid4().hex}"),
                                                         metadata=[("x-api-key", KEYS["acme"])], timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
