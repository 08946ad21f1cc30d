"""API-server behaviour that a mocked API cannot prove: versions, CRDs, CEL, RBAC, GC, helm."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import versions
from tests.controlplane.helpers import Cluster, wait_for

pytestmark = pytest.mark.controlplane

GROUP = "testbed.edgefleet.io"
CRD_NAME = f"gadgets.{GROUP}"
CEL_MESSAGE = "maxReplicas must be at least minReplicas"


def _crd() -> dict[str, object]:
    spec_schema = {
        "type": "object",
        "description": "What the gadget should look like.",
        "x-kubernetes-validations": [
            {"rule": "self.maxReplicas >= self.minReplicas", "message": CEL_MESSAGE}
        ],
        "properties": {
            "minReplicas": {
                "type": "integer",
                "minimum": 0,
                "description": "Fewest replicas to keep.",
            },
            "maxReplicas": {
                "type": "integer",
                "minimum": 0,
                "description": "Most replicas to allow.",
            },
            "site": {"type": "string", "description": "Edge site the gadget serves."},
        },
        "required": ["minReplicas", "maxReplicas"],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "properties": {"spec": spec_schema}}
                    },
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def gadget_crd(cluster: Cluster) -> Iterator[str]:
    cluster.apply(_crd())

    def established() -> bool:
        crd = cluster.get("crd", CRD_NAME)
        return any(
            c["type"] == "Established" and c["status"] == "True"
            for c in crd["status"].get("conditions", [])
        )

    wait_for(f"{CRD_NAME} Established", established, 60)
    yield CRD_NAME
    cluster.kubectl("delete", "crd", CRD_NAME, "--wait=false", check=False)


def _gadget(name: str, minimum: int, maximum: int) -> dict[str, object]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Gadget",
        "metadata": {"name": name},
        "spec": {"minReplicas": minimum, "maxReplicas": maximum, "site": "site-a"},
    }


def test_kubectl_version_reports_the_built_server_version(cluster: Cluster) -> None:
    info = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    if cluster.testbed:
        assert info["serverVersion"]["gitVersion"] == versions.KUBERNETES_VERSION
        assert info["clientVersion"]["gitVersion"] == versions.KUBERNETES_VERSION
    assert info["serverVersion"]["major"] == "1"
    assert int(info["serverVersion"]["minor"].rstrip("+")) >= 30


def test_applied_crd_is_established_and_explained(cluster: Cluster, gadget_crd: str) -> None:
    explained = wait_for(
        "kubectl explain to see the new schema",
        lambda: (
            cluster.kubectl(
                "explain", "gadgets.spec", "--api-version", f"{GROUP}/v1", check=False
            ).stdout
        ),
        60,
    )
    assert "Edge site the gadget serves." in explained
    assert "maxReplicas" in explained and "<integer>" in explained


def test_cel_rule_rejects_a_bad_object_with_its_message(
    cluster: Cluster, gadget_crd: str, namespace: str
) -> None:
    bad = cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        check=False,
        stdin=json.dumps(_gadget("bad", minimum=3, maximum=1)),
    )
    assert bad.returncode != 0
    assert CEL_MESSAGE in bad.stderr
    cluster.apply(_gadget("good", minimum=1, maximum=3), namespace=namespace)
    assert cluster.get("gadget", "good", namespace)["spec"]["maxReplicas"] == 3
    assert cluster.get("gadget", "bad", namespace) is None


def test_deleting_an_owner_garbage_collects_its_children(cluster: Cluster, namespace: str) -> None:
    cluster.apply(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}},
        namespace=namespace,
    )
    owner_uid = cluster.get("configmap", "owner", namespace)["metadata"]["uid"]
    children = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": f"child-{i}",
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}
                ],
            },
        }
        for i in range(3)
    ]
    cluster.apply(*children, namespace=namespace)
    assert all(cluster.get("configmap", f"child-{i}", namespace) for i in range(3))
    cluster.kubectl("-n", namespace, "delete", "configmap", "owner", "--cascade=background")
    wait_for(
        "children to be collected",
        lambda: all(cluster.get("configmap", f"child-{i}", namespace) is None for i in range(3)),
        60,
    )


def test_deleting_a_namespace_removes_it_and_its_objects(cluster: Cluster) -> None:
    name = "t-doomed"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("-n", name, "create", "configmap", "inside")
    cluster.kubectl("delete", "namespace", name, "--wait=true", "--timeout=90s", timeout=120)
    assert cluster.get("namespace", name) is None
    assert cluster.get("configmap", "inside", name) is None


def test_service_account_is_forbidden_until_a_role_binding_allows_it(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    cluster.kubectl("-n", namespace, "create", "serviceaccount", "reader")
    sa_config = cluster.service_account_kubeconfig(
        namespace, "reader", tmp_path / "reader.kubeconfig"
    )
    # -v=6 makes kubectl log each response's HTTP status.
    refused = cluster.kubectl(
        "-n", namespace, "get", "configmaps", "-v=6", kubeconfig=sa_config, check=False
    )
    assert refused.returncode != 0
    assert "403 Forbidden" in refused.stderr
    cluster.kubectl(
        "-n", namespace, "create", "role", "cm-reader", "--verb=get,list", "--resource=configmaps"
    )
    cluster.kubectl(
        "-n",
        namespace,
        "create",
        "rolebinding",
        "reader",
        "--role=cm-reader",
        f"--serviceaccount={namespace}:reader",
    )
    allowed = wait_for(
        "RBAC to allow the reader",
        lambda: (
            cluster.kubectl(
                "-n",
                namespace,
                "get",
                "configmaps",
                "-o",
                "name",
                kubeconfig=sa_config,
                check=False,
            ).returncode
            == 0
        ),
        30,
    )
    assert allowed
    # The binding grants configmaps only: secrets stay refused.
    assert (
        "Forbidden"
        in cluster.kubectl(
            "-n", namespace, "get", "secrets", kubeconfig=sa_config, check=False
        ).stderr
    )


def _tiny_chart(root: Path) -> Path:
    chart = root / "tiny"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        "apiVersion: v2\nname: tiny\nversion: 0.1.0\nkubeVersion: '>=1.30.0-0'\n"
    )
    (chart / "values.yaml").write_text("# Greeting written into the ConfigMap.\ngreeting: hello\n")
    (chart / "templates" / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-tiny\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
    )
    return chart


def test_helm_installs_and_uninstalls_a_tiny_chart(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    chart = _tiny_chart(tmp_path)
    cluster.helm(
        "install",
        "demo",
        str(chart),
        "-n",
        namespace,
        "--set",
        "greeting=hi",
        "--wait",
        "--timeout",
        "60s",
    )
    assert cluster.get("configmap", "demo-tiny", namespace)["data"] == {"greeting": "hi"}
    listed = json.loads(cluster.helm("list", "-n", namespace, "-o", "json").stdout)
    assert [(r["name"], r["status"]) for r in listed] == [("demo", "deployed")]
    cluster.helm("uninstall", "demo", "-n", namespace, "--wait", "--timeout", "60s")
    assert cluster.get("configmap", "demo-tiny", namespace) is None
    assert json.loads(cluster.helm("list", "-n", namespace, "-o", "json").stdout) == []
