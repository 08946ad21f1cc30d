"""Server settings: one typed class, read from EDGEFLEET_* variables and flags.

A pod spec sets the environment; a person at a shell uses the flags; a flag
wins over the environment.
"""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass, field, fields
from typing import TypeVar

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant. Answer the question directly, briefly and accurately."
)
# Requests each model engine decodes together when neither batch_sequences nor
# max_concurrency is given: llama.cpp on a few CPU cores gains little beyond 4
# (docs/benchmarks.md); vLLM on a GPU is built for many at once, its paged KV
# cache holding as many as memory allows and preempting the rest.
DEFAULT_BATCH_SEQUENCES = {"llamacpp": 4, "vllm": 64}


@dataclass
class ServerConfig:
    # Engine: "llamacpp" (CPU edge nodes) or "vllm" (GPU nodes; needs the vllm extra).
    engine: str = "llamacpp"
    # "default" (the packaged SmolLM2-135M-Instruct) or a path to a GGUF file;
    # with the vllm engine also a Hugging Face model folder (GGUF is converted).
    model: str = "default"
    # Name clients use; derived from the model when empty.
    model_name: str = ""
    # Expected sha256 of the model file; a mismatch refuses to start.
    model_sha256: str = ""
    # gRPC address (edgefleet.v1, OIP v2, health, reflection).
    listen: str = "0.0.0.0:50051"
    # Prometheus /metrics address; empty disables it.
    metrics_listen: str = "0.0.0.0:9090"
    # With batch_sequences 0: model copies kept in memory, one request each.
    instances: int = 2
    # Continuous batching: the model is loaded once and up to N requests are
    # decoded together (vLLM: its max_num_seqs). -1: max_concurrency when that
    # is given, else DEFAULT_BATCH_SEQUENCES for the engine. 0 (llama.cpp only)
    # switches to a pool of `instances` separate model copies instead.
    batch_sequences: int = -1
    # CPU threads shared by all instances; 0 means all cores.
    threads: int = 0
    # Streamed text is handed over at most this often (the first token at
    # once); fewer wake-ups leave more CPU to the model. 0 sends every token.
    stream_interval_ms: float = 50.0
    # Context length per instance, in tokens (prompt plus answer).
    context_length: int = 2048
    # Requests generating at once; 0 means as many as the engine decodes at
    # once (batch_sequences, or instances in a pool). Never more: the rest
    # would wait inside the engine while counted as running.
    max_concurrency: int = 0
    # Requests allowed to wait for a slot; beyond that RESOURCE_EXHAUSTED.
    max_queue: int = 8
    # Largest max_tokens a request may ask for.
    max_tokens_cap: int = 1024
    # max_tokens when a request gives none.
    default_max_tokens: int = 256
    # Temperature when a request gives none; small models stay on topic near greedy.
    default_temperature: float = 0.2
    # Prepended when a request has no system message; small models ramble without one.
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    # Seconds in-flight requests may finish in after SIGTERM.
    drain_grace_s: float = 20.0
    # vLLM engine only. Its max_num_seqs is batch_sequences and its
    # max_model_len context_length. Weights and activations: auto, bfloat16,
    # float16 or float32.
    vllm_dtype: str = "auto"
    # Fraction of GPU memory vLLM takes for weights and KV cache (the CPU
    # build reads it as a fraction of host memory); the KV cache gets what the
    # weights and a profiling run leave. batch_sequences bounds the batch and
    # reserves nothing: when the cache runs short, vLLM preempts sequences
    # back to waiting (GetStats reports them as waiting).
    vllm_gpu_memory_utilization: float = 0.9
    # KV-cache size in GiB; 0 sizes it from vllm_gpu_memory_utilization.
    vllm_kv_cache_gib: float = 0.0
    # GPUs one model is split over.
    vllm_tensor_parallel_size: int = 1
    # 1 skips torch.compile and CUDA graphs: faster start, slower decoding.
    vllm_enforce_eager: int = 0
    # Name of this pod or host in responses.
    instance_name: str = field(default_factory=socket.gethostname)

    def __post_init__(self) -> None:
        if self.threads <= 0:
            self.threads = os.cpu_count() or 1
        if self.batch_sequences == -1:
            self.batch_sequences = self.max_concurrency or DEFAULT_BATCH_SEQUENCES.get(
                self.engine, DEFAULT_BATCH_SEQUENCES["llamacpp"]
            )
        if self.max_concurrency <= 0:
            self.max_concurrency = self.batch_sequences or self.instances
        problems = []
        if self.instances < 1:
            problems.append("instances must be at least 1")
        if self.batch_sequences < 0:
            problems.append("batch_sequences must not be negative (-1: the default)")
        problems += self._beyond_the_engine()
        if self.max_queue < 0:
            problems.append("max_queue must not be negative")
        if self.context_length < 64:
            problems.append("context_length must be at least 64")
        if self.engine == "vllm" and self.batch_sequences < 1:
            problems.append("the vllm engine needs batch_sequences (max_num_seqs) of at least 1")
        if not 0.0 < self.vllm_gpu_memory_utilization <= 1.0:
            problems.append("vllm_gpu_memory_utilization must be within (0, 1]")
        if self.vllm_kv_cache_gib < 0:
            problems.append("vllm_kv_cache_gib must not be negative")
        if self.vllm_tensor_parallel_size < 1:
            problems.append("vllm_tensor_parallel_size must be at least 1")
        if not 1 <= self.default_max_tokens <= self.max_tokens_cap:
            problems.append("default_max_tokens must be between 1 and max_tokens_cap")
        if problems:
            raise ValueError("invalid server settings: " + "; ".join(problems))

    def _beyond_the_engine(self) -> list[str]:
        """Admitting more than the engine decodes at once would queue the rest
        inside the engine, where GetStats and vllm:num_requests_running count
        them as running: routers and autoscalers would under-read the load."""
        if self.engine not in DEFAULT_BATCH_SEQUENCES:
            return []  # the router and the egress: their engine answers from elsewhere
        if self.batch_sequences:
            decoded, flag = self.batch_sequences, "--batch-sequences"
            setting = f"--batch-sequences {decoded}"
        elif self.engine == "vllm":
            return []  # refused already: vLLM has no instance pool
        else:
            decoded, flag = self.instances, "--instances"
            setting = f"--instances {decoded} with --batch-sequences 0"
        if self.max_concurrency <= decoded:
            return []
        return [
            f"--max-concurrency {self.max_concurrency} is more than the {self.engine} engine "
            f"decodes at once ({setting}), so the rest would wait inside the engine counted "
            f"as running: lower --max-concurrency or raise {flag}"
        ]


@dataclass
class FrontSettings:
    """What the router and the egress share: services whose engine answers from elsewhere.

    Each runs the model server's own gRPC servicers, so it turns into a
    ServerConfig with the engine-free parts filled in.
    """

    # gRPC address (edgefleet.v1, OIP v2, health, reflection).
    listen: str = "0.0.0.0:50051"
    # Prometheus /metrics address; empty disables it.
    metrics_listen: str = "0.0.0.0:9090"
    # Requests handled at once, and how many may wait beyond that.
    max_concurrency: int = 64
    max_queue: int = 64
    # Largest max_tokens a request may ask for.
    max_tokens_cap: int = 1024
    # Seconds in-flight requests may finish in after SIGTERM.
    drain_grace_s: float = 20.0
    # Name of this pod or host in responses.
    instance_name: str = field(default_factory=socket.gethostname)

    def server_config(self, engine: str, **request_defaults: object) -> ServerConfig:
        return ServerConfig(
            engine=engine,
            listen=self.listen,
            metrics_listen=self.metrics_listen,
            batch_sequences=0,
            instances=1,
            max_concurrency=self.max_concurrency,
            max_queue=self.max_queue,
            max_tokens_cap=self.max_tokens_cap,
            drain_grace_s=self.drain_grace_s,
            instance_name=self.instance_name,
            **request_defaults,  # type: ignore[arg-type]
        )


Settings = TypeVar("Settings")


def _env_name(name: str) -> str:
    return "EDGEFLEET_" + name.upper()


def _convert(kind: type, raw: str, name: str) -> object:
    try:
        return kind(raw)
    except ValueError as exc:
        raise ValueError(f"{_env_name(name)}={raw!r} is not a valid {kind.__name__}") from exc


def add_arguments(parser: argparse.ArgumentParser, settings: type = ServerConfig) -> None:
    """One flag per setting (--max-queue ...); the help names its variable."""
    for spec in fields(settings):
        kind = {"int": int, "float": float}.get(str(spec.type), str)
        parser.add_argument(
            "--" + spec.name.replace("_", "-"),
            type=kind,
            default=None,
            help=f"(env {_env_name(spec.name)})",
        )


def config_from(
    args: argparse.Namespace | None = None,
    environ: dict[str, str] | None = None,
    settings: type[Settings] = ServerConfig,  # type: ignore[assignment]
) -> Settings:
    """Settings of any dataclass from flags, then EDGEFLEET_* variables, then defaults."""
    environ = dict(os.environ) if environ is None else environ
    values: dict[str, object] = {}
    for spec in fields(settings):
        kind = {"int": int, "float": float}.get(str(spec.type), str)
        flag = getattr(args, spec.name, None) if args is not None else None
        if flag is not None:
            values[spec.name] = flag
        elif _env_name(spec.name) in environ:
            values[spec.name] = _convert(kind, environ[_env_name(spec.name)], spec.name)
    return settings(**values)
