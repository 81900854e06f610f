//! Batch work from the command line: `extract` features of a data set to
//! `.npy`, `train` a head, `evaluate` it against baselines; `healthcheck`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};

use crate::atomic_file::write_atomic;
use crate::cli::{EvaluateArgs, ExtractArgs, HealthcheckArgs, TrainArgs};
use crate::config::{Examples, HeadKind, HeadSettings, ResolvedOptions, Settings};
use crate::data::Dataset;
use crate::features::{layers_to_extract, FeatureCache, PooledFeatures, Progress};
use crate::heads::logistic::{head_path, GraphChoice, LogisticHead};
use crate::heads::onnx::map_labels;
use crate::heads::scores::Scores;
use crate::heads::search::plain_logistic;
use crate::heads::store::HeadStore;
use crate::heads::training::{save_head, train_head, Extraction};
use crate::model::Model;
use crate::npy;
use crate::pooling::{argmax, FeaturePooling};
use crate::report::{CandidateRow, Report, Row};
use ndarray::{Array2, ArrayView2, Axis, Slice};

/// The encoder for a batch job: one session with every configured thread.
fn load_model(settings: &Settings) -> anyhow::Result<Model> {
    Model::load(&settings.model, 1)
}

/// The graph heads are trained and evaluated on (`classify.model_file`), as
/// the service serves them.
fn load_heads_model(settings: &Settings) -> anyhow::Result<Model> {
    match settings.heads_model() {
        Some(heads) => Model::load(&heads, 1).context("classify.model_file: the heads' graph"),
        None => load_model(settings),
    }
}

fn with_extraction<T>(
    settings: &Settings,
    model: &mut Model,
    job: impl FnOnce(&mut Extraction<'_>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let cache = FeatureCache::new(&settings.classify.feature_cache_dir);
    let info = model.info.clone();
    let tokenizer = model.tokenizer.clone();
    let mut extraction = Extraction {
        source: &mut model.sessions[0],
        info: &info,
        tokenizer: &tokenizer,
        cache: &cache,
        max_batch_size: info.sequences_per_call(settings.batching.max_batch_size),
        max_batch_tokens: settings.batching.max_batch_tokens,
    };
    job(&mut extraction)
}

pub fn extract(args: &ExtractArgs) -> anyhow::Result<()> {
    if let Some(url) = &args.remote {
        return crate::remote::extract(args, url);
    }
    let settings = args.settings.settings()?;
    let dataset = Dataset::open(&args.data)?;
    let splits = dataset.splits_or_all(&args.splits);
    let mut model = load_model(&settings)?;
    let data_name = args.data.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut written = BTreeMap::new();
    let mut resolved = Vec::new();
    let mut width = 0;
    with_extraction(&settings, &mut model, |extraction| {
        for name in &splits {
            let split = dataset.split(name)?;
            let layers = crate::layers::LayerSelection::resolve(
                &args.layers.indices,
                args.layers.combine,
                extraction.info.layers,
            )?;
            let extract = layers_to_extract(&[Some(layers.clone())], extraction.info.last_layer());
            let features = extraction.features(&data_name, &split, &extract)?.get(args.pooling, Some(&layers));
            resolved = layers.indices.clone();
            let dir = args.out.join(name);
            width = features.ncols();
            let x: Vec<f32> = features.iter().copied().collect();
            let y: Vec<i64> = split.labels.iter().map(|&l| l as i64).collect();
            write_atomic(&dir.join("X.npy"), &npy::encode(&[features.nrows(), features.ncols()], &x))?;
            write_atomic(&dir.join("y.npy"), &npy::encode(&[y.len()], &y))?;
            println!("{}: X {:?} float32, y ({},) int64", dir.display(), features.dim(), y.len());
            written.insert(name.clone(), y.len());
        }
        Ok(())
    })?;
    let meta = serde_json::json!({
        "labels": dataset.labels,
        "pooling": args.pooling,
        "layers": args.layers.to_string(),
        "layer_indices": resolved,
        "width": width,
        "model": model.info.name,
        "model_fingerprint": model.info.fingerprint,
        "max_tokens": model.info.max_tokens,
        "data": args.data,
        "splits": written,
    });
    write_atomic(&args.out.join("meta.json"), serde_json::to_string_pretty(&meta)?.as_bytes())?;
    Ok(())
}

/// What `distilserve train` trains on and how: the head's `[heads.<name>]`
/// table (or a logistic head on `--data`) with the flags over it, resolved
/// and bounded as the service resolves a table.
fn training_plan(settings: &Settings, args: &TrainArgs) -> anyhow::Result<(Option<PathBuf>, ResolvedOptions)> {
    let table = match (settings.heads.get(&args.head), &args.data) {
        (Some(h), _) => h.clone(),
        (None, Some(data)) => HeadSettings::logistic(data.clone()),
        (None, None) => match &args.features {
            Some(_) => HeadSettings::logistic(PathBuf::new()),
            None => bail!("head {:?} is not configured ([heads.{}]); give --data to train it", args.head, args.head),
        },
    };
    if table.kind != HeadKind::Logistic {
        bail!("head {:?} is of kind {:?}: only logistic heads are trained", args.head, table.kind);
    }
    let options = args
        .training_options()
        .over(table.training_options())
        .resolve(&settings.training, Examples::DataSet)
        .map_err(|e| anyhow!("head {}: {e}", args.head))?;
    Ok((args.data.clone().or(table.data), options))
}

pub fn train_command(args: &TrainArgs) -> anyhow::Result<()> {
    let settings = args.settings.settings()?;
    let store = HeadStore::of(&settings);
    let mut head = match &args.features {
        Some(dir) => train_on_features(&settings, args, dir)?,
        None => train_for_serving(&settings, args, &store)?,
    };
    let path = save_head(&mut head, &store)?;
    if let Some(choice) = &head.training.graph_choice {
        println!("served on {}: {}", choice.served_on, choice.reason());
    }
    println!("head {} written to {}", head.name, path.display());
    println!(
        "pooling {}, alpha {} (chosen by {}), {:.1} s",
        head.pooling, head.training.alpha, head.training.selection, head.training.seconds
    );
    println!("held-out accuracy of the chosen candidate during the search: {:.4}", head.training.held_out_accuracy);
    let splits =
        [("fitted on", &head.metrics.train), ("validation", &head.metrics.validation), ("test", &head.metrics.test)];
    for (split, m) in splits {
        if let Some(m) = m {
            println!("{split:<10} accuracy {:.4}  macro-F1 {:.4}  ({} texts)", m.accuracy, m.macro_f1, m.examples);
        }
    }
    Ok(())
}

/// The head trained on the heads' graph, as the service serves it. Where that
/// is a second graph (`classify.model_file`, e.g. int8), trained on the exact
/// graph too and compared as the service does ([`GraphChoice`]): the other one
/// is saved here, the served one (returned) by the caller, last.
fn train_for_serving(settings: &Settings, args: &TrainArgs, store: &HeadStore) -> anyhow::Result<LogisticHead> {
    let (data, options) = training_plan(settings, args)?;
    let data = data.ok_or_else(|| anyhow!("heads.{}.data is not set; give --data", args.head))?;
    let train = |model: &mut Model| {
        with_extraction(settings, model, |extraction| train_head(&args.head, &data, &options, extraction))
    };
    let mut heads_graph = load_heads_model(settings)?;
    let head = train(&mut heads_graph)?;
    if settings.heads_model().is_none() {
        return Ok(head);
    }
    let (heads_file, heads_fingerprint) = (heads_graph.info.file.clone(), heads_graph.info.fingerprint.clone());
    drop(heads_graph);
    let mut exact = load_model(settings)?;
    if exact.info.fingerprint == heads_fingerprint {
        return Ok(head);
    }
    let exact_head = train(&mut exact)?;
    let (served, mut other) = GraphChoice::settle(&heads_file, head, &exact.info.file, exact_head);
    save_head(&mut other, store)?;
    Ok(served)
}

/// What `extract` writes beside the arrays (`meta.json`), as far as training reads it.
#[derive(serde::Deserialize)]
struct FeaturesMeta {
    labels: Vec<String>,
    pooling: FeaturePooling,
    layers: crate::config::LayerSpec,
    /// The hidden states pooled, resolved against the model (in the order combined).
    layer_indices: Vec<usize>,
    width: usize,
    model: String,
    model_fingerprint: String,
    max_tokens: usize,
    data: PathBuf,
}

/// A split's features from `dir/<split>/X.npy` and `y.npy`, as the search
/// takes them: per hidden state, its block of the pooled vector (a mean of
/// several is every state's block: their mean is itself).
fn features_split(
    dir: &std::path::Path,
    split: &str,
    meta: &FeaturesMeta,
    hidden: usize,
) -> anyhow::Result<Option<(PooledFeatures, Vec<usize>)>> {
    let x_path = dir.join(split).join("X.npy");
    if !x_path.exists() {
        return Ok(None);
    }
    let (shape, x) = npy::decode::<f32>(&std::fs::read(&x_path)?).with_context(|| x_path.display().to_string())?;
    let (y_shape, y) = npy::decode::<i64>(&std::fs::read(dir.join(split).join("y.npy"))?)?;
    if shape.len() != 2 || shape[1] != meta.width || y_shape != [shape[0]] {
        bail!("{}: shape {shape:?} with labels {y_shape:?}; meta.json says width {}", x_path.display(), meta.width);
    }
    let labels = y
        .iter()
        .map(|&l| usize::try_from(l).ok().filter(|&l| l < meta.labels.len()))
        .collect::<Option<Vec<_>>>()
        .with_context(|| format!("{split}/y.npy has a label outside 0..{}", meta.labels.len()))?;
    let x = Array2::from_shape_vec((shape[0], shape[1]), x)?;
    let mut layers = meta.layer_indices.clone();
    layers.sort_unstable();
    layers.dedup();
    let concat = meta.layers.combine == crate::layers::LayerCombine::Concat;
    let blocks = |pooled: ArrayView2<f32>| -> Array2<f32> {
        let views: Vec<_> = layers
            .iter()
            .map(|l| {
                let k = if concat { meta.layer_indices.iter().position(|i| i == l).expect("listed") } else { 0 };
                pooled.slice_axis(Axis(1), Slice::from(k * hidden..(k + 1) * hidden))
            })
            .collect();
        ndarray::concatenate(Axis(1), &views).expect("same rows")
    };
    let width = x.ncols();
    let none = || Array2::<f32>::zeros((x.nrows(), layers.len() * hidden));
    let (cls, mean) = match meta.pooling {
        FeaturePooling::Cls => (blocks(x.view()), none()),
        FeaturePooling::Mean => (none(), blocks(x.view())),
        FeaturePooling::ClsMean => (
            blocks(x.slice_axis(Axis(1), Slice::from(..width / 2))),
            blocks(x.slice_axis(Axis(1), Slice::from(width / 2..))),
        ),
    };
    Ok(Some((PooledFeatures { layers, hidden, cls, mean }, labels)))
}

/// `train --features DIR`: a head searched (alpha, as configured) on arrays
/// `extract` wrote, for the encoder they came from, without running a model.
fn train_on_features(settings: &Settings, args: &TrainArgs, dir: &std::path::Path) -> anyhow::Result<LogisticHead> {
    use crate::heads::search::{train, LabelledFeatures, TrainConfig, TrainingData};
    use crate::heads::upload::class_weight_of;
    let meta_path = dir.join("meta.json");
    let meta: FeaturesMeta = serde_json::from_str(
        &std::fs::read_to_string(&meta_path)
            .with_context(|| format!("{}: run `distilserve extract` first", meta_path.display()))?,
    )
    .with_context(|| meta_path.display().to_string())?;
    let per_pooling = if meta.pooling == FeaturePooling::ClsMean { meta.width / 2 } else { meta.width };
    let hidden = match meta.layers.combine {
        crate::layers::LayerCombine::Concat => per_pooling / meta.layer_indices.len().max(1),
        crate::layers::LayerCombine::Mean => per_pooling,
    };
    let (train_features, train_labels) =
        features_split(dir, "train", &meta, hidden)?.with_context(|| format!("no train split in {}", dir.display()))?;
    let validation = features_split(dir, "validation", &meta, hidden)?;
    let selection = (meta.layers.indices != [-1])
        .then(|| crate::layers::LayerSelection { indices: meta.layer_indices.clone(), combine: meta.layers.combine });
    let (_, options) = training_plan(settings, args)?;
    let class_weight = class_weight_of(&options.class_weight, &meta.labels)?;
    // The features fix the pooling and the hidden states; the search chooses alpha.
    let config =
        TrainConfig { poolings: vec![meta.pooling], ..TrainConfig::of(&options, vec![selection], class_weight) };
    let encoder = crate::heads::logistic::EncoderStamp {
        name: meta.model.clone(),
        fingerprint: meta.model_fingerprint.clone(),
        hidden_size: hidden,
        max_tokens: meta.max_tokens,
        layers: None,
    };
    let data = TrainingData {
        labels: &meta.labels,
        train: LabelledFeatures {
            features: &train_features,
            labels: &train_labels,
            texts: None,
            source: "train",
            pair: None,
        },
        validation: validation.as_ref().map(|(f, l)| LabelledFeatures {
            features: f,
            labels: l,
            texts: None,
            source: "validation",
            pair: None,
        }),
        data_dir: meta.data.display().to_string(),
        data_fingerprints: BTreeMap::new(),
    };
    let mut head = train(&args.head, encoder, data, &config)?;
    if let Some((features, labels)) = features_split(dir, "test", &meta, hidden)? {
        let x = features.get(head.pooling, head.layers.as_ref());
        head.metrics.test = Some(Scores::compute(&meta.labels, &labels, &head.predict(&x)));
        head.metrics.test_calibration = Some(head.calibration_error(&x, &labels));
    }
    Ok(head)
}

pub fn evaluate(args: &EvaluateArgs) -> anyhow::Result<()> {
    let settings = args.settings.settings()?;
    let path = head_path(&settings.classify.heads_dir, &args.head)?;
    let mut model = load_heads_model(&settings)?;
    let missing = |model: &Model| {
        format!(
            "no head {} for encoder {} in {}: run `distilserve train --head {}`",
            args.head,
            model.info.name,
            path.display(),
            args.head
        )
    };
    let mut head = crate::heads::load_logistic_for_encoder(&settings, &args.head, &model.info)?
        .with_context(|| missing(&model))?;
    // The head as the service serves it: the exact graph's where the
    // comparison of the two graphs chose that one.
    if let Some(choice) = head.training.graph_choice.clone().filter(|c| !c.on_heads_graph()) {
        drop(model);
        model = load_model(&settings)?;
        head = crate::heads::load_logistic_for_encoder(&settings, &args.head, &model.info)?
            .with_context(|| missing(&model))?;
        println!("served on {}: {}", choice.served_on, choice.reason());
    }
    let data_dir = args.data.clone().unwrap_or_else(|| PathBuf::from(&head.training.data_dir));
    let dataset = Dataset::open(&data_dir)?;
    if dataset.labels != head.labels {
        bail!("head labels {:?} differ from the data set's {:?}", head.labels, dataset.labels);
    }
    let data_name = data_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let split = dataset.split(&args.split)?;
    let train_split = dataset.split("train")?;
    let labels = dataset.labels.clone();
    let mut rows = Vec::new();

    with_extraction(&settings, &mut model, |extraction| {
        let last = extraction.info.last_layer();
        let layers = layers_to_extract(std::slice::from_ref(&head.layers), last);
        let features = extraction.features(&data_name, &split, &layers)?;
        let predicted = head.predict(&features.get(head.pooling, head.layers.as_ref()));
        rows.push(Row {
            name: head.name.clone(),
            description: format!(
                "this head: logistic, {} pooling of layers {}, alpha {}",
                head.pooling,
                head.layers_label(),
                head.training.alpha
            ),
            metrics: Scores::compute(&labels, &split.labels, &predicted),
        });

        // (a) The majority class of the train split.
        let mut counts = vec![0usize; labels.len()];
        train_split.labels.iter().for_each(|&l| counts[l] += 1);
        let majority = (0..labels.len()).max_by_key(|&l| (counts[l], std::cmp::Reverse(l))).unwrap_or(0);
        rows.push(Row {
            name: "majority".into(),
            description: format!("always {:?}, the most frequent train label", labels[majority]),
            metrics: Scores::compute(&labels, &split.labels, &vec![majority; split.labels.len()]),
        });

        // (b) The lecture's reference: scikit-learn's plain LogisticRegression()
        // (L2 with C = 1, 100 iterations, raw features) fitted on the train
        // split alone, on the last hidden state's [CLS] and mean.
        let last_only = [last];
        let train_features = extraction.features(&data_name, &train_split, &last_only)?;
        let features = extraction.features(&data_name, &split, &last_only)?;
        for pooling in [FeaturePooling::Cls, FeaturePooling::Mean] {
            let predicted = plain_logistic(
                &train_features.get(pooling, None),
                &train_split.labels,
                labels.len(),
                &features.get(pooling, None),
            )?;
            rows.push(Row {
                name: format!("plain-{pooling}"),
                description: format!(
                    "LogisticRegression() as in the lecture: raw {pooling} features of the last layer, C = 1, \
                     100 iterations, train split only"
                ),
                metrics: Scores::compute(&labels, &split.labels, &predicted),
            });
        }
        Ok(())
    })?;

    // (c) Pre-trained ONNX classifiers: --compare, else every configured one.
    let compare: Vec<String> = if args.compare.is_empty() {
        settings.heads.iter().filter(|(_, h)| h.kind == HeadKind::Onnx).map(|(n, _)| n.clone()).collect()
    } else {
        args.compare.clone()
    };
    for name in &compare {
        let Some(h) = settings.heads.get(name) else { bail!("--compare {name:?}: no [heads.{name}] in the settings") };
        rows.push(evaluate_onnx(name, h, &settings, &labels, &split.texts, &split.labels)?);
    }

    let report = Report {
        head: head.name.clone(),
        encoder: head.encoder.name.clone(),
        selection: head.training.selection.to_string(),
        training_seconds: head.training.seconds,
        candidates: best_per_feature_set(&head),
        data: data_dir.display().to_string(),
        split: args.split.clone(),
        examples: split.texts.len(),
        labels: labels.clone(),
        rows,
    };
    print!("{}", report.to_text());
    // Per encoder: evaluating the same head on another encoder keeps both reports.
    let stem = args.report_dir.join(format!("{}-{}-{}", head.name, head.encoder.name, args.split));
    let json_path = stem.with_extension("json");
    let svg_path = PathBuf::from(format!("{}-confusion.svg", stem.display()));
    write_atomic(&json_path, serde_json::to_string_pretty(&report)?.as_bytes())?;
    let title = format!("{} on {} / {}", head.name, data_name, args.split);
    let svg = crate::svg::confusion_matrix(&labels, &report.rows[0].metrics.confusion, &title);
    write_atomic(&svg_path, svg.as_bytes())?;
    println!("\nreport: {}\nconfusion matrix: {}", json_path.display(), svg_path.display());
    Ok(())
}

/// The head's search, one row per feature set (layers x pooling) with its
/// best alpha, in the order searched; the chosen one marked.
fn best_per_feature_set(head: &LogisticHead) -> Vec<CandidateRow> {
    let mut rows: Vec<CandidateRow> = Vec::new();
    for c in &head.training.candidates {
        let layers = c.layers.as_ref().map_or_else(|| "-1".to_string(), |l| l.describe(head.encoder.last_layer()));
        let row = CandidateRow {
            layers,
            pooling: c.pooling.to_string(),
            features: c.width(head.encoder.hidden_size),
            alpha: c.alpha,
            accuracy: c.accuracy,
            log_loss: c.log_loss,
            chosen: c.pooling == head.pooling && c.layers == head.layers && c.alpha == head.training.alpha,
        };
        match rows.iter_mut().find(|r| r.layers == row.layers && r.pooling == row.pooling) {
            Some(existing) => {
                let chosen = existing.chosen || row.chosen;
                if row.chosen || (!existing.chosen && row.accuracy > existing.accuracy) {
                    *existing = row;
                }
                existing.chosen = chosen;
            }
            None => rows.push(row),
        }
    }
    rows
}

/// A pre-trained sequence classifier on the split, its labels mapped to ours.
fn evaluate_onnx(
    name: &str,
    head: &HeadSettings,
    settings: &Settings,
    labels: &[String],
    texts: &[String],
    truth: &[usize],
) -> anyhow::Result<Row> {
    let dir = head.model_dir.clone().context("model_dir is required for an onnx head")?;
    let model_settings = crate::config::ModelSettings {
        dir: dir.clone(),
        file: head.model_file.clone(),
        name: String::new(),
        max_tokens: 0,
        ..settings.model.clone()
    };
    let mut model = Model::load(&model_settings, 1)?;
    let model_labels = model.info.labels.clone().unwrap_or_default();
    let (head_labels, to_label) = map_labels(name, &model_labels, &head.label_map)?;
    // Our label index for each of the head's labels.
    let to_ours: Vec<usize> = head_labels
        .iter()
        .map(|l| {
            labels.iter().position(|x| x == l).with_context(|| {
                format!("head {name} label {l:?} is not a data set label {labels:?}: set heads.{name}.label_map")
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let tokenizer = model.tokenizer.clone();
    let mut predicted = vec![0usize; texts.len()];
    let progress = Progress::new(format!("{name} (onnx)"));
    crate::features::run_sorted_batches(
        &mut model.sessions[0],
        &tokenizer,
        texts,
        crate::layers::LayerMask::LAST,
        model.info.sequences_per_call(settings.batching.max_batch_size),
        settings.batching.max_batch_tokens,
        &progress,
        |i, rows| {
            predicted[i] = to_ours[to_label[argmax(rows.row(0).iter().copied())]];
            Ok(())
        },
    )?;
    Ok(Row {
        name: name.to_string(),
        description: format!("pre-trained ONNX classifier {}", dir.display()),
        metrics: Scores::compute(labels, truth, &predicted),
    })
}

/// Asks the service on this host for `args.path` with a plain HTTP/1.1 GET
/// (with the API key when operational routes are protected); Ok on 200.
pub fn healthcheck(args: &HealthcheckArgs) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let settings = args.settings.settings()?;
    let timeout = std::time::Duration::from_millis(args.timeout_ms);
    // A wildcard bind is reached on loopback.
    let host = match settings.server.host.as_str() {
        "0.0.0.0" | "::" | "[::]" => "127.0.0.1",
        host => host,
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, settings.server.port))?
        .next()
        .with_context(|| format!("cannot resolve server.host {host:?}"))?;
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("nothing listens on {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let auth = if settings.security.protect_operational_routes && !settings.security.api_key.is_empty() {
        format!("authorization: Bearer {}\r\n", settings.security.api_key)
    } else {
        String::new()
    };
    write!(stream, "GET {} HTTP/1.1\r\nhost: localhost\r\n{auth}connection: close\r\n\r\n", args.path)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).with_context(|| format!("no answer from {addr} within {timeout:?}"))?;
    let status = response.lines().next().unwrap_or_default();
    if status.split(' ').nth(1) == Some("200") {
        println!("{}: ok", args.path);
        Ok(())
    } else {
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        bail!("{} answered {status:?} {body}", args.path)
    }
}
