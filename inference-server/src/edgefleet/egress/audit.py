"""The egress audit log: one JSON line per cloud call, never the prompt itself.

Each line says when, for which policy and tenant, which cloud model, how many
tokens, what it cost, how it ended and after how many attempts, how many values
the router redacted, and a SHA-256 of the messages (as sent, placeholders and
all) so a call can be matched to a prompt someone holds without the log
holding it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from edgefleet.serving.types import Message


def prompt_digest(messages: tuple[Message, ...]) -> str:
    canonical = json.dumps([[m.role, m.content] for m in messages], ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class AuditRecord:
    request_id: str
    policy: str
    tenant: str
    cloud_model: str
    prompt_sha256: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    # "ok", "refused_sensitive", or the gRPC status name the caller got.
    outcome: str
    attempts: int
    latency_ms: float
    usage_reported: bool
    # Values the router replaced with placeholders before sending (0: none); never the values.
    redacted_values: int


class AuditLog:
    """Appends records as JSON lines to a file (or stdout); safe from any thread."""

    def __init__(self, path: str = "") -> None:
        self._lock = threading.Lock()
        # Open for the process's lifetime, closed by close(): one line per call.
        self._stream: TextIO = (
            Path(path).open("a", encoding="utf-8", buffering=1)  # noqa: SIM115
            if path
            else sys.stdout
        )

    def write(self, record: AuditRecord) -> None:
        line = {
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
            "audit": "egress",
            **asdict(record),
        }
        with self._lock:
            self._stream.write(json.dumps(line) + "\n")
            self._stream.flush()

    def close(self) -> None:
        if self._stream is not sys.stdout:
            self._stream.close()
