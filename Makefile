# qwen-operator developer entry points. `make setup` then `make test` on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup venv tools controlplane lws prometheus s3server ociregistry hubmirror helm generate test lint types imports unit integration e2e crds check-generated demo bench clean image imagetools

## setup: virtualenv + editable package with test extras + every tool the tests need
setup: venv tools

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

tools: controlplane prometheus s3server ociregistry hubmirror helm imagetools lws

## helm: the Helm CLI built from the Go module proxy (cached)
helm: venv
	$(PY) -m qwen_operator.packaging.helm build

## s3server: the real S3-compatible object store for model-sync tests (Go module proxy, cached)
s3server: venv
	$(PY) -m qwen_operator.modelsync.s3server build

## ociregistry: the real OCI registry (CNCF distribution) and the ORAS CLI for oci:// model-sync tests (Go module proxy, cached)
ociregistry: venv
	$(PY) -m qwen_operator.modelsync.ociserver build

## hubmirror: a real Hugging Face Hub-compatible server (Olah, PyPI, own virtualenv) for hf:// model-sync tests
hubmirror: venv
	$(PY) -m qwen_operator.modelsync.hubmirror build

## lws: the real LeaderWorkerSet controller (sigs.k8s.io/lws) and its CRDs from the Go module proxy (cached)
lws: venv
	$(PY) -m qwen_operator.sandbox.lws build

## controlplane: kube-apiserver/controller-manager/scheduler, etcd, kwok from the Go module proxy (cached)
controlplane: venv
	$(PY) -m qwen_operator.sandbox.binaries build

## prometheus: the real Prometheus server (Debian package)
prometheus:
	@if command -v prometheus >/dev/null; then echo "prometheus present: $$(command -v prometheus)"; \
	else echo "installing prometheus (Debian package)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  $$SUDO systemctl disable --now prometheus 2>/dev/null || true; \
	fi

## imagetools: buildah, mmdebstrap and runc (Debian packages) for `make image` and tests/integration/test_image.py
imagetools:
	@missing=""; for t in buildah mmdebstrap runc; do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -z "$$missing" ]; then echo "buildah, mmdebstrap, runc present"; \
	else echo "installing$$missing (Debian packages)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends buildah mmdebstrap runc >/dev/null; \
	fi

## image: the operator image without a Docker engine: buildah on a base built from Debian packages
## (IMAGE=ref overrides the chart's default tag; tests/integration/test_image.py rebuilds a stale one itself)
IMAGE ?=
image: venv imagetools
	$(PY) -m qwen_operator.packaging.image build $(if $(IMAGE),--tag $(IMAGE))

## test: lint, types, import contracts, generated-file checks, unit, integration and e2e tests
test: setup lint types imports unit integration e2e

lint:
	$(BIN)/ruff check operator tests e2e bench
	$(BIN)/ruff format --check operator tests e2e bench

types:
	$(BIN)/mypy

imports:
	$(BIN)/lint-imports

unit:
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

integration:
	$(BIN)/pytest tests/integration --durations=30 $(PYTEST_ARGS)

e2e:
	$(BIN)/pytest e2e --durations=10 $(PYTEST_ARGS)

## generate: regenerate crds/, docs/api-reference.md, the chart's CRD template and values schema, manifests/install.yaml
generate:
	$(PY) -m qwen_operator.api.crdgen --write
	$(PY) -m qwen_operator.api.docgen --write
	$(PY) -m qwen_operator.packaging.generate --write

crds: generate

## demo: the main job on a laptop
demo: setup
	$(BIN)/qwenctl sandbox demo

## bench: every benchmark (prints figures; nothing asserted)
bench: setup
	$(PY) bench/sandbox_bench.py
	$(PY) bench/controller_bench.py
	$(PY) bench/failover_bench.py
	$(PY) bench/autoscale_bench.py
	$(PY) bench/modelsync_bench.py
	$(PY) bench/prestage_bench.py
	$(PY) bench/roll_bench.py
	$(PY) bench/routing_bench.py
	$(PY) bench/affinity_bench.py
	$(PY) bench/router_bench.py
	$(PY) bench/pod_exit_bench.py
	$(PY) bench/thinking_bench.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
