"""Labels per second of `edgefleet calibrate` with 1, 2 and 4 Ray workers.

    .venv/bin/python -m tests.bench.bench_calibrate [--prompts 56] [--replicas 1]

One edgefleet-server per replica on the packaged SmolLM2 (default settings: 4 sequences
decoded together), Ray started locally with 2 CPUs, reference grading with the cloud counted
correct (no cloud calls: this measures the local labelling path). The same prompts, taken
evenly from every family and difficulty of the shipped task set, for each worker count.
Prints one Markdown table, with the machine and its load, as docs/routing-quality.md quotes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import tempfile
from pathlib import Path

from edgefleet.calibrate.main import CalibrationSettings, label_prompts, prepare, start_ray
from edgefleet.calibrate.pipeline import new_ledger
from tests.support.model_server import running_server

TASKS = Path(__file__).resolve().parents[2] / "examples" / "calibration" / "tasks.jsonl"


def sample(count: int) -> list[dict]:
    rows = [json.loads(line) for line in TASKS.read_text(encoding="utf-8").splitlines()]
    step = max(1, len(rows) // count)
    return rows[::step][:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=56)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-calibrate-"))
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in sample(args.prompts)))
    policy = work / "policy.json"
    policy.write_text(json.dumps({"kind": "RoutingPolicy", "spec": {}}))
    print(
        f"> Calibration labelling, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; "
        f"{platform.platform()}, {os.cpu_count()} CPUs, load average at start "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.prompts} prompts, "
        f"max_tokens {args.max_tokens}, {args.replicas} local replica(s), Ray num_cpus=2\n"
    )
    print("| Ray workers | prompts | seconds | labels/s total | labels/s per local replica |")
    print("|---:|---:|---:|---:|---|")
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(running_server()) for _ in range(args.replicas)]
        start_ray(num_cpus=2)
        for workers in (int(w) for w in args.workers.split(",")):
            settings = CalibrationSettings(
                policy=policy,
                prompts=prompts,
                local=tuple(s.target for s in servers),
                out=work / "out",
                assume_cloud_correct=True,
                workers=workers,
                max_tokens=args.max_tokens,
            )
            prepared = prepare(settings)
            labelling = label_prompts(settings, prepared, new_ledger(prepared[0].budget))
            per_replica = {}
            for row in labelling.rows:
                per_replica[row.local_replica] = per_replica.get(row.local_replica, 0) + 1
            rates = ", ".join(f"{n / labelling.seconds:.2f}" for n in per_replica.values())
            print(
                f"| {workers} | {len(labelling.rows)} | {labelling.seconds:.1f} | "
                f"{len(labelling.rows) / labelling.seconds:.2f} | {rates} |",
                flush=True,
            )
    print(f"\nload average at end {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
