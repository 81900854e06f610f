//! Batch work from the command line: `extract` features of a data set to
//! `.npy`, `train` a head, `evaluate` it against baselines; `healthcheck`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::atomic_file::write_atomic;
use crate::cli::{EvaluateArgs, ExtractArgs, HealthcheckArgs, TrainArgs};
use crate::config::{HeadKind, HeadSettings, Settings};
use crate::data::Dataset;
use crate::features::{layers_to_extract, FeatureCache, Progress};
use crate::heads::logistic::{head_path, LogisticHead};
use crate::heads::metrics::Metrics;
use crate::heads::onnx::map_labels;
use crate::heads::search::plain_logistic;
use crate::heads::training::{save_head, train_head, Extraction};
use crate::model::Model;
use crate::npy;
use crate::pooling::{argmax, FeaturePooling};
use crate::report::{CandidateRow, Report, Row};

/// The encoder for a batch job: one session with every configured thread.
fn load_model(settings: &Settings) -> anyhow::Result<Model> {
    Model::load(&settings.model, 1)
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
        source: &mut model.encoders[0],
        info: &info,
        tokenizer: &tokenizer,
        cache: &cache,
        max_batch_size: settings.batching.max_batch_size,
        max_batch_tokens: settings.batching.max_batch_tokens,
    };
    job(&mut extraction)
}

pub fn extract(args: &ExtractArgs) -> anyhow::Result<()> {
    let settings = args.settings.settings()?;
    let dataset = Dataset::open(&args.data)?;
    let splits: Vec<String> = if args.splits.is_empty() {
        ["train", "validation", "test"].iter().filter(|s| dataset.has_split(s)).map(|s| s.to_string()).collect()
    } else {
        args.splits.clone()
    };
    let mut model = load_model(&settings)?;
    let data_name = args.data.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut written = BTreeMap::new();
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
            let dir = args.out.join(name);
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
        "model": model.info.name,
        "model_fingerprint": model.info.fingerprint,
        "max_tokens": model.info.max_tokens,
        "data": args.data,
        "splits": written,
    });
    write_atomic(&args.out.join("meta.json"), serde_json::to_string_pretty(&meta)?.as_bytes())?;
    Ok(())
}

/// The head's settings: its config table, or a logistic head on `--data`, with flags on top.
fn head_settings(settings: &Settings, args: &TrainArgs) -> anyhow::Result<HeadSettings> {
    let mut head = match (settings.heads.get(&args.head), &args.data) {
        (Some(h), _) => h.clone(),
        (None, Some(data)) => HeadSettings::logistic(data.clone()),
        (None, None) => {
            bail!("head {:?} is not configured ([heads.{}]); give --data to train it", args.head, args.head)
        }
    };
    if head.kind != HeadKind::Logistic {
        bail!("head {:?} is of kind {:?}: only logistic heads are trained", args.head, head.kind);
    }
    if let Some(d) = &args.data {
        head.data = Some(d.clone());
    }
    if let Some(p) = args.pooling {
        head.pooling = p;
    }
    if let Some(a) = &args.alphas {
        head.alphas = a.clone();
    }
    if let Some(m) = args.max_iterations {
        head.max_iterations = m;
    }
    if let Some(k) = args.cv_folds {
        head.cv_folds = k;
    }
    Ok(head)
}

pub fn train_command(args: &TrainArgs) -> anyhow::Result<()> {
    let settings = args.settings.settings()?;
    let head_settings = head_settings(&settings, args)?;
    let mut model = load_model(&settings)?;
    let mut head =
        with_extraction(&settings, &mut model, |extraction| train_head(&args.head, &head_settings, extraction))?;
    let path = save_head(&mut head, &crate::heads::store::HeadStore::of(&settings))?;
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

pub fn evaluate(args: &EvaluateArgs) -> anyhow::Result<()> {
    let settings = args.settings.settings()?;
    let path = head_path(&settings.classify.heads_dir, &args.head)?;
    let mut model = load_model(&settings)?;
    let head = crate::heads::load_logistic_for_encoder(&settings, &args.head, &model.info)?.with_context(|| {
        format!(
            "no head {} for encoder {} in {}: run `distilserve train --head {}`",
            args.head,
            model.info.name,
            path.display(),
            args.head
        )
    })?;
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
            metrics: Metrics::compute(&labels, &split.labels, &predicted),
        });

        // (a) The majority class of the train split.
        let mut counts = vec![0usize; labels.len()];
        train_split.labels.iter().for_each(|&l| counts[l] += 1);
        let majority = (0..labels.len()).max_by_key(|&l| (counts[l], std::cmp::Reverse(l))).unwrap_or(0);
        rows.push(Row {
            name: "majority".into(),
            description: format!("always {:?}, the most frequent train label", labels[majority]),
            metrics: Metrics::compute(&labels, &split.labels, &vec![majority; split.labels.len()]),
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
                metrics: Metrics::compute(&labels, &split.labels, &predicted),
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
        &mut model.encoders[0],
        &tokenizer,
        texts,
        crate::layers::LayerMask::LAST,
        settings.batching.max_batch_size,
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
        metrics: Metrics::compute(labels, truth, &predicted),
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
