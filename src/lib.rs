//! distilserve: an HTTP service for the last hidden states of BERT-family
//! encoders (DistilBERT, BERT, MiniLM) through ONNX Runtime, and for
//! classifier heads trained on them.
//!
//! Module map, bottom (depends on nothing of ours) to top:
//! - `config`: typed settings (file, environment, flags). Imports no other module.
//! - `error_code`: every error code with its status, TEI type and `Retry-After`.
//! - leaves: `tokenize` (text to ids), `pooling` (rows to vectors, softmax,
//!   argmax), `npy`, `atomic_file`, `data` (labelled data sets), `metrics`
//!   (the Prometheus registry), `telemetry` (logs), `layers` (which hidden
//!   states a request wants and how several combine; over `pooling`), `svg`
//!   (the confusion-matrix picture of the API and of `evaluate`).
//! - `cost`: what a request's answer and working memory will take, priced
//!   before any work (`limits.max_response_bytes`, `max_request_memory_bytes`).
//! - `forward`: the [`forward::ForwardPass`] trait (one model call: a batch of
//!   tokenized texts to each text's rows), the seam in front of the runtime.
//! - `weights`: one copy of each weight tensor that several sessions use
//!   (read from the graph files' initializer tables).
//! - `model`: ONNX Runtime, model folders, the forward pass (`OrtSession`).
//! - `batching`: the queue and worker threads, generic over `ForwardPass`.
//! - `inference`: tokenize, queue, pool: text to vectors for every route.
//! - `runtimes`: owns every model runtime (encoder, the heads' own graph where
//!   `classify.model_file` names one, ONNX heads); drains them.
//! - `features`: batch extraction and its disk cache (commands, training).
//! - `heads`: the served heads: logistic file format and explanations, training
//!   search, versions in the heads folder, trainings over the API, ONNX classifiers.
//! - `http`: routes, request/response types, errors, auth, middleware.
//! - `server`: transport: the accept loop, connection limits, write deadline,
//!   one shutdown signal for every listener, graceful drain, the HTTP runtime;
//!   `threads`: HTTP threads that do not preempt the model's (the one module
//!   with unsafe code: two `libc` calls).
//! - `startup`: assemble the application, train missing heads, watch the heads
//!   folder, serve through `server`, drain.
//! - `cli`, `commands`, `report`: the command line's batch work; `remote`:
//!   `extract --remote`, a data set through a running deployment over HTTP.

//!
//! Locks, one policy: a `std` `Mutex`/`RwLock` is taken with
//! `unwrap_or_else(|p| p.into_inner())` everywhere: a panic elsewhere while it
//! was held (caught by `CatchPanicLayer` or a worker's restart) must not turn
//! every later request into a 500, and nothing kept under our locks is left
//! half-written in a way that matters more than answering (queues, maps of
//! heads and statuses, counters). None is held across an `.await`; the async
//! ones (`tokio::sync`) are the admin routes' one-at-a-time lock and the
//! upload semaphore. Across replicas, heads are held with `flock`
//! (`heads::store`). (The search's per-slot result mutexes are written once
//! each; a panicking fit re-raises from the thread scope instead.)

// Denied, not forbidden: `threads` allows it for its two system calls.
#![deny(unsafe_code)]

pub mod atomic_file;
pub mod batching;
pub mod cli;
pub mod commands;
pub mod config;
pub mod cost;
pub mod data;
pub mod error_code;
pub mod features;
pub mod forward;
pub mod heads;
pub mod http;
pub mod inference;
pub mod layers;
pub mod metrics;
pub mod model;
pub mod npy;
pub mod pooling;
pub mod remote;
pub mod report;
pub mod runtimes;
pub mod server;
pub mod startup;
pub mod svg;
pub mod telemetry;
pub mod threads;
pub mod tokenize;
pub mod weights;
