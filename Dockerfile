# xcluster-cni image: the `install` init container and the router daemon.
#
#   docker build -t xcluster-cni .        (or: make image)
#
# Stage 1 builds the self-contained bundle (packaging/build_bundle.py): a CPython copy, the
# project and its dependencies, and a small C launcher. The same bundle runs the daemon in
# the image and the IPAM plugins on the host, which may have no Python at all.
# Stage 2 is the slim base plus the bundle and the reference CNI plugins: no compiler, no
# pip, no Python package manager, no apt lists.
#
# BASE_IMAGE is pinned to a dated Debian 12 slim tag; pin a digest (@sha256:...) in your
# own registry for reproducible builds. Tests build with a local debootstrap base.
ARG BASE_IMAGE=docker.io/library/debian:bookworm-20250520-slim

FROM ${BASE_IMAGE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv libpython3.11-dev gcc libc6-dev patchelf \
      ca-certificates containernetworking-plugins \
 && rm -rf /var/lib/apt/lists/*
# PIP_CERT: a CA bundle path for builds behind a TLS-inspecting proxy (mount it with the
# builder's -v/--secret); empty: the system CAs.
ARG PIP_CERT=
WORKDIR /src
COPY pyproject.toml README.md ./
COPY xcluster_cni_lib xcluster_cni_lib
COPY wrappers wrappers
COPY packaging packaging
RUN if [ -n "$PIP_CERT" ]; then export PIP_CERT; else unset PIP_CERT; fi \
 && python3 -m venv /venv \
 && /venv/bin/pip install --no-cache-dir --disable-pip-version-check . ./wrappers/daemon ./wrappers/ipam packaging
RUN PATH=/venv/bin:$PATH /venv/bin/python packaging/build_bundle.py \
      /opt/xcluster-cni/plugins/xcluster-cni \
 && cp /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/loopback \
      /usr/lib/cni/portmap /opt/xcluster-cni/plugins/

FROM ${BASE_IMAGE}
COPY --from=build /opt/xcluster-cni /opt/xcluster-cni
# The launcher finds its bundle from its real path: link it, never copy it.
RUN ln -s /opt/xcluster-cni/plugins/xcluster-cni/xcluster-cni-plugin \
      /usr/local/bin/xcluster-cni \
 && xcluster-cni --help > /dev/null
# Root, with only the capabilities the manifests grant (NET_ADMIN for the daemon, none
# for `install`): Kubernetes cannot give a non-root process capabilities (no ambient
# capabilities), and file capabilities would need allowPrivilegeEscalation. See
# docs/install.md.
USER 0:0
ENV PYTHONDONTWRITEBYTECODE=1
ENTRYPOINT ["/usr/local/bin/xcluster-cni"]
CMD ["daemon"]
