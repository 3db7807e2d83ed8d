"""Sealing a model's state into bytes with a SHA-256, and opening it only if the hash matches.

    sealed = seal(state)                 # SealedState(data=b"...", sha256="ab12...")
    state = unseal(sealed.data, sealed.sha256)

The hash is checked BEFORE any byte is unpickled: a snapshot whose bytes do not hash to
the recorded value raises `SnapshotHashMismatch` and is never loaded. Even a matching
snapshot is unpickled by `SafeUnpickler`, which resolves only the exact (module, name) pairs
River models are made of, so a snapshot written by something else cannot run arbitrary code.

The record's own hash catches corruption, not a writer who rewrites bytes and hash together.
Whenever a ledger is configured, a snapshot is first vouched for by the ledger's model registry:
`ledger_verdict` says whether `GetModel(model, version)` holds exactly its SHA-256, submitted by
the model registrant (`streamledger.snapshot_vouching` asks the ledger; inference and learning
call `unseal` only after it); otherwise `SnapshotNotVouched`, with its reason.

Formats (the record's `format`, checked before unpickling; every format ever written stays
readable):
- "pickle/learner-state-v2" (written): the pickled `dict` of `OnlineModel.state()`; its "model"
  key is the River estimator that predicts. Bound methods are named
  `streamledger.core.snapshots.bound_method`. Reading it needs River, not this code.
- "pickle/learner-state-v1" (read): the same dict, written by wave 1, whose bound methods are
  named `services.learning.snapshots.bound_method` (or this module's path, for snapshots written
  while the module had moved and the format had not yet changed).

Why pickle, with exact (module, name) pairs. River estimators, metrics and drift detectors have no
data-format export: River gives their parameters (`_get_params`, `clone`) but not their learned
state, which is private attributes of nested objects (tree nodes, splitters, running statistics,
Rust `VectorDict`/ADWIN windows) that only `pickle` (or `copy`) round-trips. So the bytes stay a
pickle, and what a pickle may name is closed: `SafeUnpickler.find_class` looks the (module, name) pair up in
`allowed_globals()` and never imports anything. That table is computed once, on first use, from:
- every class a declaration may name (`models.ALLOWED`), every metric (`models.METRICS`), and
  `compose.Pipeline` (what a declaration builds), each under its own module and qualified name;
- the classes (types only, never functions) defined in the modules of those classes and in
  `_PART_MODULES`, a short reviewed list of River modules whose classes are the parts models are
  made of (tree nodes and splitters, running statistics, losses, schedulers, initializers, ...);
- `_PART_FUNCTIONS`, the few functions River keeps as attributes (by `functools.partial`);
- numpy's array and scalar reconstruction (`_reconstruct`, `_frombuffer`, `scalar`, `ndarray`,
  `dtype`), under numpy 2's and numpy 1's module paths;
- `_PLAIN_GLOBALS`: the builtins, `collections`, `copyreg`, `functools.partial`, `random.Random`,
  `statistics.NormalDist` and `copy.deepcopy` entries River state uses (found by pickling every
  allowed class after learning; tests/unit/test_snapshot_unpickler.py does that again, so a pickle
  naming anything else fails there).
No whole module or package is ever allowed, and no function that reads or writes files, imports,
or evaluates: a snapshot naming `numpy.load`, `numpy.savetxt`, `scipy.io.loadmat`,
`builtins.getattr`, `operator.attrgetter`, `os.system`, ... raises `ForbiddenGlobal` before any
opcode calls anything. `bound_method` binds only the methods River keeps as attributes
(`_BOUND_METHODS`), so a pickle cannot call an arbitrary method of a model either.
"""

from __future__ import annotations

import collections
import copy
import copyreg
import functools
import hashlib
import importlib
import io
import pickle
import random
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import FunctionType, MethodType
from typing import Any

import numpy
from river import compose, drift, linear_model, naive_bayes
from river.tree.splitter import ebst_splitter, nominal_splitter_reg

from streamledger.core import models

FORMAT = "pickle/learner-state-v2"
"""The format `seal` writes."""
PROTOCOL = 5  # fixed, so the same state gives the same bytes whatever Python's default becomes

_PART_MODULES = (
    "river._river_rust.drift", "river._river_rust.vectordict",
    "river.metrics.confusion", "river.optim.initializers", "river.optim.losses", "river.optim.schedulers",
    "river.proba.gaussian", "river.stats.maximum", "river.stats.mean", "river.stats.minimum", "river.stats.var",
    "river.tree.nodes.branch", "river.tree.nodes.leaf", "river.tree.nodes.htc_nodes", "river.tree.nodes.hatc_nodes",
    "river.tree.nodes.htr_nodes", "river.tree.nodes.hatr_nodes", "river.tree.nodes.arf_htc_nodes",
    "river.tree.nodes.arf_htr_nodes", "river.tree.padded", "river.tree.splitter.gaussian_splitter",
    "river.tree.splitter.ebst_splitter", "river.tree.splitter.tebst_splitter",
    "river.tree.splitter.nominal_splitter_classif", "river.tree.splitter.nominal_splitter_reg",
)
"""Reviewed: River modules whose classes are parts of allowed models (pure computation, no I/O);
their classes are allowed, their functions are not."""

_PART_FUNCTIONS = (
    naive_bayes.GaussianNB._make_gaussian,  # partial(defaultdict, _make_gaussian): a Gaussian per class
    ebst_splitter.EBSTNode._update_estimator_univariate,  # a tree regressor's splitter node keeps one of these
    ebst_splitter.EBSTNode._update_estimator_multivariate,
    nominal_splitter_reg.NominalSplitterReg._update_estimator_univariate,  # likewise, for a categorical feature
    nominal_splitter_reg.NominalSplitterReg._update_estimator_multivariate,
)

_BOUND_METHODS: dict[type, frozenset[str]] = {
    drift.PageHinkley: frozenset({"_test_both", "_test_increase", "_test_decrease"}),  # `_test_drift`
    linear_model.PAClassifier: frozenset({"_calc_tau_0", "_calc_tau_1", "_calc_tau_2"}),  # `calc_tau`
    linear_model.PARegressor: frozenset({"_calc_tau_0", "_calc_tau_1", "_calc_tau_2"}),
}
"""The methods River keeps as attributes, per class: the only ones `bound_method` hands back."""

_PLAIN_GLOBALS = (
    bool, int, float, complex, str, bytes, bytearray, tuple, list, dict, set, frozenset, slice, range, object,
    collections.Counter, collections.OrderedDict, collections.defaultdict, collections.deque,
    copyreg._reconstructor, copyreg.__newobj__,
    functools.partial,  # calls only what it wraps, itself resolved through this table
    random.Random,  # River models' seeded generators
    statistics.NormalDist,  # HoeffdingAdaptiveTreeRegressor's significance test
    copy.deepcopy,  # SoftmaxRegression: partial(deepcopy, optimizer), one optimizer per class; copies, never imports
)
"""The builtin and standard-library globals River state uses: types, and functions that only build."""

READABLE: dict[str, frozenset[str]] = {
    "pickle/learner-state-v1": frozenset({"services.learning.snapshots", __name__}),
    FORMAT: frozenset({__name__}),
}
"""Each format `unseal` reads, and the module paths under which its pickles name `bound_method`
(a pickle names a function by module path, so every path it had stays readable)."""

_PLAIN_TYPES = frozenset({str, bytes, int, float, bool, dict, list, tuple, set, frozenset, type(None)})


class SnapshotError(ValueError):
    reason = "snapshot_error"


class SnapshotHashMismatch(SnapshotError):
    """The snapshot's bytes do not hash to its recorded SHA-256: tampered or corrupted."""

    reason = "snapshot_hash_mismatch"


class SnapshotFormatError(SnapshotError):
    reason = "snapshot_format"


class ForbiddenGlobal(SnapshotError):
    """The pickle names a global that is not one of the exact (module, name) pairs models are made of."""

    reason = "snapshot_forbidden_global"


class SnapshotNotVouched(SnapshotError):
    """The ledger's model registry does not vouch for the snapshot (checked before unpickling);
    `reason` says why: one of `NOT_VOUCHED`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


NOT_VOUCHED = {
    "not_registered": "the ledger has no such version of the model",
    "registered_with_another_hash": "the ledger registered this version with another SHA-256",
    "registered_by_another_account": "this version was registered by another account than the expected registrant",
    "ledger_unreachable": "the ledger could not be read",
}
"""Why a snapshot is refused by the ledger check: reason -> what it means."""


def ledger_verdict(registered: Mapping[str, Any] | None, model_id: str, version: int, sha256: str,
                   registrant: str) -> SnapshotNotVouched | None:
    """None when `registered` (the contract's `GetModel(model_id, version)` record, or None if it has
    none) holds exactly `sha256` and was submitted by `registrant`; otherwise why not."""
    where = f"model {model_id!r} version {version}"
    if registered is None:
        return SnapshotNotVouched("not_registered", f"{where}: not registered on the ledger (GetModel found none)")
    if str(registered.get("sha256", "")).lower() != sha256.lower():
        return SnapshotNotVouched("registered_with_another_hash",
                                  f"{where}: the ledger registered sha256 {registered.get('sha256')}, "
                                  f"the snapshot's is {sha256}")
    if registered.get("submitter") != registrant:
        return SnapshotNotVouched("registered_by_another_account",
                                  f"{where}: registered by {registered.get('submitter')!r}, "
                                  f"not by the model registrant {registrant!r}")
    return None


@dataclass(frozen=True)
class SealedState:
    data: bytes
    sha256: str


def seal(state: dict[str, Any]) -> SealedState:
    buffer = io.BytesIO()
    CanonicalPickler(buffer, protocol=PROTOCOL).dump(state)
    data = buffer.getvalue()
    return SealedState(data=data, sha256=hashlib.sha256(data).hexdigest())


class CanonicalPickler(pickle._Pickler):
    """A pickler whose bytes depend only on the objects' values and structure.

    The standard pickler shares a string by identity, so two equal models (one restored
    from a snapshot, where e.g. a class name and a dict key are no longer the same string
    object) pickle to different bytes. Sharing strings by value removes that difference,
    so a model rebuilt from a snapshot hashes like one that never stopped. It uses the
    pure-Python pickler, which is slower, but it runs once per snapshot.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file: io.BytesIO, protocol: int) -> None:
        super().__init__(file, protocol=protocol)
        self._strings: dict[str, int] = {}

    def _save_str_by_value(self, text: str) -> None:
        index = self._strings.get(text)
        if index is not None:
            self.write(self.get(index))
            return
        pickle._Pickler.dispatch[str](self, text)
        self._strings[text] = self.memo[id(text)][0]

    dispatch[str] = _save_str_by_value

    def _save_set_sorted(self, items: set) -> None:
        # A set of strings iterates in an order that depends on the process's hash seed
        # and on its insertion history; write its items sorted so equal sets give equal bytes.
        self.write(pickle.EMPTY_SET)
        self.memoize(items)
        if items:
            self.write(pickle.MARK)
            for item in _sorted_if_possible(items):
                self.save(item)
            self.write(pickle.ADDITEMS)

    dispatch[set] = _save_set_sorted

    def reducer_override(self, obj: Any) -> Any:
        # A bound method (River's PageHinkley keeps one as its drift test) pickles through
        # builtins.getattr, which no safe unpickler may resolve: name it through
        # `bound_method`, which only hands back a method a River class defines.
        if isinstance(obj, MethodType):
            return bound_method, (obj.__self__, obj.__func__.__name__)
        # An unseeded random generator (River gives one to every `proba.Gaussian` of a
        # tree) holds OS entropy, not learned state: pickle it as a fixed seed so equal
        # models hash equally. Models whose randomness matters are declared with a seed.
        state = getattr(obj, "__dict__", None)
        if state is None or type(obj) in _PLAIN_TYPES or state.get("seed", 0) is not None:
            return NotImplemented
        if not isinstance(state.get("_rng"), random.Random) or type(obj).__getstate__ is not object.__getstate__:
            return NotImplemented
        return copyreg.__newobj__, (type(obj),), {**state, "_rng": random.Random(0)}


def bound_method(owner: Any, name: str) -> MethodType:
    """`owner.name`, only for a method River keeps as an attribute (`_BOUND_METHODS`)."""
    cls = owner if isinstance(owner, type) else type(owner)
    if name in _BOUND_METHODS.get(cls, ()):
        attribute = getattr(cls, name)
        if isinstance(attribute, MethodType) and attribute.__self__ is owner:  # a classmethod
            return attribute
        if isinstance(attribute, FunctionType) and not isinstance(owner, type):
            return MethodType(attribute, owner)
    raise ForbiddenGlobal(f"model: snapshot binds method {name!r} of {cls.__name__}, "
                          "which is not a method a River model keeps")


@functools.cache
def allowed_globals() -> dict[tuple[str, str], Any]:
    """Every (module, name) a snapshot may name, with what it resolves to (see the module docstring)."""
    model_classes = [*models.ALLOWED.values(), *models.METRICS.values(), compose.Pipeline]
    modules = [importlib.import_module(name) for name in _PART_MODULES]
    modules += [importlib.import_module(cls.__module__) for cls in model_classes]
    classes = [*model_classes, *(value for module in modules for value in vars(module).values()
                                 if isinstance(value, type) and value.__module__ == module.__name__)]
    table = {_name(obj): obj for obj in [*classes, *_PART_FUNCTIONS, *_PLAIN_GLOBALS]}
    for obj in _numpy_reconstruction():
        module, name = _name(obj)
        table[module, name] = obj
        table[module.replace("numpy._core", "numpy.core"), name] = obj  # as numpy 1 named it
    return table


def _name(obj: Any) -> tuple[str, str]:
    return obj.__module__, obj.__qualname__


def _numpy_reconstruction() -> Iterable[Any]:
    """What numpy names in the pickle of an array or a scalar, taken from numpy's own reductions."""
    array, scalar = numpy.arange(2.0), numpy.float64(1.0)
    return numpy.ndarray, numpy.dtype, array.__reduce__()[0], array.__reduce_ex__(5)[0], scalar.__reduce__()[0]


def unseal(data: bytes, sha256: str, format: str = FORMAT) -> dict[str, Any]:
    """The state in `data`, after checking its hash and format; raises a `SnapshotError` otherwise."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256.lower():
        raise SnapshotHashMismatch(f"sha256: snapshot bytes hash to {actual}, the record says {sha256}")
    bound_method_modules = READABLE.get(format)
    if bound_method_modules is None:
        raise SnapshotFormatError(f"format: {format!r} is not one this reader knows ({', '.join(READABLE)})")
    try:
        state = SafeUnpickler(io.BytesIO(data), bound_method_modules).load()
    except SnapshotError:
        raise
    except Exception as exc:  # a hash-valid but undecodable pickle: report, never crash
        raise SnapshotFormatError(f"model: bytes do not unpickle: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise SnapshotFormatError(f"model: expected a learner-state dict, got {type(state).__name__}")
    return state


def _sorted_if_possible(items: set) -> list:
    try:
        return sorted(items, key=lambda item: (type(item).__name__, item))
    except TypeError:  # items of one type that do not order: keep the set's own order
        return list(items)


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the exact (module, name) pairs of `allowed_globals()`, and
    `bound_method` under the module paths the snapshot's format names it by. It never imports."""

    def __init__(self, file: io.BytesIO, bound_method_modules: frozenset[str] = READABLE[FORMAT]) -> None:
        super().__init__(file)
        self.bound_method_modules = bound_method_modules

    def find_class(self, module: str, name: str) -> Any:
        if name == "bound_method" and module in self.bound_method_modules:
            return bound_method
        found = allowed_globals().get((module, name))
        if found is None:
            raise ForbiddenGlobal(f"model: snapshot refers to {module}.{name}, which is not part of a River model")
        return found
