# The two commands of the README: `make demo` and `make test`.
# Both install what is missing first (Debian packages, a virtualenv with the project).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DEB_PACKAGES := containernetworking-plugins iproute2 iputils-ping
# tests/install: the plugin bundle (gcc, libc6-dev) and the image build (podman, runc, debootstrap)
DEB_PACKAGES += gcc libc6-dev podman runc debootstrap
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint typecheck pytest bench bench-quick soak mutation clean image

setup: $(STAMP)

$(STAMP): pyproject.toml wrappers/daemon/pyproject.toml wrappers/ipam/pyproject.toml
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[test]' -e ./wrappers/daemon -e ./wrappers/ipam
	touch $(STAMP)

demo: setup
	$(VENV)/bin/xcluster-cni lab demo

test: setup lint typecheck pytest

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy --strict xcluster_cni_lib wrappers/daemon/xcluster_cni_daemon wrappers/ipam/xcluster_cni_ipam

pytest: setup
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

# `make bench` runs every benchmark (several minutes); `make bench BENCH_ARGS=--quick`
# (or `make bench-quick`) is the short run, under 2 minutes. make itself rejects
# `make bench --quick`, so the flag goes through BENCH_ARGS. See docs/performance.md.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q -e '.[test,bench]' -e ./wrappers/daemon -e ./wrappers/ipam
	touch $(BENCH_STAMP)

bench: setup $(BENCH_STAMP)
	$(PY) bench/run.py $(BENCH_ARGS)

bench-quick: BENCH_ARGS += --quick
bench-quick: bench

soak: setup
	$(PY) tests/soak/run.py $(SOAK_ARGS)

# `make mutation`: mutation testing of xcluster_cni_lib/core/ and plugin/protocol.py against
# the fast unit tests, in a temporary copy of the tree (not part of `make test`; about 15
# minutes on 2 cores). `make mutation MUTATION_ARGS="--sample 150 --seed 1"` for a sample.
# See docs/testing.md.
mutation: setup
	$(PY) tests/mutation/run.py $(MUTATION_ARGS)

# `make image`: build the image with docker when its daemon answers, else podman
# (IMAGE=name:tag, IMAGE_BUILD_ARGS for e.g. --build-arg BASE_IMAGE=...). See docs/install.md.
IMAGE ?= xcluster-cni:latest
image:
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then \
	  echo "docker build -t $(IMAGE) ."; docker build -t $(IMAGE) $(IMAGE_BUILD_ARGS) .; \
	elif command -v podman >/dev/null 2>&1; then \
	  echo "podman build -t $(IMAGE) ."; podman build -t $(IMAGE) $(IMAGE_BUILD_ARGS) .; \
	else echo "make image: neither a running docker nor podman found" >&2; exit 1; fi

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
