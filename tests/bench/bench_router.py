"""Router benchmark: the cost of a routing decision, and of the router hop end to end.

1. Decision latency, in-process, one request at a time: `RouterEngine.route` (privacy scan,
   complexity score, load, budget, decide) with the default policy and no backends, over every
   DEV prompt and over the PII corpus; the privacy scan and the complexity score also alone.
2. End to end through real processes, single stream: a local edgefleet-server, the cloud
   stand-in (llama_cpp.server on the same packaged model) behind a recording proxy, the egress,
   and two routers (threshold 1.0: everything local; 0.0: everything to the cloud). Each
   round sends one question on each path in turn: direct to the local server, via the router
   to it, direct to the egress, via the router to it; client-side TTFT (first non-empty
   delta) and total time. Router overhead = via-router minus direct.

Prints markdown tables on stdout, progress on stderr.

    .venv/bin/python tests/bench/bench_router.py [--requests 20] [--max-tokens 32] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from edgefleet.router.engine import RouterEngine
from edgefleet.router.sources import Endpoints
from edgefleet.routing.complexity import default_scorer
from edgefleet.routing.policy import RoutingPolicy
from edgefleet.serving.config import DEFAULT_SYSTEM_PROMPT
from edgefleet.serving.model_files import resolve_model
from edgefleet.serving.types import GenerationRequest, Message, RoutingHints, Sampling
from edgefleet.v1 import inference_pb2 as pb
from tests.support.cloud import recorded_cloud
from tests.support.model_server import running_server
from tests.support.pii_corpus import pii_prompts
from tests.support.routing import running_router, start_egress
from tests.support.routing_data import dev_data_path

DEV_DATA = dev_data_path()
WARMUP = 200
QUICK_DEV_PROMPTS = 200
QUICK_REQUESTS = 3
DECISION_TARGET_P99_MS = 2.0
# Short, clean questions (no personal data, so the privacy gate never overrides the policy).
QUESTIONS = (
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What colour is the sky on a clear day?",
    "Name a fruit that is yellow.",
    "What is two plus three?",
    "Which planet is closest to the sun?",
    "What do bees make?",
    "How many days are in a week?",
    "What is frozen water called?",
    "Which animal is known as the king of the jungle?",
    "What is the opposite of hot?",
    "How many hours are in a day?",
    "What gas do plants take in from the air?",
    "What is the largest ocean on Earth?",
    "Which season comes after winter?",
    "What do you call a baby cat?",
    "How many continents are there?",
    "What is the boiling point of water in Celsius?",
    "Which instrument has black and white keys?",
    "What shape has three sides?",
)
WARMUP_QUESTION = "Say hello."
# Everything local, everything to the cloud. The local router's overflow limits are out of
# reach: on a busy host the local server's recent TTFT alone can pass the default 5 s
# prediction limit, and that router would then measure the cloud path instead.
ROUTER_POLICIES: dict[str, dict[str, Any]] = {
    "local": {
        "complexity": {"threshold": 1.0},
        "capacity": {"maxQueueDepth": 1000, "maxPredictedTtftMs": 3_600_000},
    },
    "cloud": {"complexity": {"threshold": 0.0}},
}


# -- 1. decision latency, in-process -----------------------------------------------------


def request_for(prompt: str, number: int, max_tokens: int = 32) -> GenerationRequest:
    """A request as the servicer hands it to an engine: system prompt plus the user's text."""
    return GenerationRequest(
        request_id=f"bench-{number}",
        model="hybrid",
        messages=(Message("system", DEFAULT_SYSTEM_PROMPT), Message("user", prompt)),
        sampling=Sampling(max_tokens=max_tokens, temperature=0.0, top_p=1.0),
        routing=RoutingHints(),
    )


def decision_latency(prompt_sets: dict[str, list[str]]) -> list[tuple[str, str, np.ndarray]]:
    """(prompt set, part, milliseconds per prompt) for the whole decision and its two scans."""
    scorer = default_scorer()
    engine = RouterEngine(RoutingPolicy(), Endpoints(), scorer)
    active = engine.active
    scanner = active.scanner
    results = []
    for set_name, prompts in prompt_sets.items():
        requests = [request_for(p, i) for i, p in enumerate(prompts)]
        texts = [[m.content for m in r.messages] for r in requests]
        parts: dict[str, Callable[[int], object]] = {
            "route() (whole decision)": lambda i, rs=requests: engine.route(rs[i], active),
            "privacy scan (all messages)": lambda i, ts=texts: scanner.sensitive(ts[i]),
            "complexity score (user text)": lambda i, ps=prompts: scorer.score(ps[i]),
        }
        print(f"-- decision latency: {set_name}, {len(prompts)} prompts", file=sys.stderr)
        for i in range(min(WARMUP, len(prompts))):
            for part in parts.values():
                part(i)
        times: dict[str, list[float]] = {name: [] for name in parts}
        # Prompt by prompt, every part in turn, so drift on a shared host hits each alike.
        for i in range(len(prompts)):
            for name, part in parts.items():
                start = time.perf_counter_ns()
                part(i)
                times[name].append((time.perf_counter_ns() - start) / 1e6)
        results += [(set_name, name, np.array(ms)) for name, ms in times.items()]
    return results


def decision_table(results: list[tuple[str, str, np.ndarray]]) -> str:
    lines = [
        "| prompt set | part | n | p50 ms | p99 ms | max ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for set_name, part, ms in results:
        lines.append(
            f"| {set_name} | {part} | {len(ms)} | {np.percentile(ms, 50):.3f} | "
            f"{np.percentile(ms, 99):.3f} | {ms.max():.3f} |"
        )
    worst = max(np.percentile(ms, 99) for _, part, ms in results if part.startswith("route()"))
    verdict = "met" if worst < DECISION_TARGET_P99_MS else "NOT met"
    lines.append(
        f"\nTarget: decision p99 under {DECISION_TARGET_P99_MS:.0f} ms on 2 cores; worst route() "
        f"p99 here {worst:.3f} ms on {os.cpu_count()} CPUs: {verdict}."
    )
    return "\n".join(lines)


# -- 2. end to end through real processes ------------------------------------------------


@dataclass
class Sample:
    ttft_ms: float
    total_ms: float
    tokens: int
    route: str  # "target/reason" as the final message tells it; "" from a model server

    @property
    def decode_tps(self) -> float:
        decode_s = (self.total_ms - self.ttft_ms) / 1000
        return (self.tokens - 1) / decode_s if decode_s > 0 and self.tokens > 1 else 0.0


def ask_stream(stub: object, question: str, max_tokens: int) -> Sample:
    request = pb.GenerateRequest(
        messages=[
            pb.ChatMessage(role="system", content=DEFAULT_SYSTEM_PROMPT),
            pb.ChatMessage(role="user", content=question),
        ],
        sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0),
    )
    start = time.perf_counter()
    first, tokens, route = None, 0, ""
    for message in stub.GenerateStream(request, timeout=300):  # type: ignore[attr-defined]
        if message.delta and first is None:
            first = time.perf_counter()
        if message.is_final:
            tokens = message.usage.completion_tokens
            if message.HasField("route"):
                route = f"{message.route.target}/{message.route.reason}"
    end = time.perf_counter()
    return Sample(((first or end) - start) * 1000, (end - start) * 1000, tokens, route)


@contextlib.contextmanager
def routing_stack(workdir: Path, cloud_threads: int | None) -> Iterator[dict[str, object]]:
    """Stubs of the four paths, each a real process; everything stopped on the way out."""
    with contextlib.ExitStack() as stack:
        print("-- starting the cloud stand-in and its proxy", file=sys.stderr, flush=True)
        _, proxy = stack.enter_context(recorded_cloud(threads=cloud_threads))
        print("-- starting the local edgefleet-server", file=sys.stderr, flush=True)
        local = stack.enter_context(running_server("--batch-sequences", "2"))
        print("-- starting the egress", file=sys.stderr, flush=True)
        egress = start_egress(proxy.base_url, workdir / "audit.jsonl")
        stack.callback(egress.stop)
        routers = {}
        for name, spec in ROUTER_POLICIES.items():
            print(f"-- starting the router: {json.dumps(spec)}", file=sys.stderr, flush=True)
            routers[name] = stack.enter_context(
                running_router(workdir, spec, [local.target], egress.target)
            )
        yield {
            "direct → local edgefleet-server": local.stub,
            "router → local": routers["local"].stub,
            "direct → egress → cloud stand-in": egress.stub,
            "router → egress → cloud stand-in": routers["cloud"].stub,
        }


def schedule(rounds: int, paths: int) -> Iterator[list[tuple[int, str]]]:
    """Per round, (path, question) in the order to send them.

    Two biases would otherwise swamp a router hop of a few milliseconds. A backend reuses the
    KV cache of a prompt it has just read (llama.cpp prefix reuse), so the second of two
    identical requests skips most of its prompt: within a round every path asks a different
    question (path p asks question r + p * stride, a Latin square, so over len(QUESTIONS)
    rounds each path asks every question once). And a request that follows the other
    backend's request may share the cores with that process still winding down (llama.cpp
    threads, the egress, the proxy), one that follows its own backend does not: direct and
    via-router swap places every other round.
    """
    stride = len(QUESTIONS) // paths
    for r in range(rounds):
        order = list(range(paths))
        if r % 2:
            order = [order[i ^ 1] for i in order]  # (0 1 2 3) -> (1 0 3 2)
        yield [(p, QUESTIONS[(r + p * stride) % len(QUESTIONS)]) for p in order]


def end_to_end(
    requests: int, max_tokens: int, pause_s: float = 0.0, cloud_threads: int | None = None
) -> dict[str, list[Sample]]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-router-") as tmp,
        routing_stack(Path(tmp), cloud_threads) as paths,
    ):
        stubs = list(paths.values())
        for stub in stubs:  # warm-up: first-call costs (channels, caches) unmeasured
            ask_stream(stub, WARMUP_QUESTION, max_tokens)
        names = list(paths)
        samples: dict[str, list[Sample]] = {name: [] for name in names}
        for number, sends in enumerate(schedule(requests, len(stubs)), 1):
            print(f"-- round {number}/{requests}", file=sys.stderr, flush=True)
            for path, question in sends:
                time.sleep(pause_s)
                samples[names[path]].append(ask_stream(stubs[path], question, max_tokens))
    return samples


def end_to_end_table(samples: dict[str, list[Sample]]) -> str:
    def p(values: list[float], q: float) -> float:
        return float(np.percentile(values, q))

    names = list(samples)
    direct_of = {names[1]: names[0], names[3]: names[2]}
    expected = {names[1]: "local", names[3]: "cloud"}
    warnings = []
    lines = [
        "| path | n | TTFT p50 ms | TTFT p95 ms | total p50 ms | decode tok/s p50 | "
        "router overhead on TTFT p50 ms | per-round median Δ TTFT ms | routes seen |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, runs in samples.items():
        ttft = [s.ttft_ms for s in runs]
        overhead = paired = "—"
        if name in direct_of:
            direct = samples[direct_of[name]]
            overhead = f"{p(ttft, 50) - p([s.ttft_ms for s in direct], 50):+.1f}"
            deltas = [s.ttft_ms - d.ttft_ms for s, d in zip(runs, direct, strict=True)]
            paired = f"{statistics.median(deltas):+.1f}"
        routes = Counter(s.route for s in runs if s.route)
        if name in expected:
            stray = sum(n for r, n in routes.items() if not r.startswith(expected[name] + "/"))
            if stray:
                warnings.append(
                    f"WARNING: {name}: {stray} of {len(runs)} requests were not served by the "
                    f"{expected[name]} target; this row does not measure that path."
                )
        lines.append(
            f"| {name} | {len(runs)} | {p(ttft, 50):.1f} | {p(ttft, 95):.1f} | "
            f"{p([s.total_ms for s in runs], 50):.1f} | "
            f"{p([s.decode_tps for s in runs], 50):.1f} | {overhead} | {paired} | "
            f"{', '.join(f'{r}: {n}' for r, n in sorted(routes.items())) or '—'} |"
        )
    tokens = [s.tokens for runs in samples.values() for s in runs]
    lines.append(
        f"\nCompletion tokens per answer: {min(tokens)} to {max(tokens)} (temperature 0; an answer "
        "may stop before max_tokens). Overhead: via-router p50 minus direct p50; per-round: "
        "median over rounds of (via router - direct), two requests sent back to back."
    )
    return "\n".join(lines + warnings)


# -- main --------------------------------------------------------------------------------


def header(args: argparse.Namespace) -> str:
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    visible = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    model = resolve_model("default", None).path.name
    return (
        f"Router benchmark, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; "
        f"{platform.platform()} {platform.machine()}, os.cpu_count() {os.cpu_count()} "
        f"({visible} usable), Python {platform.python_version()}, load average at start "
        f"{load}; model {model}, max_tokens {args.max_tokens}, temperature 0"
        f"{', --quick' if args.quick else ''}"
        f"{f', cloud stand-in threads {args.cloud_threads}' if args.cloud_threads else ''}.\n"
        'The "cloud" is llama_cpp.server on the same 135M model on this machine (behind a '
        "local recording proxy), so cloud-path latency here is not a real cloud's: it measures "
        "the egress and router hops, not a provider."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEV_DATA, help="DEV prompts (JSON lines)")
    parser.add_argument("--dev-prompts", type=int, help="use the first N (default: all)")
    parser.add_argument(
        "--requests", type=int, help="end-to-end rounds, a request per path (default 20)"
    )
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--pause-ms",
        type=float,
        default=0.0,
        help="idle time before each end-to-end request, so the previous backend's threads settle",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_REQUESTS} rounds, {QUICK_DEV_PROMPTS} DEV prompts",
    )
    parser.add_argument("--skip-end-to-end", action="store_true", help="decision latency only")
    parser.add_argument(
        "--cloud-threads",
        type=int,
        help="decode threads of the cloud stand-in (default: every core); fewer leave a core "
        "to the egress and router hops, as a remote cloud would",
    )
    args = parser.parse_args()
    if args.requests is None:
        args.requests = QUICK_REQUESTS if args.quick else 20
    if args.dev_prompts is None and args.quick:
        args.dev_prompts = QUICK_DEV_PROMPTS
    if args.requests < 1 or args.max_tokens < 1:
        parser.error("--requests and --max-tokens must be at least 1")
    # A plain SIGTERM would skip the context managers and leave five servers behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with args.data.open(encoding="utf-8") as f:
        dev = [json.loads(line)["prompt"] for line in f if line.strip()]
    if args.dev_prompts:
        dev = dev[: args.dev_prompts]
    prompt_sets = {
        f"DEV ({args.data.name})": dev,
        "PII corpus (pii_prompts())": [p.text for p in pii_prompts()],
    }

    print(header(args) + "\n")
    # In-process first, before any model process competes for the CPUs.
    decisions = decision_latency(prompt_sets)
    print("### Decision latency, in-process, one request at a time (after warm-up)\n")
    complexity = RoutingPolicy().complexity
    print(
        f"RouterEngine.route with the default policy ({complexity}) and no backends "
        "(decides cloud/no_local; gathering the facts costs the same). A prompt that a privacy "
        "detector flags is not scored for complexity inside route().\n"
    )
    print(decision_table(decisions) + "\n")
    sys.stdout.flush()

    if not args.skip_end_to_end:
        samples = end_to_end(
            args.requests, args.max_tokens, args.pause_ms / 1000, args.cloud_threads
        )
        print("### End to end through real processes, single stream, interleaved\n")
        print(
            f"{args.requests} rounds of one short question per path, one request at a time (gRPC "
            "GenerateStream); client-side TTFT = first non-empty delta. Within a round each path "
            "asks a different question, so no backend answers from the prompt it just read, "
            "and direct and via-router swap order every other round.\n"
        )
        print(end_to_end_table(samples))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
