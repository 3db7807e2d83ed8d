"""The serving path's fast pieces: requests read from their wire bytes (`split_head`, `RowReader.known`)
match the protobuf path, and the lock-free request metrics scrape as Prometheus families."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from services.inference.protocol import pb
from services.inference.tensors import (
    InvalidInput,
    RowReader,
    rows_from_request,
    split_head,
)

FEATURES = tuple((f"f{i}", "FP64") for i in range(5))


def raw_request(rows: int, names: list[str], values=None, **fields) -> pb.ModelInferRequest:
    outputs = fields.pop("outputs", ())
    parameters = fields.pop("parameters", {})
    request = pb.ModelInferRequest(model_name="m", **fields)
    for key, value in parameters.items():
        request.parameters[key].string_param = value
    for index, name in enumerate(names):
        request.inputs.add(name=name, datatype="FP64", shape=[rows] if index % 2 else [rows, 1])
        column = values[index] if values is not None else [random.uniform(-9, 9) for _ in range(rows)]
        request.raw_input_contents.append(np.array(column, dtype="<f8").tobytes())
    for name in outputs:
        request.outputs.add(name=name)
    return request


def learned(reader: RowReader, request: pb.ModelInferRequest) -> None:
    data = request.SerializeToString()
    reader.rows(pb.ModelInferRequest.FromString(data), split_head(data).rest)


@pytest.mark.parametrize("rows", [1, 2, 15, 16, 17, 300])  # 16 rows: the raw fields' size takes two bytes
@pytest.mark.parametrize("fields", [{}, {"id": "req-7", "model_version": "3"}, {"outputs": ["label"]},
                                    {"parameters": {"priority": "1"}, "id": "é" * 20}])
def test_a_known_layout_reads_the_same_rows_as_protobuf(rows, fields):
    random.seed(rows)
    names = [n for n, _ in FEATURES]
    random.shuffle(names)  # the request's order is not the model's
    reader = RowReader(FEATURES)
    first = raw_request(rows, names, **fields)
    head = split_head(first.SerializeToString())
    assert reader.known(head.rest) is None  # nothing learned yet
    learned(reader, first)
    for _ in range(3):
        request = raw_request(rows, names, **fields)
        head = split_head(request.SerializeToString())
        assert (head.model_name, head.model_version, head.id) == (request.model_name, request.model_version, request.id)
        rows_read, requested = reader.known(head.rest)
        expected = rows_from_request(request, FEATURES)
        assert rows_read == expected and [list(r) for r in rows_read] == [list(r) for r in expected]
        assert requested == list(fields.get("outputs", []))


def test_other_tails_and_layouts_are_not_known():
    reader = RowReader(FEATURES)
    names = [n for n, _ in FEATURES]
    learned(reader, raw_request(2, names))
    rest = split_head(raw_request(2, names).SerializeToString()).rest
    assert reader.known(rest) is not None
    assert reader.known(rest[:-1]) is None and reader.known(rest + b"\0") is None
    # Same total size, other split between the columns: 8 and 24 bytes instead of 16 and 16.
    uneven = raw_request(2, names)
    uneven.raw_input_contents[0] = b"\0" * 8
    uneven.raw_input_contents[1] = b"\0" * 24
    assert reader.known(split_head(uneven.SerializeToString()).rest) is None
    with pytest.raises(InvalidInput, match="'f0': 8 raw bytes for 2 FP64 values"):
        rows_from_request(uneven, FEATURES)
    # Another shape, other datatypes, typed contents: each is read (and checked) in full.
    assert reader.known(split_head(raw_request(3, names).SerializeToString()).rest) is None
    typed = pb.ModelInferRequest(model_name="m")
    for name in names:
        typed.inputs.add(name=name, datatype="FP64", shape=[2]).contents.fp64_contents.extend([1.0, 2.0])
    learned(reader, typed)
    assert reader.known(split_head(typed.SerializeToString()).rest) is None


def test_a_known_layout_still_names_a_tensor_that_is_not_finite():
    reader = RowReader(FEATURES)
    names = [n for n, _ in FEATURES]
    learned(reader, raw_request(3, names))
    values = [[1.0, 2.0, 3.0] for _ in names]
    values[3][2] = math.inf
    request = raw_request(3, names, values)
    with pytest.raises(InvalidInput) as known:
        reader.known(split_head(request.SerializeToString()).rest)
    with pytest.raises(InvalidInput) as general:
        rows_from_request(request, FEATURES)
    assert str(known.value) == str(general.value) == "input 'f3' row 2: inf is not a finite number"


def test_a_prefix_that_sets_a_head_field_again_is_not_kept():
    # Protobuf keeps the last model_name it reads: a layout whose inputs are followed by a
    # second model_name must never be read with the head's.
    reader = RowReader(FEATURES)
    names = [n for n, _ in FEATURES]
    request = raw_request(1, names)
    inputs = b"".join(b"\x2a" + bytes((len(t),)) + t for t in (i.SerializeToString() for i in request.inputs))
    raw = b"".join(b"\x3a\x08" + r for r in request.raw_input_contents)
    for later in (b"\x0a\x01x", b"\x0a\x00"):
        data = b"\x0a\x01m" + inputs + later + raw
        parsed = pb.ModelInferRequest.FromString(data)
        reader.rows(parsed, split_head(data).rest)
        assert reader.known(split_head(data).rest) is None


@pytest.mark.parametrize("data", [
    b"\x0a\x05ab",                  # truncated model_name
    b"\x0a\x80\x01" + b"m" * 128,  # a name of 128 bytes (two-byte size): left to protobuf
    b"\x0a\x02\xff\xfe",            # not UTF-8
])
def test_heads_it_cannot_read_are_left_to_protobuf(data):
    assert split_head(data) is None


def test_head_fields_in_any_order_and_none():
    assert split_head(b"\x1a\x01i\x0a\x01m\x2a\x00") == ("m", "", "i", b"\x2a\x00")
    assert split_head(b"") == ("", "", "", b"")


def test_serving_metrics_are_scraped_as_prometheus_families():
    from prometheus_client import generate_latest
    from prometheus_client.core import CollectorRegistry

    from services.inference.metrics import ServingMetrics

    metrics, registry = ServingMetrics(), CollectorRegistry()
    registry.register(metrics)
    metrics.served("m", 64, 0.003)
    metrics.served("m", 1, 0.2)
    metrics.refused("", "NOT_FOUND")
    metrics.dropped += 1
    text = generate_latest(registry).decode()
    assert 'streamledger_inference_requests_total{model_id="m",status="OK"} 2.0' in text
    assert 'streamledger_inference_requests_total{model_id="",status="NOT_FOUND"} 1.0' in text
    assert 'streamledger_inference_rows_total{model_id="m"} 65.0' in text
    assert 'streamledger_inference_request_seconds_bucket{le="0.0025"} 0.0' in text
    assert 'streamledger_inference_request_seconds_bucket{le="0.005"} 1.0' in text
    assert 'streamledger_inference_request_seconds_bucket{le="+Inf"} 2.0' in text
    assert "streamledger_inference_request_seconds_count 2.0" in text
    assert "streamledger_inference_predictions_dropped_total 1.0" in text
