"""CLI: python -m tests.cluster build|up|down|status|fleet|scale."""

from __future__ import annotations

import argparse
import time

from tests.cluster import build


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build (or reuse) the cached binaries")
    b.add_argument("--force", action="store_true", help="rebuild even when cached")
    sub.add_parser(
        "up", help="start a fresh cluster: the fleet from fleet.yaml and a real node (real-0)"
    )
    sub.add_parser(
        "down", help="stop the cluster and its real nodes and check nothing is left behind"
    )
    sub.add_parser("status", help="say whether the cluster is up and list its nodes")
    sub.add_parser(
        "fleet", help="print the kwok nodes of fleet.yaml as a List (e.g. for kind + kwok)"
    )
    s = sub.add_parser("scale", help="register N more kwok nodes and time until all are Ready")
    s.add_argument("count", type=int)
    return parser


def main() -> int:
    args = _parser().parse_args()
    if args.command == "build":
        # Standard library only, so CI can build before any virtualenv exists.
        build.ensure_host_tools()
        print(build.build(force=args.force))
        return 0
    from tests.cluster import fleet, kube, realnode_join, testbed  # these need PyYAML

    if args.command == "up":
        print(realnode_join.bed_up().kubeconfig)
    elif args.command == "down":
        realnode_join.bed_down()
    elif args.command == "status":
        return testbed.status()
    elif args.command == "fleet":
        print(fleet.as_list(fleet.kwok_nodes(fleet.load())))
    elif args.command == "scale":
        kubeconfig = testbed.paths().kubeconfig
        nodes = fleet.scale_fleet(args.count)
        started = time.monotonic()
        testbed.apply_nodes(kubeconfig, nodes)
        names = {n["metadata"]["name"] for n in nodes}
        kube.wait_for(
            f"{args.count} nodes Ready", lambda: testbed.nodes_ready(kubeconfig, names), 900, 2
        )
        print(f"{args.count} nodes registered and Ready in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
