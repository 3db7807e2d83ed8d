"""Prequential evaluation: parity with River, labels, features, drift responses."""

from __future__ import annotations

import math
import random

import pytest
from river import datasets, evaluate
from river.metrics.base import Metrics

from services.learning.prequential import (
    InvalidFeature,
    InvalidLabel,
    ModelRefusedEvent,
    OnlineModel,
)
from streamledger.core.models import TASKS, parse_declaration
from streamledger.core.snapshots import seal, unseal

LOGREG = [{"class": "preprocessing.StandardScaler"}, {"class": "linear_model.LogisticRegression"}]


def declare(task="binary", pipeline=LOGREG, metrics=("Accuracy",), **extra):
    return parse_declaration({"id": "m", "task": task, "pipeline": list(pipeline), "metrics": list(metrics), **extra})


PARITY_CASES = [
    pytest.param("binary", datasets.Phishing, LOGREG, ["Accuracy", "ROCAUC"], id="phishing-logreg"),
    pytest.param("binary", datasets.Phishing,
                 [{"class": "tree.HoeffdingAdaptiveTreeClassifier", "params": {"seed": 7}}], ["Accuracy", "LogLoss"],
                 id="phishing-hat"),
    pytest.param("binary", datasets.Phishing,
                 [{"class": "forest.ARFClassifier", "params": {"n_models": 3, "seed": 7}}], ["F1"], id="phishing-arf"),
    pytest.param("regression", datasets.TrumpApproval,
                 [{"class": "preprocessing.StandardScaler"}, {"class": "linear_model.LinearRegression"}],
                 ["MAE", "RMSE"], id="trump-linreg"),
    pytest.param("multiclass", datasets.ImageSegments,
                 [{"class": "preprocessing.StandardScaler"}, {"class": "linear_model.SoftmaxRegression"}],
                 ["Accuracy", "MacroF1"], id="segments-softmax"),
]


@pytest.mark.parametrize("task, dataset, pipeline, metric_names", PARITY_CASES)
def test_metrics_equal_progressive_val_score_to_the_last_digit(task, dataset, pipeline, metric_names):
    declaration = declare(task, pipeline, metric_names)
    online = OnlineModel(declaration)
    for x, y in dataset():
        online.process(x, y)

    reference = declaration.build_metrics()
    evaluate.progressive_val_score(dataset(), declaration.build_model(), Metrics(reference))
    assert online.metric_values() == {type(m).__name__: float(m.get()) for m in reference}
    assert online.learned == dataset().n_samples


def test_unlabelled_events_are_predicted_but_never_learned():
    online = OnlineModel(declare())
    data = list(datasets.Phishing())[:50]
    for x, y in data:
        online.process(x, y)
    before = seal({"model": online.model, "metrics": online.metrics}).sha256
    step = online.process(data[0][0], None)
    assert step.learned is False and step.prediction in (False, True)
    assert online.predicted == 1 and online.learned == 50
    assert seal({"model": online.model, "metrics": online.metrics}).sha256 == before


def test_anomaly_models_learn_from_unlabelled_events_and_score_labelled_ones():
    pipeline = [{"class": "preprocessing.MinMaxScaler"},
                {"class": "anomaly.HalfSpaceTrees", "params": {"seed": 3, "window_size": 50}}]
    online = OnlineModel(declare("anomaly", pipeline, ["ROCAUC"]))
    data = list(datasets.Phishing())[:400]
    for x, _ in data[:200]:
        assert online.process(x, None).learned
    assert online.metric_values() == {"ROCAUC": 0.0}
    reference_model, reference_metric = declare("anomaly", pipeline, ["ROCAUC"]).build_model(), None
    for x, _ in data[:200]:
        reference_model.learn_one(x)
    reference_metric = declare("anomaly", pipeline, ["ROCAUC"]).build_metrics()[0]
    for x, y in data[200:]:
        online.process(x, y)
        reference_metric.update(y, reference_model.score_one(x))
        reference_model.learn_one(x)
    assert online.metric_values()["ROCAUC"] == reference_metric.get() > 0
    assert online.learned == 400


@pytest.mark.parametrize("task, label, message", [
    ("binary", 1.0, "a binary model needs a boolean label, got double 1.0"),
    ("binary", "yes", "a binary model needs a boolean label, got string 'yes'"),
    ("multiclass", 2.5, "a multiclass model needs a class name"),
    ("regression", True, "a regression model needs a numeric .double. label, got boolean True"),
    ("regression", "3", "a regression model needs a numeric"),
    ("regression", math.nan, "a regression label must be finite"),
    ("anomaly", 0.5, "an anomaly model takes an optional boolean label"),
])
def test_a_label_of_the_wrong_type_is_rejected_with_the_reason(task, label, message):
    with pytest.raises(InvalidLabel, match=message) as error:
        TASKS[task].check_label(label)
    assert error.value.reason == "invalid_label"


def test_valid_labels_pass():
    assert TASKS["binary"].check_label(True) is True
    assert TASKS["multiclass"].check_label("sky") == "sky"
    assert TASKS["regression"].check_label(3.5) == 3.5
    assert TASKS["regression"].check_label(None) is None
    assert TASKS["anomaly"].check_label(None) is None and TASKS["anomaly"].check_label(False) is False


def test_a_rejected_event_changes_nothing():
    online = OnlineModel(declare())
    for x, y in list(datasets.Phishing())[:20]:
        online.process(x, y)
    before = seal(online.state()).sha256
    with pytest.raises(InvalidLabel):
        online.process({"https": 1.0}, 1.0)
    with pytest.raises(InvalidFeature, match=r"features\['https'\]: inf is not a finite number"):
        online.process({"https": math.inf}, True)
    with pytest.raises(InvalidFeature, match=r"features\['brand_new'\]: model 'm' takes numbers only, got string 'text' "
                                             r"\(its first step, preprocessing.StandardScaler, does not encode strings\)"):
        online.process({"brand_new": "text"}, True)
    assert seal(online.state()).sha256 == before


def test_river_refusing_to_predict_is_reported_and_changes_nothing():
    online = OnlineModel(declare("multiclass", [{"class": "linear_model.SoftmaxRegression"}]))
    online.process({"a": 1.0}, "x")
    before = seal(online.state()).sha256
    online.model.predict_proba_one = lambda x: 1 / 0  # stands in for any error River raises while predicting
    with pytest.raises(ModelRefusedEvent, match="features do not fit model 'm': ZeroDivisionError") as error:
        online.process({"a": 2.0}, "y")
    assert error.value.reason == "model_refused"
    del online.model.predict_proba_one
    assert seal(online.state()).sha256 == before


def test_strings_go_to_models_whose_first_step_encodes_them():
    online = OnlineModel(declare(pipeline=[{"class": "tree.HoeffdingTreeClassifier"}]))
    online.process({"colour": "red", "size": 1.0}, True)
    online.process({"colour": "blue", "size": 2.0}, False)  # a new category: the tree handles it
    assert online.learned == 2
    with pytest.raises(InvalidFeature, match=r"features\['size'\]: is a string here but was a number in earlier events"):
        online.process({"colour": "red", "size": "big"}, True)
    assert online.learned == 2


def test_new_features_and_missing_ones_follow_rivers_rules():
    online = OnlineModel(declare())
    online.process({"a": 1.0}, True)
    online.process({"b": 2.0}, False)  # a is missing, b is new: River treats both as it always does
    assert online.learned == 2


def drifting_stream(n=2000, flip_at=1000, seed=1):
    rng = random.Random(seed)
    for i in range(n):
        x = {"x": rng.uniform(-1, 1)}
        y = x["x"] > 0
        yield x, (not y) if i >= flip_at else y


@pytest.mark.parametrize("response", ["log", "reset", "background"])
def test_drift_is_detected_with_position_and_metric_before_and_after(response):
    online = OnlineModel(declare(drift={"response": response, "background_events": 100}))
    drifts, models, swaps = [], [], []
    for x, y in drifting_stream():
        before = online.model
        step = online.process(x, y)
        if step.drift:
            drifts.append(step.drift)
            models.append((online.model, online.background))
        if online.model is not before:
            swaps.append((online.learned, id(online.model)))
    assert drifts, "the concept flip at 1000 was not detected"
    first = drifts[0]
    assert first.detector == "ADWIN" and 1000 < first.position < 1300
    assert first.metric_after > first.metric_before  # the error rose after the flip
    if response == "log":
        assert online.drifts == len(drifts) and online.background is None
    if response == "reset":
        assert models[0][0] is not None and online.metric_values()["Accuracy"] > 0.5
    if response == "background":
        assert models[0][1] is not None  # a background model started at the drift
        # ... and replaced the model after exactly `background_events` more events; so did each later one
        assert swaps == [(drift.position + 100, id(background)) for drift, (_, background) in zip(drifts, models)]
        assert online.background is None


def test_reset_and_background_recover_faster_than_doing_nothing():
    accuracy = {}
    for response in ("log", "reset", "background"):
        online = OnlineModel(declare(drift={"response": response, "background_events": 100},
                                     pipeline=[{"class": "linear_model.LogisticRegression"}]))
        hits = 0
        for i, (x, y) in enumerate(drifting_stream(n=2000)):
            if i >= 1500:
                hits += online.model.predict_one(x) == y
            online.process(x, y)
        accuracy[response] = hits / 500
    assert accuracy["reset"] > accuracy["log"] and accuracy["background"] > accuracy["log"]


def test_restore_refuses_a_state_taken_under_another_declaration():
    state = OnlineModel(declare()).state()
    with pytest.raises(ValueError, match="another declaration"):
        OnlineModel.restore(declare(metrics=["Accuracy", "ROCAUC"]), state)


def test_reading_the_metrics_does_not_change_the_state():
    online = OnlineModel(declare(metrics=("Accuracy", "ROCAUC", "F1")))
    for x, y in list(datasets.Phishing())[:30]:
        online.process(x, y)
    before = seal(online.state()).sha256
    online.metric_values()
    assert seal(online.state()).sha256 == before


def test_mini_batches_learn_with_learn_many_and_keep_the_partial_batch_pending():
    online = OnlineModel(declare(batch_size=100))
    data = list(datasets.Phishing())
    events = [({k: float(v) for k, v in x.items()}, y, i) for i, (x, y) in enumerate(data)]
    outcome = online.process_many(events[:250])
    assert outcome.rejected == [None] * 250 and outcome.refused == []
    assert online.learned == 200 and len(online.pending) == 50  # the last 50 wait for their batch
    online.process_many(events[250:])
    assert online.learned == 1200 and len(online.pending) == 50
    assert 0.8 < online.metric_values()["Accuracy"] < 1.0


def test_mini_batches_are_cut_by_count_not_by_how_events_arrive():
    events = [({k: float(v) for k, v in x.items()}, y, i) for i, (x, y) in enumerate(datasets.Phishing())][:700]
    whole = OnlineModel(declare(batch_size=64))
    whole.process_many(events)
    pieces = OnlineModel(declare(batch_size=64))
    for start, stop in [(0, 3), (3, 130), (130, 131), (131, 700)]:
        sealed = seal(pieces.state())  # a restart between any two fetches
        pieces = OnlineModel.restore(pieces.declaration, unseal(sealed.data, sealed.sha256))
        pieces.process_many(events[start:stop])
    assert seal(pieces.state()).sha256 == seal(whole.state()).sha256


def test_mini_batch_rejections_are_reported_in_place_and_other_feature_names_cut_the_batch():
    online = OnlineModel(declare(batch_size=10))
    events = [({"a": 1.0}, True, 0), ({"a": 2.0}, 0.5, 1), ({"a": 3.0}, None, 2), ({"a": 1.0, "b": 2.0}, False, 3)]
    outcome = online.process_many(events)
    assert [type(r).__name__ if r else None for r in outcome.rejected] == [None, "InvalidLabel", None, None]
    assert online.learned == 1 and online.predicted == 1 and len(online.pending) == 1


@pytest.mark.parametrize("pipeline, metrics, message", [
    ([{"class": "tree.HoeffdingTreeClassifier"}], ("Accuracy",), "HoeffdingTreeClassifier has none"),
    ([{"class": "preprocessing.MinMaxScaler"}, {"class": "linear_model.LogisticRegression"}], ("Accuracy",),
     "MinMaxScaler has none"),
    (LOGREG, ("ROCAUC",), "metric ROCAUC needs probabilities"),
])
def test_batch_size_needs_a_model_with_learn_many(pipeline, metrics, message):
    with pytest.raises(Exception, match=message):
        declare(pipeline=pipeline, metrics=metrics, batch_size=10)
