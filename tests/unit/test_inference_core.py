"""Inference core without servers: tensors -> rows, the model shelf, snapshot loading, identity
(holds and credit: test_inference_credit.py)."""

from __future__ import annotations

import datetime
import struct

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.inference.authorization import UnknownClient, client_identity
from services.inference.models import (
    InvalidVersion,
    ModelShelf,
    NoSnapshotYet,
    ServedModel,
    SnapshotRefused,
    UnknownModel,
    UnknownVersion,
    load_snapshot,
)
from services.inference.protocol import pb
from services.inference.tensors import (
    InvalidInput,
    check_requested,
    put_outputs,
    rows_from_request,
)
from services.learning.prequential import OnlineModel
from streamledger.core.models import TASKS, parse_declarations
from streamledger.core.snapshots import FORMAT, seal

FEATURES = (("color", "BYTES"), ("size", "FP64"))
DECLARATIONS = parse_declarations({"model": [
    {"id": "m", "task": "binary", "metrics": ["Accuracy"],
     "pipeline": [{"class": "tree.HoeffdingTreeClassifier", "params": {"grace_period": 10}}]},
    {"id": "r", "task": "regression", "metrics": ["MAE"], "pipeline": [{"class": "linear_model.LinearRegression"}]},
]})


def request(*tensors, raw: list[bytes] | None = None):
    r = pb.ModelInferRequest(model_name="m")
    for name, datatype, shape, values in tensors:
        t = r.inputs.add(name=name, datatype=datatype, shape=shape)
        if raw is None:
            field = t.contents.fp64_contents if datatype == "FP64" else t.contents.bytes_contents
            field.extend(values)
    if raw is not None:
        r.raw_input_contents.extend(raw)
    return r


def length_prefixed(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def test_rows_from_typed_contents_in_model_feature_order():
    r = request(("size", "FP64", [2], [1.5, 2.5]), ("color", "BYTES", [2, 1], [b"red", b"blue"]))
    rows = rows_from_request(r, FEATURES)
    assert rows == [{"color": "red", "size": 1.5}, {"color": "blue", "size": 2.5}]
    assert list(rows[0]) == ["color", "size"]


def test_rows_from_raw_contents_as_triton_sends_them():
    r = request(("color", "BYTES", [2], None), ("size", "FP64", [2], None),
                raw=[length_prefixed(b"red", "é".encode()), np.array([1.0, 2.0]).tobytes()])
    assert rows_from_request(r, FEATURES) == [{"color": "red", "size": 1.0}, {"color": "é", "size": 2.0}]


@pytest.mark.parametrize("tensors, raw, fragment", [
    ([("size", "FP32", [1], None)], [b"\0" * 4], "'size': datatype FP32 is not accepted; it takes FP64"),
    ([("size", "FP64", [1, 2], [1.0, 2.0])], None, "'size': shape [1, 2]"),
    ([("size", "FP64", [0], [])], None, "'size': empty batch"),
    ([("size", "FP64", [1], [1.0])], None, "input 'color' is missing"),
    ([("size", "FP64", [1], [1.0]), ("weight", "FP64", [1], [1.0])], None, "input 'weight' is not an input"),
    ([("size", "FP64", [1], [1.0]), ("size", "FP64", [1], [1.0])], None, "input 'size' is given twice"),
    ([("size", "FP64", [2], [1.0])], None, "'size': 1 values in contents.fp64_contents for shape of 2 rows"),
    ([("size", "FP64", [1], [float("nan")])], None, "'size' row 0: nan is not a finite number"),
    ([("color", "BYTES", [1], [b"\xff"]), ("size", "FP64", [1], [1.0])], None, "'color' row 0: BYTES are not UTF-8"),
    ([("color", "BYTES", [1], [b"a"]), ("size", "FP64", [2], [1.0, 2.0])], None, "'size' has 2 rows but input 'color' has 1"),
    ([("size", "FP64", [2], None)], [b"\0" * 12], "'size': 12 raw bytes for 2 FP64 values"),
    ([("color", "BYTES", [1], None), ("size", "FP64", [1], None)], [b"\x09\0\0\0ab", b"\0" * 8], "longer than the data"),
    ([("size", "FP64", [1], None), ("color", "BYTES", [1], None)], [b"\0" * 8], "raw_input_contents has 1 entries for 2"),
])
def test_bad_tensors_are_named(tensors, raw, fragment):
    with pytest.raises(InvalidInput, match=None) as caught:
        rows_from_request(request(*tensors, raw=raw), FEATURES)
    assert fragment in str(caught.value)


def test_requested_outputs_are_checked_and_encoded_raw():
    assert check_requested([], ("label", "probabilities"), "m") == ["label", "probabilities"]
    with pytest.raises(InvalidInput, match="output 'x' is not an output of model 'm'"):
        check_requested(["x"], ("label",), "m")
    model = trained("m", [({"color": c, "size": float(i)}, i % 2 == 0) for i, c in enumerate("abcab" * 10)])
    prediction = model.predict([{"color": "a", "size": 1.0}, {"color": "b", "size": 2.0}])
    response = pb.ModelInferResponse()
    put_outputs(response, prediction.outputs, ["probabilities"])
    assert [o.name for o in response.outputs] == ["probabilities"]
    matrix = np.frombuffer(response.raw_output_contents[0], dtype="<f8").reshape(2, 2)
    expected = [model.estimator.predict_proba_one(x) for x in ({"color": "a", "size": 1.0}, {"color": "b", "size": 2.0})]
    assert matrix.tolist() == [[p[False], p[True]] for p in expected]
    assert prediction.parameters == {"classes": '["False", "True"]'}


def trained(model_id: str, events, version: int = 1) -> ServedModel:
    declaration = next(d for d in DECLARATIONS if d.model_id == model_id)
    online = OnlineModel(declaration)
    for x, y in events:
        online.process(x, y)
    sealed = seal(online.state())
    record = {"model_id": model_id, "version": version, "sha256": sealed.sha256, "format": FORMAT, "model": sealed.data}
    return load_snapshot(record, declaration)


def test_load_snapshot_reads_features_and_refuses_tampered_bytes_before_unpickling():
    model = trained("r", [({"a": 1.0, "b": 2.0}, 3.0)])
    assert model.features == (("a", "FP64"), ("b", "FP64")) and model.task is TASKS["regression"]
    sealed = seal({"model": object()})  # would be refused by the safe unpickler; the hash check comes first
    record = {"model_id": "r", "version": 2, "sha256": "0" * 64, "format": FORMAT, "model": sealed.data}
    with pytest.raises(SnapshotRefused) as caught:
        load_snapshot(record, DECLARATIONS[1])
    assert caught.value.reason == "snapshot_hash_mismatch"
    other = seal(OnlineModel(DECLARATIONS[0]).state())
    record = {"model_id": "r", "version": 3, "sha256": other.sha256, "format": FORMAT, "model": other.data}
    with pytest.raises(SnapshotRefused, match="another declaration"):
        load_snapshot(record, DECLARATIONS[1])


def test_shelf_swaps_latest_keeps_recent_versions_and_names_what_is_missing():
    shelf = ModelShelf(DECLARATIONS, versions_kept=2)
    with pytest.raises(NoSnapshotYet, match="'r'"):
        shelf.get("r")
    versions = [trained("r", [({"a": 1.0}, float(v))], version=v) for v in (1, 2, 3)]
    assert shelf.offer(versions[0]) and shelf.offer(versions[2])
    in_flight = shelf.get("r")
    assert not shelf.offer(versions[1])  # an older version arriving late does not replace the latest
    assert shelf.get("r") is in_flight is versions[2]
    assert shelf.versions("r") == [2, 3] and shelf.get("r", "2") is versions[1]
    with pytest.raises(UnknownVersion, match="no version 1 here; kept versions: \\[2, 3\\]"):
        shelf.get("r", "1")
    with pytest.raises(InvalidVersion, match="'latest'"):
        shelf.get("r", "latest")
    with pytest.raises(UnknownModel, match="'nope'"):
        shelf.get("nope")
    assert shelf.ready("r", "3") and not shelf.ready("r", "1") and not shelf.ready("m")


def _cert(subject: str, issuer: str, issuer_key, key=None) -> tuple[x509.Certificate, object]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = lambda cn: x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Org1"),  # noqa: E731
                                 x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer)).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(issuer_key or key, hashes.SHA256()))
    return cert, key


def test_client_identity_names_the_issuing_organisation_and_the_subject():
    from cryptography.hazmat.primitives.serialization import Encoding
    ca, ca_key = _cert("ca", "ca", None)
    alice, _ = _cert("alice", "ca", ca_key)
    assert client_identity(alice.public_bytes(Encoding.PEM), {"Org1MSP": ca}) == "Org1MSP::CN=alice,O=Org1"
    impostor_ca, impostor_key = _cert("ca", "ca", None)  # same name, other key
    forged, _ = _cert("alice", "ca", impostor_key)
    with pytest.raises(UnknownClient, match="not issued by a configured client CA"):
        client_identity(forged.public_bytes(Encoding.PEM), {"Org1MSP": ca})
    with pytest.raises(UnknownClient, match="mutual TLS"):
        client_identity(None, {"Org1MSP": ca})


def test_messages_match_tritons_copy_of_the_protocol_field_by_field():
    from tritonclient.grpc import service_pb2 as triton

    def fields(descriptor, prefix=""):
        found = {f"{prefix}{descriptor.name}.{f.name}": (f.number, f.type, f.label) for f in descriptor.fields}
        for nested in descriptor.nested_types:
            found.update(fields(nested, f"{prefix}{descriptor.name}."))
        return found

    ours, theirs = {}, {}
    for name in vars(pb):
        ours.update(fields(getattr(pb, name).DESCRIPTOR))
        theirs.update(fields(triton.DESCRIPTOR.message_types_by_name[name]))
    assert len(ours) > 60
    assert {k: v for k, v in ours.items() if theirs.get(k) != v} == {}


def test_response_bytes_parse_to_the_message_protobuf_builds():
    from services.inference.responses import ResponseWriter

    model = trained("m", [({"color": c, "size": float(i)}, i % 2 == 0) for i, c in enumerate("abcab" * 10)])
    writer = ResponseWriter("m", "1")
    for rows in (1, 3, 200):  # 200 rows: raw outputs longer than one varint byte
        prediction = model.predict([{"color": "a", "size": float(i)} for i in range(rows)])
        for names in (["label", "probabilities"], ["probabilities"]):
            for request_id in ("r1", "x" * 300):
                expected = pb.ModelInferResponse(model_name="m", model_version="1", id=request_id)
                expected.parameters["classes"].string_param = prediction.parameters["classes"]
                put_outputs(expected, prediction.outputs, names)
                assert pb.ModelInferResponse.FromString(writer.write(request_id, prediction, names)) == expected
