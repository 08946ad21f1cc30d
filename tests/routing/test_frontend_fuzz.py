"""No request shape makes a front end fail: fuzzing the router's HTTP, edgefleet.v1 and OIP v2.

A real router (RouterEngine behind the production gRPC server and OpenAI HTTP
front end, on loopback) runs in a thread of its own in front of two scripted
backends that always answer. Hypothesis sends it request shapes, well formed
and not; every one must get an answer or a client error, never a 5xx or
INTERNAL / UNKNOWN.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from edgefleet.oip import grpc_predict_v2_pb2 as oip
from edgefleet.oip import grpc_predict_v2_pb2_grpc as oip_grpc
from edgefleet.router.engine import RouterEngine
from edgefleet.router.sources import Endpoints
from edgefleet.routing.complexity import ComplexityScorer
from edgefleet.routing.policy import parse_policy
from edgefleet.serving.config import ServerConfig
from edgefleet.serving.openai_http import start_http
from edgefleet.serving.server import InferenceServer
from edgefleet.v1 import inference_pb2 as pb
from edgefleet.v1 import inference_pb2_grpc as pb_grpc
from tests.routing.scripted_backend import ScriptedBackend

SERVER_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class FrontEnds:
    grpc_target: str
    http_url: str


class RouterThread:
    """A router with local and cloud backends, in its own event loop on a thread."""

    def __init__(self, scorer: ComplexityScorer) -> None:
        self.scorer = scorer
        self.started = threading.Event()
        self.front_ends: FrontEnds | None = None
        self.failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="router", daemon=True)

    def __enter__(self) -> FrontEnds:
        self._thread.start()
        assert self.started.wait(60), "the router did not start"
        if self.front_ends is None:
            raise RuntimeError("the router failed to start") from self.failure
        return self.front_ends

    def __exit__(self, *_: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self.failure = exc
        finally:
            self.started.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        local, cloud = ScriptedBackend("local"), ScriptedBackend("cloud")
        await local.start()
        await cloud.start()
        policy = parse_policy({"complexity": {"threshold": 0.5}})
        engine = RouterEngine(policy, Endpoints((local.address,), cloud.address), self.scorer)
        config = ServerConfig(
            engine="router", listen="127.0.0.1:0", metrics_listen="", max_concurrency=16
        )
        server = InferenceServer(engine, config)
        await server.start()
        http = await start_http(server.service, "127.0.0.1:0")
        try:
            _, http_port = http.addresses[0][:2]
            self.front_ends = FrontEnds(f"127.0.0.1:{server.port}", f"http://127.0.0.1:{http_port}")
            self.started.set()
            await self._stop.wait()
        finally:
            await http.cleanup()
            await server.server.stop(grace=None)
            await engine.close()
            await local.stop()
            await cloud.stop()


@pytest.fixture(scope="module")
def front_ends(scorer: ComplexityScorer) -> Iterator[FrontEnds]:
    with RouterThread(scorer) as running:
        yield running


@pytest.fixture(scope="module")
def channel(front_ends: FrontEnds) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(front_ends.grpc_target) as opened:
        yield opened


# --- request shapes ---------------------------------------------------------------------


def mostly(
    valid: st.SearchStrategy[Any], anything: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """Usually `valid`, now and then `anything`: enough well-formed requests get through to
    the router's backends while every field still meets its share of nonsense. (Hypothesis
    favours the ends of a range, so the odd one out sits in the middle.)"""
    return st.integers(0, 7).flatmap(lambda n: anything if n == 5 else valid)


SURROGATES = st.characters(categories=["Cs"])
PLAIN = st.text(min_size=1, max_size=30).filter(str.strip)
TEXT = st.text(max_size=30) | st.text(st.characters() | SURROGATES, max_size=10)
BIG_NUMBERS = st.sampled_from([10**12, 2**31, 2**31 - 1, 2**63, -(2**63) - 1, 10**400, 1e300])
NUMBERS = (
    st.integers(-3, 40)
    | st.integers()
    | BIG_NUMBERS
    | st.floats()
    | st.sampled_from([float("nan"), float("inf")])
)
JSON = st.recursive(
    st.none() | st.booleans() | NUMBERS | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
ROLE = mostly(st.sampled_from(["user", "assistant", "system"]), st.just("tool") | TEXT | JSON)
PART = st.fixed_dictionaries({"type": mostly(st.just("text"), JSON), "text": mostly(PLAIN, JSON)})
CONTENT = mostly(PLAIN | st.lists(PART, min_size=1, max_size=2), st.just("  ") | TEXT | JSON)
MESSAGE = mostly(st.fixed_dictionaries({"role": ROLE, "content": CONTENT}), JSON)
SENSITIVITY = st.sampled_from(["sensitive", "public", "SENSITIVE", ""])
HINTS = st.fixed_dictionaries(
    {}, optional={"sensitivity": mostly(SENSITIVITY, TEXT | JSON), "tenant": mostly(PLAIN, JSON)}
)
UNIT = st.floats(0, 1, exclude_min=True)
CHAT_BODY = st.fixed_dictionaries(
    {"messages": mostly(st.lists(MESSAGE, min_size=1, max_size=3), JSON)},
    optional={
        "model": mostly(st.sampled_from(["hybrid", "default", ""]), st.just("gpt-9") | JSON),
        "max_tokens": mostly(st.integers(1, 64), NUMBERS | JSON),
        "max_completion_tokens": mostly(st.integers(1, 64), NUMBERS),
        "temperature": mostly(st.floats(0, 2), NUMBERS | JSON),
        "top_p": mostly(UNIT, NUMBERS),
        "seed": mostly(st.integers(-(2**63), 2**63 - 1), NUMBERS),
        "n": mostly(st.just(1), NUMBERS),
        "stop": mostly(PLAIN | st.lists(PLAIN, max_size=8), TEXT | st.lists(TEXT) | JSON),
        "stream": mostly(st.booleans(), JSON),
        "stream_options": mostly(st.fixed_dictionaries({"include_usage": st.booleans()}), JSON),
        "user": mostly(PLAIN, JSON),
        "edgefleet": mostly(HINTS, JSON),
        "response_format": JSON,
    },
)
# Names no client should send, and the body that is not an object at all.
ODD_BODY = st.dictionaries(TEXT, JSON, max_size=3) | JSON
DEEP = b"[" * 100_000 + b"]" * 100_000
RAW_BODY = st.binary(max_size=64) | st.just(DEEP) | st.just(b'{"messages": "\\ud800')


def http_body(document: Any) -> bytes:
    # Lone surrogates leave as \ud800 escapes, NaN and infinities as Python spells them.
    return json.dumps(document).encode()


def post_chat(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(
        f"{url}/v1/chat/completions",
        data=body,
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def assert_no_server_error(status: int, body: bytes) -> None:
    event(f"HTTP {status}")  # --hypothesis-show-statistics: how many were served
    assert status < 500, body[:500]
    if status == 200 and body.startswith(b"data: "):
        # A stream's error travels as a last event: it must be a client's error too.
        for chunk in body.split(b"\n\n"):
            if chunk.startswith(b"data: {"):
                error = json.loads(chunk[len(b"data: ") :]).get("error")
                assert error is None or error["code"] not in {c.name for c in SERVER_FAULTS}


CONTENT_TYPES = ["application/json", "application/json; charset=bogus", "text/plain", ""]


@FUZZ
@given(
    body=mostly(CHAT_BODY.map(http_body), ODD_BODY.map(http_body) | RAW_BODY),
    sensitivity=st.sampled_from(["", "sensitive", "public", "bogus", "\xff"]),
    content_type=st.sampled_from(CONTENT_TYPES),
)
@example(body=http_body({"messages": [{"role": "user", "content": "hi"}],
                         "max_tokens": 10**12}), sensitivity="", content_type="")  # fmt: skip
@example(
    body=b'{"messages": [{"role": "user", "content": "\\ud800"}]}', sensitivity="", content_type=""
)
def test_no_chat_request_gets_a_server_error(
    front_ends: FrontEnds, body: bytes, sensitivity: str, content_type: str
) -> None:
    headers = {"x-edgefleet-sensitivity": sensitivity} if sensitivity else {}
    if content_type:
        headers["Content-Type"] = content_type
    assert_no_server_error(*post_chat(front_ends.http_url, body, headers))


@pytest.mark.parametrize(
    "body, param",
    [
        ({"max_tokens": 10**12}, "max_tokens"),
        ({"max_completion_tokens": 10**400}, "max_tokens"),
        ({"seed": 2**64}, "seed"),
        ({"temperature": 10**400}, "temperature"),
        ({"messages": [{"role": "user", "content": "\ud800"}]}, "messages[0].content"),
        ({"messages": [{"role": "us\udfffer", "content": "hi"}]}, "messages[0].role"),
        ({"stop": ["\ud800"]}, "stop"),
        ({"user": "\udc00"}, "user"),
        ({"model": "\ud83d"}, "model"),
        ({"stream": True, "stream_options": "yes"}, "stream_options"),
    ],
)
def test_what_protobuf_cannot_hold_is_a_400_naming_the_field(
    front_ends: FrontEnds, body: dict[str, Any], param: str
) -> None:
    document = {"messages": [{"role": "user", "content": "hi"}], **body}
    status, reply = post_chat(front_ends.http_url, http_body(document), {})
    error = json.loads(reply)["error"]
    assert (status, error["param"], error["code"]) == (400, param, "INVALID_ARGUMENT")
    assert error["message"].startswith(f"{param}: ")


def test_a_body_that_is_not_utf8_json_is_a_400(front_ends: FrontEnds) -> None:
    for body in (b"\xff\xfe{", DEEP):
        status, reply = post_chat(front_ends.http_url, body, {})
        assert (status, json.loads(reply)["error"]["param"]) == (400, "body")


# --- gRPC -------------------------------------------------------------------------------

PROTO_TEXT = st.text(max_size=30)  # protobuf itself refuses lone surrogates at the client
MODEL = mostly(st.sampled_from(["", "hybrid", "default"]), PROTO_TEXT)


@st.composite
def generate_requests(draw: st.DrawFn) -> pb.GenerateRequest:
    request = pb.GenerateRequest(model=draw(MODEL), request_id=draw(PROTO_TEXT))
    if draw(st.booleans()):
        request.prompt = draw(mostly(PLAIN, PROTO_TEXT))
    if not request.prompt or draw(mostly(st.just(False), st.just(True))):
        for _ in range(draw(st.integers(0, 3))):
            request.messages.add(
                role=draw(mostly(st.sampled_from(["user", "assistant", "system"]), PROTO_TEXT)),
                content=draw(mostly(PLAIN, PROTO_TEXT)),
            )
    sampling = request.sampling
    if draw(st.booleans()):
        sampling.max_tokens = draw(mostly(st.integers(1, 64), st.integers(-(2**31), 2**31 - 1)))
    if draw(st.booleans()):
        sampling.temperature = draw(mostly(st.floats(0, 2, width=32), st.floats(width=32)))
    if draw(st.booleans()):
        sampling.top_p = draw(mostly(st.floats(0, 1, exclude_min=True, width=32), st.floats()))
    if draw(st.booleans()):
        sampling.seed = draw(st.integers(-(2**63), 2**63 - 1))
    stops = mostly(st.lists(PLAIN, max_size=8), st.lists(PROTO_TEXT, max_size=10))
    sampling.stop.extend(draw(stops))
    sampling.ignore_eos = draw(st.booleans())
    request.routing.sensitivity = draw(mostly(st.integers(0, 2), st.integers(0, 2**31 - 1)))
    request.routing.tenant = draw(PROTO_TEXT)
    request.routing.policy = draw(PROTO_TEXT)
    return request


@FUZZ
@given(request=generate_requests(), streaming=st.booleans())
def test_no_generate_request_gets_internal_or_unknown(
    channel: grpc.Channel, request: pb.GenerateRequest, streaming: bool
) -> None:
    stub = pb_grpc.InferenceStub(channel)
    try:
        if streaming:
            messages = list(stub.GenerateStream(request, timeout=30))
            assert messages[-1].is_final
        else:
            stub.Generate(request, timeout=30)
        event("OK")
    except grpc.RpcError as error:
        event(error.code().name)
        assert error.code() not in SERVER_FAULTS, error.details()


SCALARS = {
    "max_tokens": ("INT32", st.integers(1, 64)),
    "seed": ("INT64", st.integers(-(2**63), 2**63 - 1)),
    "temperature": ("FP32", st.floats(0, 2, width=32)),
    "top_p": ("FP64", st.floats(0, 1, exclude_min=True)),
}
DATATYPES = st.sampled_from(["BYTES", "INT32", "INT64", "UINT32", "UINT64", "FP32", "FP64", "BOOL"])
INTEGERS = st.integers(-(2**63), 2**63 - 1)


def text_input(draw: st.DrawFn, request: oip.ModelInferRequest) -> None:
    tensor = request.inputs.add(name="text_input", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(draw(PLAIN).encode())


def odd_input(draw: st.DrawFn, request: oip.ModelInferRequest) -> None:
    names = st.sampled_from(["text_input", *SCALARS, "x"]) | PROTO_TEXT
    tensor = request.inputs.add(
        name=draw(names),
        datatype=draw(DATATYPES | PROTO_TEXT),
        shape=draw(st.lists(st.integers(-1, 2) | INTEGERS, max_size=3)),
    )
    contents = tensor.contents
    contents.bytes_contents.extend(draw(st.lists(st.binary(max_size=20), max_size=2)))
    contents.int_contents.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=2)))
    contents.int64_contents.extend(draw(st.lists(INTEGERS, max_size=2)))
    contents.uint64_contents.extend(draw(st.lists(st.integers(0, 2**64 - 1), max_size=2)))
    contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=2)))
    contents.fp64_contents.extend(draw(st.lists(st.floats(), max_size=2)))


def odd_parameter(draw: st.DrawFn, request: oip.ModelInferRequest) -> None:
    parameter = request.parameters[draw(st.sampled_from(list(SCALARS)) | PROTO_TEXT)]
    choice = draw(st.sampled_from(["bool", "int64", "string", "double", "uint64", "none"]))
    if choice == "bool":
        parameter.bool_param = draw(st.booleans())
    elif choice == "int64":
        parameter.int64_param = draw(INTEGERS)
    elif choice == "string":
        parameter.string_param = draw(PROTO_TEXT)
    elif choice == "double":
        parameter.double_param = draw(st.floats())
    elif choice == "uint64":
        parameter.uint64_param = draw(st.integers(0, 2**64 - 1))


@st.composite
def infer_requests(draw: st.DrawFn) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name=draw(MODEL), id=draw(PROTO_TEXT))
    if draw(mostly(st.just(True), st.just(False))):
        text_input(draw, request)
    for name, (datatype, values) in SCALARS.items():
        if draw(st.booleans()):
            tensor = request.inputs.add(name=name, datatype=datatype, shape=[1])
            value = draw(values)
            {
                "INT32": tensor.contents.int_contents,
                "INT64": tensor.contents.int64_contents,
                "FP32": tensor.contents.fp32_contents,
                "FP64": tensor.contents.fp64_contents,
            }[datatype].append(value)
    if draw(mostly(st.just(False), st.just(True))):
        odd_input(draw, request)
    if draw(mostly(st.just(False), st.just(True))):
        odd_parameter(draw, request)
    if draw(mostly(st.just(False), st.just(True))):
        # tritonclient's raw form: sometimes right, mostly not.
        raw = st.binary(max_size=24) | st.just(b"\x0c\x00\x00\x00What is 2+2?")
        request.raw_input_contents.extend(draw(st.lists(raw, max_size=3)))
    return request


@FUZZ
@given(request=infer_requests())
def test_no_model_infer_request_gets_internal_or_unknown(
    channel: grpc.Channel, request: oip.ModelInferRequest
) -> None:
    stub = oip_grpc.GRPCInferenceServiceStub(channel)
    try:
        stub.ModelInfer(request, timeout=30)
        event("OK")
    except grpc.RpcError as error:
        event(error.code().name)
        assert error.code() not in SERVER_FAULTS, error.details()
