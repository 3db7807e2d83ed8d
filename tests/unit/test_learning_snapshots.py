"""Snapshots: the hash is checked before unpickling, and a restored model hashes like an uninterrupted one."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import pytest
from river import datasets

from services.learning.prequential import OnlineModel
from streamledger.core.models import parse_declaration
from streamledger.core.snapshots import (
    FORMAT,
    ForbiddenGlobal,
    SnapshotFormatError,
    SnapshotHashMismatch,
    seal,
    unseal,
)

SIDE_EFFECTS: list[str] = []


class Explodes:
    """Unpickling this records a side effect: proof of whether bytes were unpickled."""

    def __reduce__(self):
        return (SIDE_EFFECTS.append, ("unpickled",))


def declare(pipeline, task="binary", response="log"):
    return parse_declaration({"id": "m", "task": task, "pipeline": pipeline, "metrics": ["Accuracy"],
                              "drift": {"response": response}})


def test_a_sealed_state_round_trips():
    online = OnlineModel(declare([{"class": "linear_model.LogisticRegression"}]))
    online.process({"a": 1.0}, True)
    sealed = seal(online.state())
    assert sealed.sha256 == hashlib.sha256(sealed.data).hexdigest()
    state = unseal(sealed.data, sealed.sha256)
    assert state["learned"] == 1 and state["model"].predict_one({"a": 1.0}) is not None


def test_a_hash_mismatch_is_refused_before_unpickling():
    SIDE_EFFECTS.clear()
    data = pickle.dumps({"model": Explodes()})
    recorded = hashlib.sha256(data).hexdigest()
    tampered = data.replace(b"model", b"mode1")
    with pytest.raises(SnapshotHashMismatch, match=f"sha256: snapshot bytes hash to .* the record says {recorded}") as error:
        unseal(tampered, recorded)
    assert error.value.reason == "snapshot_hash_mismatch"
    assert SIDE_EFFECTS == []  # refused without running a single opcode


def test_a_pickle_naming_code_outside_river_is_refused_even_with_a_matching_hash():
    SIDE_EFFECTS.clear()
    data = pickle.dumps({"model": Explodes()})
    with pytest.raises(ForbiddenGlobal, match="builtins.getattr|builtins.list|tests"):
        unseal(data, hashlib.sha256(data).hexdigest())
    evil = pickle.dumps({"model": os.system})
    with pytest.raises(ForbiddenGlobal, match=r"posix.system|os.system"):
        unseal(evil, hashlib.sha256(evil).hexdigest())
    assert SIDE_EFFECTS == []


def test_a_format_other_than_ours_or_garbage_is_refused():
    sealed = seal({"model": 1})
    with pytest.raises(SnapshotFormatError, match="format: 'onnx'"):
        unseal(sealed.data, sealed.sha256, format="onnx")
    garbage = b"\x80\x05not a pickle"
    with pytest.raises(SnapshotFormatError, match="model: bytes do not unpickle"):
        unseal(garbage, hashlib.sha256(garbage).hexdigest())
    assert FORMAT == "pickle/learner-state-v2"


WAVE1 = Path(__file__).parent / "data" / "wave1-learner-state-v1.pickle"
"""A snapshot written by wave 1's code (commit e8d9bca, `services.learning.snapshots.seal`): a
logistic regression with a PageHinkley drift detector, after the first 20 Phishing events."""
WAVE1_SHA256 = "1983ab094876c1d391bc612fe16bd68c00285243be827c50adfcc15f1ab31112"
WAVE1_DECLARATION = {"id": "wave1-logreg", "task": "binary", "metrics": ["Accuracy"],
                     "pipeline": [{"class": "linear_model.LogisticRegression"}],
                     "drift": {"detector": {"class": "drift.PageHinkley"}}}


def test_a_v1_snapshot_written_by_wave_1_still_loads_and_learns_on():
    data = WAVE1.read_bytes()
    assert b"services.learning.snapshots" in data and b"bound_method" in data  # wave 1's module path
    state = unseal(data, WAVE1_SHA256, "pickle/learner-state-v1")
    online = OnlineModel.restore(parse_declaration(WAVE1_DECLARATION), state)  # the same declaration fingerprint
    assert online.detector._test_drift.__self__ is online.detector  # its bound method, bound again
    assert (online.learned, online.metric_values()) == (20, {"Accuracy": 0.6})
    x, y = list(datasets.Phishing())[20]
    assert online.model.predict_proba_one(x) == {False: 0.4900358514789285, True: 0.5099641485210715}
    online.process(x, y)
    resealed = seal(online.state())  # written again: v2, today's module path
    assert b"services.learning" not in resealed.data
    assert unseal(resealed.data, resealed.sha256, FORMAT)["learned"] == 21
    with pytest.raises(ForbiddenGlobal, match="services.learning.snapshots.bound_method"):
        unseal(data, WAVE1_SHA256, FORMAT)  # v2 never names wave 1's path: a v1 snapshot is read as v1


def test_a_v1_snapshot_naming_another_module_or_os_system_is_refused_without_running_it(tmp_path):
    renamed = WAVE1.read_bytes().replace(b"services.learning.snapshots", b"services.learning.snapshotz")
    with pytest.raises(ForbiddenGlobal, match="services.learning.snapshotz.bound_method"):
        unseal(renamed, hashlib.sha256(renamed).hexdigest(), "pickle/learner-state-v1")
    ran = tmp_path / "ran"
    evil = b"cos\nsystem\n(S'touch " + str(ran).encode() + b"'\ntR."  # os.system("touch ...")
    with pytest.raises(ForbiddenGlobal, match=r"snapshot refers to os\.system"):
        unseal(evil, hashlib.sha256(evil).hexdigest(), "pickle/learner-state-v1")
    assert not ran.exists()


@pytest.mark.parametrize("task, dataset, pipeline, response", [
    ("binary", datasets.Phishing, [{"class": "preprocessing.StandardScaler"},
                                   {"class": "linear_model.LogisticRegression"}], "log"),
    ("binary", datasets.Phishing, [{"class": "tree.HoeffdingAdaptiveTreeClassifier", "params": {"seed": 1}}],
     "background"),
    ("binary", datasets.Phishing, [{"class": "forest.ARFClassifier", "params": {"n_models": 2, "seed": 1}}], "reset"),
    ("multiclass", datasets.ImageSegments, [{"class": "tree.HoeffdingTreeClassifier"}], "log"),
])
def test_a_model_restored_mid_stream_hashes_like_an_uninterrupted_one(task, dataset, pipeline, response):
    declaration = declare(pipeline, task, response)
    data = list(dataset())[:1000]
    uninterrupted = OnlineModel(declaration)
    for x, y in data:
        uninterrupted.process(dict(x), y)

    restarted = OnlineModel(declaration)
    for i, (x, y) in enumerate(data):
        if i in (300, 301, 700):  # two restarts in a row, and one later
            sealed = seal(restarted.state())
            restarted = OnlineModel.restore(declaration, unseal(sealed.data, sealed.sha256))
        restarted.process(dict(x), y)

    assert seal(restarted.state()).sha256 == seal(uninterrupted.state()).sha256
    assert restarted.metric_values() == uninterrupted.metric_values()


def test_equal_sets_in_any_order_seal_to_the_same_bytes():
    a = {"sky", "grass", "path", "window"}
    b = set()
    for item in ["window", "path", "x", "grass", "sky"]:
        b.add(item)
    b.discard("x")
    assert seal({"model": a}).data == seal({"model": b}).data


def test_a_bound_method_in_a_model_survives_a_snapshot_without_getattr() -> None:
    from river import drift

    from streamledger.core.snapshots import bound_method

    detector = drift.PageHinkley()  # keeps `self._test_drift = self._test_both`
    sealed = seal({"model": detector})
    assert b"getattr" not in sealed.data
    restored = unseal(sealed.data, sealed.sha256)["model"]
    assert restored._test_drift.__self__ is restored
    assert seal({"model": restored}).sha256 == sealed.sha256
    with pytest.raises(ForbiddenGlobal):
        bound_method(restored, "__reduce_ex__")
