# xcluster-cni image: the `install` init container and the node agent (daemon).
#
#   docker build -t xcluster-cni .        (or: make image)
#
# Stage `shims` compiles the static host shim for x86-64 and arm64 (`make plugins`:
# Debian's gcc and gcc-aarch64-linux-gnu) on the builder's own platform (an amd64
# builder; the shims are the same whatever platform the image is for).
# Stage `build` installs the project into a virtualenv and takes Debian's reference plugins.
# The final stage is the slim base plus Debian's python3, that virtualenv and what the
# installer puts on the hosts (docs/install.md, "The image"):
#   /opt/xcluster-cni/shim/{amd64,arm64}/xcluster-cni-shim     the host shim (static)
#   /opt/xcluster-cni/reference/{bridge,host-local,loopback,portmap}
#                                     Debian's reference plugins, installed only on a node
#                                     that has none (dynamically linked: glibc >= 2.34)
# No compiler, no pip, no apt lists. Nothing of the Python side goes to the hosts.
#
# BASE_IMAGE is pinned to a dated Debian 12 slim tag; pin a digest (@sha256:...) in your
# own registry for reproducible builds. Tests build with a local debootstrap base.
ARG BASE_IMAGE=docker.io/library/debian:bookworm-20250520-slim

FROM --platform=$BUILDPLATFORM ${BASE_IMAGE} AS shims
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      make gcc libc6-dev gcc-aarch64-linux-gnu libc6-dev-arm64-cross \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY wrappers/ipam/shim wrappers/ipam/shim
RUN make plugins PLUGINS_OUT=/opt/xcluster-cni/shim

FROM ${BASE_IMAGE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv ca-certificates containernetworking-plugins \
 && rm -rf /var/lib/apt/lists/*
RUN mkdir -p /opt/xcluster-cni/reference \
 && cp /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/loopback \
      /usr/lib/cni/portmap /opt/xcluster-cni/reference/
WORKDIR /src
# PIP_CERT: a CA bundle path for builds behind a TLS-inspecting proxy (mount it with the
# builder's -v/--secret); empty: the system CAs.
ARG PIP_CERT=
COPY pyproject.toml README.md ./
COPY xcluster_cni_lib xcluster_cni_lib
COPY wrappers wrappers
RUN if [ -n "$PIP_CERT" ]; then export PIP_CERT; else unset PIP_CERT; fi \
 && python3 -m venv /opt/xcluster-cni/venv \
 && /opt/xcluster-cni/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
      . ./wrappers/daemon ./wrappers/ipam \
 && /opt/xcluster-cni/venv/bin/pip uninstall -y -q --disable-pip-version-check pip setuptools
# Slimmer venv: drop what nothing here imports (the kubernetes client's asyncio client and
# tests: a third of the venv) and keep the third-party packages as compiled modules only
# (the same import time; tracebacks still name file and line). The project's own packages
# keep their sources.
RUN site=$(/opt/xcluster-cni/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
 && rm -rf "$site/kubernetes/aio" "$site/kubernetes/test" "$site/kubernetes/e2e_test" \
 && cd "$site" \
 && for entry in *; do \
      case "$entry" in xcluster_cni*|*.dist-info|*.pth|__pycache__) continue;; esac; \
      /opt/xcluster-cni/venv/bin/python -m compileall -q -b \
        --invalidation-mode unchecked-hash "$entry" > /dev/null \
        || echo "note: some files of $entry did not compile (never imported)"; \
      if [ -d "$entry" ]; then \
        find "$entry" -name __pycache__ -prune -exec rm -rf {} + ; \
        find "$entry" -name '*.py' -delete; \
      elif [ "${entry%.py}" != "$entry" ]; then rm -f "$entry"; fi; \
    done \
 && rm -rf __pycache__

FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 nftables \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/xcluster-cni /opt/xcluster-cni
COPY --from=shims /opt/xcluster-cni/shim /opt/xcluster-cni/shim
RUN ln -s /opt/xcluster-cni/venv/bin/xcluster-cni /usr/local/bin/xcluster-cni \
 && xcluster-cni --help > /dev/null \
 && /opt/xcluster-cni/venv/bin/python -c \
      "import xcluster_cni_lib.sources.kube, xcluster_cni_lib.daemon.service"
# Root, with only the capabilities the manifests grant (NET_ADMIN for the daemon, none
# for `install`): Kubernetes cannot give a non-root process capabilities (no ambient
# capabilities), and file capabilities would need allowPrivilegeEscalation. See
# docs/install.md.
USER 0:0
ENV PYTHONDONTWRITEBYTECODE=1
ENTRYPOINT ["/usr/local/bin/xcluster-cni"]
CMD ["daemon"]
