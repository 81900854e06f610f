//! The batch commands as a user runs them: `extract` writes arrays NumPy reads,
//! `train` writes a head, `evaluate` prints the comparison and writes the JSON
//! report and the confusion-matrix picture. Tiny DistilBERT fixture, synthetic data.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::{fixture, synthetic_dataset};
use distilserve::npy;

fn distilserve(args: &[&str], config: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_distilserve"))
        .args(args)
        .args(["--config", config.to_str().unwrap(), "--model-dir", fixture("tiny-distilbert").to_str().unwrap()])
        .output()
        .expect("binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

#[test]
fn extract_train_and_evaluate_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = root.join("data");
    synthetic_dataset(&data);
    let config = root.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[classify]
heads_dir = "{heads}"
feature_cache_dir = "{cache}"

[heads.sst2]
kind = "onnx"
model_dir = "{sst2}"
label_map = {{ NEGATIVE = "neg", POSITIVE = "pos" }}
"#,
            heads = root.join("heads").display(),
            cache = root.join("cache").display(),
            sst2 = fixture("tiny-distilbert-sst2").display(),
        ),
    )
    .unwrap();

    let out = root.join("features");
    let data_arg = data.to_str().unwrap();
    distilserve(&["extract", "--data", data_arg, "--pooling", "cls_mean", "--out", out.to_str().unwrap()], &config);
    for (split, n) in [("train", 48), ("validation", 12), ("test", 12)] {
        let (shape, x) = npy::decode::<f32>(&std::fs::read(out.join(split).join("X.npy")).unwrap()).unwrap();
        assert_eq!(shape, vec![n, 64], "{split}: cls and mean of 32 each");
        assert!(x.iter().all(|v| v.is_finite()));
        let (shape, y) = npy::decode::<i64>(&std::fs::read(out.join(split).join("y.npy")).unwrap()).unwrap();
        assert_eq!(shape, vec![n]);
        assert!(y.iter().all(|&l| l == 0 || l == 1) && y.contains(&0) && y.contains(&1));
    }
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["labels"], serde_json::json!(["neg", "pos"]));
    assert_eq!(meta["pooling"], "cls_mean");

    let stdout = distilserve(&["train", "--head", "toy", "--data", data_arg, "--alphas", "0.1,1"], &config);
    assert!(stdout.contains("head toy written to"), "{stdout}");
    assert!(root.join("heads/toy.json").is_file());

    let reports = root.join("reports");
    let stdout = distilserve(&["evaluate", "--head", "toy", "--report-dir", reports.to_str().unwrap()], &config);
    for row in ["toy ", "search (", "majority", "plain-cls", "plain-mean", "sst2", "confusion matrix"] {
        assert!(stdout.contains(row), "{row:?} missing from:\n{stdout}");
    }
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(reports.join("toy-tiny-distilbert-test.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 5, "head, majority, the lecture's two plain regressions, the ONNX classifier");
    let candidates = report["candidates"].as_array().unwrap();
    assert_eq!(candidates.iter().filter(|c| c["chosen"] == true).count(), 1, "{candidates:?}");
    assert_eq!(report["encoder"], "tiny-distilbert");
    assert_eq!(rows[1]["metrics"]["accuracy"], 0.5, "majority class on a balanced split");
    assert!(rows[0]["metrics"]["accuracy"].as_f64().unwrap() >= 0.9);
    let svg = std::fs::read_to_string(reports.join("toy-tiny-distilbert-test-confusion.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("predicted label"));
}
