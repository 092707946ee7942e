# sie-operator developer entry points. `make demo` and `make test` are the two set-up commands:
# each installs what it needs (Python deps, kube-apiserver/etcd/kubectl/helm, nats-server) first.
PYTHON ?= python3
PIP_STAMP := .run/pip-installed
KUBE_ASSETS = $(shell e2e/controlplane/ensure-bins)

.PHONY: setup deps bins test lint typecheck demo bench crd e2e-kind controlplane clean

setup: deps bins

deps: $(PIP_STAMP)
$(PIP_STAMP): pyproject.toml
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@mkdir -p .run && touch $(PIP_STAMP)

bins:
	@e2e/controlplane/ensure-bins >/dev/null

test: setup
	KUBEBUILDER_ASSETS=$(KUBE_ASSETS) SIE_REQUIRE_K8S=$${SIE_REQUIRE_K8S:-1} $(PYTHON) -m pytest -q $(PYTEST_ARGS)

lint: deps
	$(PYTHON) -m ruff check operator tests e2e bench
	$(PYTHON) -m mypy

demo: setup
	KUBEBUILDER_ASSETS=$(KUBE_ASSETS) sie-operator demo

controlplane: setup
	KUBEBUILDER_ASSETS=$(KUBE_ASSETS) sie-operator controlplane

bench: setup
	$(PYTHON) bench/config_api.py
	$(PYTHON) bench/gateway.py
	KUBEBUILDER_ASSETS=$(KUBE_ASSETS) $(PYTHON) bench/operator.py

crd: deps
	sie-operator crd > crds/modelconfig.yaml
	cp crds/modelconfig.yaml charts/sie-operator/crds/modelconfig.yaml

e2e-kind:
	e2e/kind/run.sh

clean:
	rm -rf .run .demo .pytest_cache .mypy_cache .ruff_cache
