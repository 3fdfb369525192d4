# syntax=docker/dockerfile:1
# qwen-operator image: the operator (`qwenctl operator run`) and the model-pull init container
# (`qwenctl model pull ...`) of every replica. Non-root, no build tools in the final stage.
#   docker build -t ghcr.io/qwenops/qwen-operator:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim

# Build a wheel of the package and of every dependency (no compilers reach the final image).
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels qwen-operator \
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
