"""Plain data passed between the gRPC layer and the engines.

The servicers convert protobuf messages into these types and back, so engines
never see protobuf and the decision code stays testable without gRPC.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from dataclasses import dataclass

ALLOWED_ROLES = ("system", "user", "assistant")


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass(frozen=True)
class RoutingHints:
    """What the client (or the router in front) says about where a request may go."""

    # SENSITIVE: must stay local. PUBLIC: the client vouches it may leave.
    sensitive: bool = False
    public: bool = False
    tenant: str = ""
    # The RoutingPolicy that sent it here (set by the router, for the audit).
    policy: str = ""
    # Distinct values the router replaced with placeholders (set by the router, for the audit).
    redacted_values: int = 0
    # The caller's IP address as the front end saw it (canonical text, see
    # `canonical_ip`); None when unknown (a Unix socket, a front end that does
    # not say). The router maps it to a namespace (privacy.sensitiveNamespaces).
    client_address: str | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request: messages already include the system prompt."""

    request_id: str
    model: str
    messages: tuple[Message, ...]
    sampling: Sampling
    routing: RoutingHints = RoutingHints()

    def with_client_address(self, address: str | None) -> GenerationRequest:
        """The same request, marked as coming from `address` (a canonical IP or None)."""
        routing = dataclasses.replace(self.routing, client_address=address)
        return dataclasses.replace(self, routing=routing)


def canonical_ip(text: str | None) -> str | None:
    """An IP address in the one spelling pod IPs use, or None when `text` is not one.

    IPv4-mapped IPv6 (`::ffff:10.0.0.1`, what a dual-stack socket reports for
    an IPv4 caller) becomes the IPv4 address; an IPv6 zone (`%eth0`) is
    dropped; IPv6 is compressed and lower-case.
    """
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip().strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class TextDelta:
    """Text generated since the previous delta of the same request."""

    text: str


@dataclass(frozen=True)
class ServedBy:
    """Who produced an answer; a router passes on what its backend reported."""

    backend: str
    engine: str
    model: str
    instance: str


@dataclass(frozen=True)
class Route:
    """The router's choice for one request: target and machine-readable reason."""

    target: str
    reason: str


@dataclass(frozen=True)
class Completion:
    """The end of a generation; always the last item an engine yields."""

    finish_reason: FinishReason
    usage: Usage
    # Set by engines that forward to another server (the router): who really
    # answered and why; None means this engine itself.
    served_by: ServedBy | None = None
    route: Route | None = None


@dataclass
class EngineStats:
    """Live load figures an engine reports; the router reads them."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
