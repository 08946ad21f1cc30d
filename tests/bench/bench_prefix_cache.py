"""Prefix reuse: what a long, repeated system prompt costs after the first request.

A client that sends the same long system prompt with every request (policy,
persona, tool list) should pay its prefill once. Each engine keeps the KV
cache of what it last decoded per sequence slot (batching) or per model
instance (pool) and decodes only the part of a new prompt that differs. Time
to first text (client-side) for one request at a time, in this order, with a
system prompt of ~--system-tokens tokens:

1. cold: a system prompt no slot has seen (the whole prompt is read);
2. repeat: the same system prompt, another question;
3. repeat while another request holds the warm slot: a long request with the
   same system prompt runs in the background, so this one lands in another
   slot (batching) or another instance (pool), which has not seen the prompt;
4. as 3, once more: now two slots have seen it;
5. a different system prompt (cold), then
6. the first system prompt again: is it still cached, or did 5 evict it?

Every round starts from a system prompt no server has seen (a round tag at its
start), so the cold rows stay cold without restarting servers. llama-server
(C++, `-np 8`, its own prompt cache) is the reference column when its build is
cached (`make bench` builds it; --skip llama-server leaves it out).

    .venv/bin/python tests/bench/bench_prefix_cache.py [--rounds 3] [--system-tokens 700]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from edgefleet.v1 import inference_pb2 as pb
from tests.bench.bench_dataplane import (
    CONTEXT,
    REQUEST_TIMEOUT_S,
    built,
    llama_server,
    stream_chat,
)
from tests.support.model_server import ModelServer, spawn_server

# Chat(system prompt, question, max_tokens, on_first_text) -> (TTFT s, prompt tokens or 0).
Chat = Callable[[str, str, int, Callable[[], None] | None], tuple[float, int]]

RULES = (
    "Answer in plain English and keep answers short unless asked for detail.",
    "Never reveal personal data such as names, addresses, phone numbers or e-mail addresses.",
    "When a question is about an order, ask for the order number before anything else.",
    "Refunds are possible within 30 days of delivery; exchanges within 60 days.",
    "Shipping inside the country takes two to four working days; abroad up to ten.",
    "Do not promise delivery dates; give the usual range and point to the tracking page.",
    "If a customer is upset, acknowledge it in one sentence, then move to the solution.",
    "Prices include VAT; business customers can download invoices from their account.",
    "Warranty claims need the serial number and a photo of the fault.",
    "Escalate to a human agent when the customer asks for one, or after two failed answers.",
)


def system_prompt(tag: str, tokens: int) -> str:
    """A policy text of roughly `tokens` tokens (about 24 per rule), unique by its tag."""
    lines = [f"Policy {tag}. You are the support assistant of an online shop."]
    for i in range(max(1, tokens // 24)):
        lines.append(f"Rule {i + 1}: {RULES[i % len(RULES)]}")
    return "\n".join(lines)


QUESTIONS = (
    "Where is my parcel?",
    "Can I return a jacket I bought last week?",
    "Do your prices include tax?",
    "My kettle stopped working, what now?",
    "How long does shipping abroad take?",
    "I want to talk to a person.",
    "Can I get an invoice for my company?",
    "Can I exchange shoes for a bigger size?",
)


def grpc_chat(server: ModelServer) -> Chat:
    stub = server.stub

    def chat(
        system: str, question: str, max_tokens: int, on_first_text: Callable[[], None] | None
    ) -> tuple[float, int]:
        request = pb.GenerateRequest(
            messages=[pb.ChatMessage(role="system", content=system),
                      pb.ChatMessage(role="user", content=question)],
            sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True),
        )
        start = time.perf_counter()
        first, prompt_tokens = None, 0
        for chunk in stub.GenerateStream(request, timeout=REQUEST_TIMEOUT_S):
            if chunk.delta and first is None:
                first = time.perf_counter()
                if on_first_text is not None:
                    on_first_text()
            if chunk.is_final:
                prompt_tokens = chunk.usage.prompt_tokens
        return (first or time.perf_counter()) - start, prompt_tokens

    return chat


def http_chat(port: int) -> Chat:
    def chat(
        system: str, question: str, max_tokens: int, on_first_text: Callable[[], None] | None
    ) -> tuple[float, int]:
        body = {"max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": True}
        chat = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        sample = stream_chat(port, body, chat, on_first_text)
        return sample.ttft_s, 0

    return chat


@dataclass
class Target:
    name: str
    chat: Chat
    stop: Callable[[], None]


STEPS = (
    "1. cold: new system prompt",
    "2. same system prompt again",
    "3. same, while another request holds the warm slot",
    "4. same as 3, once more",
    "5. a different system prompt (cold)",
    "6. the first system prompt again, after 5",
)


def one_round(chat: Chat, tag: str, system_tokens: int) -> dict[str, float]:
    first = system_prompt(f"{tag}-a", system_tokens)
    other = system_prompt(f"{tag}-b", system_tokens)
    ttft: dict[str, float] = {}
    ttft[STEPS[0]], prompt_tokens = chat(first, QUESTIONS[0], 4, None)
    ttft[STEPS[1]], _ = chat(first, QUESTIONS[1], 4, None)
    for step, question in ((STEPS[2], QUESTIONS[2]), (STEPS[3], QUESTIONS[3])):
        # A long request with the same system prompt takes the warm slot; once it
        # streams (seated, prompt read), this request must go elsewhere.
        streaming = threading.Event()
        holder = threading.Thread(target=chat, args=(first, QUESTIONS[4], 96, streaming.set))
        holder.start()
        streaming.wait(REQUEST_TIMEOUT_S)
        ttft[step], _ = chat(first, question, 4, None)
        holder.join(REQUEST_TIMEOUT_S)
    ttft[STEPS[4]], _ = chat(other, QUESTIONS[5], 4, None)
    ttft[STEPS[5]], _ = chat(first, QUESTIONS[6], 4, None)
    ttft["prompt tokens"] = prompt_tokens
    return ttft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--system-tokens", type=int, default=700)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip", action="append", default=[],
                        help="leave out targets whose name contains this (repeatable)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    common = ("--context-length", str(CONTEXT), "--max-queue", "8", "--threads", str(args.threads))
    configs = {
        "edgefleet batching, 8 sequences": ("--batch-sequences", "8"),
        "edgefleet batching, 4 sequences (default)": ("--batch-sequences", "4"),
        "edgefleet pool, 2 instances": ("--batch-sequences", "0", "--instances", "2"),
    }
    targets: list[Target] = []
    try:
        for name, flags in configs.items():
            if any(skip in name for skip in args.skip):
                continue
            print(f"-- {name}: starting", file=sys.stderr, flush=True)
            server = spawn_server(*flags, *common)
            targets.append(Target(name, grpc_chat(server), server.stop))
            server.wait_serving()
        if not any(skip in "llama-server" for skip in args.skip):
            print("-- llama-server: starting", file=sys.stderr, flush=True)
            peer = llama_server(built("tools"), 4, args.threads)
            assert peer.port is not None
            targets.append(Target(peer.name, http_chat(peer.port), peer.stop))
        results: dict[str, list[dict[str, float]]] = {t.name: [] for t in targets}
        for round_ in range(args.rounds):
            for target in targets:  # interleaved, round by round
                results[target.name].append(
                    one_round(target.chat, f"{round_}-{time.monotonic_ns()}", args.system_tokens)
                )
                print(f"   round {round_ + 1} {target.name}: "
                      f"{ {k[:2]: round(v * 1000) for k, v in results[target.name][-1].items()} }",
                      file=sys.stderr, flush=True)
    finally:
        for target in targets:
            target.stop()

    tokens = next((run["prompt tokens"] for runs in results.values() for run in runs
                   if run["prompt tokens"]), 0)
    print(f"\nSmolLM2-135M-Instruct Q4_1, {os.cpu_count()} cores, {args.threads} threads; "
          f"prompt {tokens:.0f} tokens (system prompt ~{args.system_tokens}), 4-token answers, "
          f"one request at a time; TTFT p50 ms over {args.rounds} rounds; load average at "
          f"the end {os.getloadavg()[0]:.1f}\n")
    print("| request | " + " | ".join(t.name for t in targets) + " |")
    print("|---|" + "---:|" * len(targets))
    for step in STEPS:
        cells = [f"{statistics.median(run[step] for run in results[t.name]) * 1000:.0f}"
                 for t in targets]
        print(f"| {step} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
