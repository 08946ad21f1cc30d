"""RouterCalibration on the test bed: a KubeRay RayJob labels prompts on the real model pod,
and the router then scores with the calibrated classifier.

Everything is real: KubeRay's operator (built from the Go module proxy by the test bed),
a Ray head and worker as containers of the calibration image on the real node, the
SmallModel's llama.cpp pod answering, edgefleet's operator following the run and handing
the artefact to the router through its ConfigMap. The cloud is counted correct
(assumeCloudCorrect), so no cloud is involved; judge grading and the ledger are covered by
tests/routing/test_calibrate.py with a local Ray.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from edgefleet.routing.complexity import default_scorer
from images import build as images
from tests.cluster import realnode, realnode_build
from tests.controlplane.helpers import Cluster, wait_for
from tests.controlplane.operator_support import (
    REAL_NODE,
    REAL_PLACEMENT,
    condition,
    smallmodel,
    wait_condition,
)
from tests.support.calibration_tasks import shipped_tasks
from tests.support.cloud import STAND_IN_API_KEY, STAND_IN_MODEL, RecordingProxy

pytestmark = pytest.mark.controlplane

CALIBRATION = "tune"
POLICY = "hybrid"
GOOD_LINE = '{"id": "a", "prompt": "What is 2 plus 2?", "reference": "4"}\n'


@pytest.fixture(scope="module")
def calibration_image(release: Cluster) -> str:
    """The calibration image (Ray) in the real node's containerd, imported once."""
    if not release.testbed:
        pytest.skip("loads the calibration image into the test bed's real node")
    built = images.ensure_image("edgefleet-calibrate")
    node = realnode.RealNode(name=REAL_NODE, bin=realnode_build.bin_dir())
    node.import_image(built.archive)
    return built.public_ref


def tasks(per_cell: int, levels: tuple[int, ...]) -> str:
    """shipped_tasks as a JSONL file's text."""
    return "".join(json.dumps(task) + "\n" for task in shipped_tasks(per_cell, levels))


def prompts_config_map(name: str, text: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name},
        "data": {"prompts.jsonl": text},
    }


def routing_policy(target: str) -> dict[str, Any]:
    return {
        "apiVersion": "edgefleet.io/v1alpha1",
        "kind": "RoutingPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "local": {"targets": [{"smallModel": target}]},
            "cloud": {"enabled": False},
            "complexity": {"calibration": CALIBRATION},
        },
    }


def router_calibration(name: str, prompts: str, **more: Any) -> dict[str, Any]:
    return {
        "apiVersion": "edgefleet.io/v1alpha1",
        "kind": "RouterCalibration",
        "metadata": {"name": name},
        "spec": {
            "policy": POLICY,
            "prompts": {"configMap": {"name": prompts}},
            "assumeCloudCorrect": True,
            "maxTokens": 16,
            "placement": {
                "nodeSelector": REAL_PLACEMENT["nodeSelector"],
                "tolerations": REAL_PLACEMENT["tolerations"],
            },
            **more,
        },
    }


def served_classifier(cluster: Cluster, namespace: str) -> str | None:
    policy = cluster.get("routingpolicy", POLICY, namespace)
    return (((policy or {}).get("status") or {}).get("router") or {}).get("classifier")


def test_bad_inputs_are_refused_before_any_ray_cluster_starts(
    release: Cluster, namespace: str
) -> None:
    """No KubeRay needed: what the operator can check itself it checks in seconds."""
    release.apply(
        routing_policy("local"),
        prompts_config_map("garbled", GOOD_LINE + "not json\n"),
        prompts_config_map("unreferenced", '{"id": "a", "prompt": "Tell me a story."}\n'),
        router_calibration("garbled", "garbled"),
        router_calibration("unreferenced", "unreferenced"),
        router_calibration("missing", "absent"),
        namespace=namespace,
    )  # fmt: skip

    for name, reason, said in (
        ("garbled", "BadPromptFile", "line 2"),
        ("unreferenced", "MissingReference", "missing on 1: a"),
        ("missing", "PromptsNotFound", "absent"),
    ):
        found = wait_condition(
            release, namespace, "routercalibration", name, "Failed", "True", reason, 60
        )
        assert said in condition(found, "Failed")["message"]
        assert found["status"]["phase"] == "Failed"
        assert condition(found, "Promoted")["status"] == "False"
    assert release.get("rayjobs", namespace=namespace)["items"] == []


# The calibration image may be built and imported first (minutes), then two Ray clusters.
@pytest.mark.timeout(1800)
def test_a_rayjob_calibrates_on_the_real_model_and_the_router_serves_the_result(
    release: Cluster, namespace: str, calibration_image: str
) -> None:
    release.apply(
        smallmodel("local", engine="llamacpp", replicas=1, placement=REAL_PLACEMENT),
        routing_policy("local"),
        prompts_config_map("tasks", tasks(6, (1, 5))),
        namespace=namespace,
    )
    wait_condition(release, namespace, "routingpolicy", POLICY, "Ready", "True", timeout=300)
    shipped = default_scorer().version
    # No calibration promoted yet: the router scores with the shipped classifier.
    wait_for(
        "the router reports its classifier",
        lambda: served_classifier(release, namespace) == shipped,
        60,
    )

    release.apply(router_calibration(CALIBRATION, "tasks", rayWorkers=1), namespace=namespace)
    done = wait_condition(
        release, namespace, "routercalibration", CALIBRATION, "Complete", "True", timeout=600
    )

    status = done["status"]
    assert status["phase"] == "Succeeded" and status["run"] == f"{CALIBRATION}-1"
    assert status["labels"] == 84 and 0 < status["heldOut"] < 84
    assert status["cloud"] == {"calls": 0, "tokens": 0, "cost": 0}
    assert status["shipped"]["version"] == shipped
    # The result is handed over before the driver exits; KubeRay then agrees.
    wait_for(
        "KubeRay to see the Ray job succeed",
        lambda: (
            (release.get("rayjob", f"{CALIBRATION}-1", namespace)["status"] or {}).get("jobStatus")
            == "SUCCEEDED"
        ),
        120,
    )
    result = release.get("configmap", f"{CALIBRATION}-1-result", namespace)
    assert "complexity.json.gz" in result["binaryData"]
    better = status["calibrated"]["apgr"] > status["shipped"]["apgr"]
    # These prompts (the easiest and hardest of every family) are where SmolLM2's
    # failures differ most from the shipped classifier's training pair's.
    assert better, f"calibrated {status['calibrated']} vs shipped {status['shipped']}"
    assert status["promoted"]["version"] == status["calibrated"]["version"]
    assert condition(done, "Promoted")["status"] == "True"

    # The router gets the artefact through its ConfigMap (the kubelet's volume sync).
    version = status["calibrated"]["version"]
    wait_for(
        "the router serves the calibrated classifier",
        lambda: served_classifier(release, namespace) == version,
        240,
    )

    # A later run that fails (its local model unreachable) leaves the promoted one serving.
    release.apply(routing_policy("ghost"), namespace=namespace)
    release.kubectl(
        "patch", "routercalibration", CALIBRATION, "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"labellers": 1}}),
    )  # fmt: skip
    failed = wait_condition(
        release,
        namespace,
        "routercalibration",
        CALIBRATION,
        "Failed",
        "True",
        "EndpointUnreachable",
        600,
    )
    assert "ghost" in condition(failed, "Failed")["message"]
    assert failed["status"]["run"] == f"{CALIBRATION}-2"
    assert failed["status"]["promoted"]["version"] == version
    assert served_classifier(release, namespace) == version

    # Deleted, its results go with it, and the router back to the shipped classifier.
    release.kubectl("delete", "routercalibration", CALIBRATION, "-n", namespace)
    wait_for(
        "the router back on the shipped classifier",
        lambda: served_classifier(release, namespace) == shipped,
        240,
    )


@pytest.mark.timeout(900)
def test_grading_through_the_egress_stops_at_the_run_budget_and_writes_nothing(
    release: Cluster, namespace: str, calibration_image: str, cloud: RecordingProxy
) -> None:
    """The run's pods reach the cloud only through the policy's egress (its NetworkPolicy
    admits them), and the run's own cap stops them: the result is the reason, no artefact."""
    release.kubectl(
        "create", "secret", "generic", "cloud-llm", "-n", namespace,
        f"--from-literal=api-key={STAND_IN_API_KEY}",
    )  # fmt: skip
    policy = routing_policy("local")
    policy["spec"]["cloud"] = {
        "enabled": True,
        "baseURL": cloud.base_url,
        "model": STAND_IN_MODEL,
        "apiKeySecretRef": {"name": "cloud-llm", "key": "api-key"},
    }
    release.apply(
        smallmodel("local", engine="llamacpp", replicas=1, placement=REAL_PLACEMENT),
        policy,
        prompts_config_map("tasks", tasks(1, (1,))),
        namespace=namespace,
    )
    wait_condition(release, namespace, "routingpolicy", POLICY, "Ready", "True", timeout=300)
    # The egress too (Degraded says so while it is not ready).
    wait_condition(release, namespace, "routingpolicy", POLICY, "Degraded", "False", timeout=300)
    sent_before = len(cloud.received())

    graded = router_calibration(CALIBRATION, "tasks", rayWorkers=0, budget={"maxCloudTokens": 600})
    del graded["spec"]["assumeCloudCorrect"]
    release.apply(graded, namespace=namespace)
    failed = wait_condition(
        release, namespace, "routercalibration", CALIBRATION, "Failed", "True",
        "BudgetExhausted", 600,
    )  # fmt: skip

    message = condition(failed, "Failed")["message"]
    spent = re.search(r"ran out after (\d+) cloud calls \((\d+) tokens", message)
    assert spent, message
    calls, tokens = int(spent[1]), int(spent[2])
    assert 0 < calls < 7 and tokens <= 600
    # Every call the ledger counted went out through the egress, and no other.
    assert len(cloud.received()) - sent_before == calls
    assert not failed["status"].get("promoted")
    result = release.get("configmap", f"{CALIBRATION}-1-result", namespace)
    assert "binaryData" not in result and result["data"]["reason"] == "BudgetExhausted"
