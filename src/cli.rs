//! Command-line interface. Every setting of `config/default.toml` has a flag on
//! `serve`; flags override environment variables, which override files.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{ConfigError, ExecutionProvider, LogFormat, OptimizationLevel, Overrides, PoolingChoice, Settings};
use crate::features::FeaturePooling;

#[derive(Debug, Parser)]
#[command(
    name = "distilserve",
    version,
    about = "Serve last hidden states and classification heads of BERT-family encoders"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service.
    Serve(Box<SettingsArgs>),
    /// Extract pooled last hidden states of a data set to X.npy / y.npy per split.
    Extract(Box<ExtractArgs>),
    /// Train a logistic-regression head on extracted features and write it to disk.
    Train(Box<TrainArgs>),
    /// Evaluate a head on a split against baselines; write a JSON report and a confusion matrix picture.
    Evaluate(Box<EvaluateArgs>),
    /// Print the OpenAPI document of the HTTP API (`make openapi` writes openapi.yaml).
    Openapi {
        /// Output format.
        #[arg(long, value_enum, default_value = "yaml")]
        format: SpecFormat,
    },
    /// Print the effective settings (JSON) after files, environment and flags.
    Config(Box<SettingsArgs>),
    /// Exit 0 when the local service answers 200 on a health route (container HEALTHCHECK; no curl needed).
    Healthcheck(Box<HealthcheckArgs>),
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Route to ask: /health/ready (serving) or /health/live (process up).
    #[arg(long, default_value = "/health/ready")]
    pub path: String,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Port and API key come from these settings, like `serve`'s.
    #[command(flatten)]
    pub settings: SettingsArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SpecFormat {
    Yaml,
    Json,
}

#[derive(Debug, Args)]
pub struct ExtractArgs {
    /// Data set folder (<split>.jsonl or .csv with text and label).
    #[arg(long)]
    pub data: PathBuf,
    /// Split to extract (repeatable); default: train, validation and test where present.
    #[arg(long = "split")]
    pub splits: Vec<String>,
    /// Pooling of the last hidden states.
    #[arg(long, value_enum, default_value = "cls")]
    pub pooling: FeaturePooling,
    /// Output folder: <out>/<split>/X.npy (float32) and y.npy (int64), <out>/meta.json.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Head name; its [heads.<name>] settings apply, flags below override them.
    #[arg(long)]
    pub head: String,
    /// Data set folder.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Pooling, or auto to choose it on the validation split.
    #[arg(long, value_enum)]
    pub pooling: Option<PoolingChoice>,
    /// L2 penalties to try, comma-separated (chosen on the validation split).
    #[arg(long, value_delimiter = ',')]
    pub alphas: Option<Vec<f64>>,
    /// Optimiser iterations per fit.
    #[arg(long)]
    pub max_iterations: Option<u64>,
    /// Cross-validation folds on train for the search (0: use the validation split).
    #[arg(long)]
    pub cv_folds: Option<usize>,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// Head to evaluate (read from classify.heads_dir).
    #[arg(long)]
    pub head: String,
    /// Data set folder; default: the one the head was trained on.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Split to evaluate on.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Folder for <head>-<split>.json and <head>-<split>-confusion.svg.
    #[arg(long, default_value = "reports")]
    pub report_dir: PathBuf,
    /// Pre-trained ONNX heads to compare (repeatable); default: every configured onnx head.
    #[arg(long)]
    pub compare: Vec<String>,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

/// Settings flags. Each names its config key; the environment variable is
/// DISTILSERVE_<SECTION>__<KEY> (e.g. DISTILSERVE_SERVER__PORT). Per-head
/// settings ([heads.<name>] tables) come from files or the environment
/// (DISTILSERVE_HEADS__SENTIMENT__TRAIN_ON_STARTUP=false).
#[derive(Debug, Args, Default)]
pub struct SettingsArgs {
    /// Extra TOML settings file, applied over the defaults (config/default.toml).
    #[arg(long, env = "DISTILSERVE_CONFIG")]
    pub config: Option<PathBuf>,

    /// server.host: address to listen on.
    #[arg(long, help_heading = "Server")]
    pub host: Option<String>,
    /// server.port: port to listen on (0 picks a free one).
    #[arg(long, help_heading = "Server")]
    pub port: Option<u16>,
    /// server.max_body_bytes: largest request body (413 above).
    #[arg(long, help_heading = "Server")]
    pub max_body_bytes: Option<usize>,
    /// server.request_timeout_ms: deadline per request, queueing included (504 past it).
    #[arg(long, help_heading = "Server")]
    pub request_timeout_ms: Option<u64>,
    /// server.header_read_timeout_ms: time a client has to send its headers.
    #[arg(long, help_heading = "Server")]
    pub header_read_timeout_ms: Option<u64>,
    /// server.body_read_timeout_ms: time a client has to send its body (408 after).
    #[arg(long, help_heading = "Server")]
    pub body_read_timeout_ms: Option<u64>,
    /// server.docs_dir: Swagger UI assets served at /docs.
    #[arg(long, help_heading = "Server")]
    pub docs_dir: Option<PathBuf>,
    /// server.shutdown_grace_ms: after SIGTERM, keep accepting (readiness 503) this long.
    #[arg(long, help_heading = "Server")]
    pub shutdown_grace_ms: Option<u64>,
    /// server.shutdown_timeout_ms: how long in-flight requests may finish after SIGTERM.
    #[arg(long, help_heading = "Server")]
    pub shutdown_timeout_ms: Option<u64>,

    /// model.dir: folder with model.onnx, tokenizer.json, config.json, manifest.json.
    #[arg(long, help_heading = "Model")]
    pub model_dir: Option<PathBuf>,
    /// model.file: ONNX file inside the folder (model.onnx, model.opt.onnx or model.int8.onnx).
    #[arg(long, help_heading = "Model")]
    pub model_file: Option<String>,
    /// model.name: name reported by /info (default: from the manifest).
    #[arg(long, help_heading = "Model")]
    pub model_name: Option<String>,
    /// model.onnxruntime_library: path of libonnxruntime.so.
    #[arg(long, help_heading = "Model")]
    pub onnxruntime_library: Option<String>,
    /// model.execution_provider: cpu or cuda.
    #[arg(long, value_enum, help_heading = "Model")]
    pub execution_provider: Option<ExecutionProvider>,
    /// model.cuda_device_id: GPU to use with cuda.
    #[arg(long, help_heading = "Model")]
    pub cuda_device_id: Option<i32>,
    /// model.allow_cpu_fallback: run on the CPU when CUDA cannot be registered.
    #[arg(long, help_heading = "Model")]
    pub allow_cpu_fallback: Option<bool>,
    /// model.intra_threads: ONNX Runtime threads per session (0 = all cores).
    #[arg(long, help_heading = "Model")]
    pub intra_threads: Option<usize>,
    /// model.intra_op_spinning: ONNX Runtime threads spin between calls (true/false).
    #[arg(long, help_heading = "Model")]
    pub intra_op_spinning: Option<bool>,
    /// model.inter_threads: ONNX Runtime inter-op threads.
    #[arg(long, help_heading = "Model")]
    pub inter_threads: Option<usize>,
    /// model.optimization_level: graph optimisation level.
    #[arg(long, value_enum, help_heading = "Model")]
    pub optimization_level: Option<OptimizationLevel>,
    /// model.max_tokens: longest input in tokens (0 = the model's maximum).
    #[arg(long, help_heading = "Model")]
    pub max_tokens: Option<usize>,
    /// model.verify_checksums: check model files against manifest.json at startup.
    #[arg(long, help_heading = "Model")]
    pub verify_checksums: Option<bool>,

    /// batching.max_batch_size: most sequences per model call.
    #[arg(long, help_heading = "Batching")]
    pub max_batch_size: Option<usize>,
    /// batching.max_batch_tokens: most padded tokens per model call.
    #[arg(long, help_heading = "Batching")]
    pub max_batch_tokens: Option<usize>,
    /// batching.max_wait_ms: how long to wait for a batch to fill.
    #[arg(long, help_heading = "Batching")]
    pub max_wait_ms: Option<u64>,
    /// batching.queue_capacity: sequences allowed to wait (503 beyond).
    #[arg(long, help_heading = "Batching")]
    pub queue_capacity: Option<usize>,
    /// batching.sessions: model sessions running at once.
    #[arg(long, help_heading = "Batching")]
    pub sessions: Option<usize>,
    /// batching.call_overhead_tokens: cost of one extra model call, in tokens (length grouping).
    #[arg(long, help_heading = "Batching")]
    pub call_overhead_tokens: Option<usize>,

    /// limits.max_inputs: most texts per request (413 beyond).
    #[arg(long, help_heading = "Limits")]
    pub max_inputs: Option<usize>,

    /// classify.serve: heads served by /classify, comma-separated (each needs a [heads.<name>] table).
    #[arg(long, value_delimiter = ',', help_heading = "Classification")]
    pub heads: Option<Vec<String>>,
    /// classify.default_head: head used when a request names none.
    #[arg(long, help_heading = "Classification")]
    pub default_head: Option<String>,
    /// classify.heads_dir: folder of head files.
    #[arg(long, help_heading = "Classification")]
    pub heads_dir: Option<PathBuf>,
    /// classify.feature_cache_dir: folder of the feature cache.
    #[arg(long, help_heading = "Classification")]
    pub feature_cache_dir: Option<PathBuf>,

    /// security.api_key: bearer key required on inference routes (prefer DISTILSERVE_SECURITY__API_KEY).
    #[arg(long, help_heading = "Security", hide_env_values = true)]
    pub api_key: Option<String>,
    /// security.protect_operational_routes: require the key on health, metrics, info and the spec too.
    #[arg(long, help_heading = "Security")]
    pub protect_operational_routes: Option<bool>,
    /// security.cors_allowed_origins: origins allowed by CORS, comma-separated ("*" for any).
    #[arg(long, value_delimiter = ',', help_heading = "Security")]
    pub cors_allowed_origins: Option<Vec<String>>,

    /// logging.format: json, text or auto.
    #[arg(long, value_enum, help_heading = "Logging")]
    pub log_format: Option<LogFormat>,
    /// logging.filter: tracing filter, e.g. "info,ort=warn".
    #[arg(long, help_heading = "Logging")]
    pub log_filter: Option<String>,
}

impl SettingsArgs {
    pub fn overrides(&self) -> Overrides {
        let mut o = Overrides::default();
        o.set("server.host", self.host.clone())
            .set("server.port", self.port)
            .set("server.max_body_bytes", self.max_body_bytes)
            .set("server.request_timeout_ms", self.request_timeout_ms)
            .set("server.header_read_timeout_ms", self.header_read_timeout_ms)
            .set("server.body_read_timeout_ms", self.body_read_timeout_ms)
            .set("server.docs_dir", self.docs_dir.clone())
            .set("server.shutdown_grace_ms", self.shutdown_grace_ms)
            .set("server.shutdown_timeout_ms", self.shutdown_timeout_ms)
            .set("model.dir", self.model_dir.clone())
            .set("model.file", self.model_file.clone())
            .set("model.name", self.model_name.clone())
            .set("model.onnxruntime_library", self.onnxruntime_library.clone())
            .set("model.execution_provider", self.execution_provider)
            .set("model.cuda_device_id", self.cuda_device_id)
            .set("model.allow_cpu_fallback", self.allow_cpu_fallback)
            .set("model.intra_threads", self.intra_threads)
            .set("model.inter_threads", self.inter_threads)
            .set("model.intra_op_spinning", self.intra_op_spinning)
            .set("model.optimization_level", self.optimization_level)
            .set("model.max_tokens", self.max_tokens)
            .set("model.verify_checksums", self.verify_checksums)
            .set("batching.max_batch_size", self.max_batch_size)
            .set("batching.max_batch_tokens", self.max_batch_tokens)
            .set("batching.max_wait_ms", self.max_wait_ms)
            .set("batching.queue_capacity", self.queue_capacity)
            .set("batching.sessions", self.sessions)
            .set("batching.call_overhead_tokens", self.call_overhead_tokens)
            .set("limits.max_inputs", self.max_inputs)
            .set(
                "classify.serve",
                self.heads.as_ref().map(|h| h.iter().filter(|n| !n.is_empty()).cloned().collect::<Vec<_>>()),
            )
            .set("classify.default_head", self.default_head.clone())
            .set("classify.heads_dir", self.heads_dir.clone())
            .set("classify.feature_cache_dir", self.feature_cache_dir.clone())
            .set("security.api_key", self.api_key.clone())
            .set("security.protect_operational_routes", self.protect_operational_routes)
            .set("security.cors_allowed_origins", self.cors_allowed_origins.clone())
            .set("logging.format", self.log_format)
            .set("logging.filter", self.log_filter.clone());
        o
    }

    pub fn settings(&self) -> Result<Settings, ConfigError> {
        Settings::load(self.config.as_deref(), &self.overrides())
    }
}
