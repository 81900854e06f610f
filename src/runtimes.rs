//! Every model runtime the service runs, owned in one place: the encoder, the
//! logistic heads' own graph of it where `classify.model_file` names one, and
//! the ONNX classifier heads, each an [`Inference`] (sessions, queue, worker
//! threads). Each is labelled in `/metrics` (`runtime="encoder"`,
//! `runtime="heads_encoder"`, `runtime="head:<name>"`) and drained by
//! [`Runtimes::shutdown`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::batching::BatcherConfig;
use crate::inference::Inference;
use crate::metrics::{Metrics, ModelLabels};
use crate::model::{Model, ModelInfo};

pub const ENCODER: &str = "encoder";
pub const HEADS_ENCODER: &str = "heads_encoder";

pub struct Runtimes {
    pub encoder: Inference,
    /// The graph the logistic heads run on, when it is another file than the
    /// encoder's (`classify.model_file`).
    heads_encoder: Option<Inference>,
    /// Set when the heads' graph was closed, no head being served on it
    /// ([`Runtimes::close_heads_graph_if_all_fell_back`]): the encoder stands in.
    heads_encoder_closed: AtomicBool,
    classifiers: Mutex<Classifiers>,
    batching: BatcherConfig,
    metrics: Arc<Metrics>,
    /// The `distilserve_model_info` series of each runtime, to replace on reload.
    model_labels: Mutex<BTreeMap<String, ModelLabels>>,
}

#[derive(Default)]
struct Classifiers {
    /// The runtime serving each ONNX head now.
    active: BTreeMap<String, Arc<Inference>>,
    /// Runtimes replaced by a reload, kept until no request holds them.
    retired: Vec<Arc<Inference>>,
}

impl Runtimes {
    /// Starts the encoder's workers, and those of the heads' graph when given.
    pub fn start(
        encoder: Model,
        heads_encoder: Option<Model>,
        batching: BatcherConfig,
        metrics: Arc<Metrics>,
    ) -> Runtimes {
        let inference = Inference::start(encoder, batching.clone(), metrics.runtime(ENCODER));
        let mut runtimes = Self::with_encoder(inference, batching, metrics);
        if let Some(model) = heads_encoder {
            runtimes.set_model_info(HEADS_ENCODER, &model.info);
            let batching = runtimes.batching.clone();
            runtimes.heads_encoder = Some(Inference::start(model, batching, runtimes.metrics.runtime(HEADS_ENCODER)));
        }
        runtimes
    }

    /// The runtime the logistic heads are trained, evaluated and served on:
    /// the heads' own graph where configured, else the encoder.
    pub fn heads_encoder(&self) -> &Inference {
        self.open_heads_encoder().unwrap_or(&self.encoder)
    }

    fn open_heads_encoder(&self) -> Option<&Inference> {
        self.heads_encoder.as_ref().filter(|_| !self.heads_encoder_closed.load(Ordering::Acquire))
    }

    /// Closes the heads' own graph (its sessions and their memory) when
    /// `served`, the encoder fingerprints of the logistic heads being served,
    /// has some and none is its: every head fell back to the exact graph, so
    /// the runtime would sit idle (all-mpnet-base-v2's int8 graph: 415 MiB).
    /// Heads trained later then use the encoder. With no head served yet it
    /// stays open, for heads trained over the API. Returns the closed file.
    pub fn close_heads_graph_if_all_fell_back<'a>(&self, served: impl Iterator<Item = &'a str>) -> Option<String> {
        let runtime = self.open_heads_encoder()?;
        let served: Vec<&str> = served.collect();
        if served.is_empty() || served.contains(&runtime.info.fingerprint.as_str()) {
            return None;
        }
        // Routed to the encoder from here on; what was queued is finished.
        self.heads_encoder_closed.store(true, Ordering::Release);
        runtime.shutdown();
        let labels = self.model_labels.lock().unwrap_or_else(|p| p.into_inner()).remove(HEADS_ENCODER);
        if let Some(labels) = labels {
            self.metrics.model_info.remove(&labels);
        }
        Some(runtime.info.file.clone())
    }

    /// The runtime serving a logistic head trained on the graph `fingerprint`:
    /// the encoder for a head that fell back to the exact graph, else the
    /// heads' graph.
    pub fn encoder_for(&self, fingerprint: &str) -> &Inference {
        if fingerprint == self.encoder.info.fingerprint {
            &self.encoder
        } else {
            self.heads_encoder()
        }
    }

    /// Every encoder runtime: the encoder, then the heads' own graph if any.
    pub fn encoders(&self) -> impl Iterator<Item = (&'static str, &Inference)> {
        std::iter::once((ENCODER, &self.encoder)).chain(self.open_heads_encoder().map(|r| (HEADS_ENCODER, r)))
    }

    /// Around an encoder runtime already started (tests and fuzzing use one
    /// over a fake [`crate::encoder::Encoder`]).
    pub fn with_encoder(inference: Inference, batching: BatcherConfig, metrics: Arc<Metrics>) -> Runtimes {
        let runtimes = Runtimes {
            encoder: inference,
            heads_encoder: None,
            heads_encoder_closed: AtomicBool::new(false),
            classifiers: Mutex::default(),
            batching,
            metrics,
            model_labels: Mutex::default(),
        };
        runtimes.set_model_info(ENCODER, &runtimes.encoder.info);
        runtimes
    }

    /// Starts the runtime of ONNX head `head` (replacing the one it had, which
    /// finishes what it was given and stops once no request holds it).
    pub fn start_classifier(&self, head: &str, model: Model) -> Arc<Inference> {
        let label = format!("head:{head}");
        self.set_model_info(&label, &model.info);
        let inference = Arc::new(Inference::start(model, self.batching.clone(), self.metrics.runtime(&label)));
        let mut classifiers = self.classifiers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(previous) = classifiers.active.insert(head.to_string(), inference.clone()) {
            classifiers.retired.push(previous);
        }
        // Stop retired runtimes nobody uses any more (only this list holds them).
        classifiers.retired.retain(|r| {
            let unused = Arc::strong_count(r) == 1;
            if unused {
                r.shutdown();
            }
            !unused
        });
        inference
    }

    /// Warms up the encoder and every ONNX head's runtime (see
    /// [`Inference::warm_up`]); blocking. A failure is logged, not fatal.
    pub fn warm_up(&self) {
        let started = std::time::Instant::now();
        let classifiers: Vec<(String, Arc<Inference>)> = {
            let c = self.classifiers.lock().unwrap_or_else(|p| p.into_inner());
            c.active.iter().map(|(name, r)| (format!("head:{name}"), r.clone())).collect()
        };
        for (name, runtime) in
            self.encoders().map(|(n, r)| (n.to_string(), r)).chain(classifiers.iter().map(|(n, r)| (n.clone(), &**r)))
        {
            match runtime.warm_up() {
                Ok(calls) => {
                    tracing::info!(runtime = %name, calls, ms = started.elapsed().as_millis() as u64, "warmed up")
                }
                Err(e) => tracing::warn!(runtime = %name, error = %e, "warm-up failed; serving cold"),
            }
        }
    }

    /// The encoders' workers together (liveness): dead ones, and the longest
    /// call in progress.
    pub fn health(&self) -> crate::batching::WorkerHealth {
        self.encoders().map(|(_, r)| r.health()).fold(
            crate::batching::WorkerHealth { dead: 0, longest_call: std::time::Duration::ZERO },
            |a, b| crate::batching::WorkerHealth {
                dead: a.dead + b.dead,
                longest_call: a.longest_call.max(b.longest_call),
            },
        )
    }

    /// Closes every queue and waits until the work already queued is done.
    pub fn shutdown(&self) {
        for (_, encoder) in self.encoders() {
            encoder.shutdown();
        }
        let classifiers = self.classifiers.lock().unwrap_or_else(|p| p.into_inner());
        for r in classifiers.active.values().chain(&classifiers.retired) {
            r.shutdown();
        }
    }

    fn set_model_info(&self, runtime: &str, info: &ModelInfo) {
        let labels = ModelLabels {
            runtime: runtime.to_string(),
            name: info.name.clone(),
            file: info.file.clone(),
            execution_provider: info.execution_provider.clone(),
            fingerprint: info.fingerprint.clone(),
        };
        let mut known = self.model_labels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(previous) = known.insert(runtime.to_string(), labels.clone()) {
            self.metrics.model_info.remove(&previous);
        }
        self.metrics.model_info.get_or_create(&labels).set(1);
    }
}
