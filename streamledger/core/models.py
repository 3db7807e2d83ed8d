"""Model declarations: a TOML file parsed into River objects through an allow-list.

A declaration names the model, the events it takes, its task, its River pipeline, its
metrics and its drift detector. Components are named by `module.Class` and looked up in
`ALLOWED`; nothing in the file is ever evaluated as code.

    [[model]]
    id = "phishing-logreg"
    task = "binary"                      # binary | multiclass | regression | anomaly
    source = "phishing"                  # glob on CleanEvent.source; tenant works the same
    metrics = ["Accuracy", "ROCAUC"]
    pipeline = [
      { class = "preprocessing.StandardScaler" },
      { class = "linear_model.LogisticRegression",
        params = { optimizer = { class = "optim.SGD", params = { lr = 0.1 } } } },
    ]
    [model.drift]
    detector = { class = "drift.ADWIN", params = { delta = 0.002 } }
    response = "log"                     # log | reset | background

A parameter whose value is a table with a `class` key is itself built from the
allow-list, so optimizers and nested estimators can be declared too.

A declaration's `task` is a `Task` object (`TASKS[name]`), which knows everything that differs
between tasks, so no other code asks which task it has:

    task = declaration.task              # TASKS["regression"]
    y = task.check_label(3.5)            # InvalidLabel for a boolean, a string or a NaN
    y_pred = task.predict(model, x)      # predict_one; score_one for an anomaly detector
    task.learn(model, x, y)              # learn_one(x, y); learn_one(x) for an anomaly detector
    task.error(y, y_pred)                # |y - y_pred|: what the drift detector watches
    task.outputs                         # ("value",): the tensors inference serves per row
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import inspect
import json
import math
from dataclasses import dataclass, field
from typing import Any

from river import (
    anomaly,
    base,
    compose,
    drift,
    feature_extraction,
    forest,
    linear_model,
    metrics,
    naive_bayes,
    optim,
    preprocessing,
    tree,
)
from river.drift import binary as binary_drift

DRIFT_RESPONSES = ("log", "reset", "background")

ALLOWED: dict[str, type] = {
    f"{module.__name__.removeprefix('river.')}.{cls.__name__}": cls
    for module, classes in [
        (preprocessing, ["StandardScaler", "MinMaxScaler", "MaxAbsScaler", "OneHotEncoder", "Normalizer"]),
        (feature_extraction, ["PolynomialExtender"]),
        (linear_model, ["LogisticRegression", "LinearRegression", "PAClassifier", "PARegressor",
                        "Perceptron", "SoftmaxRegression"]),
        (tree, ["HoeffdingTreeClassifier", "HoeffdingAdaptiveTreeClassifier",
                "HoeffdingTreeRegressor", "HoeffdingAdaptiveTreeRegressor"]),
        (forest, ["ARFClassifier", "ARFRegressor"]),
        (naive_bayes, ["GaussianNB"]),
        (anomaly, ["HalfSpaceTrees", "OneClassSVM"]),
        (optim, ["SGD", "Adam", "AdaGrad", "RMSProp", "FTRLProximal"]),
        (drift, ["ADWIN", "PageHinkley", "KSWIN"]),
        (binary_drift, ["DDM", "EDDM"]),
    ]
    for cls in (getattr(module, name) for name in classes)
}
"""Every River class a declaration may name, by `module.Class` (module relative to `river`)."""

TAKES_STRINGS = frozenset({
    "preprocessing.OneHotEncoder", "tree.HoeffdingTreeClassifier", "tree.HoeffdingAdaptiveTreeClassifier",
    "tree.HoeffdingTreeRegressor", "tree.HoeffdingAdaptiveTreeRegressor", "forest.ARFClassifier",
    "forest.ARFRegressor",
})
"""First steps that handle string (categorical) features; any other pipeline takes numbers only."""

METRICS: dict[str, type] = {
    name: getattr(metrics, name)
    for name in ["Accuracy", "BalancedAccuracy", "F1", "Precision", "Recall", "MacroF1", "MicroF1",
                 "ROCAUC", "LogLoss", "CrossEntropy", "MAE", "MSE", "RMSE", "R2", "SMAPE"]
}
"""Metrics a declaration may list, by River class name."""

_SCALARS = (bool, int, float, str)
Label = bool | float | str | None


class DeclarationError(ValueError):
    """A model declaration that cannot be built; the message names the model and the key."""


class RejectedEvent(ValueError):
    """An event a model cannot take; `reason` is the dead-letter code, the message names the field."""

    reason = "rejected"


class InvalidLabel(RejectedEvent):
    reason = "invalid_label"


class Task:
    """What models of one task do with events, the way River's base classes split them: the final
    step they need, the labels they take, how they predict, learn and err, what inference serves."""

    name = ""
    final_step: type = base.Estimator
    """The River base class a declared pipeline's last step must be."""
    outputs: tuple[str, ...] = ()
    """The output tensors inference answers with, per row."""
    supervised = True
    """Learns from labelled events only, and a drift detector watches its errors (an anomaly
    detector learns from every event and has no error to watch)."""
    probabilities = False
    """Answers class probabilities (`predict_proba`), the label being the most probable class."""
    binary_errors = False
    """Its errors are 0 or 1, so a binary drift detector (DDM, EDDM) can watch them."""

    def check_label(self, label: Any) -> Label:
        """The label if its type fits the task (None: unlabelled), else `InvalidLabel` saying what was expected."""
        raise NotImplementedError

    def predict(self, model: base.Estimator, x: dict[str, Any]) -> Any:
        return model.predict_one(x)

    def learn(self, model: base.Estimator, x: dict[str, Any], y: Label) -> None:
        model.learn_one(x, y)

    def error(self, y: Label, y_pred: Any) -> float:
        """How wrong `y_pred` was: what the drift detector watches."""
        return float(y_pred != y)

    def metric_problem(self, metric: metrics.base.Metric, model: base.Estimator) -> str | None:
        """Why `metric` cannot score this task's `model`, or None if it can."""
        if metric.works_with(model):
            return None
        return f"metric {type(metric).__name__} does not work with a {self.name} model"

    def __repr__(self) -> str:
        return f"TASKS[{self.name!r}]"


class BinaryClassification(Task):
    name = "binary"
    final_step = base.Classifier
    outputs = ("label", "probabilities")
    probabilities = True
    binary_errors = True

    def check_label(self, label: Any) -> Label:
        if label is None or isinstance(label, bool):
            return label
        raise InvalidLabel(f"label: a binary model needs a boolean label, got {_avro_kind(label)} {label!r}")

    def predict_proba(self, model: base.Estimator, x: dict[str, Any]) -> dict[Any, float]:
        return model.predict_proba_one(x)


class MulticlassClassification(BinaryClassification):
    name = "multiclass"

    def check_label(self, label: Any) -> Label:
        if label is None or isinstance(label, (str, bool)):
            return label
        raise InvalidLabel(f"label: a multiclass model needs a class name (string or boolean), "
                           f"got {_avro_kind(label)} {label!r}")


class Regression(Task):
    name = "regression"
    final_step = base.Regressor
    outputs = ("value",)

    def check_label(self, label: Any) -> Label:
        if label is None:
            return None
        if isinstance(label, bool) or not isinstance(label, (int, float)):
            raise InvalidLabel(f"label: a regression model needs a numeric (double) label, got {_avro_kind(label)} {label!r}")
        if not math.isfinite(label):
            raise InvalidLabel(f"label: a regression label must be finite, got {label!r}")
        return label

    def error(self, y: Label, y_pred: Any) -> float:
        return abs(y - y_pred) if y_pred is not None else 0.0


class AnomalyDetection(Task):
    name = "anomaly"
    final_step = base.AnomalyDetector
    outputs = ("score",)
    supervised = False

    def check_label(self, label: Any) -> Label:
        if label is None or isinstance(label, bool):
            return label
        raise InvalidLabel(f"label: an anomaly model takes an optional boolean label (is it an anomaly?), "
                           f"got {_avro_kind(label)} {label!r}")

    def predict(self, model: base.Estimator, x: dict[str, Any]) -> float:
        return model.score_one(x)  # higher is more anomalous

    def learn(self, model: base.Estimator, x: dict[str, Any], y: Label) -> None:
        model.learn_one(x)  # unsupervised: the label only scores it

    def metric_problem(self, metric: metrics.base.Metric, model: base.Estimator) -> str | None:
        if metric.requires_labels or not isinstance(metric, metrics.base.BinaryMetric):
            return f"metric {type(metric).__name__} cannot score an anomaly model; use ROCAUC"
        return None


TASKS: dict[str, Task] = {task.name: task for task in (BinaryClassification(), MulticlassClassification(),
                                                       Regression(), AnomalyDetection())}
"""Every task a declaration may name, by name."""


def _avro_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "double"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


@dataclass(frozen=True)
class DriftPolicy:
    detector: dict[str, Any] = field(default_factory=lambda: {"class": "drift.ADWIN"})
    response: str = "log"
    background_events: int = 500
    """With response "background": events the background model learns before it is swapped in."""


@dataclass(frozen=True)
class ModelDeclaration:
    """One model as declared; `build_*` make fresh River objects from it."""

    model_id: str
    task: Task
    pipeline: tuple[dict[str, Any], ...]
    metrics: tuple[str, ...]
    tenant: str = "*"
    source: str = "*"
    drift: DriftPolicy = field(default_factory=DriftPolicy)
    batch_size: int = 1
    """Above 1: learn mini-batches with River's `learn_many` (see `OnlineModel.process_many`)."""

    @property
    def takes_strings(self) -> bool:
        return self.pipeline[0]["class"] in TAKES_STRINGS

    def takes(self, tenant: str, source: str) -> bool:
        """Whether an event of this tenant and source is for this model (glob patterns)."""
        return _matches(tenant, self.tenant) and _matches(source, self.source)

    def build_model(self) -> base.Estimator:
        where = f"model {self.model_id!r}: pipeline"
        steps = [_build(step, f"{where}[{i}]") for i, step in enumerate(self.pipeline)]
        return steps[0] if len(steps) == 1 else compose.Pipeline(*steps)

    def build_metrics(self) -> list[metrics.base.Metric]:
        return [METRICS[name]() for name in self.metrics]

    def build_detector(self) -> base.DriftDetector | base.BinaryDriftDetector:
        return _build(self.drift.detector, f"model {self.model_id!r}: drift.detector")

    def fingerprint(self) -> str:
        """SHA-256 of the declaration's canonical JSON: a snapshot is only resumed under the same one."""
        canonical = json.dumps(
            {"task": self.task.name, "pipeline": self.pipeline, "metrics": self.metrics, "batch_size": self.batch_size,
             "drift": [self.drift.detector, self.drift.response, self.drift.background_events]},
            sort_keys=True, separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@functools.lru_cache(maxsize=4096)
def _matches(value: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(value, pattern)  # cached: a stream repeats few tenants and sources


def parse_declarations(document: dict[str, Any], where: str = "declarations") -> list[ModelDeclaration]:
    unknown = set(document) - {"model"}
    if unknown:
        raise DeclarationError(f"{where}: unknown top-level keys {sorted(unknown)}; only [[model]] tables")
    tables = document.get("model")
    if not isinstance(tables, list) or not tables:
        raise DeclarationError(f"{where}: declares no model; add at least one [[model]] table")
    declarations = [parse_declaration(table, f"{where}: model[{i}]") for i, table in enumerate(tables)]
    ids = [d.model_id for d in declarations]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise DeclarationError(f"{where}: model ids declared twice: {duplicates}")
    return declarations


def parse_declaration(table: dict[str, Any], where: str = "model") -> ModelDeclaration:
    known = {"id", "task", "pipeline", "metrics", "tenant", "source", "drift", "batch_size"}
    _no_unknown_keys(table, known, where)
    model_id = table.get("id")
    if not isinstance(model_id, str) or not model_id:
        raise DeclarationError(f"{where}: 'id' must be a non-empty string")
    where = f"model {model_id!r}"
    task = TASKS.get(table["task"]) if isinstance(table.get("task"), str) else None
    if task is None:
        raise DeclarationError(f"{where}: 'task' must be one of {', '.join(TASKS)}; got {table.get('task')!r}")
    pipeline = table.get("pipeline")
    if not isinstance(pipeline, list) or not pipeline:
        raise DeclarationError(f"{where}: 'pipeline' must be a non-empty list of {{ class = ... }} tables")
    names = table.get("metrics", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DeclarationError(f"{where}: 'metrics' must be a list of metric names")
    for name in names:
        if name not in METRICS:
            raise DeclarationError(f"{where}: metric {name!r} is not allowed; choose from {', '.join(METRICS)}")
    for key in ("tenant", "source"):
        if not isinstance(table.get(key, "*"), str):
            raise DeclarationError(f"{where}: {key!r} must be a string (a glob pattern)")
    declaration = ModelDeclaration(
        model_id=model_id,
        task=task,
        pipeline=tuple(pipeline),
        metrics=tuple(names),
        tenant=table.get("tenant", "*"),
        source=table.get("source", "*"),
        drift=_parse_drift(table.get("drift", {}), f"{where}: drift"),
        batch_size=table.get("batch_size", 1),
    )
    if isinstance(declaration.batch_size, bool) or not isinstance(declaration.batch_size, int) or declaration.batch_size < 1:
        raise DeclarationError(f"{where}: 'batch_size' must be a positive integer; got {declaration.batch_size!r}")
    _check_buildable(declaration, where)
    return declaration


def _parse_drift(table: Any, where: str) -> DriftPolicy:
    if not isinstance(table, dict):
        raise DeclarationError(f"{where}: must be a table")
    _no_unknown_keys(table, {"detector", "response", "background_events"}, where)
    policy = DriftPolicy(**table)
    if policy.response not in DRIFT_RESPONSES:
        raise DeclarationError(f"{where}: 'response' must be one of {', '.join(DRIFT_RESPONSES)}; got {policy.response!r}")
    if not isinstance(policy.background_events, int) or policy.background_events < 1:
        raise DeclarationError(f"{where}: 'background_events' must be a positive integer")
    return policy


def _check_buildable(declaration: ModelDeclaration, where: str) -> None:
    """Build everything once so a bad declaration fails at start-up, not on the first event."""
    task = declaration.task
    model = declaration.build_model()
    final = model[-1] if isinstance(model, compose.Pipeline) else model
    if not isinstance(final, task.final_step):
        raise DeclarationError(f"{where}: task {task.name!r} needs a final step that is a "
                               f"{task.final_step.__name__}; {type(final).__name__} is not")
    for metric in declaration.build_metrics():
        problem = task.metric_problem(metric, model)
        if problem is not None:
            raise DeclarationError(f"{where}: {problem}")
    if declaration.batch_size > 1:
        _check_batchable(declaration, model, where)
    detector = declaration.build_detector()
    if not isinstance(detector, (base.DriftDetector, base.BinaryDriftDetector)):
        raise DeclarationError(f"{where}: drift.detector {type(detector).__name__} is not a drift detector")
    if isinstance(detector, base.BinaryDriftDetector) and not task.binary_errors:
        raise DeclarationError(f"{where}: drift.detector {type(detector).__name__} watches 0/1 errors; "
                               f"a {task.name} model needs ADWIN, PageHinkley or KSWIN")


def _check_batchable(declaration: ModelDeclaration, model: base.Estimator, where: str) -> None:
    steps = list(model.steps.values()) if isinstance(model, compose.Pipeline) else [model]
    for step in steps[:-1]:
        if not hasattr(step, "learn_many") or not hasattr(step, "transform_many"):
            raise DeclarationError(f"{where}: batch_size > 1 needs learn_many/transform_many; {type(step).__name__} has none")
    if not declaration.task.supervised or not hasattr(steps[-1], "learn_many") or not hasattr(steps[-1], "predict_many"):
        raise DeclarationError(f"{where}: batch_size > 1 needs learn_many/predict_many; {type(steps[-1]).__name__} has none")
    for metric in declaration.build_metrics():
        if not getattr(metric, "requires_labels", True):
            raise DeclarationError(f"{where}: batch_size > 1 scores predicted labels only; "
                                   f"metric {type(metric).__name__} needs probabilities")


def _build(spec: Any, where: str) -> Any:
    if not isinstance(spec, dict) or "class" not in spec:
        raise DeclarationError(f"{where}: must be a table with a 'class' key, e.g. {{ class = \"drift.ADWIN\" }}")
    _no_unknown_keys(spec, {"class", "params"}, where)
    name = spec["class"]
    cls = ALLOWED.get(name)
    if cls is None:
        raise DeclarationError(f"{where}: class {name!r} is not in the allow-list; allowed: {', '.join(sorted(ALLOWED))}")
    params = spec.get("params", {})
    if not isinstance(params, dict):
        raise DeclarationError(f"{where}: 'params' of {name} must be a table")
    accepted = inspect.signature(cls).parameters
    kwargs = {}
    for key, value in params.items():
        if key not in accepted:
            raise DeclarationError(f"{where}: {name} has no parameter {key!r}; it takes {', '.join(accepted)}")
        kwargs[key] = _value(value, f"{where}.{key}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise DeclarationError(f"{where}: {name}({_show(kwargs)}) was refused by River: {exc}") from None


def _value(value: Any, where: str) -> Any:
    if isinstance(value, dict):
        return _build(value, where)
    if isinstance(value, list):
        return [_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, _SCALARS):
        return value
    raise DeclarationError(f"{where}: {type(value).__name__} values are not allowed; use numbers, strings, booleans, lists or {{ class = ... }}")


def _no_unknown_keys(table: dict[str, Any], known: set[str], where: str) -> None:
    unknown = set(table) - known
    if unknown:
        raise DeclarationError(f"{where}: unknown keys {sorted(unknown)}; expected some of {sorted(known)}")


def _show(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
