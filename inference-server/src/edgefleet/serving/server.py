"""edgefleet-server: the model server a SmallModel pod runs.

One gRPC port serves edgefleet.v1.Inference, the Open Inference Protocol v2,
grpc.health.v1 (overall, per service and per model) and reflection; a second
port serves Prometheus metrics. SIGTERM drains: health turns NOT_SERVING,
new generations get UNAVAILABLE, in-flight ones finish within the grace period.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server

from edgefleet.oip import grpc_predict_v2_pb2 as oip
from edgefleet.oip import grpc_predict_v2_pb2_grpc as oip_grpc
from edgefleet.serving.config import ServerConfig, Settings, add_arguments, config_from
from edgefleet.serving.engines.base import Engine
from edgefleet.serving.engines.cpu_backend import loaded_cpu_backend
from edgefleet.serving.errors import ModelFileError
from edgefleet.serving.grpc_inference import InferenceServicer
from edgefleet.serving.grpc_oip import OpenInferenceServicer
from edgefleet.serving.model_files import DEFAULT_MODEL_NAME, resolve_model
from edgefleet.serving.service import ModelService
from edgefleet.serving.types import GenerationRequest, Message, Sampling
from edgefleet.v1 import inference_pb2 as pb
from edgefleet.v1 import inference_pb2_grpc as pb_grpc

log = logging.getLogger("edgefleet.server")

INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["Inference"].full_name
OIP_SERVICE = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


def build_engine(config: ServerConfig) -> Engine:
    if config.engine == "vllm":
        return build_vllm_engine(config)
    if config.engine != "llamacpp":
        raise ValueError(f"unknown engine {config.engine!r}; choose llamacpp or vllm")
    model_file = resolve_model(config.model, config.model_sha256 or None)
    name = config.model_name or (
        DEFAULT_MODEL_NAME
        if config.model in ("default", DEFAULT_MODEL_NAME)
        else model_file.path.stem
    )
    if config.batch_sequences:
        from edgefleet.serving.engines.llamacpp_batch import LlamaCppBatchEngine

        return LlamaCppBatchEngine(
            model_file.path,
            name,
            sequences=config.batch_sequences,
            threads=config.threads,
            context_length=config.context_length,
            model_sha256=model_file.sha256,
            stream_interval_s=config.stream_interval_ms / 1000,
        )
    from edgefleet.serving.engines.llamacpp import LlamaCppEngine

    return LlamaCppEngine(
        model_file.path,
        name,
        instances=config.instances,
        threads=config.threads,
        context_length=config.context_length,
        model_sha256=model_file.sha256,
        stream_interval_s=config.stream_interval_ms / 1000,
    )


def build_vllm_engine(config: ServerConfig) -> Engine:
    """The vLLM engine; its imports stay here so llama.cpp-only installs never need vllm."""
    try:
        from edgefleet.serving.engines.vllm_engine import VllmEngine
    except ImportError as exc:
        raise ValueError(
            f"--engine vllm needs vLLM ({exc}): pip install 'edgefleet[vllm]', "
            "or 'make vllm-env' for the CPU build"
        ) from exc
    from edgefleet.serving.convert_gguf import model_for_vllm

    model, sha256 = model_for_vllm(config.model, config.model_sha256 or None)
    name = config.model_name or (
        DEFAULT_MODEL_NAME
        if config.model in ("default", DEFAULT_MODEL_NAME)
        else (model.name if model.is_dir() else model.stem)
    )
    return VllmEngine(
        model,
        name,
        context_length=config.context_length,
        max_sequences=config.batch_sequences,
        dtype=config.vllm_dtype,
        gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        kv_cache_bytes=int(config.vllm_kv_cache_gib * (1 << 30)) or None,
        tensor_parallel_size=config.vllm_tensor_parallel_size,
        enforce_eager=bool(config.vllm_enforce_eager),
        model_sha256=sha256,
        stream_interval_s=config.stream_interval_ms / 1000,
    )


class InferenceServer:
    """Owns the gRPC server, the health states and the shutdown sequence."""

    def __init__(self, engine: Engine, config: ServerConfig) -> None:
        self.config = config
        self.engine = engine
        self.service = ModelService(engine, config)
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(
            options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 16 << 20)]
        )
        pb_grpc.add_InferenceServicer_to_server(
            InferenceServicer(self.service, config.instance_name), self.server
        )
        oip_grpc.add_GRPCInferenceServiceServicer_to_server(
            OpenInferenceServicer(self.service), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (INFERENCE_SERVICE, OIP_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME),
            self.server,
        )
        try:
            self.port = self.server.add_insecure_port(config.listen)
        except RuntimeError as exc:  # grpc reports bind failures this way
            raise OSError(f"cannot listen on {config.listen}: address invalid or in use") from exc
        self._stopped = asyncio.Event()
        self._engine_watch: asyncio.Task[None] | None = None
        # The drain a signal started: held here because the event loop keeps
        # only a weak reference to a task, which may vanish mid-drain.
        self.drain: asyncio.Task[None] | None = None

    @property
    def health_names(self) -> tuple[str, ...]:
        return ("", INFERENCE_SERVICE, OIP_SERVICE, self.engine.model_name)

    async def _set_health(self, status: int) -> None:
        for name in self.health_names:
            await self.health.set(name, status)

    async def start(self) -> None:
        """Listen first (health NOT_SERVING), then load, then report SERVING."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        log.info("listening on %s; loading %s", self.config.listen, self.engine.model_name)
        started = time.monotonic()
        try:
            await self.engine.start()
        except Exception as exc:
            await self.server.stop(grace=None)
            raise ModelFileError(f"cannot load {self.engine.model_name}: {exc}") from exc
        if self.engine.warms_up:
            await self._warm_up()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self._engine_watch = asyncio.create_task(self._follow_engine_readiness())
        log.info(
            "serving %s with %s (%d generating at once, context %d) after %.1fs",
            self.engine.model_name,
            self.engine.name,
            self.engine.capacity,
            self.engine.context_length,
            time.monotonic() - started,
        )

    async def _warm_up(self) -> None:
        """Decode a few tokens before SERVING: the first real decode is where a
        build the CPU cannot run dies (SIGILL), so it dies here, at start-up,
        with the cause in the log, and readiness never passes."""
        cpu = loaded_cpu_backend()
        where = f" on llama.cpp's {cpu} CPU backend" if cpu != "none" else ""
        log.info(
            "warm-up decode%s (a crash here means this engine build cannot run on this CPU)",
            where,
        )
        started = time.monotonic()
        request = GenerationRequest(
            request_id="warm-up",
            model=self.engine.model_name,
            messages=(Message("user", "Hello"),),
            sampling=Sampling(max_tokens=2, temperature=0.0, top_p=1.0, ignore_eos=True),
        )
        try:
            await self.engine.generate(request)
        except Exception as exc:
            await self.server.stop(grace=None)
            await self.engine.close()
            raise ModelFileError(
                f"warm-up decode failed for {self.engine.model_name}: {exc}"
            ) from exc
        log.info("warm-up decode done in %.2fs", time.monotonic() - started)

    async def _follow_engine_readiness(self, interval_s: float = 1.0) -> None:
        """Health follows the engine after start-up: an engine that dies (vLLM's
        engine core process, say) turns NOT_SERVING, so probes and routers see it."""
        serving = True
        while not self.service.admission.draining:
            await asyncio.sleep(interval_s)
            ready = self.engine.ready()
            if ready != serving and not self.service.admission.draining:
                serving = ready
                log.warning("engine %s", "ready again" if ready else "no longer ready")
                await self._set_health(
                    health_pb2.HealthCheckResponse.SERVING
                    if ready
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )

    async def drain_and_stop(self) -> None:
        """Refuse new work, let in-flight requests finish (up to the grace), stop."""
        admission = self.service.admission
        if admission.draining:
            return
        admission.draining = True
        if self._engine_watch is not None:
            self._engine_watch.cancel()
        await self.health.enter_graceful_shutdown()
        deadline = time.monotonic() + self.config.drain_grace_s
        log.info("draining %d running, %d queued", admission.running, admission.waiting)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(admission.wait_idle(), self.config.drain_grace_s)
        await self.server.stop(grace=max(0.0, deadline - time.monotonic()))
        await self.engine.close()
        self._stopped.set()
        log.info("stopped")

    def drain_in_background(self) -> None:
        """Start draining without awaiting it (from a signal handler); once only."""
        if self.drain is None:
            self.drain = asyncio.create_task(self.drain_and_stop())

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


def expose(server: InferenceServer, metrics_listen: str, registry: CollectorRegistry) -> None:
    """Serve /metrics when an address is given, and drain the server on SIGTERM or SIGINT."""
    if metrics_listen:
        host, _, port = metrics_listen.rpartition(":")
        start_http_server(int(port), addr=host or "0.0.0.0", registry=registry)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.drain_in_background)


async def serve(config: ServerConfig) -> None:
    engine = build_engine(config)
    server = InferenceServer(engine, config)
    expose(server, config.metrics_listen, server.service.metrics.registry)
    await server.start()
    await server.wait_stopped()


def service_parser(prog: str, description: str, settings: type) -> argparse.ArgumentParser:
    """A flag per setting of `settings` (each with its EDGEFLEET_* variable) and --log-level."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser, settings)
    parser.add_argument("--log-level", default="INFO")
    return parser


def run_service(
    args: argparse.Namespace, settings: type[Settings], serve: Callable[[Settings], Awaitable[None]]
) -> None:
    """Configure logging, read the settings and serve; a setup error exits 2 with its message."""
    # A fatal signal (SIGILL from an engine built for another CPU, SIGSEGV)
    # prints its name and the Python stack instead of dying silently.
    faulthandler.enable()
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(serve(config_from(args, settings=settings)))
    except (ModelFileError, ValueError, OSError) as exc:
        log.error("%s", exc)
        sys.exit(2)
    with contextlib.suppress(Exception):
        logging.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = service_parser(
        "edgefleet-server",
        "Serve a small language model over gRPC (edgefleet.v1, OIP v2, health).",
        ServerConfig,
    )
    run_service(parser.parse_args(argv), ServerConfig, serve)


if __name__ == "__main__":
    main()
