"""Turn an edgefleet.v1 GenerateRequest into a validated GenerationRequest.

Every problem raises InvalidArgument naming the field, so a client sees
exactly what to fix. The prompt's token length is checked by the engine,
which owns the tokenizer.
"""

from __future__ import annotations

import math
import reprlib
import uuid

from edgefleet.serving.config import ServerConfig
from edgefleet.serving.errors import InvalidArgument, ModelNotFound
from edgefleet.serving.types import (
    ALLOWED_ROLES,
    GenerationRequest,
    Message,
    RoutingHints,
    Sampling,
)
from edgefleet.v1 import inference_pb2 as pb

MAX_STOP_STRINGS = 8
_INTEGRAL_SAMPLING = ("max_tokens", "seed")


def served_model(requested: str, served: str, aliases: tuple[str, ...] = ()) -> str:
    if requested in ("", served, *aliases):
        return served
    raise ModelNotFound(requested, [served])


def messages_from(request: pb.GenerateRequest, system_prompt: str) -> tuple[Message, ...]:
    if request.messages and request.prompt:
        raise InvalidArgument("prompt", "give either prompt or messages, not both")
    if request.prompt:
        if not request.prompt.strip():
            raise InvalidArgument("prompt", "must not be blank")
        messages = [Message("user", request.prompt)]
    elif request.messages:
        messages = []
        for index, message in enumerate(request.messages):
            if message.role not in ALLOWED_ROLES:
                raise InvalidArgument(
                    f"messages[{index}].role",
                    f"unknown role {message.role!r}; use one of {', '.join(ALLOWED_ROLES)}",
                )
            if not message.content.strip():
                raise InvalidArgument(f"messages[{index}].content", "must not be empty")
            messages.append(Message(message.role, message.content))
        if all(message.role == "system" for message in messages):
            raise InvalidArgument("messages", "need at least one user or assistant message")
    else:
        raise InvalidArgument("messages", "empty request: give a prompt or chat messages")
    if messages[0].role != "system" and system_prompt:
        messages.insert(0, Message("system", system_prompt))
    return tuple(messages)


def set_sampling_number(sampling: pb.SamplingParams, name: str, value: object, field: str) -> None:
    """Put a number from a looser front end (JSON, OIP parameters) into `sampling.<name>`.

    Raises InvalidArgument naming `field` when the value is no number of the
    right kind or does not fit the protobuf field (max_tokens is an int32, seed
    an int64); `sampling_from` then checks what the server accepts.
    """
    integral = name in _INTEGRAL_SAMPLING
    kind = "an integer" if integral else "a number"
    # reprlib: a value from a client is shown, but never at any length.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(field, f"must be {kind}, got {reprlib.repr(value)}")
    if integral and isinstance(value, float) and not value.is_integer():
        raise InvalidArgument(field, f"must be {kind}, got {reprlib.repr(value)}")
    try:
        setattr(sampling, name, int(value) if integral else float(value))
    except (ValueError, OverflowError) as exc:
        raise InvalidArgument(field, f"{reprlib.repr(value)} is out of range") from exc


def sampling_from(params: pb.SamplingParams, config: ServerConfig) -> Sampling:
    max_tokens = params.max_tokens if params.HasField("max_tokens") else config.default_max_tokens
    if max_tokens <= 0:
        raise InvalidArgument("sampling.max_tokens", f"must be positive, got {max_tokens}")
    if max_tokens > config.max_tokens_cap:
        raise InvalidArgument(
            "sampling.max_tokens",
            f"{max_tokens} is above this server's cap of {config.max_tokens_cap}",
        )
    temperature = (
        params.temperature if params.HasField("temperature") else config.default_temperature
    )
    if not math.isfinite(temperature) or not 0.0 <= temperature <= 2.0:
        raise InvalidArgument("sampling.temperature", f"must be within [0, 2], got {temperature}")
    top_p = params.top_p if params.HasField("top_p") else 0.95
    if not math.isfinite(top_p) or not 0.0 < top_p <= 1.0:
        raise InvalidArgument("sampling.top_p", f"must be within (0, 1], got {top_p}")
    if len(params.stop) > MAX_STOP_STRINGS:
        raise InvalidArgument("sampling.stop", f"at most {MAX_STOP_STRINGS} stop strings")
    if any(not stop for stop in params.stop):
        raise InvalidArgument("sampling.stop", "stop strings must not be empty")
    return Sampling(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=params.seed if params.HasField("seed") else None,
        stop=tuple(params.stop),
        ignore_eos=params.ignore_eos,
    )


def generation_request(
    request: pb.GenerateRequest, config: ServerConfig, served: str, aliases: tuple[str, ...] = ()
) -> GenerationRequest:
    model = served_model(request.model, served, aliases)
    return GenerationRequest(
        request_id=request.request_id or uuid.uuid4().hex,
        model=model,
        messages=messages_from(request, config.system_prompt),
        sampling=sampling_from(request.sampling, config),
        routing=RoutingHints(
            sensitive=request.routing.sensitivity == pb.SENSITIVITY_SENSITIVE,
            public=request.routing.sensitivity == pb.SENSITIVITY_PUBLIC,
            tenant=request.routing.tenant,
            policy=request.routing.policy,
            redacted_values=max(0, request.routing.redacted_values),
        ),
    )
