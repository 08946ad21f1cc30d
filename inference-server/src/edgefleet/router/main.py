"""edgefleet-router: one gRPC port that looks like a model, backed by a fleet and a cloud.

Serves edgefleet.v1.Inference, OIP v2, health and reflection on --listen (the
same servicers as edgefleet-server), the OpenAI-compatible HTTP API on
--http-listen and Prometheus metrics on --metrics-listen. The policy file and
the endpoints file are re-read when they change; a bad new version is logged
and refused while the previous one keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from edgefleet.router.engine import RouterEngine
from edgefleet.router.metrics import RouterMetrics
from edgefleet.router.sources import Endpoints, FileWatch, load_endpoints, parse_endpoints
from edgefleet.routing.complexity import ComplexityScorer
from edgefleet.routing.policy import PolicyError, RoutingPolicy, load_policy
from edgefleet.serving.config import DEFAULT_SYSTEM_PROMPT, FrontSettings, ServerConfig
from edgefleet.serving.openai_http import start_http
from edgefleet.serving.server import InferenceServer, expose, run_service, service_parser

log = logging.getLogger("edgefleet.router")


@dataclass
class RouterConfig(FrontSettings):
    # OpenAI-compatible HTTP API; empty disables it.
    http_listen: str = "0.0.0.0:8080"
    # RoutingPolicy (whole resource or its spec) as YAML/JSON; empty: defaults.
    policy_file: str = ""
    # {"local": [host:port, ...], "cloud": host:port}; wins over --local/--cloud.
    endpoints_file: str = ""
    # Local model servers, comma-separated host:port (when no endpoints file).
    local: str = ""
    # The egress service, host:port (when no endpoints file); empty: no cloud.
    cloud: str = ""
    # How often backends' load is polled (GetStats) and files are checked.
    poll_interval_s: float = 0.5
    # A router fronts a whole fleet: it admits many more requests than one model.
    max_concurrency: int = 256
    max_queue: int = 256
    # Request defaults, as on the model servers.
    default_max_tokens: int = 256
    default_temperature: float = 0.2
    system_prompt: str = DEFAULT_SYSTEM_PROMPT

    def server_config(self) -> ServerConfig:  # type: ignore[override]
        return super().server_config(
            "router",
            default_max_tokens=self.default_max_tokens,
            default_temperature=self.default_temperature,
            system_prompt=self.system_prompt,
        )

    def load_policy(self) -> RoutingPolicy:
        return load_policy(Path(self.policy_file)) if self.policy_file else RoutingPolicy()

    def load_endpoints(self) -> Endpoints:
        if self.endpoints_file:
            return load_endpoints(Path(self.endpoints_file))
        local = [address.strip() for address in self.local.split(",") if address.strip()]
        return parse_endpoints({"local": local, "cloud": self.cloud or None}, "--local/--cloud")


class Reloader:
    """Applies changed policy/endpoint files; a bad file is refused, the old one stays."""

    def __init__(self, config: RouterConfig, engine: RouterEngine, metrics: RouterMetrics) -> None:
        self.config = config
        self.engine = engine
        self.metrics = metrics
        self.policy_watch = FileWatch(Path(config.policy_file)) if config.policy_file else None
        self.endpoints_watch = (
            FileWatch(Path(config.endpoints_file)) if config.endpoints_file else None
        )

    async def check(self) -> None:
        if self.policy_watch is not None and self.policy_watch.changed():
            try:
                self.engine.set_policy(self.config.load_policy())
                self.metrics.policy_reloads.labels("applied").inc()
            except PolicyError as exc:
                self.metrics.policy_reloads.labels("rejected").inc()
                log.error("%s; keeping the previous policy", exc)
        if self.endpoints_watch is not None and self.endpoints_watch.changed():
            try:
                await self.engine.set_endpoints(self.config.load_endpoints())
                self.metrics.policy_reloads.labels("applied").inc()
            except PolicyError as exc:
                self.metrics.policy_reloads.labels("rejected").inc()
                log.error("%s; keeping the previous endpoints", exc)


async def serve(config: RouterConfig) -> None:
    policy = config.load_policy()
    endpoints = config.load_endpoints()
    engine = RouterEngine(
        policy,
        endpoints,
        ComplexityScorer.load(),
        capacity=config.max_concurrency,
        instance_name=config.instance_name,
    )
    server = InferenceServer(engine, config.server_config())
    # One registry for the serving and the routing metrics: one /metrics page.
    engine.metrics = RouterMetrics(server.service.metrics.registry)
    expose(server, config.metrics_listen, engine.metrics.registry)
    http = await start_http(server.service, config.http_listen) if config.http_listen else None
    await server.start()
    reloader = Reloader(config, engine, engine.metrics)

    async def keep_fresh() -> None:
        while True:
            await reloader.check()
            await engine.poll()
            await asyncio.sleep(config.poll_interval_s)

    fresh = asyncio.create_task(keep_fresh())
    log.info(
        "routing model %r with policy %s: local %s, cloud %s; HTTP on %s",
        policy.model_name,
        policy.name,
        list(endpoints.local),
        endpoints.cloud,
        config.http_listen or "-",
    )
    try:
        await server.wait_stopped()
    finally:
        fresh.cancel()
        if http is not None:
            await http.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = service_parser(
        "edgefleet-router",
        "Route chat requests between local small models and the cloud egress.",
        RouterConfig,
    )
    parser.add_argument(
        "--check-policy",
        metavar="FILE",
        help="validate a RoutingPolicy file, print the verdict and exit (0 valid, 2 invalid)",
    )
    args = parser.parse_args(argv)
    if args.check_policy:
        try:
            policy = load_policy(Path(args.check_policy))
        except PolicyError as exc:
            print(exc, file=sys.stderr)
            sys.exit(2)
        print(f"{args.check_policy}: valid RoutingPolicy {policy.name!r}")
        return
    run_service(args, RouterConfig, serve)


if __name__ == "__main__":
    main()
