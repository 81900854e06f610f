//! Training a logistic head from its settings: open the data set, extract (or
//! load cached) features of train, validation and test, search, fit, record
//! test metrics, write the head file atomically. Used by `distilserve train`
//! and by the service when a head is missing at startup.

use std::collections::BTreeMap;

use anyhow::{anyhow, Context};

use super::logistic::{head_path, EncoderStamp, LogisticHead, Selection};
use super::metrics::Metrics;
use super::search::{train, LabelledFeatures, TrainConfig, TrainingData};
use super::store::HeadStore;
use crate::config::{HeadSettings, PoolingChoice};
use crate::data::{Dataset, Split};
use crate::encoder::Encoder;
use crate::features::{extract, FeatureCache, PooledFeatures, Progress};
use crate::model::ModelInfo;
use crate::pooling::FeaturePooling;
use crate::tokenize::TextTokenizer;

/// What feature extraction needs besides the texts.
pub struct Extraction<'a> {
    pub source: &'a mut dyn Encoder,
    pub info: &'a ModelInfo,
    pub tokenizer: &'a TextTokenizer,
    pub cache: &'a FeatureCache,
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
}

impl Extraction<'_> {
    /// Features of a split: from the cache when valid, else extracted and cached.
    /// A cache that cannot be written is reported, not fatal.
    pub fn features(&mut self, data_name: &str, split: &Split) -> anyhow::Result<PooledFeatures> {
        if let Some(found) = self.cache.load(self.info, &split.fingerprint, split.texts.len()) {
            tracing::info!(split = %split.name, texts = split.texts.len(), "features loaded from cache");
            return Ok(found);
        }
        let progress = Progress::new(format!("{data_name}/{}", split.name));
        let features = extract(
            self.source,
            self.tokenizer,
            self.info.hidden_size,
            &split.texts,
            self.max_batch_size,
            self.max_batch_tokens,
            &progress,
        )?;
        if let Err(e) = self.cache.store(self.info, &split.fingerprint, &features) {
            tracing::warn!(error = %format!("{e:#}"), "could not write the feature cache; continuing without it");
        }
        Ok(features)
    }
}

pub fn selection_of(cv_folds: usize) -> Selection {
    if cv_folds == 0 {
        Selection::Validation
    } else {
        Selection::CrossValidation { folds: cv_folds }
    }
}

pub fn poolings_of(choice: PoolingChoice) -> Vec<FeaturePooling> {
    match choice {
        PoolingChoice::Auto => FeaturePooling::ALL.to_vec(),
        PoolingChoice::Cls => vec![FeaturePooling::Cls],
        PoolingChoice::Mean => vec![FeaturePooling::Mean],
        PoolingChoice::ClsMean => vec![FeaturePooling::ClsMean],
    }
}

/// Trains head `name` from `settings` (the caller saves it: [`save_head`]).
pub fn train_head(
    name: &str,
    settings: &HeadSettings,
    extraction: &mut Extraction<'_>,
) -> anyhow::Result<LogisticHead> {
    let data_dir = settings.data.as_ref().ok_or_else(|| anyhow!("heads.{name}.data is not set"))?;
    let dataset = Dataset::open(data_dir)?;
    let data_name = data_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let train_split = dataset.split("train")?;
    let validation_split = if dataset.has_split("validation") { Some(dataset.split("validation")?) } else { None };
    let test_split = if dataset.has_split("test") { Some(dataset.split("test")?) } else { None };

    let train_features = extraction.features(&data_name, &train_split)?;
    let validation_features = match &validation_split {
        Some(s) => Some(extraction.features(&data_name, s)?),
        None => None,
    };
    let mut fingerprints = BTreeMap::new();
    for s in [Some(&train_split), validation_split.as_ref(), test_split.as_ref()].into_iter().flatten() {
        fingerprints.insert(s.name.clone(), s.fingerprint.clone());
    }
    let config = TrainConfig {
        poolings: poolings_of(settings.pooling),
        alphas: settings.alphas.clone(),
        max_iterations: settings.max_iterations,
        progress: None,
        threads: None,
        selection: selection_of(settings.cv_folds),
    };
    let data = TrainingData {
        labels: &dataset.labels,
        train: LabelledFeatures { features: &train_features, labels: &train_split.labels },
        validation: validation_split
            .as_ref()
            .zip(validation_features.as_ref())
            .map(|(s, f)| LabelledFeatures { features: f, labels: &s.labels }),
        data_dir: data_dir.display().to_string(),
        data_fingerprints: fingerprints,
    };
    let mut head = train(name, EncoderStamp::of(extraction.info), data, &config)?;
    if let Some(test) = &test_split {
        // Reported for reference only: nothing above looked at the test split.
        let features = extraction.features(&data_name, test)?;
        let x = features.get(head.pooling);
        let predicted = head.predict(&x);
        head.metrics.test = Some(Metrics::compute(&dataset.labels, &test.labels, &predicted));
        head.metrics.test_calibration = Some(head.calibration_error(&x, &test.labels));
    }
    tracing::info!(
        head = name,
        pooling = %head.pooling,
        alpha = head.training.alpha,
        validation_accuracy = head.metrics.validation.as_ref().map(|m| m.accuracy),
        test_accuracy = head.metrics.test.as_ref().map(|m| m.accuracy),
        seconds = format!("{:.1}", head.training.seconds),
        "head trained"
    );
    Ok(head)
}

/// Publishes a trained head as a new version in the heads folder and makes it
/// the active one (`<heads_dir>/<name>.json`, see `store.rs`); returns that path.
pub fn save_head(head: &mut LogisticHead, store: &HeadStore) -> anyhow::Result<std::path::PathBuf> {
    head.seal();
    let version = store.publish(head).with_context(|| format!("cannot save head {}", head.name))?;
    let path = head_path(store.dir(), &head.name)?;
    tracing::info!(head = %head.name, version = %version, path = %path.display(), "head saved");
    Ok(path)
}
