//! The integration suite: one test binary (linking the crate once) with a module
//! per concern. Each test starts what it needs: a real server on a loopback port
//! (`common::TestServer`), the release-like binary (`CARGO_BIN_EXE_distilserve`),
//! nginx or headless Chromium. Which module covers what: README, "Tests".

mod common;

mod batching;
mod batching_queue;
mod cli_batch;
mod clients;
mod contract;
mod deploy;
mod docs;
mod e2e_default_model;
mod encoder_fixtures;
mod encoders;
mod faults;
mod hardening;
mod heads;
mod heads_api;
mod heads_folder;
mod http_classify;
mod http_compat;
mod http_embed;
mod long_texts;
mod monitoring;
mod openapi;
mod operations;
mod playground;
mod properties;
mod request_cost;
mod router;
mod security;
mod shutdown;
mod slow_clients;
mod startup_errors;
mod structure;
mod topology;
mod tracing_export;
