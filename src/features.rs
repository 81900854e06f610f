//! Feature extraction as a batch job (the `extract`, `train` and `evaluate`
//! commands, and heads trained at startup): texts through an [`Encoder`] in
//! batches sorted by length, pooled to `[CLS]` and mean vectors, cached on
//! disk by model and data so that a restart does not extract again. Not on
//! the request path: requests pool in `pooling.rs`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use ndarray::{concatenate, Array2, Axis};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::atomic_file::write_atomic;
use crate::encoder::Encoder;
use crate::model::ModelInfo;
use crate::npy;
use crate::pooling::{cls, mean, FeaturePooling, Rows};
use crate::tokenize::{TextTokenizer, Tokenized};

/// `[CLS]` and mean vectors of a set of texts, one row per text, in input order.
#[derive(Debug, Clone, PartialEq)]
pub struct PooledFeatures {
    pub cls: Array2<f32>,
    pub mean: Array2<f32>,
}

impl PooledFeatures {
    pub fn get(&self, pooling: FeaturePooling) -> Array2<f32> {
        match pooling {
            FeaturePooling::Cls => self.cls.clone(),
            FeaturePooling::Mean => self.mean.clone(),
            FeaturePooling::ClsMean => concatenate(Axis(1), &[self.cls.view(), self.mean.view()]).expect("same rows"),
        }
    }

    pub fn rows(&self) -> usize {
        self.cls.nrows()
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

    fn update(&self, done: usize, total: usize) {
        self.bar.set_length(total as u64);
        self.bar.set_position(done as u64);
        if let Some(observer) = &self.observer {
            observer.call(done, total);
        }
    }

    fn finish(&self, total: usize) {
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
/// tokens; `each` receives every text's rows with its input index.
pub fn run_sorted_batches(
    source: &mut dyn Encoder,
    tokenizer: &TextTokenizer,
    texts: &[String],
    max_batch_size: usize,
    max_batch_tokens: usize,
    progress: &Progress,
    mut each: impl FnMut(usize, &Rows) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let seqs = tokenizer.encode_all(texts, true)?;
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

/// Extracts `[CLS]` and mean features of `texts`, in input order.
pub fn extract(
    source: &mut dyn Encoder,
    tokenizer: &TextTokenizer,
    hidden: usize,
    texts: &[String],
    max_batch_size: usize,
    max_batch_tokens: usize,
    progress: &Progress,
) -> anyhow::Result<PooledFeatures> {
    let mut cls_rows = Array2::<f32>::zeros((texts.len(), hidden));
    let mut mean_rows = Array2::<f32>::zeros((texts.len(), hidden));
    run_sorted_batches(source, tokenizer, texts, max_batch_size, max_batch_tokens, progress, |i, r| {
        if r.cols != hidden {
            bail!("the encoder returned vectors of {} values, expected {hidden}", r.cols);
        }
        cls_rows.row_mut(i).assign(&ndarray::Array1::from(cls(r)));
        mean_rows.row_mut(i).assign(&ndarray::Array1::from(mean(r)));
        Ok(())
    })?;
    Ok(PooledFeatures { cls: cls_rows, mean: mean_rows })
}

/// On-disk cache of pooled features: `<dir>/<key>.cls.npy`, `.mean.npy` and a
/// `.json` sidecar, where the key hashes the model fingerprint, the maximum
/// length and the data fingerprint. Written atomically; checked when read.
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
}

impl FeatureCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FeatureCache { dir: dir.into() }
    }

    fn key(info: &ModelInfo, data_fingerprint: &str) -> String {
        let text = format!("{}:{}:{data_fingerprint}", info.fingerprint, info.max_tokens);
        format!("{:x}", Sha256::digest(text.as_bytes()))[..24].to_string()
    }

    /// Cached features, if present and valid; a damaged entry is reported and ignored.
    pub fn load(&self, info: &ModelInfo, data_fingerprint: &str, rows: usize) -> Option<PooledFeatures> {
        let key = Self::key(info, data_fingerprint);
        let expected = CacheEntry {
            model_fingerprint: info.fingerprint.clone(),
            max_tokens: info.max_tokens,
            data_fingerprint: data_fingerprint.to_string(),
            rows,
            hidden: info.hidden_size,
        };
        let read = || -> anyhow::Result<Option<PooledFeatures>> {
            let meta_path = self.dir.join(format!("{key}.json"));
            let Ok(meta) = std::fs::read_to_string(&meta_path) else { return Ok(None) };
            let entry: CacheEntry = serde_json::from_str(&meta)?;
            if entry != expected {
                bail!("{} describes other features", meta_path.display());
            }
            let array = |name: &str| -> anyhow::Result<Array2<f32>> {
                let path = self.dir.join(format!("{key}.{name}.npy"));
                let (shape, data) =
                    npy::decode::<f32>(&std::fs::read(&path)?).with_context(|| format!("{}", path.display()))?;
                if shape != [rows, info.hidden_size] {
                    bail!("{} has shape {shape:?}", path.display());
                }
                Ok(Array2::from_shape_vec((rows, info.hidden_size), data)?)
            };
            Ok(Some(PooledFeatures { cls: array("cls")?, mean: array("mean")? }))
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
        let key = Self::key(info, data_fingerprint);
        let (rows, hidden) = features.cls.dim();
        for (name, array) in [("cls", &features.cls), ("mean", &features.mean)] {
            let data: Vec<f32> = array.iter().copied().collect();
            write_atomic(&self.dir.join(format!("{key}.{name}.npy")), &npy::encode(&[rows, hidden], &data))?;
        }
        // The sidecar goes last: an entry without it is never read.
        let entry = CacheEntry {
            model_fingerprint: info.fingerprint.clone(),
            max_tokens: info.max_tokens,
            data_fingerprint: data_fingerprint.to_string(),
            rows,
            hidden,
        };
        write_atomic(&self.dir.join(format!("{key}.json")), serde_json::to_string_pretty(&entry)?.as_bytes())
    }
}
