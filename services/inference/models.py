"""The models being served: verified snapshots, the recent versions of each, and prediction.

    shelf = ModelShelf(load_declarations("deploy/models.toml"), versions_kept=3)
    shelf.offer(load_snapshot(record, shelf.declaration(record["model_id"])))
    model = shelf.get("phishing-logreg", "")      # latest; "7" pins version 7
    outputs = model.predict([{"x": 1.0}])

A snapshot becomes servable only through `load_snapshot`, which verifies its SHA-256
before unpickling (`streamledger.core.snapshots.unseal`). Swapping is a reference swap: a
request takes its `ServedModel` once and finishes on it, whatever arrives meanwhile.

Tensors (see ModelMetadata): one input per feature the model has learned from, named as
the feature, FP64 for numbers (booleans as 0/1) and BYTES for strings, shape [-1] (or
[N, 1]). Outputs by task (its `Task.outputs`):
- binary, multiclass: "label" BYTES [N] (the most probable class, "" if the model has no
  opinion yet) and "probabilities" FP64 [N, K]; the K class names, in column order, are
  the response parameter "classes" (a JSON list of strings).
- regression: "value" FP64 [N].
- anomaly: "score" FP64 [N] (higher is more anomalous).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

from services.inference.responses import ResponseWriter
from services.inference.tensors import NUMBER, STRING, Output, RowReader
from streamledger.core.models import ModelDeclaration, Task
from streamledger.core.snapshots import SnapshotError, unseal


class ModelLookupError(LookupError):
    """A request names a model or version this server cannot serve; the message says which."""


class UnknownModel(ModelLookupError):
    pass


class UnknownVersion(ModelLookupError):
    pass


class InvalidVersion(ValueError):
    pass


class NoSnapshotYet(ModelLookupError):
    """The model is declared but no verified snapshot of it has arrived yet."""


class SnapshotRefused(ValueError):
    """A snapshot that will not be served; `reason` is a short code for logs and metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Prediction(NamedTuple):
    outputs: list[Output]
    parameters: dict[str, str]


@dataclass(frozen=True)
class ServedModel:
    model_id: str
    version: int
    sha256: str
    task: Task
    estimator: Any
    features: tuple[tuple[str, str], ...]
    """(name, datatype) of every input tensor, sorted by name."""

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.task.outputs

    @cached_property
    def reader(self) -> RowReader:
        """Reads this model's rows from requests (and keeps the tensor layouts it has checked)."""
        return RowReader(self.features)

    @cached_property
    def version_text(self) -> str:
        """The version as the protocol writes it (`model_version` is a string)."""
        return str(self.version)

    @cached_property
    def _names_of(self) -> dict[tuple[Any, ...], _ClassNames]:
        return {}

    def _class_names(self, classes: list[Any]) -> _ClassNames:
        # The model answers with the same few class lists over and over: name each list once.
        # (Keyed per model: True == 1 in a tuple, but one model's classes never hold both.)
        key = tuple(classes)
        names = self._names_of.get(key)
        if names is None:
            names = _ClassNames((c, str(c).encode()) for c in classes)
            names.json = json.dumps([str(c) for c in classes])
            if len(self._names_of) < 1024:
                self._names_of[key] = names
        return names

    @cached_property
    def responses(self) -> ResponseWriter:
        """Writes this model version's ModelInferResponse bytes."""
        return ResponseWriter(self.model_id, self.version_text)

    def output_metadata(self) -> list[tuple[str, str, tuple[int, ...]]]:
        if self.task.probabilities:
            label, probabilities = self.task.outputs
            return [(label, STRING, (-1,)), (probabilities, NUMBER, (-1, -1))]
        return [(self.task.outputs[0], NUMBER, (-1,))]

    def predict(self, rows: list[dict[str, Any]]) -> Prediction:
        """River's answer for each row, as output tensors; raises what River raises for unfit rows."""
        model, task = self.estimator, self.task
        if not task.probabilities:  # one number per row: a value, or an anomaly score
            values = _floats([task.predict(model, x) for x in rows])
            return Prediction([Output(task.outputs[0], NUMBER, (len(rows),), values)], {})
        probas = [task.predict_proba(model, x) for x in rows]
        if len(probas) == 1:  # the common request: no union of class sets to take
            classes = sorted(probas[0], key=str)
        else:
            classes = sorted({c for p in probas for c in p}, key=str)
        names = self._class_names(classes)
        matrix = [float(p.get(c, 0.0)) for p in probas for c in classes]
        labels = [names[max(p, key=p.get)] if p else b"" for p in probas]
        label, probabilities = task.outputs
        return Prediction(
            [Output(label, STRING, (len(rows),), labels),
             Output(probabilities, NUMBER, (len(rows), len(classes)), matrix)],
            {"classes": names.json},
        )


class _ClassNames(dict):
    """Class -> its name as label bytes, and `json`: the class names as the "classes" parameter."""

    json: str


def _floats(values: list[Any]) -> list[float]:
    # River answers None before it has learned anything; NaN says "no prediction" in FP64.
    return [math.nan if v is None else float(v) for v in values]


def load_snapshot(record: dict[str, Any], declaration: ModelDeclaration) -> ServedModel:
    """A servable model from a ModelSnapshot record; raises `SnapshotRefused` (hash checked before unpickling)."""
    try:
        state = unseal(record["model"], record["sha256"], record["format"])
    except SnapshotError as exc:
        raise SnapshotRefused(exc.reason, f"model {record['model_id']!r} version {record['version']}: {exc}") from None
    if state.get("declaration") != declaration.fingerprint():
        # The same rule as the learner's: a snapshot taken under another declaration may
        # answer with another task's outputs.
        raise SnapshotRefused("declaration_changed", f"model {record['model_id']!r} version {record['version']}: "
                              "snapshot was taken under another declaration than the models file's")
    kinds = state.get("feature_kinds", {})
    return ServedModel(
        model_id=record["model_id"], version=record["version"], sha256=record["sha256"], task=declaration.task,
        estimator=state["model"],
        features=tuple((name, STRING if kind == "string" else NUMBER) for name, kind in sorted(kinds.items())),
    )


class ModelShelf:
    """The declared models and, for each, its most recent verified versions."""

    def __init__(self, declarations: list[ModelDeclaration], versions_kept: int = 3) -> None:
        if versions_kept < 1:
            raise ValueError(f"versions_kept must be at least 1; got {versions_kept}")
        self.declarations = {d.model_id: d for d in declarations}
        self.versions_kept = versions_kept
        self._versions: dict[str, dict[int, ServedModel]] = {}
        self._latest: dict[str, ServedModel] = {}

    def declaration(self, model_id: str) -> ModelDeclaration:
        try:
            return self.declarations[model_id]
        except KeyError:
            raise UnknownModel(f"model {model_id!r} is not declared; served models: {', '.join(self.declarations)}") from None

    def offer(self, model: ServedModel) -> bool:
        """Keep `model` among its model's recent versions; True if it became the latest."""
        self.declaration(model.model_id)
        versions = dict(self._versions.get(model.model_id, {}))
        versions[model.version] = model
        kept = dict(sorted(versions.items())[-self.versions_kept:])
        # Readers take these dicts by reference, so build new ones and swap them in whole.
        self._versions[model.model_id] = kept
        latest = kept[max(kept)]
        became_latest = self._latest.get(model.model_id) is not latest and latest is model
        self._latest[model.model_id] = latest
        return became_latest

    def get(self, model_id: str, version: str = "") -> ServedModel:
        self.declaration(model_id)
        if version:
            try:
                number = int(version)
            except ValueError:
                raise InvalidVersion(f"model_version {version!r} of model {model_id!r} is not an integer") from None
            found = self._versions.get(model_id, {}).get(number)
            if found is None:
                kept = sorted(self._versions.get(model_id, {}))
                raise UnknownVersion(f"model {model_id!r} has no version {number} here; kept versions: {kept}")
            return found
        latest = self._latest.get(model_id)
        if latest is None:
            raise NoSnapshotYet(f"model {model_id!r} is declared but has no verified snapshot yet")
        return latest

    def versions(self, model_id: str) -> list[int]:
        self.declaration(model_id)
        return sorted(self._versions.get(model_id, {}))

    def ready(self, model_id: str, version: str = "") -> bool:
        try:
            self.get(model_id, version)
        except (ModelLookupError, InvalidVersion):
            return False
        return True
