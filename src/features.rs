//! Feature extraction as a batch job: texts through the encoder in batches
//! sorted by length, pooled to `[CLS]` and mean vectors, cached on disk by
//! model, data and pooling so that a restart does not extract again.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use ndarray::{concatenate, Array2, Axis};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{ModelInfo, Rows};
use crate::npy;
use crate::pooling::{pool, Pooling};
use crate::tokenize::{TextTokenizer, Tokenized};

/// Which vector represents a text for a classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum FeaturePooling {
    /// The first token's last hidden state (the lecture's choice).
    Cls,
    /// Mean over real tokens.
    Mean,
    /// Both, concatenated.
    #[value(name = "cls_mean")]
    ClsMean,
}

impl FeaturePooling {
    pub const ALL: [FeaturePooling; 3] = [FeaturePooling::Cls, FeaturePooling::Mean, FeaturePooling::ClsMean];

    pub fn as_str(self) -> &'static str {
        match self {
            FeaturePooling::Cls => "cls",
            FeaturePooling::Mean => "mean",
            FeaturePooling::ClsMean => "cls_mean",
        }
    }

    /// Feature width for an encoder of `hidden` dimensions.
    pub fn width(self, hidden: usize) -> usize {
        if self == FeaturePooling::ClsMean {
            2 * hidden
        } else {
            hidden
        }
    }
}

impl std::fmt::Display for FeaturePooling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

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

/// Turns one vector row of features for a single text: used when serving.
pub fn features_of(rows: &Rows, pooling: FeaturePooling) -> Vec<f32> {
    match pooling {
        FeaturePooling::Cls => pool(rows, Pooling::Cls).expect("pooled"),
        FeaturePooling::Mean => pool(rows, Pooling::Mean).expect("pooled"),
        FeaturePooling::ClsMean => {
            let mut v = pool(rows, Pooling::Cls).expect("pooled");
            v.extend(pool(rows, Pooling::Mean).expect("pooled"));
            v
        }
    }
}

/// Something that turns a batch of tokenized texts into model rows: a session
/// owned by a command-line job, or the service's batching queue.
pub trait RowSource {
    fn rows(&mut self, batch: &[Tokenized]) -> anyhow::Result<Vec<Rows>>;
}

/// A model session used directly by a command-line job (all cores, no queue).
pub struct SessionSource<'a> {
    pub session: &'a mut ort::session::Session,
    pub info: &'a ModelInfo,
}

impl RowSource for SessionSource<'_> {
    fn rows(&mut self, batch: &[Tokenized]) -> anyhow::Result<Vec<Rows>> {
        let refs: Vec<&Tokenized> = batch.iter().collect();
        crate::model::forward(self.session, self.info, &refs)
    }
}

/// Progress on a terminal (a line redrawn in place); silent otherwise, where a
/// log line at the end says how long it took.
pub struct Progress {
    label: String,
    tty: bool,
    started: Instant,
}

impl Progress {
    pub fn new(label: impl Into<String>) -> Self {
        Progress { label: label.into(), tty: std::io::stderr().is_terminal(), started: Instant::now() }
    }

    fn update(&self, done: usize, total: usize) {
        if self.tty {
            let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            let width = 30;
            let filled = if total == 0 { width } else { done * width / total };
            eprint!(
                "\r{} [{}{}] {done}/{total} ({rate:.0}/s)  ",
                self.label,
                "#".repeat(filled),
                " ".repeat(width - filled)
            );
            let _ = std::io::stderr().flush();
        }
    }

    fn finish(&self, total: usize) {
        if self.tty {
            eprintln!();
        }
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
    source: &mut dyn RowSource,
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
        let batch: Vec<Tokenized> = order[start..end].iter().map(|&i| seqs[i].clone()).collect();
        let rows = source.rows(&batch)?;
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
    source: &mut dyn RowSource,
    tokenizer: &TextTokenizer,
    hidden: usize,
    texts: &[String],
    max_batch_size: usize,
    max_batch_tokens: usize,
    progress: &Progress,
) -> anyhow::Result<PooledFeatures> {
    let mut cls = Array2::<f32>::zeros((texts.len(), hidden));
    let mut mean = Array2::<f32>::zeros((texts.len(), hidden));
    run_sorted_batches(source, tokenizer, texts, max_batch_size, max_batch_tokens, progress, |i, r| {
        if r.cols != hidden {
            bail!("the encoder returned vectors of {} values, expected {hidden}", r.cols);
        }
        cls.row_mut(i).assign(&ndarray::ArrayView1::from(r.row(0)));
        mean.row_mut(i).assign(&ndarray::Array1::from(pool(r, Pooling::Mean).expect("pooled")));
        Ok(())
    })?;
    Ok(PooledFeatures { cls, mean })
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

/// Writes `bytes` to a temporary file beside `path`, syncs it and renames it
/// into place: readers see the old file or the whole new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}
