//! Feature extraction as a batch job (the `extract`, `train` and `evaluate`
//! commands, and heads trained at startup): texts through an [`ForwardPass`] in
//! batches sorted by length, pooled to `[CLS]` and mean vectors, cached on
//! disk by model and data so that a restart does not extract again. Not on
//! the request path: requests pool in `pooling.rs`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use ndarray::{concatenate, Array2, Axis, Slice};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::atomic_file::write_atomic;
use crate::forward::ForwardPass;
use crate::layers::{LayerCombine, LayerMask, LayerSelection};
use crate::model::ModelInfo;
use crate::npy;
use crate::pooling::{cls, mean, FeaturePooling, Rows};
use crate::tokenize::{TextTokenizer, Tokenized};

/// `[CLS]` and mean vectors of a set of texts, one row per text, in input
/// order: for each hidden state in `layers` (ascending, the last included),
/// `hidden` values side by side.
#[derive(Debug, Clone, PartialEq)]
pub struct PooledFeatures {
    pub layers: Vec<usize>,
    pub hidden: usize,
    pub cls: Array2<f32>,
    pub mean: Array2<f32>,
}

impl PooledFeatures {
    /// Features of `pooling` over the hidden states of `layers` (`None`: the last).
    /// Pooling and combining layers are both linear, so pooling each layer and
    /// then combining equals pooling the combined rows, as requests do.
    pub fn get(&self, pooling: FeaturePooling, layers: Option<&LayerSelection>) -> Array2<f32> {
        let pick = |all: &Array2<f32>| -> Array2<f32> {
            let block = |index: usize| {
                let k = self.layers.iter().position(|&l| l == index).expect("extracted for this layer");
                all.slice_axis(Axis(1), Slice::from(k * self.hidden..(k + 1) * self.hidden))
            };
            let Some(selection) = layers else {
                return block(*self.layers.last().expect("at least the last layer")).to_owned();
            };
            match selection.combine {
                LayerCombine::Concat => {
                    let views: Vec<_> = selection.indices.iter().map(|&i| block(i)).collect();
                    concatenate(Axis(1), &views).expect("same rows")
                }
                LayerCombine::Mean => {
                    let mut sum = Array2::<f32>::zeros((all.nrows(), self.hidden));
                    for &i in &selection.indices {
                        sum += &block(i);
                    }
                    sum / selection.indices.len() as f32
                }
            }
        };
        match pooling {
            FeaturePooling::Cls => pick(&self.cls),
            FeaturePooling::Mean => pick(&self.mean),
            FeaturePooling::ClsMean => {
                concatenate(Axis(1), &[pick(&self.cls).view(), pick(&self.mean).view()]).expect("same rows")
            }
        }
    }

    pub fn rows(&self) -> usize {
        self.cls.nrows()
    }

    /// Rows `from..to`.
    pub fn slice_rows(&self, from: usize, to: usize) -> PooledFeatures {
        PooledFeatures {
            layers: self.layers.clone(),
            hidden: self.hidden,
            cls: self.cls.slice_axis(Axis(0), Slice::from(from..to)).to_owned(),
            mean: self.mean.slice_axis(Axis(0), Slice::from(from..to)).to_owned(),
        }
    }
}

/// Told (done, total) as a batch job advances: how a head trained over the
/// API reports its progress in `GET /heads/{name}`.
#[derive(Clone)]
pub struct ProgressFn(pub std::sync::Arc<dyn Fn(usize, usize) + Send + Sync>);

impl ProgressFn {
    pub fn call(&self, done: usize, total: usize) {
        (self.0)(done, total)
    }
}

impl std::fmt::Debug for ProgressFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressFn")
    }
}

/// Progress of a batch job: a bar on a terminal (indicatif draws nothing
/// elsewhere), an optional observer, and a log line at the end with the rate.
pub struct Progress {
    label: String,
    bar: indicatif::ProgressBar,
    started: Instant,
    observer: Option<ProgressFn>,
}

impl Progress {
    pub fn new(label: impl Into<String>) -> Self {
        let label = label.into();
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({per_sec})")
                .expect("valid template")
                .progress_chars("#> "),
        );
        bar.set_message(label.clone());
        Progress { label, bar, started: Instant::now(), observer: None }
    }

    /// Also tells `observer` of every step.
    pub fn observed(mut self, observer: ProgressFn) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn update(&self, done: usize, total: usize) {
        self.bar.set_length(total as u64);
        self.bar.set_position(done as u64);
        if let Some(observer) = &self.observer {
            observer.call(done, total);
        }
    }

    pub fn finish(&self, total: usize) {
        self.bar.finish_and_clear();
        let secs = self.started.elapsed().as_secs_f64();
        tracing::info!(
            what = %self.label,
            texts = total,
            seconds = format!("{secs:.1}"),
            per_second = format!("{:.0}", total as f64 / secs.max(1e-9)),
            "features extracted"
        );
    }
}

/// Runs `texts` through `source` with truncation, sorted by length and cut into
/// batches of at most `max_batch_size` texts and `max_batch_tokens` padded
/// tokens; `each` receives every text's rows (the hidden states of `layers`
/// side by side) with its input index.
#[allow(clippy::too_many_arguments)]
pub fn run_sorted_batches(
    source: &mut dyn ForwardPass,
    tokenizer: &TextTokenizer,
    texts: &[String],
    layers: LayerMask,
    max_batch_size: usize,
    max_batch_tokens: usize,
    progress: &Progress,
    mut each: impl FnMut(usize, &Rows) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut seqs = tokenizer.encode_all(texts, true)?;
    seqs.iter_mut().for_each(|s| s.layers = layers);
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| seqs[i].len());
    let mut start = 0;
    while start < order.len() {
        // Sorted ascending: the last member of a batch is its longest.
        let mut end = start + 1;
        while end < order.len()
            && end - start < max_batch_size
            && seqs[order[end]].len() * (end - start + 1) <= max_batch_tokens
        {
            end += 1;
        }
        let batch: Vec<&Tokenized> = order[start..end].iter().map(|&i| &seqs[i]).collect();
        let rows = source.encode(&batch)?;
        if rows.len() != batch.len() {
            bail!("the encoder returned {} results for {} texts", rows.len(), batch.len());
        }
        for (&i, r) in order[start..end].iter().zip(&rows) {
            each(i, r)?;
        }
        progress.update(end, texts.len());
        start = end;
    }
    progress.finish(texts.len());
    Ok(())
}

/// Which hidden states to extract, for a model whose last is `last`: the
/// layers of every `selections` and the last, ascending.
pub fn layers_to_extract(selections: &[Option<LayerSelection>], last: usize) -> Vec<usize> {
    let mut layers: Vec<usize> = selections.iter().flatten().flat_map(|s| s.indices.iter().copied()).collect();
    layers.push(last);
    layers.sort_unstable();
    layers.dedup();
    layers
}

/// Extracts `[CLS]` and mean features of `texts`, in input order, for each
/// hidden state in `layers` (ascending, the last, `info.last_layer()`, included).
#[allow(clippy::too_many_arguments)]
pub fn extract(
    source: &mut dyn ForwardPass,
    tokenizer: &TextTokenizer,
    info: &ModelInfo,
    layers: &[usize],
    texts: &[String],
    max_batch_size: usize,
    max_batch_tokens: usize,
    progress: &Progress,
) -> anyhow::Result<PooledFeatures> {
    let hidden = info.hidden_size;
    let last = info.last_layer();
    let mask = match layers {
        [only] if *only == last => LayerMask::LAST,
        _ => LayerMask(layers.iter().fold(0u64, |m, &l| m | (1 << l))),
    };
    let width = hidden * layers.len();
    let mut cls_rows = Array2::<f32>::zeros((texts.len(), width));
    let mut mean_rows = Array2::<f32>::zeros((texts.len(), width));
    run_sorted_batches(source, tokenizer, texts, mask, max_batch_size, max_batch_tokens, progress, |i, r| {
        if r.cols != width {
            bail!("the encoder returned vectors of {} values, expected {width}", r.cols);
        }
        cls_rows.row_mut(i).assign(&ndarray::Array1::from(cls(r)));
        mean_rows.row_mut(i).assign(&ndarray::Array1::from(mean(r)));
        Ok(())
    })?;
    Ok(PooledFeatures { layers: layers.to_vec(), hidden, cls: cls_rows, mean: mean_rows })
}

/// On-disk cache of pooled features: `<dir>/<key>.cls.npy`, `.mean.npy` and a
/// `.json` sidecar, where the key hashes the model fingerprint, the maximum
/// length, the data fingerprint and how the graph is batched. Written atomically; checked when read.
pub struct FeatureCache {
    dir: PathBuf,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct CacheEntry {
    model_fingerprint: String,
    max_tokens: usize,
    data_fingerprint: String,
    rows: usize,
    hidden: usize,
    /// Hidden states held side by side (ascending).
    #[serde(default)]
    layers: Vec<usize>,
}

impl FeatureCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FeatureCache { dir: dir.into() }
    }

    fn key(info: &ModelInfo, data_fingerprint: &str, layers: &[usize]) -> String {
        let mut text = format!("{}:{}:{data_fingerprint}", info.fingerprint, info.max_tokens);
        // The last layer alone keeps the key it had before layers existed.
        if layers != [info.last_layer()] {
            text.push_str(&format!(":{layers:?}"));
        }
        // Such a graph's features differ with batching; they are extracted one text per call.
        if info.quantises_per_call {
            text.push_str(":one sequence per call");
        }
        format!("{:x}", Sha256::digest(text.as_bytes()))[..24].to_string()
    }

    /// Cached features of hidden states `layers`, if present and valid; a
    /// damaged entry is reported and ignored.
    pub fn load(
        &self,
        info: &ModelInfo,
        data_fingerprint: &str,
        rows: usize,
        layers: &[usize],
    ) -> Option<PooledFeatures> {
        let key = Self::key(info, data_fingerprint, layers);
        let expected = CacheEntry {
            model_fingerprint: info.fingerprint.clone(),
            max_tokens: info.max_tokens,
            data_fingerprint: data_fingerprint.to_string(),
            rows,
            hidden: info.hidden_size,
            layers: layers.to_vec(),
        };
        let width = info.hidden_size * layers.len();
        let read = || -> anyhow::Result<Option<PooledFeatures>> {
            let meta_path = self.dir.join(format!("{key}.json"));
            let Ok(meta) = std::fs::read_to_string(&meta_path) else { return Ok(None) };
            let mut entry: CacheEntry = serde_json::from_str(&meta)?;
            if entry.layers.is_empty() {
                // Written before layers existed: the last alone.
                entry.layers = vec![info.last_layer()];
            }
            if entry != expected {
                bail!("{} describes other features", meta_path.display());
            }
            let array = |name: &str| -> anyhow::Result<Array2<f32>> {
                let path = self.dir.join(format!("{key}.{name}.npy"));
                let (shape, data) =
                    npy::decode::<f32>(&std::fs::read(&path)?).with_context(|| format!("{}", path.display()))?;
                if shape != [rows, width] {
                    bail!("{} has shape {shape:?}", path.display());
                }
                Ok(Array2::from_shape_vec((rows, width), data)?)
            };
            Ok(Some(PooledFeatures {
                layers: layers.to_vec(),
                hidden: info.hidden_size,
                cls: array("cls")?,
                mean: array("mean")?,
            }))
        };
        match read() {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "ignoring a damaged feature cache entry; extracting again");
                None
            }
        }
    }

    pub fn store(&self, info: &ModelInfo, data_fingerprint: &str, features: &PooledFeatures) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("cannot create {}", self.dir.display()))?;
        let key = Self::key(info, data_fingerprint, &features.layers);
        let (rows, width) = features.cls.dim();
        for (name, array) in [("cls", &features.cls), ("mean", &features.mean)] {
            let data: Vec<f32> = array.iter().copied().collect();
            write_atomic(&self.dir.join(format!("{key}.{name}.npy")), &npy::encode(&[rows, width], &data))?;
        }
        // The sidecar goes last: an entry without it is never read.
        let entry = CacheEntry {
            model_fingerprint: info.fingerprint.clone(),
            max_tokens: info.max_tokens,
            data_fingerprint: data_fingerprint.to_string(),
            rows,
            hidden: features.hidden,
            layers: features.layers.clone(),
        };
        write_atomic(&self.dir.join(format!("{key}.json")), serde_json::to_string_pretty(&entry)?.as_bytes())
    }
}
