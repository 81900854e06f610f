//! Typed settings: `config/default.toml` (compiled in), then an optional file
//! (`--config` / `DISTILSERVE_CONFIG`), then `DISTILSERVE_<SECTION>__<KEY>`
//! environment variables, then command-line flags. Errors name the key.
//! The bottom of the module graph: nothing here imports another module of the crate.
//! The names and choices settings are made of are in `domain.rs`, the
//! environment's other variables in `variables.rs`, a head's training
//! options, whatever the door, and their bounds in `training_options.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The defaults, identical to `config/default.toml` in the repository.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");
pub const ENV_PREFIX: &str = "DISTILSERVE_";

mod domain;
mod training_options;
mod variables;

pub use domain::*;
pub use training_options::*;
use variables::check_variables;
pub use variables::OTHER_VARIABLES;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub model: ModelSettings,
    pub batching: BatchingSettings,
    pub limits: LimitSettings,
    pub logging: LoggingSettings,
    pub classify: ClassifySettings,
    #[serde(default)]
    pub heads: BTreeMap<String, HeadSettings>,
    pub security: SecuritySettings,
    pub openai: OpenAiSettings,
    pub training: TrainingSettings,
}

/// Heads created over the API (`POST /heads`): what an upload may hold, how
/// the head is chosen, and how its training shares the encoder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainingSettings {
    pub max_upload_bytes: usize,
    pub max_examples: usize,
    pub max_labels: usize,
    pub min_examples_per_label: usize,
    pub max_text_bytes: usize,
    pub max_queued: usize,
    pub test_fraction: f64,
    pub cv_folds: usize,
    pub alphas: Vec<f64>,
    pub layers: Vec<LayerSpec>,
    pub max_iterations: u64,
    pub batch_size: usize,
    pub batch_tokens: usize,
    pub search_threads: usize,
    pub keep_versions: usize,
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecuritySettings {
    pub api_key: String,
    pub admin_key: String,
    pub protect_operational_routes: bool,
    pub cors_allowed_origins: Vec<String>,
}

impl std::fmt::Debug for SecuritySettings {
    // The key never reaches a log line or an error message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecuritySettings")
            .field("api_key", &if self.api_key.is_empty() { "" } else { "<set>" })
            .field("admin_key", &if self.admin_key.is_empty() { "" } else { "<set>" })
            .field("protect_operational_routes", &self.protect_operational_routes)
            .field("cors_allowed_origins", &self.cors_allowed_origins)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OpenAiSettings {
    pub pooling: SentencePooling,
    pub normalize: bool,
}

/// One vector per text: the pooled choices of `/embed` (`pooling::Pooling` without `none`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SentencePooling {
    Cls,
    Mean,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClassifySettings {
    pub serve: Vec<String>,
    pub default_head: String,
    pub heads_dir: PathBuf,
    pub feature_cache_dir: PathBuf,
    pub watch_interval_ms: u64,
    pub model_file: String,
    /// Sessions of the heads' graph's runtime; 0: chosen by the graph
    /// (`startup::heads_graph_parallelism`).
    pub model_sessions: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeadSettings {
    pub kind: HeadKind,
    // logistic
    #[serde(default)]
    pub data: Option<PathBuf>,
    #[serde(default = "default_pooling_choice")]
    pub pooling: PoolingChoice,
    /// Hidden states tried, each with every pooling (see [`LayerSpec`]).
    #[serde(default = "default_layer_options")]
    pub layers: Vec<LayerSpec>,
    #[serde(default = "default_alphas")]
    pub alphas: Vec<f64>,
    #[serde(default = "default_max_iterations")]
    pub max_iterations: u64,
    /// Folds of the cross-validation over train+validation that chooses pooling
    /// and alpha by accuracy; 0 chooses on the validation split instead.
    #[serde(default = "default_cv_folds")]
    pub cv_folds: usize,
    /// Label weights of the training rows (`POST /heads`' `class_weight` by name).
    #[serde(default)]
    pub class_weight: LabelWeighting,
    #[serde(default)]
    pub train_on_startup: bool,
    // onnx
    #[serde(default)]
    pub model_dir: Option<PathBuf>,
    #[serde(default = "default_model_file")]
    pub model_file: String,
    /// The model's label names mapped to ours; empty: the model's own labels.
    #[serde(default)]
    pub label_map: BTreeMap<String, String>,
}

fn default_pooling_choice() -> PoolingChoice {
    PoolingChoice::Auto
}
fn default_alphas() -> Vec<f64> {
    vec![1.0, 10.0, 100.0, 1000.0, 10000.0]
}
fn default_cv_folds() -> usize {
    3
}
fn default_max_iterations() -> u64 {
    300
}
fn default_model_file() -> String {
    "model.onnx".into()
}

impl HeadSettings {
    /// The table's training options, each one given (`distilserve train`'s flags go over them).
    pub fn training_options(&self) -> TrainingOptions {
        TrainingOptions {
            pooling: Some(self.pooling),
            layers: Some(self.layers.clone()),
            alphas: Some(self.alphas.clone()),
            cv_folds: Some(self.cv_folds),
            max_iterations: Some(self.max_iterations),
            class_weight: Some(self.class_weight.into()),
            ..TrainingOptions::default()
        }
    }

    /// A logistic head on `data` with the default search.
    pub fn logistic(data: PathBuf) -> Self {
        HeadSettings {
            kind: HeadKind::Logistic,
            data: Some(data),
            pooling: PoolingChoice::Auto,
            layers: default_layer_options(),
            alphas: default_alphas(),
            max_iterations: default_max_iterations(),
            cv_folds: default_cv_folds(),
            class_weight: LabelWeighting::None,
            train_on_startup: false,
            model_dir: None,
            model_file: default_model_file(),
            label_map: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub max_body_bytes: usize,
    pub request_timeout_ms: u64,
    pub header_read_timeout_ms: u64,
    pub body_read_timeout_ms: u64,
    pub docs_dir: PathBuf,
    pub shutdown_grace_ms: u64,
    pub shutdown_timeout_ms: u64,
    pub worker_stuck_ms: u64,
    pub write_timeout_ms: u64,
    pub max_connections: usize,
    pub private_address: String,
    pub http_threads: usize,
    pub http_threads_yield_to_model: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    pub dir: PathBuf,
    pub file: String,
    pub name: String,
    pub onnxruntime_library: String,
    pub execution_provider: ExecutionProvider,
    pub cuda_device_id: i32,
    pub allow_cpu_fallback: bool,
    pub cuda_reduced_precision: bool,
    pub intra_threads: usize,
    pub inter_threads: usize,
    pub intra_op_spinning: bool,
    pub optimization_level: OptimizationLevel,
    pub max_tokens: usize,
    pub verify_checksums: bool,
    pub cpu_memory_arena: bool,
    pub share_weights: bool,
    pub warm_up: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    Cpu,
    Cuda,
}

impl ExecutionProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "cpu",
            ExecutionProvider::Cuda => "cuda",
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizationLevel {
    Disable,
    Basic,
    Extended,
    All,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BatchingSettings {
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    pub max_batch_attention_cells: usize,
    pub max_wait_ms: u64,
    pub queue_capacity: usize,
    pub queue_capacity_tokens: usize,
    pub sessions: usize,
    pub call_overhead_tokens: usize,
    pub max_queue_wait_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub max_inputs: usize,
    pub max_request_tokens: usize,
    /// Most inputs and tokens of one request on the routes that answer one
    /// pooled vector per text (OpenAI's, TEI's), computed in parts of the two above.
    pub max_pooled_inputs: usize,
    pub max_pooled_tokens: usize,
    pub window_stride_tokens: usize,
    /// Most bytes of one answer, as priced before any work (`cost.rs`).
    pub max_response_bytes: u64,
    /// Most bytes of hidden states and answer one request may hold at its peak.
    pub max_request_memory_bytes: u64,
    /// Overload refusals answered at once per second; past it each waits its
    /// turn, up to a second (`http::overload`). 0: all at once.
    pub immediate_refusals_per_second: u32,
}

impl LimitSettings {
    /// Word pieces between the starts of two windows of a long text, for a
    /// model of `max_tokens`: the setting, or half a window when it is 0.
    pub fn window_stride(&self, max_tokens: usize) -> usize {
        let window = max_tokens.saturating_sub(2).max(1);
        if self.window_stride_tokens == 0 {
            (window / 2).max(1)
        } else {
            self.window_stride_tokens.min(window)
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoggingSettings {
    pub format: LogFormat,
    pub filter: String,
    pub otlp_endpoint: String,
    pub service_name: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
    Auto,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Parse(String),
    #[error("configuration: `{key}` {problem}")]
    Invalid { key: String, problem: String },
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        // Name the key as written in the TOML file (environment keys arrive
        // upper-case) and where the bad value came from; keep every error.
        let messages: Vec<String> = e
            .into_iter()
            .map(|e| {
                let key = e.path.iter().map(|p| p.to_lowercase()).collect::<Vec<_>>().join(".");
                let source = e.metadata.as_ref().map(|m| m.name.to_string()).unwrap_or_default();
                match (key.is_empty(), source.is_empty()) {
                    (true, _) => e.kind.to_string(),
                    (false, true) => format!("`{key}`: {}", e.kind),
                    (false, false) => format!("`{key}` (from {source}): {}", e.kind),
                }
            })
            .collect();
        ConfigError::Parse(messages.join("; "))
    }
}

/// Overrides from the command line, as a nested `section.key -> value` map.
#[derive(Debug, Default, Clone)]
pub struct Overrides(serde_json::Map<String, serde_json::Value>);

impl Overrides {
    /// Sets `section.key` when `value` is present.
    pub fn set<T: Serialize>(&mut self, dotted_key: &str, value: Option<T>) -> &mut Self {
        if let Some(value) = value {
            let (section, key) = dotted_key.split_once('.').expect("section.key");
            let value = serde_json::to_value(value).expect("serializable override");
            let entry =
                self.0.entry(section.to_string()).or_insert_with(|| serde_json::Value::Object(Default::default()));
            entry.as_object_mut().expect("sections are objects").insert(key.to_string(), value);
        }
        self
    }
}

impl Settings {
    /// The graph the logistic heads run on (`classify.model_file`), when it is
    /// another file than the one `/embed` serves: the same model folder and
    /// runtime settings, its own file. None: the heads share `/embed`'s encoder.
    /// `auto` is the export's quantised graph where the folder has one, on
    /// the CPU only: ONNX Runtime's CUDA provider has no kernel for its
    /// dynamically quantised products (MatMulInteger of uint8 activations with
    /// per-channel zero points, DynamicQuantizeLinear), so on CUDA they would
    /// run on the host's CPU, between copies, instead of on the GPU.
    pub fn heads_model(&self) -> Option<ModelSettings> {
        let file = match self.classify.model_file.as_str() {
            "" => return None,
            AUTO_HEADS_GRAPH if self.model.execution_provider == ExecutionProvider::Cuda => return None,
            AUTO_HEADS_GRAPH if self.model.dir.join(QUANTISED_GRAPH).is_file() => QUANTISED_GRAPH,
            AUTO_HEADS_GRAPH => return None,
            file => file,
        };
        (file != self.model.file).then(|| ModelSettings { file: file.to_string(), ..self.model.clone() })
    }

    /// Defaults, then `file`, then the process environment, then `overrides`.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Settings, ConfigError> {
        check_variables(std::env::vars_os().filter_map(|(name, _)| name.into_string().ok()))?;
        Self::load_with_env(file, overrides, Env::prefixed(ENV_PREFIX))
    }

    fn load_with_env(file: Option<&Path>, overrides: &Overrides, env: Env) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError::Parse(format!("config file {} not found", file.display())));
            }
            figment = figment.merge(Toml::file(file));
        }
        // Only DISTILSERVE_SECTION__KEY variables are settings; others with the same
        // prefix (DISTILSERVE_CONFIG, DISTILSERVE_CACHE for the set-up scripts) are not.
        let env = env.filter(|key| key.as_str().contains("__")).split("__");
        figment = figment.merge(env).merge(Serialized::defaults(serde_json::Value::Object(overrides.0.clone())));
        let settings: Settings = figment.extract()?;
        settings.validate()?;
        Ok(settings)
    }

    /// The defaults alone, as `config/default.toml` gives them.
    pub fn defaults() -> Settings {
        Self::load_with_env(None, &Overrides::default(), Env::prefixed("DISTILSERVE_UNUSED_PREFIX_"))
            .expect("the compiled-in defaults are valid")
    }

    fn validate(&self) -> Result<(), ConfigError> {
        fn positive(key: &'static str, v: usize) -> Result<(), ConfigError> {
            if v == 0 {
                return Err(ConfigError::Invalid { key: key.into(), problem: "must be at least 1".into() });
            }
            Ok(())
        }
        positive("server.max_body_bytes", self.server.max_body_bytes)?;
        positive("server.request_timeout_ms", self.server.request_timeout_ms as usize)?;
        positive("server.header_read_timeout_ms", self.server.header_read_timeout_ms as usize)?;
        positive("server.body_read_timeout_ms", self.server.body_read_timeout_ms as usize)?;
        positive("server.write_timeout_ms", self.server.write_timeout_ms as usize)?;
        positive("server.max_connections", self.server.max_connections)?;
        if !self.server.private_address.is_empty()
            && self.server.private_address.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(ConfigError::Invalid {
                key: "server.private_address".into(),
                problem: format!(
                    "{:?} is not an address with a port, e.g. \"127.0.0.1:9090\" (or empty: no second listener)",
                    self.server.private_address
                ),
            });
        }
        positive("batching.max_batch_size", self.batching.max_batch_size)?;
        positive("batching.max_batch_tokens", self.batching.max_batch_tokens)?;
        positive("batching.queue_capacity", self.batching.queue_capacity)?;
        positive("batching.sessions", self.batching.sessions)?;
        positive("limits.max_inputs", self.limits.max_inputs)?;
        positive("limits.max_pooled_inputs", self.limits.max_pooled_inputs)?;
        positive("limits.max_pooled_tokens", self.limits.max_pooled_tokens)?;
        positive("limits.max_request_tokens", self.limits.max_request_tokens)?;
        positive("limits.max_response_bytes", self.limits.max_response_bytes as usize)?;
        positive("limits.max_request_memory_bytes", self.limits.max_request_memory_bytes as usize)?;
        positive("batching.max_batch_attention_cells", self.batching.max_batch_attention_cells)?;
        positive("training.max_upload_bytes", self.training.max_upload_bytes)?;
        positive("training.max_examples", self.training.max_examples)?;
        positive("training.max_text_bytes", self.training.max_text_bytes)?;
        positive("training.max_queued", self.training.max_queued)?;
        positive("training.batch_size", self.training.batch_size)?;
        positive("training.batch_tokens", self.training.batch_tokens)?;
        positive("training.keep_versions", self.training.keep_versions)?;
        if self.training.max_labels < 2 {
            return Err(ConfigError::Invalid {
                key: "training.max_labels".into(),
                problem: "must be at least 2".into(),
            });
        }
        // The defaults of `POST /heads`: resolved as an upload without options is.
        TrainingOptions::default().resolve(&self.training, Examples::Upload).map_err(|e| ConfigError::Invalid {
            key: format!("training.{}", e.option),
            problem: format!("(a default of POST /heads): {}", e.problem),
        })?;
        if self.training.min_examples_per_label < self.training.cv_folds + 1 {
            return Err(ConfigError::Invalid {
                key: "training.min_examples_per_label".into(),
                problem: format!(
                    "must be more than training.cv_folds ({}): each label needs a held-out example and one per fold",
                    self.training.cv_folds
                ),
            });
        }
        if self.batching.queue_capacity_tokens < self.limits.max_request_tokens {
            return Err(ConfigError::Invalid {
                key: "batching.queue_capacity_tokens".into(),
                problem: format!(
                    "({}) must be at least limits.max_request_tokens ({}): a request that passes the limit must fit the queue",
                    self.batching.queue_capacity_tokens, self.limits.max_request_tokens
                ),
            });
        }
        if self.model.file.contains('/') || self.model.file.contains("..") {
            return Err(ConfigError::Invalid {
                key: "model.file".into(),
                problem: format!("must be a file name inside model.dir, got {:?}", self.model.file),
            });
        }
        for name in &self.classify.serve {
            if !self.heads.contains_key(name) {
                return Err(ConfigError::Invalid {
                    key: "classify.serve".into(),
                    problem: format!("names head {name:?}, which has no [heads.{name}] table"),
                });
            }
        }
        if !self.classify.default_head.is_empty() && !self.classify.serve.contains(&self.classify.default_head) {
            return Err(ConfigError::Invalid {
                key: "classify.default_head".into(),
                problem: format!(
                    "{:?} is not one of classify.serve {:?}",
                    self.classify.default_head, self.classify.serve
                ),
            });
        }
        for (name, head) in &self.heads {
            if let Err(invalid) = HeadName::parse(name) {
                return Err(ConfigError::Invalid { key: "heads".into(), problem: invalid.to_string() });
            }
            let missing = match head.kind {
                HeadKind::Logistic if head.data.is_none() => Some("data"),
                HeadKind::Onnx if head.model_dir.is_none() => Some("model_dir"),
                _ => None,
            };
            if let Some(field) = missing {
                return Err(ConfigError::Invalid {
                    key: "heads".into(),
                    problem: format!("heads.{name}.{field} is required for a head of kind {:?}", head.kind),
                });
            }
            if let Err(e) = head.training_options().resolve(&self.training, Examples::DataSet) {
                return Err(ConfigError::Invalid { key: format!("heads.{name}.{}", e.option), problem: e.problem });
            }
        }
        for origin in &self.security.cors_allowed_origins {
            if origin != "*" && axum::http::HeaderValue::from_str(origin).is_err() {
                return Err(ConfigError::Invalid {
                    key: "security.cors_allowed_origins".into(),
                    problem: format!("{origin:?} is not a valid origin"),
                });
            }
        }
        if self.model.max_tokens != 0 && self.model.max_tokens < 2 {
            return Err(ConfigError::Invalid {
                key: "model.max_tokens".into(),
                problem: "must be 0 (the model's maximum) or at least 2".into(),
            });
        }
        if self.model.max_tokens > self.batching.max_batch_tokens {
            return Err(ConfigError::Invalid {
                key: "batching.max_batch_tokens".into(),
                problem: format!(
                    "({}) must be at least model.max_tokens ({})",
                    self.batching.max_batch_tokens, self.model.max_tokens
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> Env {
        // figment's Env reads the real environment; tests use a unique prefix so
        // they do not interfere with each other or with the developer's shell.
        let prefix = format!("DSTEST{}_", rand::random::<u32>());
        for (k, v) in vars {
            std::env::set_var(format!("{prefix}{k}"), v);
        }
        Env::prefixed(&prefix)
    }

    #[test]
    fn auto_makes_the_heads_graph_the_quantised_one_where_exported() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Settings::defaults();
        s.model.dir = dir.path().to_path_buf();
        assert_eq!(s.classify.model_file, "auto", "on by default");
        assert_eq!(s.heads_model(), None, "no int8 export: one graph");
        std::fs::write(dir.path().join("model.int8.onnx"), b"").unwrap();
        assert_eq!(s.heads_model().map(|m| m.file), Some("model.int8.onnx".into()));
        s.model.execution_provider = ExecutionProvider::Cuda;
        assert_eq!(s.heads_model(), None, "on CUDA: the exact graph, which the GPU runs");
        s.classify.model_file = "model.int8.onnx".into();
        assert_eq!(s.heads_model().map(|m| m.file), Some("model.int8.onnx".into()), "named: that file, even on CUDA");
        s.model.execution_provider = ExecutionProvider::Cpu;
        s.classify.model_file = "auto".into();
        s.model.file = "model.int8.onnx".into();
        assert_eq!(s.heads_model(), None, "/embed on the int8 graph already: one graph");
        s.model.file = "model.onnx".into();
        s.classify.model_file = String::new();
        assert_eq!(s.heads_model(), None, "empty: model.file");
        s.classify.model_file = "model.opt.onnx".into();
        assert_eq!(s.heads_model().map(|m| m.file), Some("model.opt.onnx".into()), "named: that file");
    }

    #[test]
    fn defaults_match_the_documented_file() {
        let s = Settings::defaults();
        assert_eq!(s.server.port, 8080);
        assert_eq!(s.model.dir, PathBuf::from("models/all-minilm-l6-v2"));
        assert_eq!(s.model.execution_provider, ExecutionProvider::Cpu);
        assert_eq!(s.logging.filter, "info,ort=warn");
    }

    #[test]
    fn environment_overrides_file_and_flags_override_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[server]\nport = 9001\nhost = \"127.0.0.1\"\n").unwrap();
        let env = env_of(&[("SERVER__PORT", "9002"), ("BATCHING__SESSIONS", "2"), ("CACHE", "/x")]);
        let s = Settings::load_with_env(Some(&file), &Overrides::default(), env.clone()).unwrap();
        assert_eq!((s.server.port, s.server.host.as_str()), (9002, "127.0.0.1"));
        assert_eq!(s.batching.sessions, 2);

        let mut flags = Overrides::default();
        flags.set("server.port", Some(9003u16)).set("model.file", None::<String>);
        let s = Settings::load_with_env(Some(&file), &flags, env).unwrap();
        assert_eq!(s.server.port, 9003);
        assert_eq!(s.model.file, "model.onnx");
    }

    #[test]
    fn errors_name_the_key() {
        let env = env_of(&[("SERVER__PORT", "eighty")]);
        let err = Settings::load_with_env(None, &Overrides::default(), env).unwrap_err().to_string();
        assert!(err.contains("server.port"), "{err}");

        let env = env_of(&[("MODEL__EXECUTION_PROVIDER", "tpu")]);
        let err = Settings::load_with_env(None, &Overrides::default(), env).unwrap_err().to_string();
        assert!(err.contains("execution_provider") && err.contains("tpu"), "{err}");

        let env = env_of(&[("SERVER__PROT", "1")]);
        let err = Settings::load_with_env(None, &Overrides::default(), env).unwrap_err().to_string();
        assert!(err.contains("prot"), "{err}");

        let mut flags = Overrides::default();
        flags.set("batching.sessions", Some(0usize));
        let err = Settings::load_with_env(None, &flags, env_of(&[])).unwrap_err().to_string();
        assert!(err.contains("batching.sessions") && err.contains("at least 1"), "{err}");
    }

    #[test]
    fn heads_are_checked_against_their_tables() {
        let mut flags = Overrides::default();
        flags.set("classify.serve", Some(vec!["sst2"]));
        let err = Settings::load_with_env(None, &flags, env_of(&[])).unwrap_err().to_string();
        assert!(err.contains("classify.serve") && err.contains("[heads.sst2]"), "{err}");

        let env = env_of(&[("HEADS__SENTIMENT__TRAIN_ON_STARTUP", "false"), ("HEADS__SENTIMENT__CV_FOLDS", "5")]);
        let s = Settings::load_with_env(None, &Overrides::default(), env).unwrap();
        assert!(!s.heads["sentiment"].train_on_startup);
        assert_eq!(s.heads["sentiment"].cv_folds, 5);

        let env = env_of(&[("HEADS__EXTRA__KIND", "onnx")]);
        let err = Settings::load_with_env(None, &Overrides::default(), env).unwrap_err().to_string();
        assert!(err.contains("heads.extra.model_dir"), "{err}");
    }

    /// A `[training]` default that `POST /heads` would refuse stops the start,
    /// naming the key and the bound, instead of failing every upload with 422.
    #[test]
    fn training_defaults_outside_the_uploads_bounds_are_refused_at_start() {
        let cases = [
            ("TRAINING__TEST_FRACTION", "0.6", "training.test_fraction", "at most 0.5"),
            ("TRAINING__CV_FOLDS", "30", "training.cv_folds", "2 to 20"),
            ("TRAINING__ALPHAS", &format!("[{}]", vec!["1.0"; 21].join(",")), "training.alphas", "1 to 20"),
            ("HEADS__SENTIMENT__CV_FOLDS", "1", "heads.sentiment.cv_folds", "2 to 20"),
        ];
        for (variable, value, key, bound) in cases {
            let err = Settings::load_with_env(None, &Overrides::default(), env_of(&[(variable, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains(bound), "{variable}={value}: {err}");
        }
        // The bounds themselves: what uploads accept, the settings accept.
        let env = env_of(&[
            ("TRAINING__TEST_FRACTION", "0.5"),
            ("TRAINING__CV_FOLDS", "20"),
            ("TRAINING__MIN_EXAMPLES_PER_LABEL", "21"),
        ]);
        let s = Settings::load_with_env(None, &Overrides::default(), env).unwrap();
        assert_eq!((s.training.test_fraction, s.training.cv_folds), (0.5, 20));
    }

    #[test]
    fn missing_config_file_is_an_error() {
        let err = Settings::load_with_env(Some(Path::new("/nonexistent/x.toml")), &Overrides::default(), env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/x.toml"), "{err}");
    }
}
