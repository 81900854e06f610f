# syntax=docker/dockerfile:1
# distilserve image. The build stage runs the same scripts as CI: scripts/setup.sh
# (ONNX Runtime from PyPI, data set, default model exported to ONNX), the release
# build, the default head's training, and scripts/stage-runtime.sh, whose layout
# tests/deploy.rs serves from in CI. The runtime stage is that layout on a slim
# base, as a non-root user, with a HEALTHCHECK on readiness.
#
#   docker build -t distilserve .                                  # model and head baked in
#   docker build --build-arg BAKE_MODEL=0 -t distilserve:slim .    # mount models at /app/models
#   docker build --build-arg VARIANT=cuda -t distilserve:cuda \
#     --build-arg RUNTIME_BASE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 .
#   docker run --gpus all -e DISTILSERVE_MODEL__EXECUTION_PROVIDER=cuda -p 8080:8080 distilserve:cuda
#
# See README.md (Deploy) and deploy/ for compose and Kubernetes.
ARG RUNTIME_BASE=debian:bookworm-slim

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip npm \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# cpu: onnxruntime; cuda: onnxruntime-gpu and the binary built with --features cuda.
ARG VARIANT=cpu
ARG BAKE_MODEL=1
RUN if [ "$VARIANT" = cuda ]; then export ORT_PACKAGE=onnxruntime-gpu FEATURES="--features cuda"; fi \
 && scripts/setup.sh \
 && cargo build --release --locked ${FEATURES:-}
RUN if [ "$BAKE_MODEL" = 1 ]; then \
      test -f models/heads/sentiment.json || target/release/distilserve train --head sentiment; \
      scripts/stage-runtime.sh /stage; \
    else \
      scripts/stage-runtime.sh /stage --without-model; \
    fi

FROM ${RUNTIME_BASE}
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin distilserve
COPY --from=build --chown=10001:10001 /stage /app
WORKDIR /app
USER 10001
ENV DISTILSERVE_SERVER__HOST=0.0.0.0 \
    DISTILSERVE_SERVER__PORT=8080 \
    DISTILSERVE_LOGGING__FORMAT=json
EXPOSE 8080
# Readiness, not liveness: 503 while a head trains at startup and while draining.
HEALTHCHECK --interval=10s --timeout=3s --start-period=180s --retries=3 CMD ["/app/distilserve", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/app/distilserve"]
CMD ["serve"]
