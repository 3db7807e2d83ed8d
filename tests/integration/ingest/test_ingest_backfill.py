"""`streamledger ingest FILE` against the real Kafka: exact counts, stable ids, all three formats."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.ingestion.auth import hash_key
from tests.integration.ingest.conftest import CODEC, KEYS, read_topic

pytestmark = pytest.mark.integration
ROWS = 100_000


def run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = os.environ | {
        "STREAMLEDGER_INGESTION_API_KEYS": json.dumps({tenant: [hash_key(key)] for tenant, key in KEYS.items()}),
        "STREAMLEDGER_API_KEY": KEYS["acme"],
        "COLUMNS": "200",
    }
    return subprocess.run([sys.executable, "-m", "services.cli", "ingest", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=Path(__file__).resolve().parents[3])


def write_csv(path: Path, rows: int) -> None:
    rng = random.Random(7)
    with path.open("w") as f:
        f.write("ts,amount,merchant,card_present,fraud\n")
        for i in range(rows):
            f.write(f"{1_600_000_000_000 + i * 1000},{rng.uniform(1, 500):.2f},m{i % 97},"
                    f"{'true' if i % 3 else 'false'},{'true' if i % 50 == 0 else 'false'}\n")


async def test_100k_row_csv_lands_exactly_once_and_a_rerun_adds_no_new_ids(tmp_path, bootstrap, unique) -> None:
    topic = f"test.backfill.{unique}"
    path = tmp_path / "history.csv"
    write_csv(path, ROWS)

    first = run_cli(str(path), "--label-column", "fraud", "--source", "card-history", "--topic", topic)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"{ROWS:,} accepted" in first.stdout and "0 rejected" in first.stdout

    records = await read_topic(bootstrap, topic, timeout=120)
    assert len(records) == ROWS
    ids = {r.key for r in records}
    assert len(ids) == ROWS

    sample = CODEC.decode(records[0].value)
    assert sample["tenant"] == "acme" and sample["source"] == "card-history"
    assert set(sample["features"]) == {"amount", "merchant", "card_present"}
    assert isinstance(sample["features"]["amount"], float) and isinstance(sample["features"]["card_present"], bool)
    assert isinstance(sample["label"], bool)

    again = run_cli(str(path), "--label-column", "fraud", "--source", "card-history", "--topic", topic)
    assert again.returncode == 0, again.stdout + again.stderr
    rerun = await read_topic(bootstrap, topic, timeout=120)
    assert len(rerun) == 2 * ROWS  # Kafka keeps both deliveries ...
    assert {r.key for r in rerun} == ids  # ... of the same ids, so idempotent consumers add nothing


async def test_jsonl_with_id_column_and_bad_lines_reports_each_rejected_row(tmp_path, bootstrap, unique) -> None:
    topic = f"test.backfill.{unique}"
    path = tmp_path / "events.jsonl"
    lines = [
        json.dumps({"id": "j1", "ts": "2024-05-01T10:00:00Z", "x": 1.5, "tag": "a", "y": True}),
        "{not json",
        json.dumps({"id": "j3", "ts": 1_700_000_000_000, "x": [1, 2]}),
        json.dumps({"id": "j4", "ts": 1_700_000_000_000, "features": {"x": 2.0}, "y": "k"}),
        '{"id": "j5", "ts": 1700000000000, "x": NaN}',
        json.dumps({"id": "j6", "ts": 1_700_000_000_000, "tenant": "globex"}),
        json.dumps({"ts": 1_700_000_000_000, "x": 1}),
    ]
    path.write_text("\n".join(lines) + "\n")
    result = run_cli(str(path), "--id-column", "id", "--label-column", "y", "--topic", topic)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "7 rows read, 2 accepted" in result.stdout and "5 rejected" in result.stdout
    for column in ("features.x", "tenant", "event_id"):
        assert column in result.stdout

    landed = {CODEC.decode(r.value)["event_id"]: CODEC.decode(r.value) for r in await read_topic(bootstrap, topic)}
    assert set(landed) == {"j1", "j4"}
    assert landed["j1"]["features"] == {"x": 1.5, "tag": "a"} and landed["j1"]["label"] is True
    assert landed["j4"]["features"] == {"x": 2.0} and landed["j4"]["label"] == "k"


async def test_parquet_with_timestamps_and_stable_derived_ids(tmp_path, bootstrap, unique) -> None:
    topic = f"test.backfill.{unique}"
    path = tmp_path / "history.parquet"
    table = pa.table({
        "ts": pa.array([1_700_000_000_000 + i for i in range(1000)], pa.timestamp("ms", tz="UTC")),
        "amount": pa.array([float(i) for i in range(1000)]),
        "kind": pa.array(["a", "b"] * 500),
        "count": pa.array(list(range(1000)), pa.int32()),
    })
    pq.write_table(table, path)
    first = run_cli(str(path), "--topic", topic)
    assert first.returncode == 0, first.stdout + first.stderr
    again = run_cli(str(path), "--topic", topic)
    assert again.returncode == 0
    records = await read_topic(bootstrap, topic)
    assert len(records) == 2000 and len({r.key for r in records}) == 1000
    decoded = CODEC.decode(records[0].value)
    assert decoded["features"].keys() == {"amount", "kind", "count"} and decoded["source"] == "history.parquet"


def test_wrong_key_missing_column_and_unknown_format_fail_before_writing(tmp_path) -> None:
    path = tmp_path / "x.csv"
    write_csv(path, 3)
    env_key = run_cli(str(path), "--api-key", "not-a-key")
    assert env_key.returncode == 2 and "unknown API key" in env_key.stdout
    other_tenant = run_cli(str(path), "--tenant", "globex")
    assert other_tenant.returncode == 2 and "does not match" in other_tenant.stdout
    missing = run_cli(str(path), "--ts-column", "when")
    assert missing.returncode == 2 and "no column 'when'" in missing.stdout
    odd = tmp_path / "x.xlsx"
    odd.write_bytes(b"PK")
    assert run_cli(str(odd)).returncode == 2
