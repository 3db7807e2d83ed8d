"""Tensors of the Open Inference Protocol <-> rows of features for River.

    rows = rows_from_request(request, model.features)        # [{"f1": 0.5, "f2": "a"}, ...]
    put_outputs(response, model.predict(rows).outputs, requested)

A request's inputs arrive column by column (one tensor per feature), either typed in
`contents` or as little-endian bytes in `raw_input_contents` (Triton's client sends raw).
Every check raises `InvalidInput` naming the tensor at fault.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from services.inference.models import NUMBER, STRING, Output

_FP64 = np.dtype("<f8")


class InvalidInput(ValueError):
    """A request that does not fit the model's inputs; the message names the tensor."""


def rows_from_request(request: Any, features: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """One feature dict per row of the request; raises `InvalidInput` on any misfit."""
    expected = dict(features)
    if not request.inputs:
        raise InvalidInput(f"request has no inputs; model {request.model_name!r} takes {_describe(features)}")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
                           "it must carry every input, in the order of `inputs`")
    columns: dict[str, list[Any]] = {}
    rows = None
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in columns:
            raise InvalidInput(f"input {name!r} is given twice")
        datatype = expected.get(name)
        if datatype is None:
            raise InvalidInput(f"input {name!r} is not an input of model {request.model_name!r}; "
                               f"it takes {_describe(features)}")
        if tensor.datatype != datatype:
            raise InvalidInput(f"input {name!r}: datatype {tensor.datatype or '(none)'} is not accepted; it takes {datatype}")
        count = _row_count(name, list(tensor.shape))
        if rows is None:
            rows = count
        elif count != rows:
            first = next(iter(columns))
            raise InvalidInput(f"input {name!r} has {count} rows but input {first!r} has {rows}")
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput(f"input {name!r} has contents while the request uses raw_input_contents")
            columns[name] = _from_raw(name, datatype, raw[index], count)
        else:
            columns[name] = _from_contents(name, datatype, tensor.contents, count)
    missing = [n for n in expected if n not in columns]
    if missing:
        raise InvalidInput(f"input {missing[0]!r} is missing" + (f" (and {missing[1:]})" if missing[1:] else "")
                           + f"; model {request.model_name!r} takes {_describe(features)}")
    # Rows list features in the model's order, whatever the request's: River sums over a
    # row's items in order, so the same order gives the same floating-point answer.
    names = list(expected)
    return [dict(zip(names, values)) for values in zip(*(columns[n] for n in names))]


def _describe(features: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{n} ({t})" for n, t in features) or "no features yet"


def _row_count(name: str, shape: list[int]) -> int:
    if len(shape) == 2 and shape[1] == 1:
        shape = shape[:1]
    if len(shape) != 1:
        raise InvalidInput(f"input {name!r}: shape {shape} is not [rows] or [rows, 1]")
    if shape[0] < 0:
        raise InvalidInput(f"input {name!r}: shape {shape} has a negative size")
    if shape[0] == 0:
        raise InvalidInput(f"input {name!r}: empty batch (shape {shape}); send at least one row")
    return shape[0]


def _from_raw(name: str, datatype: str, data: bytes, count: int) -> list[Any]:
    if datatype == NUMBER:
        if len(data) != count * _FP64.itemsize:
            raise InvalidInput(f"input {name!r}: {len(data)} raw bytes for {count} FP64 values "
                               f"(expected {count * _FP64.itemsize})")
        return _finite(name, np.frombuffer(data, dtype=_FP64).tolist())
    values, offset = [], 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise InvalidInput(f"input {name!r}: raw BYTES element {len(values)} has a truncated length prefix")
        (size,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + size > len(data):
            raise InvalidInput(f"input {name!r}: raw BYTES element {len(values)} is longer than the data left")
        values.append(data[offset:offset + size])
        offset += size
    if len(values) != count:
        raise InvalidInput(f"input {name!r}: {len(values)} BYTES elements for shape of {count} rows")
    return _texts(name, values)


def _from_contents(name: str, datatype: str, contents: Any, count: int) -> list[Any]:
    values = list(contents.fp64_contents) if datatype == NUMBER else list(contents.bytes_contents)
    if len(values) != count:
        field = "fp64_contents" if datatype == NUMBER else "bytes_contents"
        raise InvalidInput(f"input {name!r}: {len(values)} values in contents.{field} for shape of {count} rows")
    return _finite(name, values) if datatype == NUMBER else _texts(name, values)


def _finite(name: str, values: list[float]) -> list[float]:
    if not math.isfinite(math.fsum(values)):  # one pass for the common all-finite case
        row = next(i for i, v in enumerate(values) if not math.isfinite(v))
        raise InvalidInput(f"input {name!r} row {row}: {values[row]} is not a finite number")
    return values


def _texts(name: str, values: list[bytes]) -> list[str]:
    try:
        return [v.decode() for v in values]
    except UnicodeDecodeError:
        row = next(i for i, v in enumerate(values) if not _is_utf8(v))
        raise InvalidInput(f"input {name!r} row {row}: BYTES are not UTF-8 text") from None


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True


def check_requested(requested: Sequence[str], available: Sequence[str], model_id: str) -> list[str]:
    """The output names to return: all when none are requested; `InvalidInput` for an unknown one."""
    for name in requested:
        if name not in available:
            raise InvalidInput(f"output {name!r} is not an output of model {model_id!r}; it has {', '.join(available)}")
    return list(requested) or list(available)


def put_outputs(response: Any, outputs: list[Output], names: Sequence[str]) -> None:
    """Append the chosen outputs to `response`, their data as raw little-endian bytes (as Triton does)."""
    for output in outputs:
        if output.name not in names:
            continue
        response.outputs.add(name=output.name, datatype=output.datatype, shape=list(output.shape))
        if output.datatype == STRING:
            response.raw_output_contents.append(b"".join(struct.pack("<I", len(v)) + v for v in output.values))
        else:
            response.raw_output_contents.append(np.ascontiguousarray(output.values, dtype=_FP64).tobytes())


def output_values(output: Output) -> list[Any]:
    """An output as plain JSON-able values (for the predictions topic)."""
    if output.datatype == STRING:
        return [v.decode(errors="replace") for v in output.values]
    return [None if isinstance(v, float) and math.isnan(v) else v for v in np.asarray(output.values).tolist()]
