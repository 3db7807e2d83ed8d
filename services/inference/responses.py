"""ModelInferResponse bytes, written without building the message for every request.

    writer = ResponseWriter("phishing-logreg", "7")
    data = writer.write(request_id, prediction, ["label", "probabilities"])   # bytes on the wire

Protobuf lets messages be concatenated: fields parse in any order and repeated fields
append. Most of a response repeats from one request to the next (model name and version,
the parameters, each output tensor's name, datatype and shape), so that head is built
once with protobuf and kept; a response is the head, then its `id` and its raw output
bytes, each written as one length-delimited field. The bytes parse to the same message
that `put_outputs` builds (a unit test holds them to it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.inference.protocol import pb
from services.inference.tensors import Output, raw_output, varint

_HEADS_KEPT = 256
_ID = b"\x1a"  # field 3 (id), length-delimited
_RAW_OUTPUT = b"\x32"  # field 6 (raw_output_contents), length-delimited


class ResponseWriter:
    """Responses of one model version."""

    def __init__(self, model_id: str, model_version: str) -> None:
        self.model_id = model_id
        self.model_version = model_version
        self._heads: dict[tuple[Any, ...], bytes] = {}

    def write(self, request_id: str, prediction: Any, names: Sequence[str]) -> bytes:
        """The serialized ModelInferResponse carrying the outputs of `prediction` named in `names`."""
        outputs = [o for o in prediction.outputs if o.name in names]
        parameters = prediction.parameters
        key = (tuple(parameters.items()), *[(o.name, o.datatype, o.shape) for o in outputs])
        head = self._heads.get(key)
        if head is None:
            head = self._head(parameters, outputs)
            if len(self._heads) < _HEADS_KEPT:
                self._heads[key] = head
        parts = [head, _delimited(_ID, request_id.encode())]
        parts += [_delimited(_RAW_OUTPUT, raw_output(o)) for o in outputs]
        return b"".join(parts)

    def _head(self, parameters: dict[str, str], outputs: list[Output]) -> bytes:
        response = pb.ModelInferResponse(model_name=self.model_id, model_version=self.model_version)
        for key, value in parameters.items():
            response.parameters[key].string_param = value
        for output in outputs:
            response.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        return response.SerializeToString()


def _delimited(tag: bytes, data: bytes) -> bytes:
    size = len(data)
    return tag + (bytes((size,)) if size < 0x80 else varint(size)) + data
