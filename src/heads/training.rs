//! Training a logistic head from its settings: open the data set, extract (or
//! load cached) features of train, validation and test, search, fit, record
//! test metrics, write the head file atomically. Used by `distilserve train`
//! and by the service when a head is missing at startup.

use std::collections::BTreeMap;

use anyhow::{anyhow, Context};

use super::logistic::{head_path, EncoderStamp, GraphChoice, LogisticHead};
use super::scores::Scores;
use super::search::{train, LabelledFeatures, TrainConfig, TrainingData};
use super::store::{version_of, HeadStore, Publish};
use super::upload::class_weight_of;
use super::{GraphPhase, GraphState, Head, Heads};
use crate::config::{LayerSpec, ResolvedOptions};
use crate::data::{Dataset, Split};
use crate::features::{extract, layers_to_extract, FeatureCache, PooledFeatures, Progress};
use crate::forward::ForwardPass;
use crate::layers::LayerSelection;
use crate::model::ModelInfo;
use crate::tokenize::TextTokenizer;

/// What feature extraction needs besides the texts.
pub struct Extraction<'a> {
    pub source: &'a mut dyn ForwardPass,
    pub info: &'a ModelInfo,
    pub tokenizer: &'a TextTokenizer,
    pub cache: &'a FeatureCache,
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
}

impl Extraction<'_> {
    /// Features of a split for the hidden states `layers` (ascending, the last
    /// included): from the cache when valid, else extracted and cached. A
    /// cache that cannot be written is reported, not fatal.
    pub fn features(&mut self, data_name: &str, split: &Split, layers: &[usize]) -> anyhow::Result<PooledFeatures> {
        if let Some(found) = self.cache.load(self.info, &split.fingerprint, split.texts.len(), layers) {
            tracing::info!(split = %split.name, texts = split.texts.len(), "features loaded from cache");
            return Ok(found);
        }
        let progress = Progress::new(format!("{data_name}/{}", split.name));
        let features = extract(
            self.source,
            self.tokenizer,
            self.info,
            layers,
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

/// The layer options of a head's settings (`layers`, e.g. `["-1",
/// "mean(-4,-3,-2,-1)"]`) resolved for the running encoder (`None`: the last).
/// Options the encoder cannot give (an export without layer outputs, or
/// fewer layers) are left out with a warning; none left is an error.
pub fn layer_options_of(
    head: &str,
    specs: &[LayerSpec],
    info: &ModelInfo,
) -> anyhow::Result<Vec<Option<LayerSelection>>> {
    let last = info.last_layer();
    let mut options = Vec::new();
    for spec in specs {
        match LayerSelection::resolve(&spec.indices, spec.combine, info.layers) {
            Ok(s) if s.is_default(last) => options.push(None),
            Ok(s) => options.push(Some(s)),
            Err(e) => tracing::warn!(head, layers = %spec, error = %e, "layer option left out of the search"),
        }
    }
    options.dedup();
    if options.is_empty() {
        anyhow::bail!("heads.{head}.layers: no option fits the encoder {} ({:?} layers)", info.name, info.layers);
    }
    Ok(options)
}

/// Trains head `name` on the data set folder `data_dir` with `options`
/// (a `[heads.<name>]` table's, flags over them for `distilserve train`);
/// the caller saves it: [`save_head`].
pub fn train_head(
    name: &str,
    data_dir: &std::path::Path,
    options: &ResolvedOptions,
    extraction: &mut Extraction<'_>,
) -> anyhow::Result<LogisticHead> {
    let dataset = Dataset::open(data_dir)?;
    let data_name = data_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let train_split = dataset.split("train")?;
    let validation_split = if dataset.has_split("validation") { Some(dataset.split("validation")?) } else { None };
    let test_split = if dataset.has_split("test") { Some(dataset.split("test")?) } else { None };

    let layer_options = layer_options_of(name, &options.layers, extraction.info)?;
    let layers = layers_to_extract(&layer_options, extraction.info.last_layer());
    let train_features = extraction.features(&data_name, &train_split, &layers)?;
    let validation_features = match &validation_split {
        Some(s) => Some(extraction.features(&data_name, s, &layers)?),
        None => None,
    };
    let mut fingerprints = BTreeMap::new();
    for s in [Some(&train_split), validation_split.as_ref(), test_split.as_ref()].into_iter().flatten() {
        fingerprints.insert(s.name.clone(), s.fingerprint.clone());
    }
    let class_weight =
        class_weight_of(&options.class_weight, &dataset.labels).map_err(|e| anyhow!("heads.{name}: {e}"))?;
    let config = TrainConfig::of(options, layer_options, class_weight);
    let data = TrainingData {
        labels: &dataset.labels,
        train: LabelledFeatures {
            features: &train_features,
            labels: &train_split.labels,
            texts: Some(&train_split.texts),
            source: "train",
            pair: None,
        },
        validation: validation_split.as_ref().zip(validation_features.as_ref()).map(|(s, f)| LabelledFeatures {
            features: f,
            labels: &s.labels,
            texts: Some(&s.texts),
            source: "validation",
            pair: None,
        }),
        data_dir: data_dir.display().to_string(),
        data_fingerprints: fingerprints,
    };
    let mut head = train(name, EncoderStamp::of(extraction.info), data, &config)?;
    if let Some(test) = &test_split {
        // Reported for reference only: nothing above looked at the test split.
        let features = extraction.features(&data_name, test, &layers)?;
        let x = features.get(head.pooling, head.layers.as_ref());
        let predicted = head.predict(&x);
        head.metrics.test = Some(Scores::compute(&dataset.labels, &test.labels, &predicted));
        head.metrics.test_calibration = Some(head.calibration_error(&x, &test.labels));
    }
    tracing::info!(
        head = name,
        pooling = %head.pooling,
        layers = %head.layers_label(),
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

/// Where the heads have a graph of their own (`classify.model_file`): head
/// `name`, just served on the heads' graph, waits for the exact graph's head.
pub fn begin_comparison(heads: &Heads, name: &str, heads_graph: &ModelInfo, exact: &ModelInfo) {
    heads.set_graph_phases(name, phases(heads_graph, GraphState::Served, exact, GraphState::Training));
}

/// The second half of such a training, at startup and over the API alike:
/// `first`, trained on the heads' graph, published and already served, is
/// compared with `exact_head()`, the same head on the exact graph
/// ([`GraphChoice`]). The one not served is kept in the history (not active);
/// the served one, with the comparison recorded, takes the place of `first`'s
/// version, becomes active and is swapped in. A failure (or a panic) leaves
/// `first` served; a head that cannot be written still serves from memory
/// (both logged).
pub fn compare_graphs(
    heads: &Heads,
    store: &HeadStore,
    first: LogisticHead,
    heads_graph: &ModelInfo,
    exact: &ModelInfo,
    exact_head: impl FnOnce() -> anyhow::Result<LogisticHead>,
) {
    let name = first.name.clone();
    let compared = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let first_version = version_of(&first);
        let (mut served, mut other) = GraphChoice::settle(&heads_graph.file, first, &exact.file, exact_head()?);
        other.seal();
        served.seal();
        let saved = store
            .publish_as(&other, Publish { activate: false, replacing: None })
            .and_then(|_| store.publish_as(&served, Publish { activate: true, replacing: Some(&first_version) }));
        match saved {
            Ok(version) => {
                tracing::info!(head = %name, version = %version, "head saved after the comparison of graphs")
            }
            Err(e) => {
                tracing::error!(head = %name, error = %format!("{e:#}"), "serving the compared head from memory only")
            }
        }
        anyhow::Ok(served)
    }))
    .unwrap_or_else(|panic| Err(anyhow!("training panicked: {}", crate::telemetry::panic_message(&*panic))));
    match compared {
        // Its comparison recorded in the head (GET /heads/{name} reads `graphs` from it).
        Ok(served) => heads.insert(Head::Logistic(served)),
        Err(e) => {
            tracing::error!(head = %name, error = %format!("{e:#}"), "comparing the head on the exact graph failed; it stays served on the heads' graph");
            heads.set_graph_phases(&name, phases(heads_graph, GraphState::Served, exact, GraphState::Failed));
        }
    }
}

fn phases(heads_graph: &ModelInfo, first: GraphState, exact: &ModelInfo, second: GraphState) -> Vec<GraphPhase> {
    vec![
        GraphPhase { graph: heads_graph.file.clone(), phase: first },
        GraphPhase { graph: exact.file.clone(), phase: second },
    ]
}
