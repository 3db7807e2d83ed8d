"""Tensors of the Open Inference Protocol <-> rows of features for River.

    head = split_head(data)                  # model name, version, id and the rest of a serialized request
    reader = RowReader(model.features)
    known = reader.known(head.rest)          # (rows, requested output names), or None: then
    rows = reader.rows(pb.ModelInferRequest.FromString(data), head.rest)
    put_outputs(response, model.predict(rows).outputs, requested)

A request's inputs arrive column by column (one tensor per feature), either typed in
`contents` or as little-endian bytes in `raw_input_contents` (Triton's client sends raw).
Every check raises `InvalidInput` naming the tensor at fault.

A client sends the same tensor descriptions (names, datatypes, shapes) request after
request; only the raw bytes change. So once `rows` has checked a request whose inputs are
all raw FP64, its reader keeps the request's wire bytes after the head (model name,
version, id) minus the raw contents: the layout's prefix. A later request with that prefix
and a tail of exactly one raw FP64 field per input, each of the layout's size, is the same
message with other values; `known` reads it from the bytes with one cached `struct`, with
no protobuf message built and no tensor checked again. Anything else (typed contents, BYTES
inputs, another layout) takes the general path, whose checks and messages are the only ones.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

NUMBER, STRING = "FP64", "BYTES"
_FP64 = np.dtype("<f8")
_LAYOUTS_KEPT = 256
_HEAD_FIELDS = {0x0A: 0, 0x12: 1, 0x1A: 2}
"""ModelInferRequest's first fields, by tag byte: model_name (1), model_version (2), id (3)."""
_RAW_INPUT = b"\x3a"  # field 7 (raw_input_contents), length-delimited


class InvalidInput(ValueError):
    """A request that does not fit the model's inputs; the message names the tensor."""


class Output(NamedTuple):
    name: str
    datatype: str
    shape: tuple[int, ...]
    values: list[float] | list[bytes]
    """Row-major: FP64 values as floats (NaN for "no prediction"), BYTES values as bytes."""


class Head(NamedTuple):
    model_name: str
    model_version: str
    id: str
    rest: bytes
    """The request's bytes after these fields."""


def split_head(data: bytes) -> Head | None:
    """The leading model_name, model_version and id fields of a serialized ModelInferRequest.

    None unless they are short (under 128 bytes) UTF-8 strings, complete within `data`.
    """
    fields = [b"", b"", b""]
    position, end = 0, len(data)
    while position < end:
        slot = _HEAD_FIELDS.get(data[position])
        if slot is None:
            break
        if position + 1 == end or data[position + 1] >= 0x80:
            return None
        start = position + 2
        position = start + data[position + 1]
        if position > end:
            return None
        fields[slot] = data[start:position]
    try:
        return Head(fields[0].decode(), fields[1].decode(), fields[2].decode(), data[position:])
    except UnicodeDecodeError:
        return None


class _Layout(NamedTuple):
    """The checked tensor descriptions of a raw request."""

    rows: int
    tensors: tuple[tuple[str, str], ...]
    """(name, datatype) in the request's order."""
    order: tuple[int, ...] | None
    """Position in the request of each model feature, in the model's order; None if the same."""
    numbers_only: bool


class _WireLayout(NamedTuple):
    """A checked raw FP64 request as bytes: the prefix, then one raw field per input."""

    prefix: bytes
    field_head: tuple[tuple[int, bytes], ...]
    """(offset in a raw field, that byte repeated once per input): the tag and size of each raw field."""
    stride: int
    """Bytes per raw field: tag, size, values."""
    values: struct.Struct
    """Reads every input's values from the tail, skipping the field heads."""
    layout: _Layout
    requested: list[str]
    """Output names the request asks for (empty: all)."""


def rows_from_request(request: Any, features: Mapping[str, str] | Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """One feature dict per row of the request; raises `InvalidInput` on any misfit."""
    return RowReader(features).rows(request)


class RowReader:
    """Rows of one model's features (name -> datatype, in the model's order) from requests."""

    def __init__(self, features: Mapping[str, str] | Sequence[tuple[str, str]]) -> None:
        self.expected = dict(features)
        self.names = list(self.expected)
        self._wire: dict[int, list[_WireLayout]] = {}
        """Wire layouts by the size of the request after its head."""
        self._wire_count = 0

    def known(self, rest: bytes) -> tuple[list[dict[str, Any]], list[str]] | None:
        """Rows and requested output names of a request in a layout `rows` has checked; else None.

        `rest` is the request after its head (`split_head`). A known layout still has its
        values checked: `InvalidInput` names a tensor holding an infinity or a NaN.
        """
        for wire in self._wire.get(len(rest), ()):
            if rest.startswith(wire.prefix) and self._tail_fits(wire, rest):
                values = _finite_columns(wire.layout, wire.values.unpack_from(rest, len(wire.prefix)))
                return self._rows_from_values(wire.layout, values), wire.requested
        return None

    def rows(self, request: Any, rest: bytes | None = None) -> list[dict[str, Any]]:
        """One feature dict per row, in the model's feature order; raises `InvalidInput` on any misfit.

        Given `rest` (the request's bytes after its head), a raw FP64 layout is kept for `known`.
        """
        layout, columns = self._read(request)
        if rest is not None and layout.numbers_only and request.raw_input_contents \
                and self._wire_count < _LAYOUTS_KEPT:
            self._learn(request, layout, rest)
        return self._assemble(layout.order, columns)

    # -- the wire layouts ---------------------------------------------------------------

    @staticmethod
    def _tail_fits(wire: _WireLayout, rest: bytes) -> bool:
        start = len(wire.prefix)
        stride = wire.stride
        for offset, expected in wire.field_head:
            if rest[start + offset::stride] != expected:
                return False
        return True

    def _learn(self, request: Any, layout: _Layout, rest: bytes) -> None:
        raw = request.raw_input_contents
        field_head = _RAW_INPUT + varint(layout.rows * _FP64.itemsize)
        tail = b"".join([field_head + data for data in raw])
        if not rest.endswith(tail):
            return
        prefix = rest[:len(rest) - len(tail)]
        try:
            alone = type(request).FromString(prefix)
        except Exception:  # noqa: BLE001 - a prefix protobuf cannot read alone is simply not kept
            return
        # The prefix must be complete fields that hold none of the head's fields and no raw
        # contents: then any head and any tail of this shape make the same message around it.
        if alone.SerializeToString() != prefix or alone.raw_input_contents or alone.model_name \
                or alone.model_version or alone.id or alone.inputs != request.inputs:
            return
        columns = len(raw)
        skip = f"{len(field_head)}x{layout.rows}d"
        wire = _WireLayout(prefix, tuple((i, bytes((b,)) * columns) for i, b in enumerate(field_head)),
                           len(field_head) + layout.rows * _FP64.itemsize, struct.Struct("<" + skip * columns),
                           layout, [o.name for o in alone.outputs])
        self._wire.setdefault(len(rest), []).append(wire)
        self._wire_count += 1

    # -- checks -------------------------------------------------------------------------

    def _read(self, request: Any) -> tuple[_Layout, list[list[Any]]]:
        """Every rule, tensor by tensor: the layout of the request and its columns (request order)."""
        expected = self.expected
        inputs = request.inputs
        if not inputs:
            raise InvalidInput(f"request has no inputs; model {request.model_name!r} takes {_describe(expected)}")
        raw = request.raw_input_contents
        if raw and len(raw) != len(inputs):
            raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(inputs)} inputs; "
                               "it must carry every input, in the order of `inputs`")
        tensors: dict[str, str] = {}
        columns: list[list[Any]] = []
        rows = None
        for index, tensor in enumerate(inputs):
            name, datatype, count = self._check_tensor(request, tensor, tensors)
            if rows is None:
                rows = count
            elif count != rows:
                first = next(iter(tensors))
                raise InvalidInput(f"input {name!r} has {count} rows but input {first!r} has {rows}")
            if raw:
                if tensor.HasField("contents"):
                    raise InvalidInput(f"input {name!r} has contents while the request uses raw_input_contents")
                columns.append(_from_raw(name, datatype, raw[index], count))
            else:
                columns.append(_from_contents(name, datatype, tensor.contents, count))
            tensors[name] = datatype
        if len(tensors) != len(expected):
            missing = [n for n in expected if n not in tensors]
            raise InvalidInput(f"input {missing[0]!r} is missing" + (f" (and {missing[1:]})" if missing[1:] else "")
                               + f"; model {request.model_name!r} takes {_describe(expected)}")
        given = list(tensors)
        order = None if given == self.names else tuple(given.index(n) for n in self.names)
        return _Layout(rows, tuple(tensors.items()), order, all(t == NUMBER for t in tensors.values())), columns

    def _check_tensor(self, request: Any, tensor: Any, seen: Mapping[str, str]) -> tuple[str, str, int]:
        name = tensor.name
        if name in seen:
            raise InvalidInput(f"input {name!r} is given twice")
        datatype = self.expected.get(name)
        if datatype is None:
            raise InvalidInput(f"input {name!r} is not an input of model {request.model_name!r}; "
                               f"it takes {_describe(self.expected)}")
        if tensor.datatype != datatype:
            raise InvalidInput(f"input {name!r}: datatype {tensor.datatype or '(none)'} is not accepted; it takes {datatype}")
        return name, datatype, _row_count(name, list(tensor.shape))

    # -- data ---------------------------------------------------------------------------

    def _rows_from_values(self, layout: _Layout, values: Sequence[float]) -> list[dict[str, Any]]:
        """Rows from every column's values, one column after the other, in the request's order."""
        rows = layout.rows
        if rows == 1:
            if layout.order is not None:
                values = [values[i] for i in layout.order]
            return [dict(zip(self.names, values))]
        columns = [values[i * rows:(i + 1) * rows] for i in range(len(layout.tensors))]
        return self._assemble(layout.order, columns)

    def _assemble(self, order: tuple[int, ...] | None, columns: list[list[Any]]) -> list[dict[str, Any]]:
        # Rows list features in the model's order, whatever the request's: River sums over a
        # row's items in order, so the same order gives the same floating-point answer.
        if order is not None:
            columns = [columns[i] for i in order]
        names = self.names
        return [dict(zip(names, values)) for values in zip(*columns)]


def _finite_columns(layout: _Layout, values: Sequence[float]) -> Sequence[float]:
    """`values` (every column, one after the other) if all are finite; else the first culprit is named."""
    total = sum(values)
    if total - total != 0.0:  # an inf or a nan somewhere (or only a sum too large: then the scan finds nothing)
        for position, value in enumerate(values):
            if not math.isfinite(value):
                name, row = layout.tensors[position // layout.rows][0], position % layout.rows
                raise InvalidInput(f"input {name!r} row {row}: {value} is not a finite number")
    return values


def varint(value: int) -> bytes:
    """`value` as a protobuf varint."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _describe(features: Mapping[str, str]) -> str:
    return ", ".join(f"{n} ({t})" for n, t in features.items()) or "no features yet"


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
    total = sum(values)
    if total - total != 0.0:  # an inf or a nan somewhere (or only a sum too large: then the scan finds nothing)
        for row, value in enumerate(values):
            if not math.isfinite(value):
                raise InvalidInput(f"input {name!r} row {row}: {value} is not a finite number")
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


_DOUBLES: dict[int, struct.Struct] = {}


def _pack_doubles(values: list[float]) -> bytes:
    packer = _DOUBLES.get(len(values))
    if packer is None:
        packer = struct.Struct(f"<{len(values)}d")
        if len(_DOUBLES) < 256:
            _DOUBLES[len(values)] = packer
    return packer.pack(*values)


def put_outputs(response: Any, outputs: list[Output], names: Sequence[str]) -> None:
    """Append the chosen outputs to `response`, their data as raw little-endian bytes (as Triton does)."""
    for output in outputs:
        if output.name not in names:
            continue
        response.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        response.raw_output_contents.append(raw_output(output))


def raw_output(output: Output) -> bytes:
    """An output's data as `raw_output_contents` carries it: little-endian FP64, or length-prefixed BYTES."""
    if output.datatype == STRING:
        return b"".join([struct.pack("<I", len(v)) + v for v in output.values])
    return _pack_doubles(output.values)


def output_values(output: Output) -> list[Any]:
    """An output as plain JSON-able values (for the predictions topic); NaN ("no prediction") is None."""
    if output.datatype == STRING:
        return [v.decode(errors="replace") for v in output.values]
    values = [None if v != v else v for v in output.values]
    if len(output.shape) == 2:
        width = output.shape[1]
        return [values[i:i + width] for i in range(0, len(values), width)]
    return values
