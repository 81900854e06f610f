//! Prometheus metrics through `prometheus-client`: one registry per service,
//! families labelled by route and by model runtime (the encoder, each ONNX
//! head), rendered in the OpenMetrics text format by `GET /metrics`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Latency buckets in seconds: 0.5 ms to 30 s.
pub const SECONDS: [f64; 15] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
pub const BATCH_SIZES: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
pub const TOKENS: [f64; 7] = [16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0];

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// HTTP methods kept as label values; anything else counts as `other`, so a
/// client cannot mint new time series by inventing methods.
const KNOWN_METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"];

fn seconds() -> Histogram {
    Histogram::new(SECONDS)
}
fn batch_sizes() -> Histogram {
    Histogram::new(BATCH_SIZES)
}
fn tokens() -> Histogram {
    Histogram::new(TOKENS)
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuntimeLabels {
    runtime: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub runtime: String,
    pub name: String,
    pub file: String,
    pub execution_provider: String,
    pub fingerprint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HeadLabels {
    pub name: String,
    pub kind: String,
    pub labels: String,
    /// The active version (`GET /heads/{name}`).
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PredictionLabels {
    head: String,
    label: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

/// Training buckets in seconds: 1 s to 1 h.
const TRAINING_SECONDS: [f64; 9] = [1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0];
fn training_seconds() -> Histogram {
    Histogram::new(TRAINING_SECONDS)
}

/// Every metric family of the service.
pub struct Metrics {
    registry: Registry,
    http_requests: Family<RequestLabels, Counter>,
    http_duration: HistogramFamily<RouteLabels>,
    runtime: RuntimeFamilies,
    pub model_info: Family<ModelLabels, Gauge>,
    pub head_info: Family<HeadLabels, Gauge>,
    pub ready: Gauge,
    pub worker_panics: Counter,
    pub handler_panics: Counter,
    predictions: Family<PredictionLabels, Counter>,
    trainings: Family<OutcomeLabels, Counter>,
    training_duration: HistogramFamily<OutcomeLabels>,
    pub trainings_queued: Gauge,
    pub heads_folder_errors: Counter,
    /// Connections answered 503 at `server.max_connections` (`server::serve`).
    pub refused_connections: Counter,
    /// Set at each scrape (`Metrics::observe_process`).
    resident_memory: Gauge,
    memory_limit: Gauge,
    workers_dead: Gauge,
    longest_call: Gauge<f64, std::sync::atomic::AtomicU64>,
}

#[derive(Clone)]
struct RuntimeFamilies {
    batches: Family<RuntimeLabels, Counter>,
    sequences: Family<RuntimeLabels, Counter>,
    tokens: Family<RuntimeLabels, Counter>,
    padded_tokens: Family<RuntimeLabels, Counter>,
    skipped: Family<RuntimeLabels, Counter>,
    refused: Family<RuntimeLabels, Counter>,
    queue_depth: Family<RuntimeLabels, Gauge>,
    queue_wait: HistogramFamily<RuntimeLabels>,
    inference: HistogramFamily<RuntimeLabels>,
    batch_size: HistogramFamily<RuntimeLabels>,
    batch_tokens: HistogramFamily<RuntimeLabels>,
    tokenize: HistogramFamily<RuntimeLabels>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let http_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "distilserve_http_requests",
            "HTTP requests by method, route and status",
            http_requests.clone(),
        );
        let http_duration = HistogramFamily::<RouteLabels>::new_with_constructor(seconds as fn() -> Histogram);
        registry.register(
            "distilserve_http_request_duration_seconds",
            "Time from request to response, by route",
            http_duration.clone(),
        );
        let runtime = RuntimeFamilies {
            batches: Family::default(),
            sequences: Family::default(),
            tokens: Family::default(),
            padded_tokens: Family::default(),
            skipped: Family::default(),
            refused: Family::default(),
            queue_depth: Family::default(),
            queue_wait: Family::new_with_constructor(seconds as fn() -> Histogram),
            inference: Family::new_with_constructor(seconds as fn() -> Histogram),
            batch_size: Family::new_with_constructor(batch_sizes as fn() -> Histogram),
            batch_tokens: Family::new_with_constructor(tokens as fn() -> Histogram),
            tokenize: Family::new_with_constructor(seconds as fn() -> Histogram),
        };
        let r = &runtime;
        registry.register("distilserve_batches", "Model calls made", r.batches.clone());
        registry.register("distilserve_sequences", "Sequences computed", r.sequences.clone());
        registry.register("distilserve_tokens", "Real tokens computed, padding excluded", r.tokens.clone());
        registry.register(
            "distilserve_padded_tokens",
            "Tokens fed to the model, padding included",
            r.padded_tokens.clone(),
        );
        registry.register(
            "distilserve_skipped_sequences",
            "Sequences dropped uncomputed: caller gone or deadline passed",
            r.skipped.clone(),
        );
        registry.register("distilserve_refused_requests", "Requests refused with 503: queue full", r.refused.clone());
        registry.register("distilserve_queue_depth", "Sequences waiting in the inference queue", r.queue_depth.clone());
        registry.register(
            "distilserve_queue_wait_seconds",
            "Time a sequence waited in the queue",
            r.queue_wait.clone(),
        );
        registry.register("distilserve_inference_seconds", "Duration of one model call", r.inference.clone());
        registry.register("distilserve_batch_size", "Sequences per model call", r.batch_size.clone());
        registry.register("distilserve_batch_tokens", "Padded tokens per model call", r.batch_tokens.clone());
        registry.register("distilserve_tokenize_seconds", "Time to tokenize one request's texts", r.tokenize.clone());
        let model_info = Family::<ModelLabels, Gauge>::default();
        registry.register("distilserve_model_info", "Model runtimes: the encoder and ONNX heads", model_info.clone());
        let head_info = Family::<HeadLabels, Gauge>::default();
        registry.register("distilserve_head_info", "Heads being served", head_info.clone());
        let ready = Gauge::default();
        registry.register("distilserve_ready", "1 when ready for traffic", ready.clone());
        let resident_memory = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of this process (Linux /proc/self/status VmRSS)",
            resident_memory.clone(),
        );
        let memory_limit = Gauge::default();
        registry.register(
            "distilserve_memory_limit_bytes",
            "The container's memory limit (cgroup memory.max or memory.limit_in_bytes); 0 when there is none",
            memory_limit.clone(),
        );
        let workers_dead = Gauge::default();
        registry.register(
            "distilserve_workers_dead",
            "Encoder inference workers that died (liveness fails: restart the process)",
            workers_dead.clone(),
        );
        let longest_call = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "distilserve_worker_longest_call_seconds",
            "How long the encoder worker longest inside its current model call has been there (0 when idle); \
             over server.worker_stuck_ms liveness fails",
            longest_call.clone(),
        );
        let worker_panics = Counter::default();
        registry.register(
            "distilserve_worker_panics",
            "Inference worker panics (the batch failed with 500, the worker was restarted)",
            worker_panics.clone(),
        );
        let handler_panics = Counter::default();
        registry.register(
            "distilserve_handler_panics",
            "HTTP handlers that panicked (answered 500 `internal`)",
            handler_panics.clone(),
        );
        let predictions = Family::<PredictionLabels, Counter>::default();
        registry.register(
            "distilserve_head_predictions",
            "Predictions served by head and top label: a shift in their mix is a simple drift signal",
            predictions.clone(),
        );
        let trainings = Family::<OutcomeLabels, Counter>::default();
        registry.register("distilserve_head_trainings", "Head trainings over the API, by outcome", trainings.clone());
        let training_duration =
            HistogramFamily::<OutcomeLabels>::new_with_constructor(training_seconds as fn() -> Histogram);
        registry.register(
            "distilserve_head_training_seconds",
            "From the start of a head's training to ready or failed",
            training_duration.clone(),
        );
        // Both outcomes exist at 0 from the start: increase() and alerts on
        // them then see the first failure, not only the second.
        for outcome in ["ready", "failed"] {
            let labels = OutcomeLabels { outcome: outcome.into() };
            let _ = trainings.get_or_create(&labels);
            let _ = training_duration.get_or_create(&labels);
        }
        let trainings_queued = Gauge::default();
        registry.register(
            "distilserve_head_trainings_waiting",
            "Head trainings accepted and not finished (training or queued)",
            trainings_queued.clone(),
        );
        let heads_folder_errors = Counter::default();
        registry.register(
            "distilserve_heads_folder_errors",
            "Looks at the heads folder that failed (listing it); the heads loaded kept serving",
            heads_folder_errors.clone(),
        );
        let refused_connections = Counter::default();
        registry.register(
            "distilserve_refused_connections",
            "Connections answered 503 (429 under /tei) at once because server.max_connections were open",
            refused_connections.clone(),
        );
        Metrics {
            heads_folder_errors,
            refused_connections,
            registry,
            http_requests,
            http_duration,
            runtime,
            model_info,
            head_info,
            ready,
            worker_panics,
            handler_panics,
            predictions,
            trainings,
            training_duration,
            trainings_queued,
            resident_memory,
            memory_limit,
            workers_dead,
            longest_call,
        }
    }

    /// Readings taken at scrape time: this process's resident memory against
    /// its container's limit (the alert "memory near the limit" divides one
    /// by the other), and the encoder workers' health as liveness sees it.
    pub fn observe_process(&self, workers_dead: usize, longest_call: Duration) {
        if let Some(rss) = resident_memory_bytes() {
            self.resident_memory.set(rss as i64);
        }
        if let Some(limit) = memory_limit_bytes() {
            self.memory_limit.set(limit as i64);
        }
        self.workers_dead.set(workers_dead as i64);
        self.longest_call.set(longest_call.as_secs_f64());
    }

    /// Counts one prediction of `head` whose top label is `label`.
    pub fn record_prediction(&self, head: &str, label: &str) {
        self.predictions.get_or_create(&PredictionLabels { head: head.to_string(), label: label.to_string() }).inc();
    }

    /// Counts a finished head training (`outcome`: `ready` or `failed`).
    pub fn record_training(&self, outcome: &str, elapsed: Duration) {
        let labels = OutcomeLabels { outcome: outcome.to_string() };
        self.trainings.get_or_create(&labels).inc();
        self.training_duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    /// Records one HTTP answer.
    pub fn record_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let method = if KNOWN_METHODS.contains(&method) { method } else { "other" };
        self.http_requests
            .get_or_create(&RequestLabels { method: method.to_string(), route: route.to_string(), status })
            .inc();
        self.http_duration.get_or_create(&RouteLabels { route: route.to_string() }).observe(elapsed.as_secs_f64());
    }

    /// The metrics of one model runtime's queue, labelled `runtime="<name>"`.
    pub fn runtime(&self, name: &str) -> RuntimeMetrics {
        let l = RuntimeLabels { runtime: name.to_string() };
        let f = &self.runtime;
        RuntimeMetrics {
            batches: f.batches.get_or_create(&l).clone(),
            sequences: f.sequences.get_or_create(&l).clone(),
            tokens: f.tokens.get_or_create(&l).clone(),
            padded_tokens: f.padded_tokens.get_or_create(&l).clone(),
            skipped: f.skipped.get_or_create(&l).clone(),
            refused: f.refused.get_or_create(&l).clone(),
            queue_depth: f.queue_depth.get_or_create(&l).clone(),
            queue_wait: f.queue_wait.get_or_create(&l).clone(),
            inference: f.inference.get_or_create(&l).clone(),
            batch_size: f.batch_size.get_or_create(&l).clone(),
            batch_tokens: f.batch_tokens.get_or_create(&l).clone(),
            tokenize: f.tokenize.get_or_create(&l).clone(),
            worker_panics: self.worker_panics.clone(),
        }
    }

    /// The whole registry in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

pub fn resident_memory_bytes() -> Option<u64> {
    // In kB whatever the page size.
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The memory limit of the cgroup this process runs in (v2, then v1); None
/// when there is none ("max", or v1's near-2^63 "unlimited").
pub fn memory_limit_bytes() -> Option<u64> {
    ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| text.trim().parse::<u64>().ok())
        .filter(|&limit| limit < 1 << 60)
}

/// One runtime's queue metrics: handles shared with the registry (or
/// standalone, for queues that no service exposes).
#[derive(Clone)]
pub struct RuntimeMetrics {
    pub batches: Counter,
    pub sequences: Counter,
    pub tokens: Counter,
    pub padded_tokens: Counter,
    pub skipped: Counter,
    pub refused: Counter,
    pub queue_depth: Gauge,
    pub queue_wait: Histogram,
    pub inference: Histogram,
    pub batch_size: Histogram,
    pub batch_tokens: Histogram,
    pub tokenize: Histogram,
    pub worker_panics: Counter,
}

impl RuntimeMetrics {
    /// Metrics that no registry renders (tests, batch jobs).
    pub fn unregistered() -> RuntimeMetrics {
        Metrics::new().runtime("unregistered")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_with_runtime_and_method_labels() {
        let m = Metrics::new();
        let encoder = m.runtime("encoder");
        encoder.batches.inc();
        encoder.queue_wait.observe(0.002);
        m.runtime("head:sst2").batches.inc_by(2);
        m.record_request("XMETHOD1", "/embed", 405, Duration::from_millis(1));
        let out = m.render();
        assert!(out.contains("distilserve_batches_total{runtime=\"encoder\"} 1\n"), "{out}");
        assert!(out.contains("distilserve_batches_total{runtime=\"head:sst2\"} 2\n"), "{out}");
        assert!(out.contains("distilserve_queue_wait_seconds_count{runtime=\"encoder\"} 1\n"), "{out}");
        assert!(out.contains("method=\"other\""), "{out}");
        assert!(!out.contains("XMETHOD1"), "{out}");
        assert_eq!(out.matches("# TYPE distilserve_batches counter").count(), 1, "one family, two series");
    }
}
