# The two commands of the README: `make demo` and `make test`.
# Both install what is missing first (Debian packages, a virtualenv with the project).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DEB_PACKAGES := containernetworking-plugins iproute2 iputils-ping
# tests/install: the x86-64 shim (gcc, libc6-dev) and the image build (podman, runc, debootstrap)
DEB_PACKAGES += gcc libc6-dev podman runc debootstrap
# `make plugins`: the static host shim for arm64 (cross compiler) and its test under qemu
DEB_PACKAGES += gcc-aarch64-linux-gnu qemu-user-static
# egress masquerade (kernel/nftables.py, tests/masquerade, bench/masquerade_sets.py): nft
DEB_PACKAGES += nftables
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint typecheck pytest bench bench-quick soak mutation clean image plugins

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
# the fast unit tests, in a temporary copy of the tree (not part of `make test`; 15 to 30
# minutes on 2 cores). `make mutation MUTATION_ARGS="--sample 150 --seed 1"` for a sample.
# See docs/testing.md.
mutation: setup
	$(PY) tests/mutation/run.py $(MUTATION_ARGS)

# `make plugins`: the static host shim (kube-node / node-annotation are this one executable
# under two names) for x86-64 and arm64, into $(PLUGINS_OUT)/<arch>/xcluster-cni-shim.
# Only Debian's gcc and gcc-aarch64-linux-gnu, no network. See docs/shim.md.
PLUGINS_OUT ?= build/plugins
SHIM_SRC := wrappers/ipam/shim/xcluster-cni-shim.c
SHIM_CC_amd64 ?= gcc
SHIM_CC_arm64 ?= aarch64-linux-gnu-gcc
SHIM_CFLAGS := -std=gnu11 -Wall -Wextra -Os -static -s -fno-asynchronous-unwind-tables \
  -ffunction-sections -fdata-sections -Wl,--gc-sections -Wl,--build-id=none
plugins: $(PLUGINS_OUT)/amd64/xcluster-cni-shim $(PLUGINS_OUT)/arm64/xcluster-cni-shim

$(PLUGINS_OUT)/%/xcluster-cni-shim: $(SHIM_SRC) Makefile
	@command -v $(SHIM_CC_$*) >/dev/null || { echo "make plugins: $(SHIM_CC_$*) not found (apt-get install gcc gcc-aarch64-linux-gnu, or make setup)" >&2; exit 1; }
	@mkdir -p $(@D)
	$(SHIM_CC_$*) $(SHIM_CFLAGS) -o $@.tmp $< && mv $@.tmp $@

# `make image`: build the image with docker when its daemon answers, else podman
# (IMAGE=name:tag, IMAGE_BUILD_ARGS for e.g. --build-arg BASE_IMAGE=...). See docs/install.md.
# One platform (this machine's); the published amd64+arm64 image and the shims as release
# assets come from .github/workflows/release.yml on a version tag (docs/install.md).
IMAGE ?= xcluster-cni:latest
image:
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then \
	  echo "docker build -t $(IMAGE) ."; docker build -t $(IMAGE) $(IMAGE_BUILD_ARGS) .; \
	elif command -v podman >/dev/null 2>&1; then \
	  echo "podman build -t $(IMAGE) ."; podman build -t $(IMAGE) $(IMAGE_BUILD_ARGS) .; \
	else echo "make image: neither a running docker nor podman found" >&2; exit 1; fi

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
