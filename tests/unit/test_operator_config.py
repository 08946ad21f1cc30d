"""The operator's one typed settings class, read from EDGEFLEET_* environment variables."""

from __future__ import annotations

import dataclasses

import pytest

from edgefleet.operator.config import OperatorConfig


def test_defaults_when_nothing_is_set() -> None:
    assert OperatorConfig.from_env({}) == OperatorConfig()
    assert OperatorConfig().fetch_cidrs() == []
    assert OperatorConfig().pod_settings("router") == {}
    assert OperatorConfig().pod_settings("egress") == {}


def test_every_field_is_read_from_its_variable_with_its_type() -> None:
    environ = {
        "EDGEFLEET_IMAGE": "registry.local/edgefleet:1.2.3",
        "EDGEFLEET_VLLM_IMAGE": "registry.local/edgefleet-vllm:1.2.3",
        "EDGEFLEET_IMAGE_PULL_POLICY": "Always",
        "EDGEFLEET_CALIBRATION_IMAGE": "registry.local/edgefleet-calibrate:1.2.3",
        "EDGEFLEET_ROUTER_CLUSTER_ROLE": "ef-router",
        "EDGEFLEET_ROUTER_PODS_CLUSTER_ROLE": "ef-router-pods",
        "EDGEFLEET_CALIBRATION_CLUSTER_ROLE": "ef-calibration",
        "EDGEFLEET_PEERING_NAME": "ef",
        "EDGEFLEET_GPU_NODE_LABEL": "example.com/gpu",
        "EDGEFLEET_GPU_RESOURCE": "amd.com/gpu",
        "EDGEFLEET_STATUS_INTERVAL_S": "2.5",
        "EDGEFLEET_MODEL_FETCH_CIDRS": " 10.0.0.0/8 , ,fd00::/8",
        "EDGEFLEET_API_SERVER_ENDPOINTS": "10.96.0.1:443",
        "EDGEFLEET_ROUTER_POD": '{"nodeSelector": {"tier": "core"}}',
        "EDGEFLEET_EGRESS_POD": '{"resources": {"requests": {"cpu": "50m"}}}',
        "EDGEFLEET_WORKERS": "4",
        "EDGEFLEET_LOG_LEVEL": "DEBUG",
        # Not ours: ignored.
        "EDGEFLEET_UNRELATED": "x",
        "WORKERS": "99",
    }

    config = OperatorConfig.from_env(environ)

    assert config == OperatorConfig(
        image="registry.local/edgefleet:1.2.3",
        vllm_image="registry.local/edgefleet-vllm:1.2.3",
        image_pull_policy="Always",
        calibration_image="registry.local/edgefleet-calibrate:1.2.3",
        router_cluster_role="ef-router",
        router_pods_cluster_role="ef-router-pods",
        calibration_cluster_role="ef-calibration",
        peering_name="ef",
        gpu_node_label="example.com/gpu",
        gpu_resource="amd.com/gpu",
        status_interval_s=2.5,
        model_fetch_cidrs=" 10.0.0.0/8 , ,fd00::/8",
        api_server_endpoints="10.96.0.1:443",
        router_pod='{"nodeSelector": {"tier": "core"}}',
        egress_pod='{"resources": {"requests": {"cpu": "50m"}}}',
        workers=4,
        log_level="DEBUG",
    )
    assert isinstance(config.workers, int)
    assert isinstance(config.status_interval_s, float)
    assert config.fetch_cidrs() == ["10.0.0.0/8", "fd00::/8"]
    assert config.pod_settings("router") == {"nodeSelector": {"tier": "core"}}
    assert config.pod_settings("egress") == {"resources": {"requests": {"cpu": "50m"}}}


def test_the_test_above_covers_every_field() -> None:
    # A new field must get a variable; this keeps the mapping test honest.
    names = {f"EDGEFLEET_{f.name.upper()}" for f in dataclasses.fields(OperatorConfig)}
    assert len(names) == 17


def test_whole_number_float_setting_accepts_an_integer_string() -> None:
    assert OperatorConfig.from_env({"EDGEFLEET_STATUS_INTERVAL_S": "5"}).status_interval_s == 5.0


@pytest.mark.parametrize(
    ("variable", "raw", "kind"),
    [
        ("EDGEFLEET_WORKERS", "many", "int"),
        ("EDGEFLEET_WORKERS", "2.5", "int"),
        ("EDGEFLEET_WORKERS", "", "int"),
        ("EDGEFLEET_STATUS_INTERVAL_S", "5s", "float"),
    ],
)
def test_bad_number_names_the_variable_the_type_and_the_value(
    variable: str, raw: str, kind: str
) -> None:
    with pytest.raises(ValueError) as caught:
        OperatorConfig.from_env({variable: raw})

    assert str(caught.value) == f"{variable}: must be {kind}, got {raw!r}"


@pytest.mark.parametrize("component", ["router", "egress"])
def test_pod_settings_that_are_not_json_name_the_variable(component: str) -> None:
    config = OperatorConfig(**{f"{component}_pod": "{nodeSelector: x"})

    with pytest.raises(ValueError, match=rf"^EDGEFLEET_{component.upper()}_POD: not JSON: "):
        config.pod_settings(component)


@pytest.mark.parametrize("raw", ["[]", '"text"', "3", "null"])
def test_pod_settings_must_be_a_json_object(raw: str) -> None:
    config = OperatorConfig(router_pod=raw)

    with pytest.raises(ValueError, match=r"^EDGEFLEET_ROUTER_POD: must be a JSON object$"):
        config.pod_settings("router")


def test_pod_settings_are_per_component() -> None:
    config = OperatorConfig(router_pod='{"nodeSelector": {"a": "b"}}')

    assert config.pod_settings("router") == {"nodeSelector": {"a": "b"}}
    assert config.pod_settings("egress") == {}
