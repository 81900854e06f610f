//! Every model runtime the service runs, owned in one place: the encoder's
//! graph (`model.file`, `/embed`'s), the graph new logistic heads are trained
//! on where `classify.model_file` names another file, and the ONNX classifier
//! heads, each an [`Inference`] (sessions, queue, worker threads). A logistic
//! head reaches the graph it was trained on by that graph's fingerprint
//! ([`Runtimes::graph`]). Each is labelled in `/metrics` (`runtime="encoder"`,
//! `runtime="heads_graph"`, `runtime="head:<name>"`) and drained by
//! [`Runtimes::shutdown`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::batching::BatcherConfig;
use crate::inference::Inference;
use crate::metrics::{Metrics, ModelLabels};
use crate::model::{Model, ModelInfo};

pub const ENCODER: &str = "encoder";
pub const HEADS_GRAPH: &str = "heads_graph";

pub struct Runtimes {
    pub encoder: Inference,
    /// The graph new logistic heads are trained on, when it is another file
    /// than the encoder's (`classify.model_file`).
    heads_graph: Option<Inference>,
    /// Set when the heads' graph was closed, no head being served on it
    /// ([`Runtimes::close_unused_heads_graph`]): the encoder stands in.
    heads_graph_closed: AtomicBool,
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
        heads_graph: Option<Model>,
        batching: BatcherConfig,
        metrics: Arc<Metrics>,
    ) -> Runtimes {
        let inference = Inference::start(encoder, batching.clone(), metrics.runtime(ENCODER));
        let mut runtimes = Self::with_encoder(inference, batching, metrics);
        if let Some(model) = heads_graph {
            runtimes.set_model_info(HEADS_GRAPH, &model.info);
            let batching = runtimes.batching.clone();
            runtimes.heads_graph = Some(Inference::start(model, batching, runtimes.metrics.runtime(HEADS_GRAPH)));
        }
        runtimes
    }

    /// The graph new logistic heads are trained on (at startup, over the API):
    /// the heads' own graph while it is open, else the encoder's.
    pub fn training_graph(&self) -> &Inference {
        self.open_heads_graph().unwrap_or(&self.encoder)
    }

    fn open_heads_graph(&self) -> Option<&Inference> {
        self.heads_graph.as_ref().filter(|_| !self.heads_graph_closed.load(Ordering::Acquire))
    }

    /// The open graph whose fingerprint is `fingerprint` (a logistic head's
    /// `encoder.fingerprint`: the graph it was trained on).
    pub fn graph(&self, fingerprint: &str) -> Option<&Inference> {
        self.graphs().map(|(_, runtime)| runtime).find(|runtime| runtime.info.fingerprint == fingerprint)
    }

    /// The runtime a logistic head trained on the graph `fingerprint` is
    /// served on. Loading admits only heads of an open graph
    /// ([`crate::heads::check_served`]), so the training graph standing in for
    /// an unknown one is never reached by a served head.
    pub fn graph_for(&self, fingerprint: &str) -> &Inference {
        self.graph(fingerprint).unwrap_or_else(|| self.training_graph())
    }

    /// Every open graph with its metric label: the encoder's, then the heads'
    /// own if any.
    pub fn graphs(&self) -> impl Iterator<Item = (&'static str, &Inference)> {
        std::iter::once((ENCODER, &self.encoder)).chain(self.open_heads_graph().map(|r| (HEADS_GRAPH, r)))
    }

    /// Closes the heads' own graph (its sessions and their memory) when
    /// `served`, the graph fingerprints of the logistic heads being served,
    /// has some and none is its: every head's comparison chose the exact
    /// graph, so the runtime would sit idle (all-mpnet-base-v2's int8 graph:
    /// 85 MiB). Heads trained later then use the encoder's. With no head
    /// served yet it stays open, for heads trained over the API. Returns the
    /// closed file.
    pub fn close_unused_heads_graph<'a>(&self, served: impl Iterator<Item = &'a str>) -> Option<String> {
        let runtime = self.open_heads_graph()?;
        let served: Vec<&str> = served.collect();
        if served.is_empty() || served.contains(&runtime.info.fingerprint.as_str()) {
            return None;
        }
        // Routed to the encoder from here on; what was queued is finished.
        self.heads_graph_closed.store(true, Ordering::Release);
        runtime.shutdown();
        let labels = self.model_labels.lock().unwrap_or_else(|p| p.into_inner()).remove(HEADS_GRAPH);
        if let Some(labels) = labels {
            self.metrics.model_info.remove(&labels);
        }
        Some(runtime.info.file.clone())
    }

    /// Around an encoder runtime already started (tests and fuzzing use one
    /// over a fake [`crate::forward::ForwardPass`]).
    pub fn with_encoder(inference: Inference, batching: BatcherConfig, metrics: Arc<Metrics>) -> Runtimes {
        let runtimes = Runtimes {
            encoder: inference,
            heads_graph: None,
            heads_graph_closed: AtomicBool::new(false),
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
            self.graphs().map(|(n, r)| (n.to_string(), r)).chain(classifiers.iter().map(|(n, r)| (n.clone(), &**r)))
        {
            match runtime.warm_up() {
                Ok(calls) => {
                    tracing::info!(runtime = %name, calls, ms = started.elapsed().as_millis() as u64, "warmed up")
                }
                Err(e) => tracing::warn!(runtime = %name, error = %e, "warm-up failed; serving cold"),
            }
        }
    }

    /// The graphs' workers together (liveness): dead ones, and the longest
    /// call in progress.
    pub fn health(&self) -> crate::batching::WorkerHealth {
        self.graphs().map(|(_, r)| r.health()).fold(
            crate::batching::WorkerHealth { dead: 0, longest_call: std::time::Duration::ZERO },
            |a, b| crate::batching::WorkerHealth {
                dead: a.dead + b.dead,
                longest_call: a.longest_call.max(b.longest_call),
            },
        )
    }

    /// Closes every queue and waits until the work already queued is done.
    pub fn shutdown(&self) {
        for (_, encoder) in self.graphs() {
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
