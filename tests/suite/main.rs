//! The integration suite: one test binary (linking the crate once) with a module
//! per concern. Each test starts what it needs: a real server on a loopback port
//! (`common::TestServer`), the release-like binary (`CARGO_BIN_EXE_distilserve`),
//! nginx or headless Chromium. Which module covers what: CONTRIBUTING.md, "Tests".

mod common;

mod bad_input;
mod classify;
mod cli;
mod clients;
mod compat;
mod connections;
mod deploy;
mod embed;
mod heads_api;
mod heads_folder;
mod heads_training;
mod hidden_states;
mod limits;
mod long_texts;
mod monitoring;
mod openapi;
mod playground;
mod queue;
mod security;
mod shutdown;
mod startup;
mod structure;
mod topology;
