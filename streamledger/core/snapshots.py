"""Sealing a model's state into bytes with a SHA-256, and opening it only if the hash matches.

    sealed = seal(state)                 # SealedState(data=b"...", sha256="ab12...")
    state = unseal(sealed.data, sealed.sha256)

The hash is checked BEFORE any byte is unpickled: a snapshot whose bytes do not hash to
the recorded value raises `SnapshotHashMismatch` and is never loaded. Even a matching
snapshot is unpickled by `SafeUnpickler`, which resolves only the modules a River model is
made of, so a snapshot written by something else cannot run arbitrary code.

Formats (the record's `format`, checked before unpickling; every format ever written stays
readable):
- "pickle/learner-state-v2" (written): the pickled `dict` of `OnlineModel.state()`; its "model"
  key is the River estimator that predicts. Bound methods are named
  `streamledger.core.snapshots.bound_method`. Reading it needs River, not this code.
- "pickle/learner-state-v1" (read): the same dict, written by wave 1, whose bound methods are
  named `services.learning.snapshots.bound_method` (or this module's path, for snapshots written
  while the module had moved and the format had not yet changed).
"""

from __future__ import annotations

import copyreg
import hashlib
import io
import pickle
import random
from dataclasses import dataclass
from types import FunctionType, MethodType, ModuleType
from typing import Any

FORMAT = "pickle/learner-state-v2"
"""The format `seal` writes."""
PROTOCOL = 5  # fixed, so the same state gives the same bytes whatever Python's default becomes

_ALLOWED_MODULE_ROOTS = ("river", "numpy", "scipy", "collections", "sortedcontainers", "copyreg", "random",
                         "functools", "_collections_abc", "math", "datetime")
_ALLOWED_BUILTINS = frozenset({"set", "frozenset", "dict", "list", "tuple", "float", "int", "complex",
                               "bool", "str", "bytes", "bytearray", "slice", "range", "object"})


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
    """The pickle names a global outside the modules models are made of."""

    reason = "snapshot_forbidden_global"


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
    """`owner.name`, only for a method defined by a class of an allowed module."""
    function = getattr(type(owner), name, None) if not name.startswith("__") else None
    origin = getattr(function, "__module__", None) or ""
    if not isinstance(function, FunctionType) or origin.split(".", 1)[0] not in _ALLOWED_MODULE_ROOTS:
        raise ForbiddenGlobal(f"model: snapshot binds method {name!r} of {type(owner).__name__}, "
                              "which is not a River model's method")
    return MethodType(function, owner)


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
    """An unpickler that only resolves globals from the modules River models are built from, and
    `bound_method` under the module paths the snapshot's format names it by."""

    def __init__(self, file: io.BytesIO, bound_method_modules: frozenset[str] = READABLE[FORMAT]) -> None:
        super().__init__(file)
        self.bound_method_modules = bound_method_modules

    def find_class(self, module: str, name: str) -> Any:
        if name == "bound_method" and module in self.bound_method_modules:
            return bound_method
        if module == "builtins" and name in _ALLOWED_BUILTINS:
            return super().find_class(module, name)
        if module.split(".", 1)[0] in _ALLOWED_MODULE_ROOTS:
            found = super().find_class(module, name)
            # An allowed module may itself import os or subprocess; what is found must
            # belong to an allowed module too, and never be a module object.
            origin = getattr(found, "__module__", None) or ""
            if not isinstance(found, ModuleType) and origin.split(".", 1)[0] in _ALLOWED_MODULE_ROOTS:
                return found
        raise ForbiddenGlobal(f"model: snapshot refers to {module}.{name}, which is not part of a River model")
