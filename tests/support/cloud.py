"""The cloud, for tests: the real llama_cpp.server behind a proxy that records what arrives.

`CloudStandIn` runs `python -m llama_cpp.server` (OpenAI-compatible) on the
packaged SmolLM2 on loopback. `RecordingProxy` sits in front of it and keeps
every request body it forwards, and what came back, which is how the tests
prove what left the site and what the cloud said: the egress points at the
proxy, never at the stand-in directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiohttp import ClientPayloadError, ClientSession, ClientTimeout, web

from edgefleet.serving.model_files import resolve_model
from edgefleet.serving.readiness import free_local_port
from tests.cluster import network

STAND_IN_MODEL = "cloud-llm"
STAND_IN_API_KEY = "test-cloud-key"
_READY_MARKER = "Uvicorn running on"


class CloudStandIn:
    """llama_cpp.server on the packaged model, started and stopped at will."""

    def __init__(self, port: int | None = None, threads: int | None = None) -> None:
        self.port = port or free_local_port()
        self.threads = threads or os.cpu_count() or 1
        self.process: subprocess.Popen[str] | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="cloud-stand-in-", suffix=".log")[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 120.0) -> None:
        model = resolve_model("default", None).path
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "llama_cpp.server",
                "--model", str(model), "--model_alias", STAND_IN_MODEL,
                "--host", "127.0.0.1", "--port", str(self.port),
                "--n_ctx", "2048", "--n_threads", str(self.threads),
                "--api_key", STAND_IN_API_KEY, "--verbose", "False",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        self._await_marker(timeout_s)

    def _await_marker(self, timeout_s: float) -> None:
        """Read the server's output until uvicorn says it listens; then keep draining it."""
        assert self.process is not None and self.process.stdout is not None
        found = threading.Event()
        stdout, log_path = self.process.stdout, self.log_path

        def drain() -> None:
            with log_path.open("a") as log:
                for line in stdout:
                    log.write(line)
                    log.flush()
                    if _READY_MARKER in line:
                        found.set()
            found.set()  # the process ended: stop waiting either way

        threading.Thread(target=drain, daemon=True).start()
        if not found.wait(timeout_s) or self.process.poll() is not None:
            self.stop()
            raise RuntimeError(f"cloud stand-in did not start:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class RecordingProxy:
    """An HTTP proxy (own thread and loop) that records every request it forwards."""

    def __init__(self, upstream: str, host: str = "127.0.0.1", netns: str | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        # In the control-plane tests: the test bed's internet stand-in, a network
        # namespace of its own (tests/cluster/network.py), which pods reach only as
        # their NetworkPolicies allow. The stand-in behind it stays on loopback.
        self.host = host
        self.netns = netns
        self.port = free_local_port()
        self._lock = threading.Lock()
        self._received: list[dict[str, Any]] = []
        # The answer's bytes by the index of its request in _received, kept as they pass.
        self._answers: dict[int, bytearray] = {}
        self._failures: list[int] = []
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def received(self) -> list[dict[str, Any]]:
        """Bodies of the chat requests that reached the cloud, oldest first."""
        with self._lock:
            return list(self._received)

    def received_text(self) -> str:
        """Every message content that reached the cloud, joined (for leak checks)."""
        return "\n".join(
            str(message.get("content", ""))
            for body in self.received()
            for message in body.get("messages", [])
        )

    def answer_text(self, index: int) -> str:
        """The text the cloud answered the `index`th request with, streamed or not."""
        with self._lock:
            raw = bytes(self._answers.get(index, b"")).decode()
        if not raw.lstrip().startswith("data:"):
            return json.loads(raw)["choices"][0]["message"]["content"]
        parts = []
        for line in raw.splitlines():
            data = line.removeprefix("data:").strip()
            if line.startswith("data:") and data != "[DONE]":
                parts += [c["delta"].get("content") or "" for c in json.loads(data)["choices"]]
        return "".join(parts)

    def fail_next(self, *statuses: int) -> None:
        """Answer the next requests with these HTTP statuses instead of forwarding them."""
        with self._lock:
            self._failures.extend(statuses)

    def clear(self) -> None:
        with self._lock:
            self._received.clear()
            self._answers.clear()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        answer = bytearray()
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
            if request.method == "POST":
                with contextlib.suppress(ValueError):
                    self._received.append(json.loads(raw))
                    self._answers[len(self._received) - 1] = answer
        if failure is not None:
            body = {"error": {"message": f"injected failure {failure}", "type": "test"}}
            return web.json_response(body, status=failure)
        headers = {k: v for k, v in request.headers.items() if k.lower() in
                   ("authorization", "content-type", "accept")}  # fmt: skip
        url = self.upstream.removesuffix("/v1") + request.path_qs
        async with ClientSession(timeout=ClientTimeout(total=300)) as session:
            try:
                upstream = await session.request(request.method, url, data=raw, headers=headers)
            except OSError:
                return web.json_response({"error": {"message": "upstream down"}}, status=502)
            async with upstream:
                response = web.StreamResponse(status=upstream.status)
                response.content_type = upstream.content_type
                await response.prepare(request)
                # Either side may hang up mid-answer (a cancelled call, a stopped
                # stand-in): pass on what came, as a real network would.
                with contextlib.suppress(ClientPayloadError, ConnectionResetError):
                    async for data in upstream.content.iter_any():
                        # Kept before it is passed on: whoever reads it finds it recorded.
                        with self._lock:
                            answer.extend(data)
                        await response.write(data)
                    await response.write_eof()
                return response

    def start(self) -> None:
        self._thread.start()

        async def serve() -> None:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._forward)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            if self.netns is None:
                await web.TCPSite(self._runner, self.host, self.port).start()
            else:
                sock = network.listening_socket(self.netns, self.host, self.port)
                await web.SockSite(self._runner, sock).start()

        asyncio.run_coroutine_threadsafe(serve(), self._loop).result(timeout=30)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)


@contextlib.contextmanager
def recorded_cloud(
    host: str = "127.0.0.1", threads: int | None = None, netns: str | None = None
) -> Iterator[tuple[CloudStandIn, RecordingProxy]]:
    """The stand-in on loopback (`threads` for its decode: default every core), and the
    recording proxy in front of it on `host` (in the network namespace `netns`)."""
    cloud = CloudStandIn(threads=threads)
    cloud.start()
    proxy = RecordingProxy(cloud.base_url, host, netns)
    proxy.start()
    try:
        yield cloud, proxy
    finally:
        proxy.stop()
        cloud.stop()
