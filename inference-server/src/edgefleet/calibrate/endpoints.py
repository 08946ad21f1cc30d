"""The calibration job's clients: local model servers and the cloud egress, over gRPC.

Thin adapters: they send a chat request and return the text, nothing else. Local
requests honour the servers' load: before each one the client asks every replica's
GetStats and sends to the least busy one with a free slot, waiting while all are full,
so that however many Ray workers label at once they never queue a server beyond its
slots (the servers would answer RESOURCE_EXHAUSTED; that too is waited out, for the
time the server's retry hint says).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc

from edgefleet.calibrate.prompts import CalibrationError
from edgefleet.serving.readiness import NotServing, wait_until_serving
from edgefleet.v1 import inference_pb2 as pb
from edgefleet.v1 import inference_pb2_grpc as pb_grpc

STATS_TIMEOUT_S = 5.0
# Waiting for a free slot: from a short pause up to this, doubling.
MAX_PAUSE_S = 1.0
# A replica that fails (or stays full) this long makes the prompt fail.
PATIENCE_S = 300.0
TENANT = "calibration"


class EndpointFailed(Exception):
    """A call that could not be answered; the message names the endpoint and the code."""


@dataclass(frozen=True)
class Answer:
    text: str
    # The replica (host:port) or the egress that answered.
    served_by: str
    prompt_tokens: int
    completion_tokens: int


def chat(system: str, user: str) -> list[pb.ChatMessage]:
    return [
        pb.ChatMessage(role="system", content=system),
        pb.ChatMessage(role="user", content=user),
    ]


def check_serving(addresses: list[str], what: str, timeout_s: float = 10.0) -> None:
    """Raise CalibrationError naming every endpoint that does not report SERVING in time."""
    problems = []
    for address in addresses:
        with grpc.insecure_channel(address) as channel:
            try:
                wait_until_serving(channel, timeout_s)
            except NotServing as exc:
                problems.append(f"{what} {address} is unreachable: {exc}")
    if problems:
        raise CalibrationError(
            "; ".join(problems) + "; nothing was sent, nothing written",
            reason="EndpointUnreachable",
        )


def _retry_after_s(error: grpc.RpcError) -> float:
    trailers = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    try:
        return float(trailers.get("retry-after-ms", 100)) / 1000
    except ValueError:
        return 0.1


class LocalModels:
    """The local replicas; `answer` picks one with a free slot, from their GetStats."""

    def __init__(self, addresses: list[str], patience_s: float = PATIENCE_S) -> None:
        self.patience_s = patience_s
        self._channels = {a: grpc.insecure_channel(a) for a in addresses}
        self._stubs = {a: pb_grpc.InferenceStub(c) for a, c in self._channels.items()}

    def _free_replica(self) -> str | None:
        """The replica with the most free slots, or None when every one is full or down."""
        best, best_free = None, 0
        for address, stub in self._stubs.items():
            try:
                stats = stub.GetStats(pb.GetStatsRequest(), timeout=STATS_TIMEOUT_S)
            except grpc.RpcError:
                continue
            if not stats.ready or stats.draining:
                continue
            free = max(1, stats.max_concurrency) - stats.requests_running - stats.requests_waiting
            if free > best_free:
                best, best_free = address, free
        return best

    def answer(self, messages: list[pb.ChatMessage], max_tokens: int, request_id: str) -> Answer:
        deadline = time.monotonic() + self.patience_s
        pause, last_error = 0.02, "every replica busy"
        while time.monotonic() < deadline:
            address = self._free_replica()
            if address is not None:
                request = pb.GenerateRequest(
                    messages=messages,
                    sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0),
                    routing=pb.RoutingHints(tenant=TENANT),
                    request_id=request_id,
                )
                try:
                    reply = self._stubs[address].Generate(request, timeout=self.patience_s)
                    return Answer(
                        reply.text,
                        address,
                        reply.usage.prompt_tokens,
                        reply.usage.completion_tokens,
                    )
                except grpc.RpcError as error:
                    code = error.code()  # type: ignore[attr-defined]
                    last_error = f"{address}: {code.name}: {error.details()}"  # type: ignore[attr-defined]
                    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        time.sleep(_retry_after_s(error))
                        continue
                    if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                        raise EndpointFailed(f"local model {last_error}") from error
            # Backpressure: every slot is taken (or every replica down); wait, then ask again.
            time.sleep(pause)
            pause = min(MAX_PAUSE_S, pause * 2)
        raise EndpointFailed(
            f"no local model answered within {self.patience_s:.0f}s ({last_error})"
        )

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()


class CloudEgress:
    """The egress: every call is audited there; the budget is the ledger's, before the call."""

    def __init__(self, address: str, policy_name: str, timeout_s: float = PATIENCE_S) -> None:
        self.address = address
        self.policy_name = policy_name
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.InferenceStub(self._channel)

    def answer(self, messages: list[pb.ChatMessage], max_tokens: int, request_id: str) -> Answer:
        request = pb.GenerateRequest(
            messages=messages,
            sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0),
            routing=pb.RoutingHints(
                tenant=TENANT,
                policy=self.policy_name,
                sensitivity=pb.SENSITIVITY_PUBLIC,
            ),
            request_id=request_id,
        )
        try:
            reply = self._stub.Generate(request, timeout=self.timeout_s)
        except grpc.RpcError as error:
            code = error.code().name  # type: ignore[attr-defined]
            raise EndpointFailed(
                f"cloud egress {self.address}: {code}: {error.details()}"  # type: ignore[attr-defined]
            ) from error
        return Answer(
            reply.text, self.address, reply.usage.prompt_tokens, reply.usage.completion_tokens
        )

    def close(self) -> None:
        self._channel.close()
