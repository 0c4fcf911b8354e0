# Two commands set up a fresh Debian machine with Python 3.11: `make run` and `make test`.
# Every install step lives here, idempotent (stamp files), so CI's clean clone needs nothing else.
# `make run` installs only what running needs (install-run); `make test` installs everything
# (install = install-run + the dev tooling: test/lint packages, the Node client, Prometheus).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.run-installed-stamp
DEV_STAMP := $(VENV)/.dev-installed-stamp
PYTRITON := $(VENV)/opt/pytriton
TRITON_PYTHON := $(VENV)/opt/triton-python
PROTO_SRC := protos/imagesvc/v1/image_service.proto
PROTO_OUT := imagesvc/v1/image_service_pb2.py
BUF := npx --yes @bufbuild/buf@1.75.0
NVIDIA_PYTRITON := nvidia-pytriton==0.7.0

.PHONY: install install-run proto run test test-fast lint lint-proto bench clean

NODE_CLIENT := clients/node/node_modules/.package-lock.json

# What `make run` needs: the service, the local Triton sidecar, the generated protobuf code.
install-run: $(RUN_STAMP) $(PROTO_OUT)

# Everything: what running needs plus the test and lint tooling.
install: install-run $(DEV_STAMP) $(NODE_CLIENT)

# The Node.js client the tests use to call the service from another language.
$(NODE_CLIENT): clients/node/package-lock.json clients/node/package.json
	npm ci --prefix clients/node --no-audit --no-fund --loglevel=error
	touch $@

# Debian packages, only those missing: $(1) is the list.
define apt_install
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

# Running: libpython3.11 (the Triton python-backend stub links libpython3.11.so.1.0), the project
# with its pinned runtime dependencies, grpcio-tools (the codegen extra: it generates
# imagesvc/v1), and the local Triton.
$(RUN_STAMP): pyproject.toml inference/triton-python-requirements.txt Makefile
	$(call apt_install,libpython3.11)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip==25.3
	$(BIN)/python -m pip install -q -e '.[codegen]'
	# nvidia-pytriton is used only for the tritonserver binary and backends it ships; its Python
	# API pins numpy<2, so it goes into its own folder without its dependencies.
	$(BIN)/python -m pip install -q --no-deps --upgrade --target $(PYTRITON) $(NVIDIA_PYTRITON)
	# What the local Triton's python-backend stub imports (numpy 1.x, onnxruntime): kept apart
	# from the service's numpy 2 (see inference/triton-python-requirements.txt).
	$(BIN)/python -m pip install -q --no-deps --upgrade --target $(TRITON_PYTHON) \
	  -r inference/triton-python-requirements.txt
	touch $@

# Testing: the dev extra (pytest, ruff, scikit-image, kubernetes-validate, ...) and Debian's
# prometheus (the real server the metrics tests scrape with).
$(DEV_STAMP): $(RUN_STAMP) pyproject.toml Makefile
	$(call apt_install,prometheus)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

$(PROTO_OUT): $(PROTO_SRC) $(RUN_STAMP)
	mkdir -p imagesvc/v1
	touch imagesvc/v1/__init__.py
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO_SRC)

proto: $(PROTO_OUT)

lint-proto:
	cd protos && $(BUF) lint

lint: install lint-proto
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

run: install-run
	$(BIN)/python -m imagesvc.devrun

test: install lint
	$(BIN)/python -m pytest -q -ra

test-fast: install
	$(BIN)/python -m pytest -q -ra -m "not triton"

bench: install
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) imagesvc/v1 .pytest_cache
