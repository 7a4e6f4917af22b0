# openai-grpc gateway image: scripts/image.sh builds and smoke-tests it (README "Container image").
# BASE_IMAGE is any Debian-like image with python3 (3.11+) and its venv module, used by both
# stages so the venv's interpreter path is valid in the final one: python:3.11-slim by default,
# or the local Debian base that scripts/debian_base.sh builds when Docker Hub is out of reach.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY requirements ./requirements
COPY client_stubs/python ./client_stubs/python
COPY server ./server
# The server install only: no dev tools, and no pip or setuptools left in the venv. pip
# byte-compiles, so the read-only image never needs to.
# The optional build secret `ca-bundle` lets pip trust the CAs the build host trusts (a
# TLS-intercepting proxy); it is mounted for this step only and never stored in a layer.
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
 && python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install -c requirements/constraints.txt ./client_stubs/python . \
 && /opt/venv/bin/pip uninstall -q -y pip setuptools

FROM ${BASE_IMAGE}
ARG BASE_IMAGE
# scripts/image.sh sets these from pyproject.toml and git.
ARG VERSION=unknown
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="openai-grpc" \
      org.opencontainers.image.description="A gRPC gateway for the OpenAI API" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.vendor="the openai-grpc authors" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
# A numeric user with no home and no shell: Kubernetes `runAsNonRoot` can verify a numeric USER.
RUN echo 'gateway:x:10001:10001:openai-grpc:/nonexistent:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'gateway:x:10001:' >> /etc/group
COPY --from=build /opt/venv /opt/venv
COPY LICENSE /usr/share/licenses/openai-grpc/LICENSE
# Nothing is written at start, so the root filesystem can be read-only: no bytecode, no buffers.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8
USER 10001:10001
# gRPC (health via grpc.health.v1: Kubernetes `grpc:` probes, so no HEALTHCHECK) and /metrics.
EXPOSE 50051 9464
# The gateway drains in-flight calls on SIGTERM and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["openai-grpc-server"]
