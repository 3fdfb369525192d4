# syntax=docker/dockerfile:1
# qwen-operator image: the operator (`qwenctl operator run`) and the model-pull init container
# (`qwenctl model pull ...`) of every replica. Non-root, no build tools in the final stage.
#   docker build -t ghcr.io/qwenops/qwen-operator:0.1.0 .
# or, without a Docker engine (buildah + a Debian base built from Debian packages): make image
#
# PYTHON_IMAGE: any image with python3 (>= 3.11) and its venv module, e.g. python:3.11-slim or a
# Debian bookworm rootfs with python3.11 + python3-venv (what `make image` builds). Both stages
# install into a virtual environment, so the recipe does not depend on where the base keeps
# python or whether its system site-packages are pip-managed (Debian's are not: PEP 668).
ARG PYTHON_IMAGE=python:3.11-slim

# Build a wheel of the package and of every dependency (no compilers reach the final image).
# An optional build secret `ca-bundle` (a PEM bundle) is the CA store pip uses to reach its index,
# for builds behind a TLS-intercepting proxy or against a private index:
#   docker build --secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt .
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN --mount=type=secret,id=ca-bundle,required=false \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
    && /opt/build/bin/pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/qwen-operator/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# The runtime user has a passwd entry: kopf names its peering identity after getpass.getuser(),
# which raises for a uid the passwd file lacks (python:3.11-slim and Debian have no 65532).
# Install from the wheels only (no index), then drop pip from the environment.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    groupadd --gid 65532 nonroot \
    && useradd --uid 65532 --gid 65532 --no-log-init --create-home --home-dir /home/nonroot \
       --shell /usr/sbin/nologin nonroot \
    && python3 -m venv /opt/qwen-operator \
    && /opt/qwen-operator/bin/pip install --no-index --find-links=/wheels qwen-operator \
    && /opt/qwen-operator/bin/python -m pip uninstall --yes --quiet pip \
    && qwenctl --help >/dev/null
LABEL org.opencontainers.image.title="qwen-operator" \
      org.opencontainers.image.description="Kubernetes operator serving Qwen LLMs on TGI across GPU pools" \
      org.opencontainers.image.source="https://github.com/qwenops/qwen-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
# 65532: the conventional "nonroot" uid/gid (distroless); the chart's securityContext matches.
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["qwenctl"]
CMD ["operator", "run", "--all-namespaces", "--liveness", "http://0.0.0.0:8080/healthz", "--log-format", "json"]
