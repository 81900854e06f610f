//! distilserve: an HTTP service for the last hidden states of BERT-family
//! encoders (DistilBERT, BERT, MiniLM) through ONNX Runtime.
//!
//! Where things are: `config` (settings), `model` (ONNX Runtime, forward pass),
//! `tokenize`, `batching` (queue and workers), `inference` (text to rows),
//! `pooling`, `npy`, `data` (labelled data sets), `features` (batch
//! extraction and cache), `heads` (logistic and ONNX classifiers), `http` (routes, types, errors), `startup` (serve and
//! drain), `telemetry` (logs), `cli` and `commands` (extract, train,
//! evaluate), `report`.

#![forbid(unsafe_code)]

pub mod batching;
pub mod cli;
pub mod commands;
pub mod config;
pub mod data;
pub mod features;
pub mod heads;
pub mod http;
pub mod inference;
pub mod metrics;
pub mod model;
pub mod npy;
pub mod pooling;
pub mod report;
pub mod startup;
pub mod telemetry;
pub mod tokenize;
