"""End to end: RawEvents -> `streamledger serve cleaning` -> events.clean -> learning, on one partition.

The cleaning service keeps valid doubles bit for bit, so the learner's final metrics on
River's Phishing dataset must still equal `progressive_val_score` to the last digit.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from river import datasets

from streamledger import kafka
from streamledger.declarations import load_declarations
from tests.integration.test_learning_service import (  # noqa: F401  (bootstrap is a fixture)
    MODELS,
    REPO,
    Service,
    bootstrap,
    codec,
    final_snapshots,
    latest,
    produce,
    read_all,
    river_reference,
    settings_for,
)

pytestmark = pytest.mark.integration


def raw_events() -> list[tuple[str, bytes]]:
    records = [
        {"event_id": f"phishing-{i}", "tenant": "acme", "source": "phishing", "ts": 1_700_000_000_000 + i,
         "features": {k: float(v) for k, v in x.items()}, "label": y}
        for i, (x, y) in enumerate(datasets.Phishing())
    ]
    return [(r["event_id"], v) for r, v in zip(records, codec.encode_many("RawEvent", records))]


async def test_raw_events_through_cleaning_and_learning_match_river(bootstrap, unique, tmp_path: Path):
    models = tmp_path / "models.toml"
    models.write_text(MODELS)
    names = {"input": f"clean-{unique}", "snapshots": f"snapshots-{unique}", "metrics": f"metrics-{unique}",
             "deadletter": f"deadletter-{unique}", "group": f"learning-{unique}", "models": models}
    raw_topic = f"raw-{unique}"
    await produce(bootstrap, raw_topic, raw_events())

    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEDGER_")}
    env.update(kafka.child_environment())
    env.update(STREAMLEDGER_KAFKA_BOOTSTRAP=bootstrap, STREAMLEDGER_CLEANING_RAW_TOPIC=raw_topic,
               STREAMLEDGER_CLEANING_CLEAN_TOPIC=names["input"],
               STREAMLEDGER_CLEANING_DEADLETTER_TOPIC=names["deadletter"],
               STREAMLEDGER_CLEANING_GROUP=f"cleaning-{unique}")
    log = tmp_path / "cleaning.log"
    with open(log, "wb") as out:
        cleaning = subprocess.Popen([str(REPO / ".venv/bin/streamledger"), "serve", "cleaning"], env=env, cwd=REPO,
                                    stdout=out, stderr=subprocess.STDOUT)
    service = Service(settings_for(bootstrap, names))
    try:
        snapshots = await read_all(bootstrap, names["snapshots"], "ModelSnapshot",
                                   final_snapshots(1250, names["snapshots"], ["phishing-logreg", "phishing-hat"]),
                                   timeout_s=120)
    finally:
        await service.close()
        cleaning.send_signal(signal.SIGTERM)
        try:
            cleaning.wait(30)
        except subprocess.TimeoutExpired:
            cleaning.kill()
            cleaning.wait(10)

    final = latest(snapshots)
    declarations = {d.model_id: d for d in load_declarations(models)}
    for model_id in ("phishing-logreg", "phishing-hat"):
        assert final[model_id]["events_seen"] == 1250, log.read_text()[-2000:]
        assert final[model_id]["metrics"] == river_reference(declarations[model_id], datasets.Phishing()), model_id
