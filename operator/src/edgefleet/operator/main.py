"""edgefleet-operator: run the Kopf handlers for SmallModel and RoutingPolicy, cluster-wide.

One replica (the chart's Deployment uses the Recreate strategy); Kopf peering
makes a stray second instance freeze instead of acting twice. The liveness
endpoint answers once the operator is up and its handlers are running.
"""

from __future__ import annotations

import argparse
import logging
import os

import kopf

from edgefleet.operator.config import OperatorConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="edgefleet-operator",
        description="Run SmallModels and RoutingPolicies: model servers, router, egress.",
    )
    parser.add_argument(
        "--liveness",
        default=os.environ.get("EDGEFLEET_LIVENESS", "http://0.0.0.0:8080/healthz"),
        help="Kopf's liveness endpoint (env EDGEFLEET_LIVENESS); empty disables it",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("EDGEFLEET_LOG_LEVEL", OperatorConfig.log_level),
        help="(env EDGEFLEET_LOG_LEVEL)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Probes hit the liveness endpoint every few seconds: not worth a log line each.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # Kopf says "Timer ... succeeded" for every status round of every resource (a
    # hundred lines a second at scale); our own lines name the resource instead.
    if args.log_level.upper() != "DEBUG":
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # Importing registers the handlers; config errors surface here, before Kopf starts.
    try:
        import edgefleet.operator.handlers  # noqa: F401
    except ValueError as exc:
        parser.exit(2, f"edgefleet-operator: {exc}\n")
    kopf.run(clusterwide=True, liveness_endpoint=args.liveness or None)


if __name__ == "__main__":
    main()
