//! distilserve: an HTTP service for the last hidden states of BERT-family
//! encoders (DistilBERT, BERT, MiniLM) through ONNX Runtime, and for
//! classifier heads trained on them.
//!
//! Module map, bottom (depends on nothing of ours) to top:
//! - `config`: typed settings (file, environment, flags). Imports no other module.
//! - leaves: `tokenize` (text to ids), `pooling` (rows to vectors, softmax,
//!   argmax), `npy`, `atomic_file`, `data` (labelled data sets), `metrics`
//!   (the Prometheus registry), `telemetry` (logs), `layers` (which hidden
//!   states a request wants and how several combine; over `pooling`), `svg`
//!   (the confusion-matrix picture of the API and of `evaluate`).
//! - `cost`: what a request's answer and working memory will take, priced
//!   before any work (`limits.max_response_bytes`, `max_request_memory_bytes`).
//! - `encoder`: the [`encoder::Encoder`] trait, the seam in front of the runtime.
//! - `model`: ONNX Runtime, model folders, the forward pass (`OrtEncoder`).
//! - `batching`: the queue and worker threads, generic over `Encoder`.
//! - `inference`: tokenize, queue, pool: text to vectors for every route.
//! - `runtimes`: owns every model runtime (encoder, ONNX heads); drains them.
//! - `features`: batch extraction and its disk cache (commands, training).
//! - `heads`: the served heads: logistic file format and explanations, training
//!   search, versions in the heads folder, trainings over the API, ONNX classifiers.
//! - `http`: routes, request/response types, errors, auth, middleware.
//! - `server`: transport: the accept loop, connection limits, write deadline,
//!   one shutdown signal for every listener, graceful drain.
//! - `startup`: assemble the application, train missing heads, watch the heads
//!   folder, serve through `server`, drain.
//! - `cli`, `commands`, `report`: the command line's batch work; `remote`:
//!   `extract --remote`, a data set through a running deployment over HTTP.

#![forbid(unsafe_code)]

pub mod atomic_file;
pub mod batching;
pub mod cli;
pub mod commands;
pub mod config;
pub mod cost;
pub mod data;
pub mod encoder;
pub mod features;
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
pub mod tokenize;
