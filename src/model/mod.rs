//! The model runtime: the ONNX Runtime library, a model folder (manifest,
//! tokenizer, graph), sessions on the configured execution provider, and the
//! forward pass that pads a batch and returns each sequence's real-token rows
//! ([`OrtSession`], the [`ForwardPass`] the batching queue drives). Loading the
//! library itself is in [`library`].

mod library;
pub use library::{onnxruntime_library_path, ort_environment};

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session, SessionInputValue};
use ort::value::TensorRef;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::{ExecutionProvider, ModelSettings, OptimizationLevel};
use crate::forward::ForwardPass;
use crate::layers::LayerMask;
use crate::pooling::Rows;
use crate::tokenize::{TextTokenizer, Tokenized};
use crate::weights::SharedWeights;

/// `manifest.json` as written by `scripts/export_model.py`.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub name: String,
    #[serde(default = "default_task")]
    pub task: String,
    #[serde(default)]
    pub architecture: String,
    pub hidden_size: usize,
    pub max_tokens: usize,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub files: BTreeMap<String, ManifestFile>,
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    #[serde(default)]
    pub source: serde_json::Value,
    #[serde(default)]
    pub pad_token_id: i64,
}

fn default_task() -> String {
    "feature-extraction".into()
}

#[derive(Debug, Clone, Deserialize)]
pub struct ManifestFile {
    pub bytes: u64,
    pub sha256: String,
}

/// What the service knows about the loaded model; reported by `/info`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub dir: PathBuf,
    pub file: String,
    /// `feature-extraction` (output `last_hidden_state`) or `sequence-classification` (`logits`).
    pub task: String,
    pub architecture: String,
    /// Width of each output row: hidden size, or number of labels for logits.
    pub hidden_size: usize,
    pub max_tokens: usize,
    pub inputs: Vec<String>,
    pub output: String,
    /// Transformer layers, when the graph also returns every earlier layer's
    /// hidden states (`hidden_state_0` .. `hidden_state_{N-1}`); `None`: the last only.
    pub layers: Option<usize>,
    /// Id that pads a batch to its longest member (MPNet and RoBERTa: 1).
    pub pad_token_id: i64,
    pub uses_token_type_ids: bool,
    pub execution_provider: String,
    pub labels: Option<Vec<String>>,
    /// sha256 over the graph's and the tokenizer's sha256: heads trained on one
    /// model are refused by another.
    pub fingerprint: String,
    pub onnxruntime_library: PathBuf,
    /// The graph quantises activations dynamically (ONNX Runtime's
    /// `DynamicQuantizeLinear`): each call's int8 scale comes from the whole
    /// batch, so a sequence's output would depend on the sequences batched
    /// beside it (and on their padding). Such a graph runs one sequence per
    /// call ([`ModelInfo::sequences_per_call`]).
    pub quantises_per_call: bool,
}

impl ModelInfo {
    /// The most sequences one model call may hold, given the configured
    /// batch size: one on a graph that [`quantises_per_call`](Self::quantises_per_call),
    /// so that a text's answer depends on the text alone, whatever else is queued.
    pub fn sequences_per_call(&self, configured: usize) -> usize {
        if self.quantises_per_call {
            1
        } else {
            configured
        }
    }

    /// Index of the last hidden state (0 when the graph returns only the last).
    pub fn last_layer(&self) -> usize {
        self.layers.unwrap_or(0)
    }

    /// The graph output holding hidden state `index`.
    pub fn layer_output(&self, index: usize) -> String {
        if index == self.last_layer() {
            self.output.clone()
        } else {
            format!("hidden_state_{index}")
        }
    }

    /// The description of an encoder that is not an ONNX model (fakes in tests
    /// and fuzz targets): `hidden_size` wide rows, `max_tokens` per text.
    pub fn synthetic(name: &str, hidden_size: usize, max_tokens: usize) -> ModelInfo {
        ModelInfo {
            name: name.into(),
            dir: PathBuf::new(),
            file: String::new(),
            task: "feature-extraction".into(),
            architecture: "synthetic".into(),
            hidden_size,
            max_tokens,
            inputs: vec!["input_ids".into(), "attention_mask".into()],
            output: "last_hidden_state".into(),
            layers: None,
            pad_token_id: 0,
            uses_token_type_ids: false,
            execution_provider: "none".into(),
            labels: None,
            fingerprint: "0".repeat(64),
            onnxruntime_library: PathBuf::new(),
            quantises_per_call: false,
        }
    }
}

/// A loaded model: shared description and tokenizer, plus one session per worker.
pub struct Model {
    pub info: Arc<ModelInfo>,
    pub tokenizer: Arc<TextTokenizer>,
    pub sessions: Vec<OrtSession>,
}

/// One ONNX Runtime session of a model: runs padded batches.
pub struct OrtSession {
    session: Session,
    info: Arc<ModelInfo>,
    /// Asks for the default output alone (a graph with layer outputs would
    /// otherwise return them all on every call).
    default_outputs: RunOptions<HasSelectedOutputs>,
}

impl OrtSession {
    fn new(session: Session, info: Arc<ModelInfo>) -> ort::Result<OrtSession> {
        let default_outputs = RunOptions::new()?.with_outputs(OutputSelector::no_default().with(info.output.clone()));
        Ok(OrtSession { session, info, default_outputs })
    }
}

impl ForwardPass for OrtSession {
    fn encode(&mut self, batch: &[&Tokenized]) -> anyhow::Result<Vec<Rows>> {
        forward(&mut self.session, &self.info, &self.default_outputs, batch)
    }
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// Whether the ONNX file has a `DynamicQuantizeLinear` node: found as the
/// protobuf encoding of a node's `op_type` field (field 4, 21 bytes long), so
/// no ONNX parser is needed; the node list is in the main file even when the
/// weights are external.
pub fn has_dynamic_quantisation(path: &Path) -> anyhow::Result<bool> {
    const OP_TYPE: &[u8] = b"\x22\x15DynamicQuantizeLinear";
    let finder = memchr::memmem::Finder::new(OP_TYPE);
    let mut file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    // The last OP_TYPE.len() - 1 bytes of each read are kept, for a match across two reads.
    let mut kept = 0;
    loop {
        let n = file.read(&mut buf[kept..]).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            return Ok(false);
        }
        let filled = kept + n;
        if finder.find(&buf[..filled]).is_some() {
            return Ok(true);
        }
        kept = filled.min(OP_TYPE.len() - 1);
        buf.copy_within(filled - kept..filled, 0);
    }
}

fn read_manifest(dir: &Path) -> anyhow::Result<Option<Manifest>> {
    let path = dir.join("manifest.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let manifest: Manifest =
                serde_json::from_str(&text).with_context(|| format!("{} is not a valid manifest", path.display()))?;
            if manifest.format_version != 1 {
                bail!("{}: format_version {} is not supported (expected 1)", path.display(), manifest.format_version);
            }
            Ok(Some(manifest))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// sha256 of a model file: from the manifest (checked when `verify`), else computed.
fn file_digest(dir: &Path, file: &str, manifest: Option<&Manifest>, verify: bool) -> anyhow::Result<String> {
    let path = dir.join(file);
    let meta = std::fs::metadata(&path).with_context(|| {
        format!("model file {} is missing: run scripts/setup.sh or export the model", path.display())
    })?;
    match manifest.and_then(|m| m.files.get(file)) {
        Some(entry) => {
            if meta.len() != entry.bytes {
                bail!(
                    "{} has {} bytes but manifest.json says {}: the file is truncated or was replaced; re-export the model",
                    path.display(),
                    meta.len(),
                    entry.bytes
                );
            }
            if verify {
                let actual = sha256_file(&path)?;
                if actual != entry.sha256 {
                    bail!("{} does not match the sha256 in manifest.json: re-export the model", path.display());
                }
            }
            Ok(entry.sha256.clone())
        }
        None => sha256_file(&path),
    }
}

fn max_positions_from_config(dir: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value.get("max_position_embeddings")?.as_u64().map(|v| v as usize)
}

impl Model {
    /// Loads the model folder and builds `sessions` sessions, sharing their
    /// weights when there are several on the CPU. Errors are one clear
    /// sentence naming the file or setting and the fix.
    pub fn load(settings: &ModelSettings, sessions: usize) -> anyhow::Result<Model> {
        let path = settings.dir.join(&settings.file);
        let shared = if settings.share_weights
            && sessions > 1
            && settings.execution_provider == ExecutionProvider::Cpu
            && path.is_file()
        {
            ort_environment(&settings.onnxruntime_library)?;
            // A file this reader cannot follow is left to the loading, which names the problem.
            SharedWeights::plan(&[(path, sessions)]).unwrap_or_else(|_| SharedWeights::none())
        } else {
            SharedWeights::none()
        };
        Self::load_with(settings, sessions, None, &shared)
    }

    /// As [`Model::load`], with the weights `shared` planned for this graph
    /// and others, for a caller that may already have read the file through
    /// [`has_dynamic_quantisation`] (`scanned`: not read again).
    pub fn load_with(
        settings: &ModelSettings,
        sessions: usize,
        scanned: Option<bool>,
        shared: &SharedWeights,
    ) -> anyhow::Result<Model> {
        let dir = &settings.dir;
        if !dir.is_dir() {
            bail!("model folder {} does not exist: run scripts/setup.sh, or set model.dir", dir.display());
        }
        let manifest = read_manifest(dir)?;
        let model_sha = file_digest(dir, &settings.file, manifest.as_ref(), settings.verify_checksums)?;
        let tokenizer_sha = file_digest(dir, "tokenizer.json", manifest.as_ref(), settings.verify_checksums)?;
        let fingerprint = format!("{:x}", Sha256::digest(format!("{model_sha}:{tokenizer_sha}").as_bytes()));

        let env = ort_environment(&settings.onnxruntime_library)?;
        let model_path = dir.join(&settings.file);
        let mut built = Vec::with_capacity(sessions);
        let mut provider = settings.execution_provider.as_str().to_string();
        for _ in 0..sessions {
            let (session, used) = build_session(env, &model_path, settings, shared)?;
            provider = used;
            built.push(session);
        }
        let first = &built[0];

        let inputs: Vec<String> = first.inputs().iter().map(|i| i.name().to_string()).collect();
        for required in ["input_ids", "attention_mask"] {
            if !inputs.iter().any(|i| i == required) {
                bail!(
                    "{} has no `{required}` input (inputs: {inputs:?}); is it a BERT-family encoder?",
                    model_path.display()
                );
            }
        }
        for known in &inputs {
            if !matches!(known.as_str(), "input_ids" | "attention_mask" | "token_type_ids") {
                bail!("{} has an input `{known}` that distilserve cannot feed", model_path.display());
            }
        }
        for input in first.inputs() {
            if input.dtype().tensor_type() != Some(ort::value::TensorElementType::Int64) {
                bail!("{}: input `{}` is {}, expected int64", model_path.display(), input.name(), input.dtype());
            }
        }
        let outputs: Vec<&str> = first.outputs().iter().map(|o| o.name()).collect();
        let output = ["last_hidden_state", "logits"]
            .into_iter()
            .find(|n| outputs.contains(n))
            .or_else(|| outputs.first().copied())
            .ok_or_else(|| anyhow!("{} has no outputs", model_path.display()))?
            .to_string();
        let out_outlet = first.outputs().iter().find(|o| o.name() == output).expect("found above");
        let graph_width =
            out_outlet.dtype().tensor_shape().and_then(|s| s.last().copied()).filter(|&d| d > 0).map(|d| d as usize);
        let hidden_size = graph_width
            .or(manifest.as_ref().map(|m| m.hidden_size))
            .ok_or_else(|| anyhow!("cannot tell the hidden size of {}: add a manifest.json", model_path.display()))?;

        let model_max =
            manifest.as_ref().map(|m| m.max_tokens).or_else(|| max_positions_from_config(dir)).unwrap_or(512);
        let max_tokens = match settings.max_tokens {
            0 => model_max,
            n if n > model_max => {
                bail!("model.max_tokens ({n}) is larger than the model's maximum ({model_max})")
            }
            n => n,
        };
        let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"), max_tokens)?;

        let name = if !settings.name.is_empty() {
            settings.name.clone()
        } else if let Some(m) = &manifest {
            m.name.clone()
        } else {
            dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
        };
        // Every earlier layer's hidden states, when the export kept them as outputs.
        let layer_outputs = outputs.iter().filter(|o| o.starts_with("hidden_state_")).count();
        let layers = (output == "last_hidden_state"
            && layer_outputs > 0
            && layer_outputs < 64
            && (0..layer_outputs).all(|i| outputs.contains(&format!("hidden_state_{i}").as_str())))
        .then_some(layer_outputs);
        let pad_token_id = manifest.as_ref().map(|m| m.pad_token_id).unwrap_or(0);
        let task =
            if output == "logits" { "sequence-classification".to_string() } else { "feature-extraction".to_string() };
        let info = ModelInfo {
            name,
            dir: dir.clone(),
            file: settings.file.clone(),
            task,
            architecture: manifest.as_ref().map(|m| m.architecture.clone()).unwrap_or_default(),
            hidden_size,
            max_tokens,
            uses_token_type_ids: inputs.iter().any(|i| i == "token_type_ids"),
            inputs,
            output,
            layers,
            pad_token_id,
            execution_provider: provider,
            labels: manifest.as_ref().and_then(|m| m.labels.clone()),
            fingerprint,
            onnxruntime_library: library::loaded_from().unwrap_or_default(),
            quantises_per_call: match scanned {
                Some(found) => found,
                None => has_dynamic_quantisation(&model_path)?,
            },
        };
        let info = Arc::new(info);
        let mut encoders = Vec::with_capacity(built.len());
        for session in built {
            encoders.push(OrtSession::new(session, info.clone()).map_err(|e| anyhow!("{e}"))?);
        }
        Ok(Model { info, tokenizer: Arc::new(tokenizer), sessions: encoders })
    }
}

fn optimization(level: OptimizationLevel) -> GraphOptimizationLevel {
    match level {
        OptimizationLevel::Disable => GraphOptimizationLevel::Disable,
        OptimizationLevel::Basic => GraphOptimizationLevel::Level1,
        OptimizationLevel::Extended => GraphOptimizationLevel::Level2,
        OptimizationLevel::All => GraphOptimizationLevel::All,
    }
}

/// Builds one session; returns it with the execution provider actually used.
fn build_session(
    env: &ort::environment::Environment,
    path: &Path,
    settings: &ModelSettings,
    shared: &SharedWeights,
) -> anyhow::Result<(Session, String)> {
    let cpu = || -> Result<Session, String> { session_with(env, path, settings, Device::Cpu(shared)) };
    match settings.execution_provider {
        ExecutionProvider::Cpu => Ok((cpu().map_err(|e| anyhow!(e))?, "cpu".into())),
        ExecutionProvider::Cuda => match session_with(env, path, settings, Device::Cuda) {
            Ok(session) => Ok((session, "cuda".into())),
            Err(e) if settings.allow_cpu_fallback => {
                tracing::error!(
                    error = %e,
                    "CUDA execution provider unavailable: FALLING BACK TO CPU (model.allow_cpu_fallback = true)"
                );
                Ok((cpu().map_err(|e| anyhow!(e))?, "cpu".into()))
            }
            Err(e) => Err(anyhow!(
                "{e}; set model.execution_provider = \"cpu\", or model.allow_cpu_fallback = true to run on the CPU instead"
            )),
        },
    }
}

/// Where a session runs; on the CPU, with the weights it shares with others.
enum Device<'a> {
    Cpu(&'a SharedWeights),
    Cuda,
}

fn session_with(
    env: &ort::environment::Environment,
    path: &Path,
    s: &ModelSettings,
    device: Device<'_>,
) -> Result<Session, String> {
    let threads = if s.intra_threads == 0 { crate::threads::cores() } else { s.intra_threads };
    let builder = Session::builder(env).map_err(|e| e.to_string())?;
    let builder = builder
        .with_intra_threads(threads)
        .map_err(|e| e.to_string())?
        .with_inter_threads(s.inter_threads.max(1))
        .map_err(|e| e.to_string())?
        .with_intra_op_spinning(s.intra_op_spinning)
        .map_err(|e| e.to_string())?
        .with_optimization_level(optimization(s.optimization_level))
        .map_err(|e| e.to_string())?;
    let mut builder = match device {
        Device::Cuda => with_cuda(builder, s.cuda_device_id, s.cuda_reduced_precision)?,
        Device::Cpu(shared) => {
            let cpu = ort::ep::CPU::default().with_arena_allocator(s.cpu_memory_arena).build();
            let mut builder = builder.with_execution_providers([cpu]).map_err(|e| e.to_string())?;
            if let Some(prepacked) = shared.prepacked() {
                builder = builder.with_prepacked_weights(prepacked).map_err(|e| e.to_string())?;
            }
            for (name, value) in shared.of(path) {
                builder = builder.with_initializer(name, value.clone()).map_err(|e| e.to_string())?;
            }
            builder
        }
    };
    let _named = ThreadsNamed::as_("onnxruntime");
    // The pool is scheduled as the model, not as the (tokio) thread creating it.
    let _scheduled = crate::threads::AsModelThread::new();
    builder.commit_from_file(path).map_err(|e| format!("cannot load model {}: {e}", path.display()))
}

/// While it lives, threads started by this one are named `name`: a thread
/// takes its name from the thread that starts it, so ONNX Runtime's pool,
/// started while a session is created (on one of tokio's blocking threads),
/// was named as tokio's workers, and `top -H` (or the overload benchmark)
/// could not tell the model's CPU from the HTTP side's. Linux only (through
/// /proc, no unsafe code); elsewhere nothing changes.
struct ThreadsNamed {
    previous: Option<String>,
}

impl ThreadsNamed {
    const COMM: &'static str = "/proc/thread-self/comm";

    fn as_(name: &str) -> ThreadsNamed {
        let previous = std::fs::read_to_string(Self::COMM).ok().filter(|_| std::fs::write(Self::COMM, name).is_ok());
        ThreadsNamed { previous }
    }
}

impl Drop for ThreadsNamed {
    fn drop(&mut self) {
        if let Some(previous) = &self.previous {
            let _ = std::fs::write(Self::COMM, previous.trim_end());
        }
    }
}

#[cfg(feature = "cuda")]
fn with_cuda(
    builder: ort::session::builder::SessionBuilder,
    device_id: i32,
    reduced_precision: bool,
) -> Result<ort::session::builder::SessionBuilder, String> {
    // Both stated explicitly: ONNX Runtime's own defaults for them have changed
    // between releases.
    let cuda = ort::ep::CUDA::default()
        .with_device_id(device_id)
        .with_tf32(reduced_precision)
        .with_skip_layer_norm_strict_mode(!reduced_precision);
    builder.with_execution_providers([cuda.build().error_on_failure()]).map_err(|e| {
        format!(
            "CUDA execution provider could not be registered on device {device_id}: {e} \
                 (needs an NVIDIA GPU and the GPU build of ONNX Runtime, onnxruntime-gpu, with CUDA 13 and cuDNN 9)"
        )
    })
}

#[cfg(not(feature = "cuda"))]
fn with_cuda(
    _builder: ort::session::builder::SessionBuilder,
    _device_id: i32,
    _reduced_precision: bool,
) -> Result<ort::session::builder::SessionBuilder, String> {
    Err("model.execution_provider = \"cuda\" but this binary was built without CUDA support \
         (rebuild with `cargo build --release --features cuda`)"
        .into())
}

/// Runs one padded batch through `session`. Returns, per sequence, its real
/// rows only: padding positions never leave this function. A sequence that
/// asks for several hidden states ([`Tokenized::layers`]) gets them side by
/// side in each token row, ascending.
fn forward(
    session: &mut Session,
    info: &ModelInfo,
    default_outputs: &RunOptions<HasSelectedOutputs>,
    batch: &[&Tokenized],
) -> anyhow::Result<Vec<Rows>> {
    let b = batch.len();
    if b == 0 {
        return Ok(Vec::new());
    }
    let s = batch.iter().map(|t| t.len()).max().unwrap_or(0).max(1);
    let mut ids = vec![info.pad_token_id; b * s];
    let mut mask = vec![0i64; b * s];
    let mut type_ids = vec![0i64; b * s];
    for (i, t) in batch.iter().enumerate() {
        let row = i * s;
        ids[row..row + t.len()].copy_from_slice(&t.ids);
        mask[row..row + t.len()].fill(1);
        type_ids[row..row + t.len()].copy_from_slice(&t.type_ids);
    }
    fn tensor(shape: [usize; 2], data: &[i64]) -> anyhow::Result<SessionInputValue<'_>> {
        Ok(TensorRef::from_array_view((shape, data)).map_err(|e| anyhow!("{e}"))?.into())
    }
    let mut inputs: Vec<(std::borrow::Cow<'_, str>, SessionInputValue<'_>)> =
        vec![("input_ids".into(), tensor([b, s], &ids)?), ("attention_mask".into(), tensor([b, s], &mask)?)];
    if info.uses_token_type_ids {
        inputs.push(("token_type_ids".into(), tensor([b, s], &type_ids)?));
    }
    let last = info.last_layer();
    let wanted = batch.iter().fold(LayerMask::LAST, |m, t| m.union(t.layers, last));
    if wanted.is_last_only() {
        let outputs =
            session.run_with_options(inputs, default_outputs).map_err(|e| anyhow!("inference failed: {e}"))?;
        let value =
            outputs.get(&info.output).ok_or_else(|| anyhow!("the model returned no `{}` output", info.output))?;
        let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| anyhow!("unexpected output: {e}"))?;
        let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        return match dims.as_slice() {
            [ob, os, h] if *ob == b && *os == s => Ok(batch
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let start = i * s * h;
                    Rows { rows: t.len(), cols: *h, data: data[start..start + t.len() * h].to_vec() }
                })
                .collect()),
            [ob, c] if *ob == b => {
                Ok((0..b).map(|i| Rows { rows: 1, cols: *c, data: data[i * c..(i + 1) * c].to_vec() }).collect())
            }
            _ => bail!("unexpected output shape {dims:?} for a batch of {b} x {s}"),
        };
    }
    if info.layers.is_none() {
        bail!("{}", crate::layers::LayerError::Unavailable);
    }
    let present = wanted.indices(last);
    let names: Vec<String> = present.iter().map(|&i| info.layer_output(i)).collect();
    let selector = names.iter().fold(OutputSelector::no_default(), |sel, n| sel.with(n.clone()));
    let options = RunOptions::new().map_err(|e| anyhow!("{e}"))?.with_outputs(selector);
    let outputs = session.run_with_options(inputs, &options).map_err(|e| anyhow!("inference failed: {e}"))?;
    let mut layers = Vec::with_capacity(names.len());
    for name in &names {
        let value = outputs.get(name).ok_or_else(|| anyhow!("the model returned no `{name}` output"))?;
        let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| anyhow!("unexpected output: {e}"))?;
        let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        if dims.len() != 3 || dims[0] != b || dims[1] != s || dims[2] != info.hidden_size {
            bail!("unexpected `{name}` shape {dims:?} for a batch of {b} x {s}");
        }
        layers.push(data);
    }
    let h = info.hidden_size;
    Ok(batch
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let own: Vec<usize> =
                t.layers.indices(last).iter().map(|l| present.binary_search(l).expect("in the union")).collect();
            let mut data = Vec::with_capacity(t.len() * h * own.len());
            for pos in 0..t.len() {
                let start = (i * s + pos) * h;
                for &k in &own {
                    data.extend_from_slice(&layers[k][start..start + h]);
                }
            }
            Rows { rows: t.len(), cols: h * own.len(), data }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::has_dynamic_quantisation;

    /// A file of `len` zero bytes with `bytes` written at `at`.
    fn file_with(len: usize, at: usize, bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut content = vec![0u8; len];
        content[at..at + bytes.len()].copy_from_slice(bytes);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), content).unwrap();
        file
    }

    #[test]
    fn dynamic_quantisation_is_found_by_its_op_type_even_across_two_reads() {
        let node = b"\x22\x15DynamicQuantizeLinear";
        // Wholly in the first read, then straddling the first two (1 MiB reads).
        for at in [10, (1 << 20) - 5] {
            assert!(has_dynamic_quantisation(file_with(3 << 20, at, node).path()).unwrap(), "at {at}");
        }
        // The name alone (say, in a doc string) is not a node's op type.
        let name_only = &node[2..];
        assert!(!has_dynamic_quantisation(file_with(3 << 20, 100, name_only).path()).unwrap());
        assert!(has_dynamic_quantisation(std::path::Path::new("/nonexistent/model.onnx")).is_err());
    }
}
