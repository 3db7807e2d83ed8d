"""Prequential (test-then-train) evaluation of one declared model, one event at a time.

For a labelled event the model first predicts, the metrics are updated with that
prediction, and only then does the model learn; an unlabelled event is only predicted
(anomaly models, being unsupervised, also learn from it). This is the loop of
`river.evaluate.progressive_val_score`, step for step, so on the same events in the same
order the metrics come out identical to the last digit.

    model = OnlineModel(declaration)
    step = model.process({"x": 1.0}, True)
    model.metric_values()   # {"Accuracy": ...}

Nothing here does I/O; the whole state a restart needs is `state()` / `OnlineModel.restore`.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple

from river import base

from streamledger.core.models import (
    InvalidLabel,
    Label,
    ModelDeclaration,
    RejectedEvent,
)

__all__ = ["Batched", "Drift", "InvalidFeature", "InvalidLabel", "ModelRefusedEvent", "OnlineModel", "RejectedEvent",
           "Step"]
Features = dict[str, Any]


class InvalidFeature(RejectedEvent):
    reason = "invalid_feature"


class ModelRefusedEvent(RejectedEvent):
    """River raised while predicting: the features do not fit the model (nothing was learned)."""

    reason = "model_refused"


@dataclass(frozen=True)
class Drift:
    detector: str
    position: int
    metric_before: float
    metric_after: float
    """Mean error of the model since the previous drift, and over the most recent events."""


@dataclass(frozen=True)
class Batched:
    """What `process_many` did: per event its rejection (or None), drifts, and events River refused."""

    rejected: list[RejectedEvent | None]
    drifts: list[Drift]
    refused: list[tuple[Any, RejectedEvent]]


class Step(NamedTuple):
    """What `process` did with one event (a tuple: one is made per event)."""

    prediction: Any
    learned: bool
    drift: Drift | None = None


class OnlineModel:
    """A declared River model with its metrics, drift detector and drift response."""

    RECENT_ERRORS = 50  # window of the "metric_after" of a drift

    def __init__(self, declaration: ModelDeclaration) -> None:
        self.declaration = declaration
        self.model = declaration.build_model()
        self.metrics = declaration.build_metrics()
        self.detector = declaration.build_detector()
        self.background: base.Estimator | None = None
        self.background_learned = 0
        self.feature_kinds: dict[str, str] = {}
        self.pending: list[tuple[Features, Label, Any]] = []
        """Mini-batch models: valid events waiting for their batch to fill (part of the state)."""
        self.learned = 0
        self.predicted = 0
        self.drifts = 0
        self._errors_since_drift = [0.0, 0]  # sum, count: the "metric_before" of a drift
        self._recent_errors: deque[float] = deque(maxlen=self.RECENT_ERRORS)
        self._configure()

    def _configure(self) -> None:
        """Derived, non-persisted attributes: how to predict and what the metrics need."""
        self.task = self.declaration.task
        self._takes_strings = self.declaration.takes_strings
        # Like river.metrics.Metrics: probability metrics get predict_proba_one, label
        # metrics its arg-max; without any probability metric, the task's plain prediction.
        wants_proba = [self.task.probabilities and not getattr(m, "requires_labels", True) for m in self.metrics]
        self._needs_proba = any(wants_proba)
        self._feeds = [(m, self._needs_proba and not proba) for m, proba in zip(self.metrics, wants_proba)]
        """Each metric, and whether it gets the arg-max label instead of the prediction."""
        self._numbers = {name for name, kind in self.feature_kinds.items() if kind == "number"}
        """Features known to be numbers: the fast path of `_check_features`."""
        self._task_predict, self._task_learn = self.task.predict, self.task.learn  # bound once: called per event

    # -- the prequential step --------------------------------------------------------------

    def process(self, x: Features, label: Any) -> Step:
        """Predict, update metrics, learn. Raises a `RejectedEvent` and changes nothing if the event is unfit."""
        y = self.task.check_label(label)
        new_features = self._check_features(x)
        try:
            if self._needs_proba:
                prediction, label_prediction = self._predict(x)
            else:  # the common case, without the call and the pair
                prediction = label_prediction = self._task_predict(self.model, x)
        except (TypeError, ValueError, KeyError, ArithmeticError) as exc:
            raise ModelRefusedEvent(f"features do not fit model {self.declaration.model_id!r}: {type(exc).__name__}: {exc}") from None
        if new_features:
            self._remember_kinds(x, new_features)
        if y is None and self.task.supervised:
            self.predicted += 1
            return Step(prediction=prediction, learned=False)

        drift = None
        if y is not None and prediction is not None and prediction != {}:
            for metric, gets_label in self._feeds:
                metric.update(y, label_prediction if gets_label else prediction)
            if self.task.supervised:
                drift = self._watch(y, label_prediction)
        try:
            if self.background is None:  # the common case, inline
                self._task_learn(self.model, x, y)
                self.learned += 1
            else:
                self._learn(x, y)
        except (TypeError, ValueError, KeyError, ArithmeticError) as exc:
            # Checks above catch the known misfits; River failing mid-learn may leave part of an update.
            raise ModelRefusedEvent(
                f"model {self.declaration.model_id!r} failed to learn (its metrics counted the prediction): "
                f"{type(exc).__name__}: {exc}"
            ) from None
        return Step(prediction=prediction, learned=True, drift=drift)

    def process_many(self, events: list[tuple[Features, Any, Any]]) -> Batched:
        """Mini-batch prequential learning with River's `predict_many` / `learn_many` (declared `batch_size`).

        `events` are (features, label, ref) in stream order; `ref` identifies the event to
        the caller (for dead letters). Valid labelled events join a pending batch; a batch
        is learned when it holds `batch_size` events or the next event has other feature
        names: the whole batch is predicted, the metrics updated row by row, then the batch
        learned at once. Batches are cut by counting events, never by how they were
        fetched, and the pending events are part of `state()`, so a restarted run forms
        the same batches and ends with the same model. Within a batch no event benefits
        from the ones before it, so metrics differ a little from `progressive_val_score`.
        Unlabelled events are counted as predicted.
        """
        outcome = Batched(rejected=[None] * len(events), drifts=[], refused=[])
        size = self.declaration.batch_size
        check_label, check_features = self.task.check_label, self._check_features
        names = tuple(self.pending[0][0]) if self.pending else None  # the pending batch's feature names
        for index, (x, label, ref) in enumerate(events):
            try:
                y = check_label(label)
                new_features = check_features(x)
            except RejectedEvent as exc:
                outcome.rejected[index] = exc
                continue
            if new_features:
                self._remember_kinds(x, new_features)
            if y is None:
                self.predicted += 1
                continue
            if names is None:
                names = tuple(x)
            elif tuple(x) != names:
                self._learn_pending(outcome)
                names = tuple(x)
            self.pending.append((x, y, ref))
            if len(self.pending) >= size:
                self._learn_pending(outcome)
                names = None
        return outcome

    def _learn_pending(self, outcome: Batched) -> None:
        import pyarrow as pa  # only mini-batch models need columnar input

        batch, self.pending = self.pending, []
        X = pa.Table.from_pylist([x for x, _, _ in batch])
        ys = [y for _, y, _ in batch]
        try:
            predictions = self.model.predict_many(X).to_pylist()
        except (TypeError, ValueError, KeyError, ArithmeticError, pa.ArrowException) as exc:
            error = ModelRefusedEvent(f"features do not fit model {self.declaration.model_id!r}: {type(exc).__name__}: {exc}")
            outcome.refused.extend((ref, error) for _, _, ref in batch)
            return
        for y, y_pred in zip(ys, predictions):
            if y_pred is not None:
                for metric in self.metrics:
                    metric.update(y, y_pred)
                drift = self._watch(y, y_pred)
                if drift is not None:
                    outcome.drifts.append(drift)
        y_column = pa.chunked_array([ys])
        self.model.learn_many(X, y_column)
        if self.background is not None:
            self.background.learn_many(X, y_column)
            self.background_learned += len(batch)
            if self.background_learned >= self.declaration.drift.background_events:
                self.model, self.background = self.background, None
        self.learned += len(batch)

    def _predict(self, x: Features) -> tuple[Any, Any]:
        if self._needs_proba:
            proba = self.task.predict_proba(self.model, x)
            return proba, (max(proba, key=proba.get) if proba else None)
        prediction = self.task.predict(self.model, x)
        return prediction, prediction

    def _learn(self, x: Features, y: Label) -> None:
        self.task.learn(self.model, x, y)
        if self.background is not None:  # only a supervised model's drift starts one
            self.task.learn(self.background, x, y)
            self.background_learned += 1
            if self.background_learned >= self.declaration.drift.background_events:
                self.model, self.background = self.background, None
        self.learned += 1

    def _watch(self, y: Label, y_pred: Any) -> Drift | None:
        """Feed the model's error to the drift detector; respond as declared when it fires."""
        error = self.task.error(y, y_pred)
        self.detector.update(error)
        since = self._errors_since_drift
        since[0] += error
        since[1] += 1
        self._recent_errors.append(error)
        if not self.detector.drift_detected:
            return None
        drift = Drift(
            detector=type(self.detector).__name__,
            position=self.learned,
            metric_before=since[0] / since[1],
            metric_after=sum(self._recent_errors) / len(self._recent_errors),
        )
        self.drifts += 1
        self._errors_since_drift = [0.0, 0]
        response = self.declaration.drift.response
        if response == "reset":
            self.model = self.declaration.build_model()
        elif response == "background" and self.background is None:
            self.background = self.declaration.build_model()
            self.background_learned = 0
        return drift

    # -- features --------------------------------------------------------------------------

    def _check_features(self, x: Features) -> list[str]:
        """Raise `InvalidFeature` for a value the model cannot take; returns the features never seen before."""
        if x.keys() <= self._numbers:
            try:
                total = sum(x.values())  # every value a known number feature's: one C loop decides
            except TypeError:
                pass  # a string among them: the loop below names it
            else:
                if total - total == 0.0:
                    return []  # all finite (a NaN or infinity would make the sum one)
        kinds = self.feature_kinds
        new: list[str] = []
        for name, value in x.items():
            seen = kinds.get(name)
            # The common case first: a finite float for a feature known to be a number.
            if seen == "number" and type(value) is float and value - value == 0.0:
                continue
            kind = "string" if isinstance(value, str) else "number"
            if kind == "number":
                if not isinstance(value, (bool, int, float)):
                    raise InvalidFeature(f"features[{name!r}]: {type(value).__name__} is not a number, string or boolean")
                if not math.isfinite(value):
                    raise InvalidFeature(f"features[{name!r}]: {value!r} is not a finite number")
            elif not self._takes_strings:
                raise InvalidFeature(
                    f"features[{name!r}]: model {self.declaration.model_id!r} takes numbers only, got string "
                    f"{value!r} (its first step, {self.declaration.pipeline[0]['class']}, does not encode strings)"
                )
            if seen is None:
                new.append(name)
            elif seen != kind:
                raise InvalidFeature(f"features[{name!r}]: is a {kind} here but was a {seen} in earlier events")
        return new

    def _remember_kinds(self, x: Features, new: list[str]) -> None:
        for name in new:
            self.feature_kinds[name] = "string" if isinstance(x[name], str) else "number"
        self._numbers = {name for name, kind in self.feature_kinds.items() if kind == "number"}

    # -- results and state -----------------------------------------------------------------

    def metric_values(self) -> dict[str, float]:
        # Reading some River metrics inserts zero entries into their defaultdicts; read a
        # copy, so when metrics are read (a wall-clock cadence) never changes the hashed state.
        return {type(m).__name__: float(m.get()) for m in copy.deepcopy(self.metrics)}

    def served_model(self) -> base.Estimator:
        """The River estimator that predicts (what inference serves)."""
        return self.model

    def state(self) -> dict[str, Any]:
        """Everything a restart needs to continue exactly where this model is, as plain data."""
        return {
            "model": self.model,
            "metrics": self.metrics,
            "detector": self.detector,
            "background": self.background,
            "background_learned": self.background_learned,
            "feature_kinds": self.feature_kinds,
            "pending": self.pending,
            "learned": self.learned,
            "predicted": self.predicted,
            "drifts": self.drifts,
            "errors_since_drift": self._errors_since_drift,
            "recent_errors": self._recent_errors,
            "declaration": self.declaration.fingerprint(),
        }

    @classmethod
    def restore(cls, declaration: ModelDeclaration, state: dict[str, Any]) -> OnlineModel:
        if state.get("declaration") != declaration.fingerprint():
            raise ValueError(f"snapshot of {declaration.model_id!r} was taken under another declaration")
        online = cls.__new__(cls)
        online.declaration = declaration
        online.model = state["model"]
        online.metrics = state["metrics"]
        online.detector = state["detector"]
        online.background = state["background"]
        online.background_learned = state["background_learned"]
        online.feature_kinds = state["feature_kinds"]
        online.pending = state["pending"]
        online.learned = state["learned"]
        online.predicted = state["predicted"]
        online.drifts = state["drifts"]
        online._errors_since_drift = state["errors_since_drift"]
        online._recent_errors = state["recent_errors"]
        online._configure()
        return online
