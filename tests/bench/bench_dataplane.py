"""Data-plane benchmark: every way to serve the model on this machine, side by side in one run.

- llama_cpp.Llama in-process (create_chat_completion, streaming): the library, no server;
- edgefleet-server over gRPC: continuous batching (8 sequences), the instance pool
  (2 instances), and continuous batching on a native build of llama.cpp (the
  native llama-cpp-python wheel's libraries through LLAMA_CPP_LIB_PATH; measured,
  never shipped);
- llama_cpp.server (llama-cpp-python's OpenAI-compatible HTTP server);
- llama-server, llama.cpp's own C++ server (`-np 8 -t <cores>`, continuous
  batching), on its OpenAI-compatible streaming endpoint;
- llama-batched-bench: llama.cpp decoding N sequences with no server and no
  sampling, the reference line (decode speed only, no TTFT).

Every answer is exactly --max-tokens long (ignore_eos: edgefleet's and
llama-server's own field; for llama-cpp-python a logit bias that rules out the
end-of-generation tokens), temperature 0. At 1, 4 and 8 concurrent streams,
each level sends max(8, streams) requests: aggregate tok/s is all completion
tokens over the level's wall time, TTFT is measured by the client from sending
to the first text. Levels are interleaved across systems round by round, so
the drift of a shared machine hits all alike. All systems use every core and a
2048-token context per sequence. Both HTTP servers are driven by the same
minimal stdlib client (no SDK parsing on the cores being measured).

Prints one markdown table, the CPU's flags and the llama.cpp CPU backend each
server loaded (paste into docs/benchmarks.md).

    .venv/bin/python tests/bench/bench_dataplane.py [--max-tokens 128] [--rounds 3]

The llama.cpp tools and the native wheel are built once and cached by
inference-server/llama_cpp_build.py (`make bench` builds them first).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from edgefleet.serving.config import DEFAULT_SYSTEM_PROMPT
from edgefleet.serving.engines.cpu_backend import loaded_cpu_backend
from edgefleet.serving.model_files import default_model_path
from edgefleet.serving.readiness import free_local_port
from edgefleet.v1 import inference_pb2 as pb
from tests.support.model_server import ModelServer, spawn_server
from tests.support.prompts import LONG_ANSWER_PROMPTS

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = LONG_ANSWER_PROMPTS
LEVELS = (1, 4, 8)
CONTEXT = 2048  # per sequence, for every system
SEQUENCES = 8
REQUEST_TIMEOUT_S = 300.0
BUILD = ROOT / "inference-server" / "llama_cpp_build.py"


@dataclass
class Sample:
    ttft_s: float
    tokens: int


Generate = Callable[[str], Sample]


@dataclass
class System:
    name: str
    generate: Generate
    stop: Callable[[], None]
    pid: int | None = None  # the serving process, to read which CPU backend it loaded
    single_stream_only: bool = False
    port: int | None = None  # HTTP servers


@dataclass
class Level:
    seconds: float = 0.0
    tokens: int = 0
    ttfts: list[float] = field(default_factory=list)

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def messages(prompt: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": prompt},
    ]


def built(*args: str) -> Path:
    """A folder llama_cpp_build.py built (or finds cached)."""
    out = subprocess.run(
        [sys.executable, str(BUILD), *args], check=True, capture_output=True, text=True
    ).stdout
    folder = Path(out.strip().splitlines()[-1])
    if args[0] == "tools" and not (folder / "llama-server").exists():
        raise SystemExit(
            f"{folder} has no llama-server: the build put its binaries elsewhere "
            "(llama.cpp sets CMAKE_RUNTIME_OUTPUT_DIRECTORY to <build>/bin itself); "
            "delete the folder and fix llama_cpp_build.py's build_tools"
        )
    return folder


def native_lib_folder() -> Path:
    """The native wheel's llama_cpp/lib, extracted once next to the wheel."""
    wheel_dir = built("wheel", "--native")
    target = wheel_dir / "lib-extracted"
    if not (target / ".complete").exists():
        wheel = next(wheel_dir.glob("*.whl"))
        target.mkdir(exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.startswith("llama_cpp/lib/") and not member.endswith("/"):
                    (target / Path(member).name).write_bytes(archive.read(member))
                    (target / Path(member).name).chmod(0o755)
        (target / ".complete").write_text(wheel.name + "\n")
    return target


def end_of_generation_tokens(llama: llama_cpp.Llama) -> list[int]:
    vocab = llama._model.vocab
    return [t for t in range(llama.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]


# -- the systems ----------------------------------------------------------------------


def raw_llama(max_tokens: int, threads: int) -> System:
    llama = llama_cpp.Llama(
        model_path=str(default_model_path()),
        n_ctx=CONTEXT,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    no_eos = {token: -1e9 for token in end_of_generation_tokens(llama)}

    def generate(prompt: str) -> Sample:
        start = time.perf_counter()
        first, tokens = None, 0
        for chunk in llama.create_chat_completion(
            messages(prompt),
            max_tokens=max_tokens,
            temperature=0.0,
            logit_bias=no_eos,
            stream=True,
        ):
            if chunk["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter()
                tokens += 1
        return Sample((first or time.perf_counter()) - start, tokens)

    return System("llama_cpp.Llama in-process", generate, llama.close, os.getpid(), True)


def edgefleet(
    name: str, max_tokens: int, *flags: str, env: dict[str, str] | None = None
) -> System:
    server: ModelServer = spawn_server(
        *flags, "--max-queue", "16", "--context-length", str(CONTEXT), env=env
    )
    try:
        server.wait_serving()
    except BaseException:
        server.stop()
        raise
    stub = server.stub
    sampling = pb.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)

    def generate(prompt: str) -> Sample:
        start = time.perf_counter()
        first, tokens = None, 0
        request = pb.GenerateRequest(prompt=prompt, sampling=sampling)
        for chunk in stub.GenerateStream(request, timeout=REQUEST_TIMEOUT_S):
            if chunk.delta and first is None:
                first = time.perf_counter()
            if chunk.is_final:
                tokens = chunk.usage.completion_tokens
        return Sample((first or time.perf_counter()) - start, tokens)

    return System(name, generate, server.stop, server.process.pid)


def _http_server(command: list[str], port: int, ready_path: str, name: str) -> subprocess.Popen:
    log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}", timeout=5):
                return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                log.seek(0)
                error = log.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"{name} did not start:\n{error}") from None
            time.sleep(0.3)


def _stop_process(process: subprocess.Popen) -> Callable[[], None]:
    def stop() -> None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    return stop


def stream_chat(
    port: int,
    body: dict[str, object],
    chat: list[dict[str, str]],
    on_first_text: Callable[[], None] | None = None,
) -> Sample:
    """One streamed OpenAI chat completion over http.client, on a fresh connection
    (llama_cpp.server closes the connection after a stream)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    payload = json.dumps({**body, "messages": chat, "stream": True})
    start = time.perf_counter()
    try:
        connection.request(
            "POST", "/v1/chat/completions", payload, {"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {response.read()[:500]!r}")
        first, chunks, usage = None, 0, None
        while line := response.readline():
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            event = json.loads(line[6:])
            choices = event.get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                if first is None:
                    first = time.perf_counter()
                    if on_first_text is not None:
                        on_first_text()
                chunks += 1
            if event.get("usage"):
                usage = event["usage"].get("completion_tokens")
    finally:
        connection.close()
    return Sample((first or time.perf_counter()) - start, usage or chunks)


def sse_chat_client(port: int, body: dict[str, object]) -> Generate:
    return lambda prompt: stream_chat(port, body, messages(prompt))


def llama_cpp_server(max_tokens: int, threads: int, no_eos: dict[str, float]) -> System:
    port = free_local_port()
    process = _http_server(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(default_model_path()),
         "--n_ctx", str(CONTEXT), "--n_threads", str(threads), "--n_threads_batch",
         str(threads), "--host", "127.0.0.1", "--port", str(port), "--verbose", "false"],
        port, "/v1/models", "llama_cpp.server",
    )
    body = {"model": "default", "max_tokens": max_tokens, "temperature": 0.0,
            "logit_bias": no_eos}
    return System("llama_cpp.server (HTTP)", sse_chat_client(port, body),
                  _stop_process(process), process.pid)


def llama_server(tools: Path, max_tokens: int, threads: int) -> System:
    port = free_local_port()
    process = _http_server(
        [str(tools / "llama-server"), "-m", str(default_model_path()),
         "-c", str(CONTEXT * SEQUENCES), "-np", str(SEQUENCES), "-t", str(threads),
         "--host", "127.0.0.1", "--port", str(port), "--no-webui"],
        port, "/health", "llama-server",
    )
    body = {"max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    return System(f"llama-server (C++, -np {SEQUENCES} -t {threads})",
                  sse_chat_client(port, body), _stop_process(process), process.pid, port=port)


def batched_bench(tools: Path, max_tokens: int, threads: int) -> dict[int, float]:
    """llama-batched-bench's decode tok/s per number of sequences (S_TG)."""
    result = subprocess.run(
        [str(tools / "llama-batched-bench"), "-m", str(default_model_path()),
         "-c", str(CONTEXT * SEQUENCES), "-b", "2048", "-ub", "512", "-npp", "128",
         "-ntg", str(max_tokens), "-npl", ",".join(map(str, LEVELS)), "-t", str(threads),
         "--output-format", "jsonl"],
        check=True, capture_output=True, text=True, timeout=900,
    )
    speeds = {}
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            speeds[int(row["pl"])] = float(row["speed_tg"])
    return speeds


# -- measuring ------------------------------------------------------------------------


def run_level(generate: Generate, streams: int) -> tuple[float, list[Sample]]:
    requests = max(8, streams)
    jobs = [PROMPTS[i % len(PROMPTS)] for i in range(requests)]
    start = time.perf_counter()
    if streams == 1:  # on this thread: an in-process Llama keeps its one OpenMP team
        samples = [generate(prompt) for prompt in jobs]
    else:
        with concurrent.futures.ThreadPoolExecutor(streams) as pool:
            samples = list(pool.map(generate, jobs))
    return time.perf_counter() - start, samples


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def failure_line(exc: BaseException) -> str:
    """The telling line of a start failure (a fatal signal, an exit code), for one table cell."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "Fatal Python error" in line or "Illegal instruction" in line or "SIG" in line:
            return line.replace("|", "/")[:160]
    return (lines[0] if lines else type(exc).__name__).replace("|", "/")[:160]


def cpu_flags() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip", action="append", default=[],
                        help="leave out systems whose name contains this (repeatable)")
    args = parser.parse_args()
    # `timeout` or Ctrl-C: stop every server on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    threads, max_tokens = args.threads, args.max_tokens
    vocab = llama_cpp.Llama(model_path=str(default_model_path()), vocab_only=True, verbose=False)
    no_eos = {str(token): -1e9 for token in end_of_generation_tokens(vocab)}
    vocab.close()
    threads_flag = ("--threads", str(threads))
    starters: list[tuple[str, Callable[[], System]]] = [
        ("llama_cpp.Llama in-process", lambda: raw_llama(max_tokens, threads)),
        (f"edgefleet-server, batching, {SEQUENCES} sequences", lambda: edgefleet(
            f"edgefleet-server, batching, {SEQUENCES} sequences", max_tokens,
            "--batch-sequences", str(SEQUENCES), *threads_flag)),
        ("edgefleet-server, pool, 2 instances", lambda: edgefleet(
            "edgefleet-server, pool, 2 instances", max_tokens,
            "--batch-sequences", "0", "--instances", "2", *threads_flag)),
        (f"edgefleet-server, batching, {SEQUENCES} sequences, native build", lambda: edgefleet(
            f"edgefleet-server, batching, {SEQUENCES} sequences, native build", max_tokens,
            "--batch-sequences", str(SEQUENCES), *threads_flag,
            env={"LLAMA_CPP_LIB_PATH": str(native_lib_folder())})),
        ("llama_cpp.server (HTTP)", lambda: llama_cpp_server(max_tokens, threads, no_eos)),
        ("llama-server", lambda: llama_server(built("tools"), max_tokens, threads)),
    ]
    with_batched_bench = not any(skip in "llama-batched-bench" for skip in args.skip)
    systems: list[System] = []
    # A system that cannot run on this CPU (the native build on a CPU whose
    # AMX the kernel does not grant, say) is a row of the table, not an abort.
    failed: dict[str, str] = {}
    decode_only: list[dict[int, float]] = []
    try:
        for name, start in starters:
            if any(skip in name for skip in args.skip):
                continue
            print(f"-- {name}: starting", file=sys.stderr, flush=True)
            try:
                system = start()
            except Exception as exc:  # reported in the table
                failed[name] = failure_line(exc)
                print(f"   {name} did not start: {exc}", file=sys.stderr, flush=True)
                continue
            systems.append(system)
            system.generate(PROMPTS[0])  # warm-up: first decode, prefix cache
        backends = {s.name: loaded_cpu_backend(Path(f"/proc/{s.pid}/maps")) for s in systems}
        results = {s.name: {n: Level() for n in LEVELS} for s in systems}
        for round_ in range(args.rounds):
            for streams in LEVELS:
                for system in systems:
                    if system.single_stream_only and streams > 1:
                        continue
                    seconds, samples = run_level(system.generate, streams)
                    level = results[system.name][streams]
                    level.seconds += seconds
                    level.tokens += sum(s.tokens for s in samples)
                    level.ttfts.extend(s.ttft_s for s in samples)
                    print(f"   round {round_ + 1} @{streams} {system.name}: "
                          f"{sum(s.tokens for s in samples) / seconds:.1f} tok/s",
                          file=sys.stderr, flush=True)
            if with_batched_bench:
                decode_only.append(batched_bench(built("tools"), max_tokens, threads))
                print(f"   round {round_ + 1} llama-batched-bench: {decode_only[-1]}",
                      file=sys.stderr, flush=True)
    finally:
        for system in systems:
            system.stop()

    print(
        f"\nSmolLM2-135M-Instruct Q4_1, {platform.machine()}, {os.cpu_count()} cores, "
        f"{threads} threads, llama-cpp-python {llama_cpp.__version__} (llama.cpp tools and "
        f"native wheel from its sdist), {max_tokens} tokens per answer (ignore_eos), "
        f"temperature 0, {args.rounds} rounds, load average at the end "
        f"{os.getloadavg()[0]:.1f}\n"
    )
    print("CPU flags: " + cpu_flags())
    print("CPU backend loaded: " + ", ".join(f"{n}: {b}" for n, b in backends.items()) + "\n")
    header = [f"agg tok/s @{n}" for n in LEVELS] + [f"TTFT p50 ms @{n}" for n in LEVELS]
    print("| system | " + " | ".join(header) + " |")
    print("|---|" + "---:|" * len(header))
    for system in systems:
        levels = results[system.name]
        tps = [f"{levels[n].tps:.1f}" if levels[n].ttfts else "—" for n in LEVELS]
        ttft = [f"{percentile(levels[n].ttfts, 0.5) * 1000:.0f}" if levels[n].ttfts else "—"
                for n in LEVELS]
        print(f"| {system.name} | " + " | ".join(tps + ttft) + " |")
    for name, reason in failed.items():
        print(f"| {name} | did not start: {reason} |" + " |" * (len(header) - 1))
    if decode_only:
        speeds = [f"{statistics.mean(run[n] for run in decode_only):.1f}" for n in LEVELS]
        print("| llama-batched-bench (decode only, no server, no sampling) | "
              + " | ".join(speeds + ["—"] * len(LEVELS)) + " |")

    def find(fragment: str, native: bool = False) -> dict[int, Level] | None:
        for name, levels in results.items():
            if fragment in name and ("native" in name) == native:
                return levels
        return None

    ours, peer = find("batching"), find("llama-server")
    if ours and peer:
        print()
        for n in LEVELS:
            print(f"edgefleet batching vs llama-server @{n}: tok/s "
                  f"{100 * (ours[n].tps / peer[n].tps - 1):+.1f} %, TTFT p50 "
                  f"{1000 * (percentile(ours[n].ttfts, 0.5) - percentile(peer[n].ttfts, 0.5)):+.0f}"
                  " ms")
    native_levels = find("batching", native=True)
    if ours and native_levels:
        print("native vs portable build (edgefleet batching): "
              + ", ".join(f"@{n} {100 * (native_levels[n].tps / ours[n].tps - 1):+.1f} %"
                          for n in LEVELS))


if __name__ == "__main__":
    main()
