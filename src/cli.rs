//! Command-line interface. Most settings of `config/default.toml` have a flag
//! (docs/configuration.md lists which); flags override environment variables,
//! which override files.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{
    ConfigError, ExecutionProvider, LogFormat, OptimizationLevel, Overrides, PoolingChoice, Settings, TrainingOptions,
};
use crate::pooling::FeaturePooling;

impl Cli {
    /// The command line of this process, each setting's flag's help ending
    /// in its default and its environment variable ([`annotated`]).
    pub fn from_args() -> Cli {
        Self::parse_annotated(std::env::args_os())
    }

    pub fn parse_annotated<I: IntoIterator<Item = T>, T: Into<std::ffi::OsString> + Clone>(args: I) -> Cli {
        use clap::{CommandFactory, FromArgMatches};
        let matches = annotated(Cli::command()).get_matches_from(args);
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

/// Each settings flag's help (`section.key: ...`, see [`SettingsArgs`]) with
/// `[default: ...] [env: DISTILSERVE_SECTION__KEY]` appended, from the
/// compiled-in defaults: `--help` then says all that docs/configuration.md says
/// of a flag's setting.
fn annotated(command: clap::Command) -> clap::Command {
    let defaults = serde_json::to_value(Settings::defaults()).expect("settings serialise");
    command.mut_subcommands(|sub| {
        sub.mut_args(|arg| {
            let Some(help) = arg.get_help().map(|h| h.to_string()) else { return arg };
            let Some((key, _)) = help.split_once(": ").filter(|(k, _)| k.contains('.') && !k.contains(' ')) else {
                return arg;
            };
            let default = key.split('.').try_fold(&defaults, |v, part| v.get(part)).map(|v| match v {
                serde_json::Value::String(s) => format!("{s:?}"),
                other => other.to_string(),
            });
            let env = format!("DISTILSERVE_{}", key.replace('.', "__").to_uppercase());
            let default = default.map(|d| format!(" [default: {d}]")).unwrap_or_default();
            arg.help(format!("{help}{default} [env: {env}]"))
        })
    })
}

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
    /// Pooling of the hidden states.
    #[arg(long, value_enum, default_value = "cls")]
    pub pooling: FeaturePooling,
    /// Hidden states pooled: "-1" (the last), "-2", "mean(-4,-3,-2,-1)" or
    /// "concat(-2,-1)" (0 is the embeddings' output; negative from the end).
    #[arg(long, default_value = "-1", value_parser = parse_layers, allow_hyphen_values = true)]
    pub layers: crate::config::LayerSpec,
    /// Output folder: <out>/<split>/X.npy (float32) and y.npy (int64), <out>/meta.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Compute the features with a running deployment instead of the local
    /// model: its base URL (a load balancer in front of replicas), e.g.
    /// http://distilserve:8080. Resumable: run again after an interruption.
    #[arg(long)]
    pub remote: Option<String>,
    /// Bearer key of the deployment (its security.api_key), with --remote.
    #[arg(long, env = "DISTILSERVE_REMOTE_API_KEY", hide_env_values = true)]
    pub remote_api_key: Option<String>,
    /// Requests in flight at once, with --remote.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Texts per request, with --remote (at most the deployment's limits.max_inputs).
    #[arg(long, default_value_t = 128)]
    pub shard_size: usize,
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
    /// Train on features already extracted (`extract`, local or --remote:
    /// <dir>/<split>/X.npy, y.npy, meta.json) instead of running the model:
    /// their pooling and hidden states are the head's, alpha is searched.
    #[arg(long, conflicts_with_all = ["data", "pooling"])]
    pub features: Option<PathBuf>,
    /// Pooling, or auto to let the search choose it (see --cv-folds).
    #[arg(long, value_enum)]
    pub pooling: Option<PoolingChoice>,
    /// L2 penalties to try, comma-separated (chosen by the search, see --cv-folds).
    #[arg(long, value_delimiter = ',')]
    pub alphas: Option<Vec<f64>>,
    /// Optimiser iterations per fit.
    #[arg(long)]
    pub max_iterations: Option<u64>,
    /// Folds of the cross-validation over train+validation that scores each
    /// pooling and alpha by accuracy (0: fit on train, choose on validation).
    #[arg(long)]
    pub cv_folds: Option<usize>,
    #[command(flatten)]
    pub settings: SettingsArgs,
}

impl TrainArgs {
    /// The flags given, as training options: each goes over the head's table.
    pub fn training_options(&self) -> TrainingOptions {
        TrainingOptions {
            pooling: self.pooling,
            alphas: self.alphas.clone(),
            max_iterations: self.max_iterations,
            cv_folds: self.cv_folds,
            ..TrainingOptions::default()
        }
    }
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
#[derive(Debug, Args, Default, serde::Serialize)]
pub struct SettingsArgs {
    /// Extra TOML settings file, applied over the defaults (config/default.toml).
    #[arg(long, env = "DISTILSERVE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// server.host: address to listen on.
    #[arg(long, help_heading = "Server")]
    #[serde(rename = "server.host")]
    pub host: Option<String>,
    /// server.port: port to listen on (0 picks a free one).
    #[arg(long, help_heading = "Server")]
    #[serde(rename = "server.port")]
    pub port: Option<u16>,
    /// server.max_body_bytes: largest request body (413 above).
    #[arg(long, help_heading = "Server")]
    #[serde(rename = "server.max_body_bytes")]
    pub max_body_bytes: Option<usize>,
    /// server.request_timeout_ms: deadline per request, queueing included (504 past it).
    #[arg(long, help_heading = "Server")]
    #[serde(rename = "server.request_timeout_ms")]
    pub request_timeout_ms: Option<u64>,
    /// server.header_read_timeout_ms: time a client has to send its headers.
    #[arg(long, help_heading = "Server")]
    #[serde(rename = "server.header_read_timeout_ms")]
    pub header_read_timeout_ms: Option<u64>,
    /// server.body_read_timeout_ms: time a client has to send its body (408 after).
    #[arg(long, help_heading = "Server")]
    #[serde(rename = "server.body_read_timeout_ms")]
    pub body_read_timeout_ms: Option<u64>,
    /// server.docs_dir: Swagger UI assets served at /docs.
    #[arg(long, help_heading = "Server")]
    #[serde(rename = "server.docs_dir")]
    pub docs_dir: Option<PathBuf>,
    /// server.shutdown_grace_ms: after SIGTERM, keep accepting (readiness 503) this long.
    #[arg(long, help_heading = "Server")]
    #[serde(rename = "server.shutdown_grace_ms")]
    pub shutdown_grace_ms: Option<u64>,
    /// server.shutdown_timeout_ms: how long in-flight requests may finish after SIGTERM.
    #[arg(long, help_heading = "Server")]
    #[serde(rename = "server.shutdown_timeout_ms")]
    pub shutdown_timeout_ms: Option<u64>,

    /// server.write_timeout_ms: a client that reads nothing of its response for this long is cut off.
    #[arg(long, help_heading = "Server")]
    #[serde(rename = "server.write_timeout_ms")]
    pub write_timeout_ms: Option<u64>,
    /// server.max_connections: connections served at once (past it a new one is answered 503 overloaded and closed).
    #[arg(long, help_heading = "Server")]
    #[serde(rename = "server.max_connections")]
    pub max_connections: Option<usize>,
    /// server.private_address: second listener for /metrics, /info and admin routes (e.g. 127.0.0.1:9090).
    #[arg(long, help_heading = "Server")]
    #[serde(rename = "server.private_address")]
    pub private_address: Option<String>,
    /// server.worker_stuck_ms: liveness fails when a model call runs longer than this.
    #[arg(long, help_heading = "Server")]
    #[serde(rename = "server.worker_stuck_ms")]
    pub worker_stuck_ms: Option<u64>,

    /// model.dir: folder with model.onnx, tokenizer.json, config.json, manifest.json.
    #[arg(long, help_heading = "Model")]
    #[serde(rename = "model.dir")]
    pub model_dir: Option<PathBuf>,
    /// model.file: ONNX file inside the folder (model.onnx, model.opt.onnx or model.int8.onnx).
    #[arg(long, help_heading = "Model")]
    #[serde(rename = "model.file")]
    pub model_file: Option<String>,
    /// model.name: name reported by /info (default: from the manifest).
    #[arg(long, help_heading = "Model")]
    #[serde(rename = "model.name")]
    pub model_name: Option<String>,
    /// model.onnxruntime_library: path of libonnxruntime.so.
    #[arg(long, help_heading = "Model")]
    #[serde(rename = "model.onnxruntime_library")]
    pub onnxruntime_library: Option<String>,
    /// model.execution_provider: cpu or cuda.
    #[arg(long, value_enum, help_heading = "Model")]
    #[serde(rename = "model.execution_provider")]
    pub execution_provider: Option<ExecutionProvider>,
    /// model.cuda_device_id: GPU to use with cuda.
    #[arg(long, help_heading = "Model")]
    #[serde(rename = "model.cuda_device_id")]
    pub cuda_device_id: Option<i32>,
    /// model.allow_cpu_fallback: run on the CPU when CUDA cannot be registered.
    #[arg(long, help_heading = "Model")]
    #[serde(rename = "model.allow_cpu_fallback")]
    pub allow_cpu_fallback: Option<bool>,
    /// model.cuda_reduced_precision: TF32 matrix products and the fast layer norm on CUDA.
    #[arg(long, help_heading = "Model")]
    #[serde(rename = "model.cuda_reduced_precision")]
    pub cuda_reduced_precision: Option<bool>,
    /// model.intra_threads: ONNX Runtime threads per session (0 = all cores).
    #[arg(long, help_heading = "Model")]
    #[serde(rename = "model.intra_threads")]
    pub intra_threads: Option<usize>,
    /// model.intra_op_spinning: ONNX Runtime threads spin between calls (true/false).
    #[arg(long, help_heading = "Model")]
    #[serde(rename = "model.intra_op_spinning")]
    pub intra_op_spinning: Option<bool>,
    /// model.inter_threads: ONNX Runtime inter-op threads.
    #[arg(long, help_heading = "Model")]
    #[serde(rename = "model.inter_threads")]
    pub inter_threads: Option<usize>,
    /// model.optimization_level: graph optimisation level.
    #[arg(long, value_enum, help_heading = "Model")]
    #[serde(rename = "model.optimization_level")]
    pub optimization_level: Option<OptimizationLevel>,
    /// model.max_tokens: longest input in tokens (0 = the model's maximum).
    #[arg(long, help_heading = "Model")]
    #[serde(rename = "model.max_tokens")]
    pub max_tokens: Option<usize>,
    /// model.cpu_memory_arena: keep ONNX Runtime's CPU memory arena (true/false).
    #[arg(long, help_heading = "Model")]
    #[serde(rename = "model.cpu_memory_arena")]
    pub cpu_memory_arena: Option<bool>,
    /// model.warm_up: run a few model calls of typical shapes before reporting ready (true/false).
    #[arg(long, help_heading = "Model")]
    #[serde(rename = "model.warm_up")]
    pub warm_up: Option<bool>,
    /// model.verify_checksums: check model files against manifest.json at startup.
    #[arg(long, help_heading = "Model")]
    #[serde(rename = "model.verify_checksums")]
    pub verify_checksums: Option<bool>,

    /// batching.max_batch_size: most sequences per model call.
    #[arg(long, help_heading = "Batching")]
    #[serde(rename = "batching.max_batch_size")]
    pub max_batch_size: Option<usize>,
    /// batching.max_batch_tokens: most padded tokens per model call.
    #[arg(long, help_heading = "Batching")]
    #[serde(rename = "batching.max_batch_tokens")]
    pub max_batch_tokens: Option<usize>,
    /// batching.max_batch_attention_cells: most batch size x longest² per model call.
    #[arg(long, help_heading = "Batching")]
    #[serde(rename = "batching.max_batch_attention_cells")]
    pub max_batch_attention_cells: Option<usize>,
    /// batching.max_wait_ms: how long to wait for a batch to fill.
    #[arg(long, help_heading = "Batching")]
    #[serde(rename = "batching.max_wait_ms")]
    pub max_wait_ms: Option<u64>,
    /// batching.queue_capacity: sequences allowed to wait (503 beyond).
    #[arg(long, help_heading = "Batching")]
    #[serde(rename = "batching.queue_capacity")]
    pub queue_capacity: Option<usize>,
    /// batching.queue_capacity_tokens: tokens allowed to wait (503 beyond).
    #[arg(long, help_heading = "Batching")]
    #[serde(rename = "batching.queue_capacity_tokens")]
    pub queue_capacity_tokens: Option<usize>,
    /// batching.sessions: model sessions running at once.
    #[arg(long, help_heading = "Batching")]
    #[serde(rename = "batching.sessions")]
    pub sessions: Option<usize>,
    /// batching.call_overhead_tokens: cost of one extra model call, in tokens (length grouping).
    #[arg(long, help_heading = "Batching")]
    #[serde(rename = "batching.call_overhead_tokens")]
    pub call_overhead_tokens: Option<usize>,
    /// batching.max_queue_wait_ms: most queue time a request is to wait; admitted behind 3/4 to 9/10 of it (503 beyond).
    #[arg(long, help_heading = "Batching")]
    #[serde(rename = "batching.max_queue_wait_ms")]
    pub max_queue_wait_ms: Option<u64>,

    /// limits.max_inputs: most texts per request (413 beyond).
    #[arg(long, help_heading = "Limits")]
    #[serde(rename = "limits.max_inputs")]
    pub max_inputs: Option<usize>,

    /// limits.max_request_tokens: most tokens per request after truncation (413 beyond).
    #[arg(long, help_heading = "Limits")]
    #[serde(rename = "limits.max_request_tokens")]
    pub max_request_tokens: Option<usize>,

    /// classify.serve: heads served by /classify, comma-separated (each needs a [heads.<name>] table).
    #[arg(long, value_delimiter = ',', help_heading = "Classification")]
    #[serde(rename = "classify.serve")]
    pub heads: Option<Vec<String>>,
    /// classify.default_head: head used when a request names none.
    #[arg(long, help_heading = "Classification")]
    #[serde(rename = "classify.default_head")]
    pub default_head: Option<String>,
    /// classify.heads_dir: folder of head files.
    #[arg(long, help_heading = "Classification")]
    #[serde(rename = "classify.heads_dir")]
    pub heads_dir: Option<PathBuf>,
    /// classify.model_file: graph in model.dir the logistic heads run on (empty: model.file).
    #[arg(long, help_heading = "Classification")]
    #[serde(rename = "classify.model_file")]
    pub classify_model_file: Option<String>,
    /// classify.feature_cache_dir: folder of the feature cache.
    #[arg(long, help_heading = "Classification")]
    #[serde(rename = "classify.feature_cache_dir")]
    pub feature_cache_dir: Option<PathBuf>,

    /// security.api_key: bearer key required on inference routes (prefer DISTILSERVE_SECURITY__API_KEY).
    #[arg(long, help_heading = "Security", hide_env_values = true)]
    #[serde(rename = "security.api_key")]
    pub api_key: Option<String>,
    /// security.admin_key: bearer key for head management routes (off without one; prefer DISTILSERVE_SECURITY__ADMIN_KEY).
    #[arg(long, help_heading = "Security", hide_env_values = true)]
    #[serde(rename = "security.admin_key")]
    pub admin_key: Option<String>,
    /// security.protect_operational_routes: require the key on health, metrics, info and the spec too.
    #[arg(long, help_heading = "Security")]
    #[serde(rename = "security.protect_operational_routes")]
    pub protect_operational_routes: Option<bool>,
    /// security.cors_allowed_origins: origins allowed by CORS, comma-separated ("*" for any).
    #[arg(long, value_delimiter = ',', help_heading = "Security")]
    #[serde(rename = "security.cors_allowed_origins")]
    pub cors_allowed_origins: Option<Vec<String>>,

    /// logging.format: json, text or auto.
    #[arg(long, value_enum, help_heading = "Logging")]
    #[serde(rename = "logging.format")]
    pub log_format: Option<LogFormat>,
    /// logging.filter: tracing filter, e.g. "info,ort=warn".
    #[arg(long, help_heading = "Logging")]
    #[serde(rename = "logging.filter")]
    pub log_filter: Option<String>,
    /// logging.otlp_endpoint: export trace spans over OTLP/HTTP, e.g. http://collector:4318/v1/traces.
    #[arg(long, help_heading = "Logging")]
    #[serde(rename = "logging.otlp_endpoint")]
    pub otlp_endpoint: Option<String>,
}

impl SettingsArgs {
    /// The flags given, as settings overrides: each flag names its key once,
    /// in its `serde(rename)`; flags not given serialise as null and are skipped.
    pub fn overrides(&self) -> Overrides {
        let mut o = Overrides::default();
        let serde_json::Value::Object(flags) = serde_json::to_value(self).expect("flags serialise") else {
            unreachable!("a struct serialises as a map")
        };
        for (key, mut value) in flags.into_iter().filter(|(_, v)| !v.is_null()) {
            if let serde_json::Value::Array(items) = &mut value {
                // `--heads ""` serves no head: an empty item is no item.
                items.retain(|item| item.as_str() != Some(""));
            }
            o.set(&key, Some(value));
        }
        o
    }

    pub fn settings(&self) -> Result<Settings, ConfigError> {
        Settings::load(self.config.as_deref(), &self.overrides())
    }
}

fn parse_layers(text: &str) -> Result<crate::config::LayerSpec, String> {
    crate::config::LayerSpec::try_from(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_names_a_setting_that_exists() {
        let defaults = serde_json::to_value(Settings::defaults()).unwrap();
        let serde_json::Value::Object(flags) = serde_json::to_value(SettingsArgs::default()).unwrap() else {
            panic!("a map")
        };
        assert!(flags.len() >= 30, "{} flags", flags.len());
        for key in flags.keys() {
            let (section, name) = key.split_once('.').unwrap_or_else(|| panic!("{key} is not section.key"));
            assert!(defaults[section].get(name).is_some(), "flag for {key}, which is not a setting");
        }
    }

    /// `--help` gives each setting's default and variable beside its flag.
    #[test]
    fn the_help_of_a_settings_flag_says_its_default_and_variable() {
        use clap::CommandFactory;
        let mut command = annotated(Cli::command());
        let help = command.find_subcommand_mut("serve").unwrap().render_long_help().to_string();
        assert!(
            help.contains(
                "server.port: port to listen on (0 picks a free one) [default: 8080] [env: DISTILSERVE_SERVER__PORT]"
            ),
            "{help}"
        );
        assert!(help.contains("[default: \"auto\"] [env: DISTILSERVE_LOGGING__FORMAT]"), "{help}");
        // Not a setting: left as it was.
        let config = help.lines().find(|l| l.contains("Extra TOML settings file")).unwrap();
        assert!(!config.contains("[default:"), "{config}");
    }

    #[test]
    fn flags_override_their_settings() {
        let args =
            ["distilserve", "serve", "--port", "9009", "--heads", "", "--default-head", "", "--log-format", "text"];
        let cli = Cli::parse_from(args);
        let Command::Serve(args) = cli.command else { panic!("serve") };
        let settings = args.settings().unwrap();
        assert_eq!(settings.server.port, 9009);
        assert!(settings.classify.serve.is_empty());
        assert_eq!(settings.logging.format, LogFormat::Text);
    }
}
