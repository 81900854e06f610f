//! distilserve: an HTTP service for the last hidden states of BERT-family
//! encoders (DistilBERT, BERT, MiniLM) through ONNX Runtime.
//!
//! Where things are: `config` (settings), `model` (ONNX Runtime, forward pass),
//! `tokenize`, `batching` (queue and workers), `inference` (text to rows),
//! `pooling`, `npy`, `http` (routes, types, errors), `startup` (serve and
//! drain), `telemetry` (logs), `cli`.

pub mod batching;
pub mod cli;
pub mod config;
pub mod http;
pub mod inference;
pub mod model;
pub mod npy;
pub mod pooling;
pub mod startup;
pub mod telemetry;
pub mod tokenize;
