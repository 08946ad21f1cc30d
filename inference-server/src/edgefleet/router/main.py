"""edgefleet-router: one gRPC port that looks like a model, backed by a fleet and a cloud.

Serves edgefleet.v1.Inference, OIP v2, health and reflection on --listen (the
same servicers as edgefleet-server), the OpenAI-compatible HTTP API on
--http-listen and Prometheus metrics on --metrics-listen. The policy file and
the endpoints file are re-read when they change; a bad new version is logged
and refused while the previous one keeps serving.

In a cluster the endpoints come instead from the EndpointSlices of the
policy's SmallModel Services (and the egress Service), watched through the
API, and the router reports its figures in its RoutingPolicy's status. With
the API it also watches the Pods of the policy's sensitiveNamespaces, so a
request from one of them stays local (without the API they are not enforced).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.calibrate.artefacts import scorer_for
from edgefleet.router.discovery import parse_local_services, pod_namespace, targets_as_services
from edgefleet.router.engine import RouterEngine
from edgefleet.router.metrics import RouterMetrics
from edgefleet.router.sources import Endpoints, FileWatch, load_endpoints, parse_endpoints
from edgefleet.router.status import RouterFigures
from edgefleet.routing.complexity import ComplexityScorer
from edgefleet.routing.policy import PolicyError, RoutingPolicy, load_policy
from edgefleet.serving.config import DEFAULT_SYSTEM_PROMPT, FrontSettings, ServerConfig
from edgefleet.serving.openai_http import start_http
from edgefleet.serving.server import InferenceServer, expose, run_service, service_parser

if TYPE_CHECKING:
    from edgefleet.router.kube import Discovery, SensitiveNamespaces, StatusReporter

log = logging.getLogger("edgefleet.router")
PolicyHook = Callable[[RoutingPolicy], None]


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
    # Kubernetes: the namespace of the Services and the RoutingPolicy; empty:
    # the pod's own (from its ServiceAccount).
    kube_namespace: str = ""
    # Local model Services to watch, name[=weight],...; empty: the policy's
    # local.targets. Either turns on EndpointSlice discovery.
    local_services: str = ""
    # The egress Service to watch (EndpointSlice discovery); empty: no cloud.
    cloud_service: str = ""
    # RoutingPolicy whose status.router the router writes; empty: no reports.
    status_policy: str = ""
    # Seconds between status reports (unchanged figures are sent less often).
    status_interval_s: float = 10.0

    def server_config(self) -> ServerConfig:  # type: ignore[override]
        return super().server_config(
            "router",
            default_max_tokens=self.default_max_tokens,
            default_temperature=self.default_temperature,
            system_prompt=self.system_prompt,
        )

    def load_policy(self) -> RoutingPolicy:
        return load_policy(Path(self.policy_file)) if self.policy_file else RoutingPolicy()

    def scorer_for(self, policy: RoutingPolicy) -> ComplexityScorer:
        """The policy's calibrated classifier, or the shipped one; PolicyError if unreadable."""
        return scorer_for(policy, Path(self.policy_file).parent if self.policy_file else None)

    def load_endpoints(self) -> Endpoints:
        if self.endpoints_file:
            return load_endpoints(Path(self.endpoints_file))
        local = [address.strip() for address in self.local.split(",") if address.strip()]
        return parse_endpoints({"local": local, "cloud": self.cloud or None}, "--local/--cloud")


@dataclass(frozen=True)
class KubePlan:
    """What the router does with the Kubernetes API; decided before anything starts."""

    namespace: str
    # None: endpoints come from flags or a file, not from EndpointSlices.
    local_services: dict[str, int] | None
    cloud_service: str | None
    # Local Services follow the policy's local.targets across reloads.
    services_from_policy: bool
    status_policy: str

    @property
    def discovery(self) -> bool:
        return self.local_services is not None


def kube_plan(config: RouterConfig, policy: RoutingPolicy, pod_namespace: str) -> KubePlan | None:
    """None when the API is not used; raises PolicyError on flags that contradict each other.

    Precedence: --local-services/--cloud-service turn discovery on and cannot
    be combined with --endpoints-file/--local/--cloud. Without them, the
    policy's local.targets turn it on unless --endpoints-file/--local/--cloud
    are given: a router on a workstation (`make demo`) may use an operator's
    policy with addresses of its own.
    """
    problems: list[str] = []
    given = [
        flag
        for flag, value in (
            ("--endpoints-file", config.endpoints_file),
            ("--local", config.local),
            ("--cloud", config.cloud),
        )
        if value
    ]
    local_services: dict[str, int] | None = None
    from_policy = False
    if config.local_services or config.cloud_service:
        if config.local_services:
            local_services = parse_local_services(config.local_services)
        else:
            local_services = targets_as_services(policy.local_targets)
            from_policy = bool(policy.local_targets)
        if given:
            problems.append(
                f"{', '.join(given)} cannot be combined with --local-services/--cloud-service: "
                "endpoints come either from flags and files or from the Services' "
                f"EndpointSlices; drop {' and '.join(given)}"
            )
    elif policy.local_targets and not given:
        local_services, from_policy = targets_as_services(policy.local_targets), True
    if config.status_interval_s <= 0:
        problems.append(f"--status-interval-s must be above 0, got {config.status_interval_s}")
    if local_services is None and not config.status_policy:
        if problems:
            raise PolicyError(problems, "router settings")
        return None
    namespace = config.kube_namespace or pod_namespace
    if not namespace:
        problems.append(
            "--kube-namespace is needed outside a pod (no ServiceAccount namespace file)"
        )
    if problems:
        raise PolicyError(problems, "router settings")
    return KubePlan(
        namespace=namespace,
        local_services=local_services,
        cloud_service=config.cloud_service or None,
        services_from_policy=from_policy,
        status_policy=config.status_policy,
    )


def figures_of(engine: RouterEngine) -> RouterFigures:
    return RouterFigures(
        routes=dict(engine.metrics.route_totals),
        recent_reasons=list(engine.metrics.recent_reasons),
        budget=engine.budget.snapshot(),
        budget_window_seconds=engine.active.policy.budget.window_seconds,
        cloud_cost=engine.metrics.cloud_cost_total,
        all_cloud_cost=dict(engine.metrics.all_cloud_cost_totals),
        recent_ttfts={t: list(d) for t, d in engine.metrics.recent_ttfts.items()},
        classifier=engine.scorer.version,
    )


class Reloader:
    """Applies changed policy/endpoint files; a bad file is refused, the old one stays."""

    def __init__(
        self,
        config: RouterConfig,
        engine: RouterEngine,
        metrics: RouterMetrics,
        on_policy: PolicyHook | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.metrics = metrics
        # Called with each applied policy (the EndpointSlice discovery follows its targets).
        self.on_policy = on_policy
        self.policy_watch = FileWatch(Path(config.policy_file)) if config.policy_file else None
        self.endpoints_watch = (
            FileWatch(Path(config.endpoints_file)) if config.endpoints_file else None
        )

    async def check(self) -> None:
        if self.policy_watch is not None and self.policy_watch.changed():
            try:
                policy = self.config.load_policy()
                self.engine.set_policy(policy, self.config.scorer_for(policy))
                self.metrics.policy_reloads.labels("applied").inc()
                if self.on_policy is not None:
                    self.on_policy(policy)
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
    plan = kube_plan(config, policy, pod_namespace())
    discovering = plan is not None and plan.discovery
    endpoints = Endpoints() if discovering else config.load_endpoints()
    engine = RouterEngine(
        policy,
        endpoints,
        config.scorer_for(policy),
        capacity=config.max_concurrency,
        instance_name=config.instance_name,
    )
    server = InferenceServer(engine, config.server_config())
    # One registry for the serving and the routing metrics: one /metrics page.
    engine.metrics = RouterMetrics(server.service.metrics.registry)
    expose(server, config.metrics_listen, engine.metrics.registry)
    http = await start_http(server.service, config.http_listen) if config.http_listen else None
    await server.start()
    background: list[asyncio.Task[None]] = []
    discovery: Discovery | None = None
    sensitive: SensitiveNamespaces | None = None
    if plan is not None:
        discovery, reporter, sensitive = _start_kube(plan, engine, config, policy)
        if reporter is not None:
            background.append(asyncio.create_task(reporter.run()))
    elif policy.privacy.sensitive_namespaces:
        log.warning(
            "privacy.sensitiveNamespaces %s is not enforced: the router does not use the "
            "Kubernetes API (docs/router.md)", list(policy.privacy.sensitive_namespaces),
        )  # fmt: skip
    hooks = [_follow_targets(plan, discovery), _follow_namespaces(sensitive)]
    reloader = Reloader(config, engine, engine.metrics, _all_of(hooks))

    async def keep_fresh() -> None:
        while True:
            await reloader.check()
            await engine.poll()
            await asyncio.sleep(config.poll_interval_s)

    background.append(asyncio.create_task(keep_fresh()))
    log.info(
        "routing model %r with policy %s: local %s, cloud %s; HTTP on %s",
        policy.model_name,
        policy.name,
        "EndpointSlices" if discovering else list(endpoints.local),
        "EndpointSlices" if discovering else endpoints.cloud,
        config.http_listen or "-",
    )
    try:
        await server.wait_stopped()
    finally:
        for task in background:
            task.cancel()
        if discovery is not None:
            discovery.stop()
        if sensitive is not None:
            sensitive.stop()
        if http is not None:
            await http.cleanup()


def _start_kube(
    plan: KubePlan, engine: RouterEngine, config: RouterConfig, policy: RoutingPolicy
) -> tuple[Discovery | None, StatusReporter | None, SensitiveNamespaces]:
    from edgefleet.kubeapi import api_client
    from edgefleet.router.kube import Discovery, SensitiveNamespaces, StatusReporter
    from edgefleet.router.pods import PodIndex

    api = api_client()
    discovery = None
    if plan.local_services is not None:
        discovery = Discovery(
            api, plan.namespace, plan.local_services, plan.cloud_service, engine.set_endpoints
        )
        discovery.start()
    reporter = None
    if plan.status_policy:
        reporter = StatusReporter(
            api,
            plan.namespace,
            plan.status_policy,
            lambda: figures_of(engine),
            config.status_interval_s,
        )
    # Always, even for a policy naming none: a reload may add some.
    engine.pods = PodIndex()
    sensitive = SensitiveNamespaces(api, engine.pods)
    sensitive.retarget(policy.privacy.sensitive_namespaces)
    return discovery, reporter, sensitive


def _follow_namespaces(sensitive: SensitiveNamespaces | None) -> PolicyHook | None:
    """On a policy reload, watch the Pods of the new sensitiveNamespaces."""
    if sensitive is None:
        return None

    def retarget(policy: RoutingPolicy) -> None:
        assert sensitive is not None
        sensitive.retarget(policy.privacy.sensitive_namespaces)

    return retarget


def _all_of(hooks: list[PolicyHook | None]) -> PolicyHook | None:
    present = [hook for hook in hooks if hook is not None]
    if not present:
        return None

    def each(policy: RoutingPolicy) -> None:
        for hook in present:
            hook(policy)

    return each


def _follow_targets(plan: KubePlan | None, discovery: Discovery | None) -> PolicyHook | None:
    """On a policy reload, watch the new local.targets (when they are the source)."""
    if plan is None or discovery is None or not plan.services_from_policy:
        return None

    def retarget(policy: RoutingPolicy) -> None:
        if not policy.local_targets:
            log.error("the new policy names no local.targets; keeping the previous Services")
            return
        assert discovery is not None
        discovery.retarget(targets_as_services(policy.local_targets))

    return retarget


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
