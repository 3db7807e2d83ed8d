"""The records a served request leaves behind, built from the pieces the servicer hands over.

    pieces = (request_id, model_id, model_version, client, rows, outputs, requested, parameters, latency, ts_ms)
    key, record = RECORDS["Prediction"](pieces)          # topic predictions, key request_id
    key, record = RECORDS["UsageRecord"](usage_pieces)   # topic usage, key hold_id

The servicer only gathers these tuples (plain values, cheap to pickle); the record writer
process (`record_writer.py`) builds and encodes the records from them. Pure functions: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from services.inference.settings import InferenceSettings
from services.inference.tensors import Output, output_values

PREDICTION, USAGE = "Prediction", "UsageRecord"
"""Kinds of record: the Avro schema names."""

PredictionPieces = tuple[str, str, int, "str | None", list[dict[str, Any]], Sequence[Output], Sequence[str],
                         dict[str, str], float, int]
"""request id, model id, model version, client, rows, every output, the outputs requested, the
response parameters, latency in seconds, timestamp in ms."""
UsagePieces = tuple[str, str, str, str, int, int, int, int, int, str, int]
"""hold id, request id, client, model id, model version, units, price (the hold's), the receipt the
server had accepted (units, sequence, signature; 0, 0, "" before the first), timestamp in ms."""

_USAGE_FIELDS = ("hold_id", "request_id", "client", "model_id", "model_version", "units", "price",
                 "receipt_units", "receipt_sequence", "receipt_signature", "ts")


def prediction_record(pieces: PredictionPieces) -> tuple[str, dict[str, Any]]:
    """The key and Prediction record of one served request."""
    request_id, model_id, version, client, rows, outputs, requested, parameters, latency, ts = pieces
    answer = {o.name: output_values(o) for o in outputs if o.name in requested}
    for key, value in parameters.items():
        answer[key] = _parameter_value(value)
    return request_id, {
        "request_id": request_id, "model_id": model_id, "model_version": version, "client": client,
        "inputs": json.dumps(rows), "latency_ms": latency * 1000, "ts": ts, "outputs": json.dumps(answer),
    }


def usage_record(pieces: UsagePieces) -> tuple[str, dict[str, Any]]:
    """The key (the hold) and UsageRecord of one paid request."""
    return pieces[0], dict(zip(_USAGE_FIELDS, pieces))


RECORDS: dict[str, Callable[[Any], tuple[str, dict[str, Any]]]] = {PREDICTION: prediction_record,
                                                                   USAGE: usage_record}


def record_topics(settings: InferenceSettings) -> dict[str, str]:
    """Where each kind of record goes; usage records only in paid mode."""
    topics = {PREDICTION: settings.inference_predictions_topic}
    if settings.inference_mode == "paid":
        topics[USAGE] = settings.inference_usage_topic
    return topics


_PARAMETER_VALUES: dict[str, Any] = {}


def _parameter_value(text: str) -> Any:
    # Parameters are JSON, and the same few ("classes") come back with every answer: parse each once.
    value = _PARAMETER_VALUES.get(text)
    if value is None:
        value = json.loads(text)
        if len(_PARAMETER_VALUES) < 1024:
            _PARAMETER_VALUES[text] = value
    return value
