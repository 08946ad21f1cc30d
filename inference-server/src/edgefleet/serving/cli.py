"""`edgefleet`: talk to any edgefleet endpoint (model server, later the router).

    edgefleet generate "What is the capital of France?"
    edgefleet models
    edgefleet health [--service NAME]
    edgefleet report --metrics-url http://ROUTER:9090/metrics [--window 5m]
    edgefleet calibrate --policy FILE --prompts FILE --local HOST:PORT [...]

The target comes from --target or EDGEFLEET_TARGET (default localhost:50051).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgefleet.router.report import difference, fetch, parse_window, rows, table
from edgefleet.serving.readiness import NotServing, wait_until_serving
from edgefleet.v1 import inference_pb2 as pb
from edgefleet.v1 import inference_pb2_grpc as pb_grpc

DEFAULT_TARGET = "localhost:50051"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgefleet", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--target",
        default=os.environ.get("EDGEFLEET_TARGET", DEFAULT_TARGET),
        help="host:port of an edgefleet endpoint (env EDGEFLEET_TARGET)",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline in seconds")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="ask a question; the answer streams")
    generate.add_argument("prompt")
    generate.add_argument("--model", default="")
    generate.add_argument("--system", default=None, help="system prompt (else the server's)")
    generate.add_argument("--max-tokens", type=int)
    generate.add_argument("--temperature", type=float)
    generate.add_argument("--top-p", type=float)
    generate.add_argument("--seed", type=int)
    generate.add_argument("--stop", action="append", default=[])
    generate.add_argument("--sensitive", action="store_true", help="must be served locally")
    generate.add_argument("--no-stream", action="store_true", help="one unary call")

    commands.add_parser("models", help="list the models the endpoint serves")
    health = commands.add_parser("health", help="exit 0 when SERVING, 1 otherwise")
    health.add_argument("--service", default="", help="service or model name; empty = overall")
    health.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="block until SERVING (exit 1 if not within SECONDS)",
    )
    report = commands.add_parser(
        "report", help="what routing saved: a router's figures from its metrics endpoint"
    )
    report.add_argument(
        "--metrics-url", required=True, help="the router's Prometheus endpoint (.../metrics)"
    )
    report.add_argument(
        "--window",
        help="read the counters twice, this far apart (90s, 5m, 1h); default: since start",
    )
    # Listed for --help only: main() hands `calibrate ...` to edgefleet.calibrate whole.
    commands.add_parser(
        "calibrate", help="retrain the router's complexity classifier on your own model"
    )
    return parser


def _report(args: argparse.Namespace) -> int:
    try:
        window = parse_window(args.window) if args.window else None
        first = fetch(args.metrics_url, args.timeout)
        if window is None:
            print(table(rows(first), f"{args.metrics_url}, since the router started"))
            return 0
        print(f"reading {args.metrics_url} again in {args.window} ...", file=sys.stderr)
        time.sleep(window)  # the window itself: two readings of growing counters
        figures = difference(fetch(args.metrics_url, args.timeout), first)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(table(rows(figures), f"{args.metrics_url}, the last {args.window}"))
    return 0


def _request(args: argparse.Namespace) -> pb.GenerateRequest:
    sampling = pb.SamplingParams(stop=args.stop)
    for name in ("max_tokens", "temperature", "top_p", "seed"):
        value = getattr(args, name)
        if value is not None:
            setattr(sampling, name, value)
    request = pb.GenerateRequest(model=args.model, sampling=sampling)
    if args.sensitive:
        request.routing.sensitivity = pb.SENSITIVITY_SENSITIVE
    if args.system is None:
        request.prompt = args.prompt
    else:
        request.messages.add(role="system", content=args.system)
        request.messages.add(role="user", content=args.prompt)
    return request


def _summary(
    served_by: pb.ServedBy, route: pb.RouteInfo, usage: pb.Usage, timings: pb.Timings, finish: int
) -> str:
    where = f"{served_by.backend}/{served_by.engine}/{served_by.model}@{served_by.instance}"
    routed = f" route={route.target}:{route.reason}" if route.target else ""
    return (
        f"[{where}{routed} finish={pb.FinishReason.Name(finish)} "
        f"tokens={usage.prompt_tokens}+{usage.completion_tokens} "
        f"ttft={timings.time_to_first_token_ms:.0f}ms total={timings.total_ms:.0f}ms "
        f"decode={timings.decode_tokens_per_second:.1f} tok/s]"
    )


def _generate(channel: grpc.Channel, args: argparse.Namespace) -> int:
    stub = pb_grpc.InferenceStub(channel)
    request = _request(args)
    if args.no_stream:
        reply = stub.Generate(request, timeout=args.timeout)
        print(reply.text)
        print(
            _summary(reply.served_by, reply.route, reply.usage, reply.timings, reply.finish_reason),
            file=sys.stderr,
        )
        return 0
    for chunk in stub.GenerateStream(request, timeout=args.timeout):
        if chunk.is_final:
            print()
            print(
                _summary(
                    chunk.served_by, chunk.route, chunk.usage, chunk.timings, chunk.finish_reason
                ),
                file=sys.stderr,
            )
        else:
            print(chunk.delta, end="", flush=True)
    return 0


def _models(channel: grpc.Channel, args: argparse.Namespace) -> int:
    reply = pb_grpc.InferenceStub(channel).ListModels(pb.ListModelsRequest(), timeout=args.timeout)
    print(f"{'NAME':<24} {'ENGINE':<10} {'CONTEXT':>7} {'INSTANCES':>9} {'CONCURRENT':>10} READY")
    for model in reply.models:
        print(
            f"{model.name:<24} {model.engine:<10} {model.context_length:>7} "
            f"{model.instances:>9} {model.max_concurrent:>10} {model.ready}"
        )
    return 0


def _health(channel: grpc.Channel, args: argparse.Namespace) -> int:
    if args.wait is not None:
        try:
            wait_until_serving(channel, args.wait, args.service)
        except NotServing as exc:
            print(f"NOT_SERVING: {exc}")
            return 1
    stub = health_pb2_grpc.HealthStub(channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["calibrate"]:  # its own flags; Ray and scikit-learn load only there
        from edgefleet.calibrate.main import main as calibrate

        calibrate(argv[1:])
        return
    args = _parser().parse_args(argv)
    if args.command == "report":  # HTTP, not gRPC: no channel to the target
        sys.exit(_report(args))
    command = {"generate": _generate, "models": _models, "health": _health}[args.command]
    try:
        with grpc.insecure_channel(args.target) as channel:
            sys.exit(command(channel, args))
    except grpc.RpcError as error:
        print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
