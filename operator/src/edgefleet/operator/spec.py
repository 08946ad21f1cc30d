"""SmallModel: the typed form of the custom resource's spec, with its one parser.

The CRD (charts/edgefleet/templates/crds/smallmodels.yaml) refuses most bad
resources at `kubectl apply`; the handlers parse what it let through, once per
generation, so that planning, builders and status read typed fields with every
default applied here and nowhere else. tests/unit/test_operator_spec.py checks
that the CRD's fields and defaults are exactly these. Every problem names its
field path (`spec.serving.maxConcurrency: ...`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgefleet.kubeapi.specreader import SpecReader
from edgefleet.serving.config import DEFAULT_BATCH_SEQUENCES

ENGINE_CHOICES = ("auto", "llamacpp", "vllm")


class SpecError(ValueError):
    """A spec the operator must not act on; the message lists every problem found."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid SmallModel: " + "; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ModelFile:
    # builtin://NAME, file:///path, pvc://CLAIM/path or http(s)://host/path.
    uri: str
    # 64 lowercase hex characters; "" checks nothing (builtin models are always checked).
    sha256: str = ""


@dataclass(frozen=True)
class ModelSource:
    # A GGUF file, for llama.cpp.
    gguf: ModelFile | None = None
    # A Hugging Face-layout folder (or an archive of one), for vLLM.
    hf: ModelFile | None = None


@dataclass(frozen=True)
class Placement:
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    affinity: Mapping[str, Any] = field(default_factory=dict)
    # Values of the node label edgefleet.io/site; empty: any site.
    sites: tuple[str, ...] = ()


@dataclass(frozen=True)
class Serving:
    # Tokens per request, prompt plus answer.
    context_length: int = 2048
    # Requests one pod decodes at once (and admits); None: the engine's own
    # default (concurrency() says which).
    max_concurrency: int | None = None
    # Requests one pod lets wait before answering RESOURCE_EXHAUSTED.
    max_queue: int = 16
    # llama.cpp only. 1: continuous batching, one model copy decoding
    # max_concurrency requests together. More: a pool of that many copies,
    # one request each (so max_concurrency may not exceed it).
    instances: int = 1

    def concurrency(self, engine: str) -> int:
        """Requests a pod of this engine class decodes, and admits, at once."""
        if self.max_concurrency is not None:
            return self.max_concurrency
        if engine == "llamacpp" and self.instances > 1:
            return self.instances
        return DEFAULT_BATCH_SEQUENCES[engine]


@dataclass(frozen=True)
class Autoscaling:
    # 0 lets the router cover cold starts with the cloud (a HPA floors it at 1).
    min_replicas: int = 1
    max_replicas: int = 4
    target_in_flight_per_replica: int = 4


@dataclass(frozen=True)
class SmallModelSpec:
    source: ModelSource
    # auto: vLLM on GPU nodes, llama.cpp on CPU nodes.
    engine: str = "auto"
    # None: 1, unless perNode or autoscaling sizes the model (requested_replicas).
    replicas: int | None = None
    per_node: bool = False
    placement: Placement = field(default_factory=Placement)
    # core/v1 ResourceRequirements of the model container, as given.
    resources: Mapping[str, Any] = field(default_factory=dict)
    serving: Serving = field(default_factory=Serving)
    autoscaling: Autoscaling | None = None

    def requested_replicas(self) -> int | None:
        """The pods asked for (the floor under autoscaling); None for perNode."""
        if self.per_node:
            return None
        if self.autoscaling is not None:
            return self.autoscaling.min_replicas
        return 1 if self.replicas is None else self.replicas


def _model_file(reader: SpecReader, source: Mapping[str, Any], form: str) -> ModelFile | None:
    path = f"spec.source.{form}"
    if source.get(form) is None:
        return None
    data = reader.mapping(source[form], path, ("uri", "sha256"))
    uri = reader.text(data, "uri", path, "")
    if not uri:
        reader.problems.append(f"{path}.uri: required")
    return ModelFile(uri=uri, sha256=reader.text(data, "sha256", path, ""))


def _source(reader: SpecReader, spec: Mapping[str, Any]) -> ModelSource:
    data = reader.mapping(spec.get("source"), "spec.source", ("gguf", "hf"))
    source = ModelSource(gguf=_model_file(reader, data, "gguf"), hf=_model_file(reader, data, "hf"))
    if source.gguf is None and source.hf is None:
        reader.problems.append("spec.source: needs gguf (for llama.cpp), hf (for vLLM), or both")
    return source


def _placement(reader: SpecReader, spec: Mapping[str, Any]) -> Placement:
    path = "spec.placement"
    known = ("nodeSelector", "tolerations", "affinity", "sites")
    data = reader.mapping(spec.get("placement"), path, known)
    selector = reader.mapping(data.get("nodeSelector"), f"{path}.nodeSelector")
    if not all(isinstance(value, str) for value in selector.values()):
        reader.problems.append(f"{path}.nodeSelector: label values must be strings")
    return Placement(
        node_selector=dict(selector),
        tolerations=reader.items(data, "tolerations", path, Mapping),
        affinity=copy.deepcopy(dict(reader.mapping(data.get("affinity"), f"{path}.affinity"))),
        sites=reader.items(data, "sites", path, str),
    )


def _serving(reader: SpecReader, spec: Mapping[str, Any], engine: str) -> Serving:
    path, base = "spec.serving", Serving()
    known = ("contextLength", "maxConcurrency", "maxQueue", "instances")
    data = reader.mapping(spec.get("serving"), path, known)
    serving = Serving(
        context_length=reader.integer(data, "contextLength", path, base.context_length, 128),
        max_concurrency=reader.integer(data, "maxConcurrency", path, None, 1),
        max_queue=reader.integer(data, "maxQueue", path, base.max_queue, 0),
        instances=reader.integer(data, "instances", path, base.instances, 1),
    )
    if serving.instances > 1 and engine == "vllm":
        reader.problems.append(
            f"{path}.instances: {serving.instances} asks for a pool of llama.cpp model copies; "
            "engine vllm runs one engine per pod, batching on its own (leave instances at 1)"
        )
    elif (
        serving.instances > 1
        and serving.max_concurrency is not None
        and serving.max_concurrency > serving.instances
    ):
        reader.problems.append(
            f"{path}.maxConcurrency: {serving.max_concurrency} is more than "
            f"serving.instances ({serving.instances}): each llama.cpp instance decodes one "
            f"request at a time; give at most {serving.instances}, or instances 1 to decode "
            "them together (continuous batching)"
        )
    return serving


def _autoscaling(reader: SpecReader, spec: Mapping[str, Any]) -> Autoscaling | None:
    if spec.get("autoscaling") is None:
        return None
    path, base = "spec.autoscaling", Autoscaling()
    known = ("minReplicas", "maxReplicas", "targetInFlightPerReplica")
    data = reader.mapping(spec["autoscaling"], path, known)
    autoscaling = Autoscaling(
        min_replicas=reader.integer(data, "minReplicas", path, base.min_replicas, 0),
        max_replicas=reader.integer(data, "maxReplicas", path, base.max_replicas, 1),
        target_in_flight_per_replica=reader.integer(
            data, "targetInFlightPerReplica", path, base.target_in_flight_per_replica, 1
        ),
    )
    if autoscaling.min_replicas > autoscaling.max_replicas:
        reader.problems.append(f"{path}.minReplicas: must not exceed maxReplicas")
    return autoscaling


SPEC_FIELDS = (
    "source",
    "engine",
    "replicas",
    "perNode",
    "placement",
    "resources",
    "serving",
    "autoscaling",
)


def parse_smallmodel_spec(spec: Mapping[str, Any]) -> SmallModelSpec:
    """A SmallModel's `spec` (a Kopf body's, or a plain dict) as typed values, defaults applied.

    Raises SpecError listing every problem, each with its field path.
    """
    reader = SpecReader()
    data = reader.mapping(spec, "spec", SPEC_FIELDS)
    engine = reader.text(data, "engine", "spec", "auto")
    if engine not in ENGINE_CHOICES:
        choices = ", ".join(ENGINE_CHOICES)
        reader.problems.append(f"spec.engine: must be one of {choices}, got {engine!r}")
        engine = "auto"
    model = SmallModelSpec(
        source=_source(reader, data),
        engine=engine,
        replicas=reader.integer(data, "replicas", "spec", None, 0),
        per_node=reader.flag(data, "perNode", "spec", False),
        placement=_placement(reader, data),
        resources=copy.deepcopy(dict(reader.mapping(data.get("resources"), "spec.resources"))),
        serving=_serving(reader, data, engine),
        autoscaling=_autoscaling(reader, data),
    )
    sizings = [
        name
        for name, given in (
            ("replicas", model.replicas is not None),
            ("perNode: true", model.per_node),
            ("autoscaling", model.autoscaling is not None),
        )
        if given
    ]
    if len(sizings) > 1:
        exclusive = " and ".join(sizings)
        reader.problems.append(f"spec: {exclusive} are exclusive; give one way to size the model")
    if reader.problems:
        raise SpecError(reader.problems)
    return model
