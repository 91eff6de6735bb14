# syntax=docker/dockerfile:1
# The async-inspect node daemon (`async-inspect collector`): attaches to the asyncio processes
# of its node and exports their spans over OTLP/gRPC, plus Prometheus metrics on :9464.
#
#   docker build -t async-inspect:0.1.0 .
#   docker run --pid=host --cap-drop=ALL \
#       --cap-add=SYS_PTRACE --cap-add=CHOWN --cap-add=DAC_OVERRIDE --cap-add=FOWNER \
#       --cap-add=KILL -e OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4317 async-inspect:0.1.0
#
# Why each capability: helm/async-inspect/values.yaml (securityContext).

ARG PYTHON_VERSION=3.12
ARG DEBIAN_RELEASE=bookworm

# --- build: the package and its dependencies, in a venv copied whole into the runtime image
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# A C compiler for the agent's compiled callbacks (profiler/agent/csrc), in this stage only:
# without it `pip install .` still succeeds and every target would get the slower pure-Python
# agent, so the build checks that they were built.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        "gcc=4:12.2.0-*" "libc6-dev=2.36-*" \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
RUN python -m venv /opt/async-inspect
# Only what `pip install .` reads (.dockerignore keeps the rest out of the context).
COPY pyproject.toml README.md ./
COPY profiler ./profiler
COPY collector ./collector
RUN /opt/async-inspect/bin/pip install . \
    && /opt/async-inspect/bin/async-inspect --version \
    && /opt/async-inspect/bin/python -c "from profiler.agent import accelerator as a; ok, why = a.available(); assert ok, why" \
    && /opt/async-inspect/bin/python -c "from collector import accelerated as a; ok, why = a.compiled(); assert ok, why"

# --- runtime: the same Python, gdb, the venv
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="async-inspect" \
      org.opencontainers.image.description="Zero-code asyncio profiler node daemon: asyncio tasks of running Python 3.12+ processes as OpenTelemetry spans" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE}"

# gdb injects the agent into CPython 3.12/3.13 targets (3.14 ones use PEP 768 remote execution).
# The full gdb, not gdb-minimal: the injection script runs in gdb's embedded Python. The version
# is pinned to bookworm's gdb 13.1, with the Debian revision open so that security updates of
# the same release still build.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "gdb=13.1-*" \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

COPY --from=build /opt/async-inspect /opt/async-inspect
ENV PATH=/opt/async-inspect/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ASYNC_INSPECT_METRICS_PORT=9464

# Root on purpose, with no USER line: attaching to other users' processes needs root's
# capabilities (SYS_PTRACE, and CHOWN/DAC_OVERRIDE/FOWNER for the folder it shares with each
# target). Deployments grant only those; see the chart's securityContext.
EXPOSE 9464
# For docker and compose; Kubernetes uses the chart's probes on the same endpoint.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ASYNC_INSPECT_METRICS_PORT', '9464'), timeout=4)"]
ENTRYPOINT ["async-inspect", "collector"]
