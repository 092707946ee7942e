# syntax=docker/dockerfile:1
# One image for every component: `sie-operator run | gateway | worker | config-api ...`.
# Build: docker build -t sie-operator:dev .
# Runs as uid 10001 with a read-only root filesystem (the Helm chart mounts /tmp and the store).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Every dependency ships wheels for CPython 3.11 (amd64 and arm64), so no compiler is needed;
# the virtualenv is the only thing that leaves this stage.
RUN python -m venv /opt/sie
COPY pyproject.toml README.md* ./
COPY operator ./operator
RUN /opt/sie/bin/pip install . \
 && /opt/sie/bin/pip uninstall --yes pip \
 && /opt/sie/bin/sie-operator --help >/dev/null

FROM python:3.11-slim
LABEL org.opencontainers.image.title="sie-operator" \
      org.opencontainers.image.description="Kubernetes operator for SIE model configuration" \
      org.opencontainers.image.source="https://github.com/sie-operator/sie-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/sie/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SIE_CONFIG_STORE_DIR=/var/lib/sie-operator
RUN groupadd --system --gid 10001 sie \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin sie \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/sie-operator
COPY --from=build /opt/sie /opt/sie
USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT ["sie-operator"]
CMD ["--help"]
