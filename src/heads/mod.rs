//! Classification heads: logistic regressions trained on the encoder's pooled
//! hidden states, and pre-trained ONNX classifiers. This file holds the
//! [`Head`] type; the rest, one concern a file:
//!
//! - `registry`: the heads being served (those still training at startup are
//!   "pending"), kept up with the heads folder that replicas may share;
//! - `loading`: head files and ONNX classifiers read and checked at startup
//!   and on reload;
//! - `classify`: the `/classify` pipeline;
//! - `logistic`: the head file, probabilities, explanations;
//! - `search`: training (the search over feature sets and alphas), its fits
//!   by `solver`;
//!   `multi_label`: one-vs-rest heads; `training`: from settings and a data
//!   set to a saved head; `scores`: accuracy, F1, calibration, McNemar;
//! - `store`: versions, rollback, delete, locks across replicas;
//!   `upload`: examples sent over the API and their split; `jobs`:
//!   trainings over the API;
//! - `onnx`: pre-trained ONNX classifiers.

pub mod classify;
pub mod jobs;
pub mod loading;
pub mod logistic;
pub mod multi_label;
pub mod onnx;
pub mod record;
pub mod registry;
pub mod scores;
pub mod search;
mod solver;
pub mod store;
pub mod training;
pub mod upload;

use crate::config::HeadKind;
use logistic::LogisticHead;
use onnx::OnnxHead;

pub use classify::{classify, classify_served, Classified, ClassifyInput, Decision, Explained, ABSTAIN};
pub use loading::{load_configured, load_logistic, load_logistic_for_encoder, load_one, StartupHeads};
pub use registry::{GraphPhase, GraphState, Heads, Lookup, SyncReport};

pub enum Head {
    Logistic(LogisticHead),
    Onnx(OnnxHead),
}

impl Head {
    pub fn name(&self) -> &str {
        match self {
            Head::Logistic(h) => &h.name,
            Head::Onnx(h) => &h.name,
        }
    }

    pub fn labels(&self) -> &[String] {
        match self {
            Head::Logistic(h) => &h.labels,
            Head::Onnx(h) => &h.labels,
        }
    }

    /// See `HeadSummary::version`.
    pub fn version(&self) -> String {
        match self {
            Head::Logistic(h) => h.checksum.chars().take(16).collect(),
            Head::Onnx(h) => h.inference.info.fingerprint.chars().take(16).collect(),
        }
    }

    /// The model whose outputs the head reads: the graph of the service's
    /// encoder it was trained on for a logistic head (it is served only
    /// there), its own model for an ONNX classifier.
    pub fn encoder_fingerprint(&self) -> &str {
        match self {
            Head::Logistic(h) => &h.encoder.fingerprint,
            Head::Onnx(h) => &h.inference.info.fingerprint,
        }
    }

    /// The head's own threshold below which `/classify` abstains.
    pub fn min_probability(&self) -> Option<f32> {
        match self {
            Head::Logistic(h) => h.min_probability,
            Head::Onnx(_) => None,
        }
    }

    pub fn kind(&self) -> HeadKind {
        match self {
            Head::Logistic(_) => HeadKind::Logistic,
            Head::Onnx(_) => HeadKind::Onnx,
        }
    }
}
