# syntax=docker/dockerfile:1
# distilserve image. The build stage runs the same scripts as CI: scripts/setup.sh
# (ONNX Runtime from PyPI, data set, default model exported to ONNX; each step
# skipped when the build context already has it), the release build, the
# default head's training, and scripts/stage-runtime.sh, whose layout
# tests/suite/deploy.rs serves from in CI. The runtime stage is that layout on a
# slim base, as a non-root user, with a HEALTHCHECK on readiness.
#
#   make image                                                     # podman or docker; local bases where registries are out of reach
#   docker build -t distilserve .                                  # model and head baked in
#   docker build --build-arg BAKE_MODEL=0 -t distilserve:slim .    # mount models at /app/models
#   docker build --build-arg VARIANT=cuda -t distilserve:cuda \
#     --build-arg RUNTIME_BASE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 .
#   docker run --gpus all -e DISTILSERVE_MODEL__EXECUTION_PROVIDER=cuda -p 8080:8080 distilserve:cuda
#
# Behind a proxy that intercepts TLS, give the build its CA bundle (pip, npm and
# cargo use it; it is not kept in any layer):
#   docker build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt .
#
# See docs/deploy.md and deploy/ for compose and Kubernetes.
ARG BUILD_BASE=rust:1.95-bookworm
ARG RUNTIME_BASE=debian:bookworm-slim

FROM ${BUILD_BASE} AS build
WORKDIR /src
COPY . .
# cpu: onnxruntime; cuda: onnxruntime-gpu and the binary built with --features cuda.
ARG VARIANT=cpu
ARG BAKE_MODEL=1
# What the set-up scripts run, installed only where the base lacks it (npm only
# when the context has no Swagger UI assets yet).
RUN need=""; \
    for p in python3 python3-venv python3-pip binutils; do dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"; done; \
    [ -f vendor/swagger-ui/.complete ] || command -v npm >/dev/null || need="$need npm"; \
    if [ -n "$need" ]; then \
      apt-get update && apt-get install -y --no-install-recommends $need && rm -rf /var/lib/apt/lists/*; \
    fi
# Caches (cargo's registry and target, set-up downloads) persist between builds
# on the same machine and are never part of an image.
# With the model baked in, the default head is trained here as `make run`
# trains it: on the heads' graph (classify.model_file = "auto": the int8 export,
# which the image ships beside model.onnx, scripts/stage-runtime.sh), compared
# with the exact graph, the better kept. One in the build context may come
# from another host's graphs and is not used.
RUN --mount=type=secret,id=ca \
    --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    --mount=type=cache,target=/root/.cache/distilserve \
    set -e; \
    if [ -f /run/secrets/ca ]; then \
      export SSL_CERT_FILE=/run/secrets/ca PIP_CERT=/run/secrets/ca REQUESTS_CA_BUNDLE=/run/secrets/ca \
             NODE_EXTRA_CA_CERTS=/run/secrets/ca CARGO_HTTP_CAINFO=/run/secrets/ca; \
    fi; \
    if [ "$VARIANT" = cuda ]; then export ORT_PACKAGE=onnxruntime-gpu FEATURES="--features cuda"; fi; \
    scripts/setup.sh; \
    cargo build --release --locked ${FEATURES:-}; \
    if [ "$BAKE_MODEL" = 1 ]; then \
      rm -f models/heads/*.json; \
      target/release/distilserve train --head sentiment; \
      scripts/stage-runtime.sh /stage; \
    else \
      scripts/stage-runtime.sh /stage --without-model; \
    fi

FROM ${RUNTIME_BASE}
ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="distilserve" \
      org.opencontainers.image.description="DistilBERT-family encoder over HTTP: last hidden states (/embed) and logistic-regression heads (/classify)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 distilserve \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /app --shell /usr/sbin/nologin distilserve
# Everything read-only for the service except the heads folder (a volume in
# production; trained heads are written there) and the feature cache.
COPY --from=build --chown=0:0 /stage /app
RUN chown -R 10001:10001 /app/models/heads /app/features
WORKDIR /app
USER 10001
ENV DISTILSERVE_SERVER__HOST=0.0.0.0 \
    DISTILSERVE_SERVER__PORT=8080 \
    DISTILSERVE_LOGGING__FORMAT=json
EXPOSE 8080
VOLUME ["/app/models/heads"]
# Readiness, not liveness: 503 while a head trains at startup and while draining.
HEALTHCHECK --interval=10s --timeout=3s --start-period=180s --retries=3 CMD ["/app/distilserve", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/app/distilserve"]
CMD ["serve"]
