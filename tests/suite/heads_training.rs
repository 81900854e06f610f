//! Training logistic heads and their file: on a synthetic data set with the tiny
//! DistilBERT fixture (classifies it, reproducibly, with the feature cache and
//! its recovery; label weights from the settings), the head file (round trip;
//! truncated, altered, wrong-shaped or foreign-encoder files refused), and heads
//! kept per encoder in one heads folder (switching back trains nothing).

use crate::common;

use std::path::Path;

use common::{fixture, settings_for, settings_with_toy_head, synthetic_dataset, wait_ready, TestServer};
use distilserve::config::{HeadSettings, LabelWeighting, PoolingChoice};
use distilserve::heads::logistic::{head_path, HeadFileError, LogisticHead};
use distilserve::model::Model;
use serde_json::{json, Value};

fn head_settings(data: &Path) -> HeadSettings {
    let mut h = HeadSettings::logistic(data.to_path_buf());
    h.alphas = vec![0.1, 1.0, 10.0];
    h.cv_folds = 3;
    h
}

fn tiny_model(name: &str) -> Model {
    Model::load(&settings_for(&fixture(name)).model, 1).unwrap()
}

#[test]
fn a_head_trained_on_a_synthetic_set_classifies_it_and_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_dataset(&data);
    let mut model = tiny_model("tiny-distilbert");
    let head =
        common::train_toy_head(&mut model, &head_settings(&data), &tmp.path().join("heads"), &tmp.path().join("cache"));

    assert_eq!(head.labels, vec!["neg", "pos"]);
    assert_eq!(head.training.train_examples, 60, "cross-validation fits train and validation together");
    // The default layer options a 2-layer encoder has: "-1" and "concat(-2,-1)".
    assert_eq!(head.training.candidates.len(), 2 * 3 * 3, "2 layer options x 3 poolings x 3 alphas");
    let test = head.metrics.test.as_ref().expect("test metrics");
    assert_eq!(test.examples, 12);
    assert!(test.accuracy >= 0.9, "test accuracy {}", test.accuracy);
    assert!(head.training.held_out_accuracy >= 0.8, "held-out accuracy {}", head.training.held_out_accuracy);

    let path = head_path(&tmp.path().join("heads"), "toy").unwrap();
    let loaded = LogisticHead::load(&path).unwrap();
    assert_eq!(loaded, head);
    loaded.check_encoder(&path, &model.info).unwrap();
    // Probabilities are a distribution.
    let p = loaded.probabilities(&vec![0.0; loaded.features()]);
    assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
}

#[test]
fn a_head_in_the_settings_can_weigh_its_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_dataset(&data);
    let mut model = tiny_model("tiny-distilbert");
    let mut settings = head_settings(&data);
    settings.class_weight = LabelWeighting::Auto;
    settings.layers = vec!["-1".to_string().try_into().unwrap()];
    let head = common::train_toy_head(&mut model, &settings, &tmp.path().join("heads"), &tmp.path().join("cache"));
    let record = &head.training;
    assert_eq!(record.select_by, Some(distilserve::heads::logistic::SelectBy::MacroF1));
    // Unweighted and balanced candidates, each set and alpha: 3 poolings x 2 x 3 alphas.
    assert_eq!(record.candidates.len(), 3 * 2 * 3);
    assert!(record.candidates.iter().all(|c| c.macro_f1.is_some()));
    let effect = record.weighting_effect.as_ref().expect("auto reports both");
    assert!((0.0..=1.0).contains(&effect.unweighted_macro_f1) && (0.0..=1.0).contains(&effect.weighted_macro_f1));
    let parsed: HeadSettings =
        serde_json::from_value(serde_json::json!({"kind": "logistic", "data": "d", "class_weight": "balanced"}))
            .unwrap();
    assert_eq!(parsed.class_weight, LabelWeighting::Balanced);
}

#[test]
fn training_is_reproducible_and_reuses_the_feature_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_dataset(&data);
    let mut settings = head_settings(&data);
    settings.pooling = PoolingChoice::Mean;
    let cache = tmp.path().join("cache");
    let mut model = tiny_model("tiny-distilbert");
    let first = common::train_toy_head(&mut model, &settings, &tmp.path().join("a"), &cache);
    let entries = std::fs::read_dir(&cache).unwrap().count();
    assert_eq!(entries, 3 * 3, "cls, mean and sidecar for each of 3 splits");
    let second = common::train_toy_head(&mut model, &settings, &tmp.path().join("b"), &cache);
    assert_eq!((first.weights.clone(), first.intercept.clone()), (second.weights.clone(), second.intercept.clone()));
    assert_eq!((first.pooling, first.training.alpha), (second.pooling, second.training.alpha));

    // A damaged cache entry is ignored and rebuilt, with the same result.
    for entry in std::fs::read_dir(&cache).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "npy") {
            std::fs::write(&path, b"garbage").unwrap();
        }
    }
    let third = common::train_toy_head(&mut model, &settings, &tmp.path().join("c"), &cache);
    assert_eq!(third.weights, first.weights);
}

#[test]
fn damaged_or_foreign_head_files_are_refused_with_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthetic_dataset(&data);
    let mut settings = head_settings(&data);
    settings.pooling = PoolingChoice::Cls;
    settings.alphas = vec![1.0];
    let mut model = tiny_model("tiny-distilbert");
    let heads = tmp.path().join("heads");
    common::train_toy_head(&mut model, &settings, &heads, &tmp.path().join("cache"));
    let path = head_path(&heads, "toy").unwrap();
    let good = std::fs::read_to_string(&path).unwrap();

    // Truncated.
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    let err = LogisticHead::load(&path).unwrap_err();
    assert!(matches!(err, HeadFileError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(&path.display().to_string()));

    // One weight changed: the checksum no longer matches.
    let mut value: serde_json::Value = serde_json::from_str(&good).unwrap();
    value["weights"][0][0] = serde_json::json!(123.0);
    std::fs::write(&path, value.to_string()).unwrap();
    let err = LogisticHead::load(&path).unwrap_err().to_string();
    assert!(err.contains("checksum"), "{err}");

    // Wrong dimensions, even with a matching checksum, are refused.
    let mut head: LogisticHead = serde_json::from_str(&good).unwrap();
    head.weights[0].pop();
    head.save(&path).unwrap();
    let err = LogisticHead::load(&path).unwrap_err().to_string();
    assert!(err.contains("weight row"), "{err}");

    // Not JSON at all, or missing.
    std::fs::write(&path, b"\x00\x01binary").unwrap();
    assert!(matches!(LogisticHead::load(&path).unwrap_err(), HeadFileError::Corrupt { .. }));
    let err = LogisticHead::load(&heads.join("missing.json")).unwrap_err();
    assert!(matches!(err, HeadFileError::Unreadable { .. }));

    // Trained on DistilBERT, offered to a service running the BERT fixture.
    std::fs::write(&path, &good).unwrap();
    let head = LogisticHead::load(&path).unwrap();
    let bert = tiny_model("tiny-bert");
    let err = head.check_encoder(&path, &bert.info).unwrap_err().to_string();
    assert!(
        err.contains("tiny-distilbert") && err.contains("tiny-bert") && err.contains("distilserve train --head toy"),
        "{err}"
    );
}

#[test]
fn head_names_cannot_escape_the_heads_folder() {
    let dir = Path::new("/srv/heads");
    for bad in ["../etc/passwd", "a/b", "", ".hidden", "-flag", "x".repeat(65).as_str()] {
        assert!(head_path(dir, bad).is_err(), "{bad:?} accepted");
    }
    assert_eq!(head_path(dir, "sentiment_v2-b").unwrap(), dir.join("sentiment_v2-b.json"));
}

#[test]
fn head_files_must_be_plain_files_of_bounded_size() {
    let dir = tempfile::tempdir().unwrap();
    // A FIFO would block a reader for ever: refused before reading.
    let fifo = dir.path().join("fifo.json");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let err = LogisticHead::load(&fifo).unwrap_err().to_string();
    assert!(err.contains("not a regular file") && err.contains("fifo.json"), "{err}");
    // A huge file is refused by its size, not read.
    let huge = dir.path().join("huge.json");
    std::fs::File::create(&huge).unwrap().set_len(65 << 20).unwrap();
    let err = LogisticHead::load(&huge).unwrap_err().to_string();
    assert!(err.contains("more than a head file may have"), "{err}");
    // A folder is not a head either.
    let err = LogisticHead::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
}

async fn toy_head(server: &TestServer) -> Value {
    let heads: Value = server.get("/heads").await.json().await.unwrap();
    heads["heads"].as_array().unwrap().iter().find(|h| h["name"] == "toy").cloned().expect("toy is served")
}

/// One heads folder, two encoders: each start on the other encoder trains
/// that encoder's own head instead of refusing the active file, and switching
/// back serves the first encoder's head again without training it anew.
#[tokio::test]
async fn heads_are_kept_per_encoder() {
    let root = tempfile::tempdir().unwrap();
    let distilbert = settings_with_toy_head(root.path(), true);
    let mut bert = distilbert.clone();
    bert.model.dir = fixture("tiny-bert");

    let server = TestServer::start(distilbert.clone()).await;
    wait_ready(&server).await;
    let first = toy_head(&server).await;
    assert_eq!(first["encoder"], "tiny-distilbert");
    // Of the default layer options, a 2-layer encoder has "-1" and "concat(-2,-1)"
    // ("mean(-4,-3,-2,-1)" is left out of its search).
    let layers = first["layers"].as_str().expect("pooled hidden states are reported");
    assert!(["-1", "concat(-2,-1)"].contains(&layers), "{layers}");
    server.stop().await;

    let server = TestServer::start(bert).await;
    wait_ready(&server).await;
    let second = toy_head(&server).await;
    assert_eq!(second["encoder"], "tiny-bert");
    assert_ne!(second["version"], first["version"]);
    let answer = server.post_json("/classify", json!({"inputs": ["good fun"]})).await;
    assert_eq!(answer.status(), 200);
    server.stop().await;

    // Back to DistilBERT: its own version, loaded (ready at once), not retrained.
    let server = TestServer::start(distilbert).await;
    assert_eq!(server.get("/health").await.status(), 200, "no training needed");
    let again = toy_head(&server).await;
    assert_eq!(again["version"], first["version"]);
    assert_eq!(again["encoder"], "tiny-distilbert");
    server.stop().await;
}
