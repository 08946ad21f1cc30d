"""KServe Open Inference Protocol v2 servicer (inference.GRPCInferenceService).

Text generation follows the Triton "generate" convention: one BYTES input
tensor `text_input`, one BYTES output tensor `text_output`. Sampling settings
come as request parameters or as extra scalar input tensors (max_tokens,
temperature, top_p, seed). BYTES tensors may arrive in `contents` or, as
tritonclient sends them, in `raw_input_contents` (each element prefixed by its
4-byte little-endian length); the answer is sent back the same way.
"""

from __future__ import annotations

import struct
import uuid

import grpc

from edgefleet.oip import grpc_predict_v2_pb2 as oip
from edgefleet.oip import grpc_predict_v2_pb2_grpc as oip_grpc
from edgefleet.serving import grpc_errors
from edgefleet.serving.errors import InvalidArgument
from edgefleet.serving.grpc_inference import peer_ip
from edgefleet.serving.service import Finished, ModelService
from edgefleet.serving.types import GenerationRequest
from edgefleet.serving.validation import (
    messages_from,
    sampling_from,
    served_model,
    set_sampling_number,
)
from edgefleet.v1 import inference_pb2 as pb

SERVER_NAME = "edgefleet"
SERVER_VERSION = "0.1.0"
TEXT_INPUT = "text_input"
TEXT_OUTPUT = "text_output"
_SCALAR_INPUTS = {
    "max_tokens": ("INT32", "INT64", "UINT32", "UINT64"),
    "seed": ("INT32", "INT64", "UINT32", "UINT64"),
    "temperature": ("FP32", "FP64"),
    "top_p": ("FP32", "FP64"),
}


def decode_raw_bytes(raw: bytes, field: str) -> list[bytes]:
    """Split a raw BYTES tensor: each element is <uint32 LE length><bytes>."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidArgument(field, "truncated BYTES element length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidArgument(field, "BYTES element longer than the tensor data")
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


def encode_raw_bytes(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _element_count(shape: list[int], field: str) -> int:
    if not shape:
        raise InvalidArgument(f"{field}.shape", "must not be empty")
    count = 1
    for dim in shape:
        if dim < 0:
            raise InvalidArgument(f"{field}.shape", f"dimensions must not be negative: {shape}")
        count *= dim
    return count


def _scalar(tensor: oip.ModelInferRequest.InferInputTensor, raw: bytes | None) -> float | int:
    field = f"inputs[{tensor.name}]"
    if tensor.datatype not in _SCALAR_INPUTS[tensor.name]:
        raise InvalidArgument(
            f"{field}.datatype",
            f"must be one of {', '.join(_SCALAR_INPUTS[tensor.name])}, got {tensor.datatype!r}",
        )
    if _element_count(list(tensor.shape), field) != 1:
        raise InvalidArgument(f"{field}.shape", "must hold exactly one element")
    if raw is not None:
        fmt = {
            "INT32": "<i",
            "INT64": "<q",
            "UINT32": "<I",
            "UINT64": "<Q",
            "FP32": "<f",
            "FP64": "<d",
        }[tensor.datatype]
        if len(raw) != struct.calcsize(fmt):
            raise InvalidArgument(field, "raw data size does not match its datatype")
        return struct.unpack(fmt, raw)[0]
    contents = tensor.contents
    values = {
        "INT32": contents.int_contents,
        "INT64": contents.int64_contents,
        "UINT32": contents.uint_contents,
        "UINT64": contents.uint64_contents,
        "FP32": contents.fp32_contents,
        "FP64": contents.fp64_contents,
    }[tensor.datatype]
    if len(values) != 1:
        raise InvalidArgument(f"{field}.contents", "must hold exactly one value")
    return values[0]


def _parameter(value: oip.InferParameter) -> float | int | str | bool:
    return getattr(value, value.WhichOneof("parameter_choice") or "string_param")


class OpenInferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: ModelService) -> None:
        self.service = service

    def record_outcome(self, outcome: str) -> None:
        self.service.metrics.outcome(outcome)

    def _model(self, name: str) -> str:
        return served_model(name, self.service.model_name, self.service.model_aliases)

    async def ServerLive(
        self, request: oip.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: oip.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerReadyResponse:
        ready = self.service.engine.ready() and not self.service.admission.draining
        return oip.ServerReadyResponse(ready=ready)

    @grpc_errors.unary
    async def ModelReady(
        self, request: oip.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelReadyResponse:
        self._model(request.name)
        ready = self.service.engine.ready() and not self.service.admission.draining
        return oip.ModelReadyResponse(ready=ready)

    async def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=[])

    @grpc_errors.unary
    async def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelMetadataResponse:
        tensor = oip.ModelMetadataResponse.TensorMetadata
        return oip.ModelMetadataResponse(
            name=self._model(request.name),
            versions=["1"],
            platform=self.service.engine.name,
            inputs=[tensor(name=TEXT_INPUT, datatype="BYTES", shape=[1])],
            outputs=[tensor(name=TEXT_OUTPUT, datatype="BYTES", shape=[1])],
        )

    def _generation(self, request: oip.ModelInferRequest) -> tuple[GenerationRequest, bool]:
        model = self._model(request.model_name)
        if request.raw_input_contents and len(request.raw_input_contents) != len(request.inputs):
            raise InvalidArgument(
                "raw_input_contents", "must hold one entry per input tensor when used"
            )
        raw = list(request.raw_input_contents) or [None] * len(request.inputs)
        text: str | None = None
        sampling = pb.SamplingParams()
        for key, value in request.parameters.items():
            if key in _SCALAR_INPUTS:
                set_sampling_number(sampling, key, _parameter(value), f"parameters[{key}]")
        for tensor, data in zip(request.inputs, raw, strict=True):
            if tensor.name == TEXT_INPUT:
                text = self._text_input(tensor, data)
            elif tensor.name in _SCALAR_INPUTS:
                value = _scalar(tensor, data)
                set_sampling_number(sampling, tensor.name, value, f"inputs[{tensor.name}]")
            else:
                raise InvalidArgument(
                    f"inputs[{tensor.name}]",
                    f"unknown input; this model takes {TEXT_INPUT} and "
                    f"optional {', '.join(_SCALAR_INPUTS)}",
                )
        if text is None:
            raise InvalidArgument("inputs", f"missing the BYTES input tensor {TEXT_INPUT}")
        for output in request.outputs:
            if output.name != TEXT_OUTPUT:
                raise InvalidArgument(
                    f"outputs[{output.name}]", f"unknown output; this model has {TEXT_OUTPUT}"
                )
        chat = pb.GenerateRequest(prompt=text)
        generation = GenerationRequest(
            request_id=request.id or uuid.uuid4().hex,
            model=model,
            messages=messages_from(chat, self.service.config.system_prompt),
            sampling=sampling_from(sampling, self.service.config),
        )
        return generation, bool(request.raw_input_contents)

    @staticmethod
    def _text_input(tensor: oip.ModelInferRequest.InferInputTensor, raw: bytes | None) -> str:
        field = f"inputs[{TEXT_INPUT}]"
        if tensor.datatype != "BYTES":
            raise InvalidArgument(f"{field}.datatype", f"must be BYTES, got {tensor.datatype!r}")
        count = _element_count(list(tensor.shape), field)
        if raw is not None:
            elements = decode_raw_bytes(raw, field)
        else:
            elements = list(tensor.contents.bytes_contents)
        if len(elements) != count:
            raise InvalidArgument(
                f"{field}.shape",
                f"shape {list(tensor.shape)} says {count} elements but the data holds "
                f"{len(elements)}",
            )
        if count != 1:
            raise InvalidArgument(
                f"{field}.shape", "must hold exactly one prompt; send one request per prompt"
            )
        try:
            return elements[0].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidArgument(field, "is not valid UTF-8") from exc

    @grpc_errors.unary
    async def ModelInfer(
        self, request: oip.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> oip.ModelInferResponse:
        generation, raw_reply = self._generation(request)
        # The caller's address, as on edgefleet.v1: the router's namespace rule needs it.
        generation = generation.with_client_address(peer_ip(context.peer()))
        parts: list[str] = []
        async for item in self.service.stream(generation):
            if isinstance(item, Finished):
                return self._response(request, generation, "".join(parts), item, raw_reply)
            parts.append(item.text)
        raise RuntimeError("the model service ended without finishing")

    def _response(
        self,
        request: oip.ModelInferRequest,
        generation: GenerationRequest,
        text: str,
        done: Finished,
        raw_reply: bool,
    ) -> oip.ModelInferResponse:
        data = text.encode("utf-8")
        output = oip.ModelInferResponse.InferOutputTensor(
            name=TEXT_OUTPUT, datatype="BYTES", shape=[1]
        )
        response = oip.ModelInferResponse(
            model_name=self.service.model_name, model_version="1", id=generation.request_id
        )
        if raw_reply:
            response.raw_output_contents.append(encode_raw_bytes([data]))
        else:
            output.contents.bytes_contents.append(data)
        response.outputs.append(output)
        params = response.parameters
        params["finish_reason"].string_param = done.finish_reason.value
        params["prompt_tokens"].int64_param = done.usage.prompt_tokens
        params["completion_tokens"].int64_param = done.usage.completion_tokens
        params["engine"].string_param = self.service.engine.name
        params["time_to_first_token_ms"].double_param = done.time_to_first_token_s * 1000
        if done.route is not None:
            params["route_target"].string_param = done.route.target
            params["route_reason"].string_param = done.route.reason
        if done.served_by is not None:
            params["engine"].string_param = done.served_by.engine
        return response
