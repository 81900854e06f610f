//! POST /classify, GET /heads and /heads/{name}: a logistic head trained at
//! startup (live but not ready meanwhile), loaded from disk after a restart, the
//! ONNX classifier head, refusal of damaged or missing head files at startup
//! (tiny DistilBERT fixture over a socket), and the default head on the real
//! model and data (accuracy, parity with scikit-learn).

use crate::common;

use std::collections::BTreeMap;
use std::process::Command;

use common::{
    default_model_dir, error_of, fixture, python, reference, settings_with_toy_head, tiny_distilbert, wait_ready,
    TestServer,
};
use distilserve::startup::Application;
use serde_json::{json, Value};

/// Readiness as `/tei/health` (status) and the `distilserve_ready` metric give
/// it: one answer with `/health/ready`'s (`AppState::readiness`).
async fn readiness_elsewhere(server: &TestServer) -> (u16, i64) {
    let tei = server.get("/tei/health").await.status().as_u16();
    let metrics = server.get("/metrics").await.text().await.unwrap();
    let ready = metrics.lines().find_map(|l| l.strip_prefix("distilserve_ready ")).expect("distilserve_ready");
    (tei, ready.trim().parse().unwrap())
}

#[tokio::test]
async fn a_head_trained_at_startup_serves_and_is_loaded_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut settings = settings_with_toy_head(tmp.path(), true);
    // Slow the queue down so that the training is still running when we look.
    settings.batching.max_wait_ms = 400;
    let server = TestServer::start(settings).await;

    // Live but not ready while the head trains; /classify says so, /embed works.
    let health = server.get("/health").await;
    assert_eq!(health.status(), 503);
    assert_eq!(health.json::<Value>().await.unwrap()["status"], "starting");
    assert_eq!(readiness_elsewhere(&server).await, (503, 0), "/tei/health and distilserve_ready agree");
    assert_eq!(server.get("/health/live").await.status(), 200, "live while training");
    let (status, code, _) = error_of(server.post_json("/classify", json!({"inputs": "good"})).await).await;
    assert_eq!((status, code.as_str()), (503, "not_ready"));
    let heads: Value = server.get("/heads").await.json().await.unwrap();
    assert_eq!(heads["pending"], json!(["toy"]));
    assert_eq!(server.post_json("/embed", json!({"inputs": "good", "pooling": "cls"})).await.status(), 200);

    wait_ready(&server).await;
    assert_eq!(readiness_elsewhere(&server).await, (200, 1), "/tei/health and distilserve_ready agree");
    let body: Value = server
        .post_json("/classify", json!({"inputs": ["good great fun", "bad dull boring"]}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["head"], "toy");
    // The version /heads reports answered; a logistic head reads the service's encoder.
    let detail: Value = server.get("/heads/toy").await.json().await.unwrap();
    let info: Value = server.get("/info").await.json().await.unwrap();
    assert_eq!(body["head_version"], detail["version"]);
    assert_eq!(body["encoder_fingerprint"], info["model"]["fingerprint"]);
    let predictions = body["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 2);
    assert_eq!((predictions[0]["label"].as_str(), predictions[1]["label"].as_str()), (Some("pos"), Some("neg")));
    for p in predictions {
        let probabilities: BTreeMap<String, f64> = serde_json::from_value(p["probabilities"].clone()).unwrap();
        assert_eq!(probabilities.keys().collect::<Vec<_>>(), vec!["neg", "pos"]);
        assert!((probabilities.values().sum::<f64>() - 1.0).abs() < 1e-5);
        let top = probabilities.iter().max_by(|a, b| a.1.total_cmp(b.1)).unwrap();
        assert_eq!((top.0.as_str(), *top.1), (p["label"].as_str().unwrap(), p["probability"].as_f64().unwrap()));
    }
    let first = body["predictions"].clone();
    let timed = server.post_json("/classify", json!({"inputs": "good"})).await;
    assert!(timed.headers().contains_key("x-inference-time-ms"));

    let heads: Value = server.get("/heads").await.json().await.unwrap();
    assert_eq!(heads["default_head"], "toy");
    assert_eq!(heads["pending"], json!([]));
    assert_eq!(heads["heads"][0]["name"], "toy");
    assert_eq!(heads["heads"][0]["kind"], "logistic");
    assert!(heads["heads"][0]["test_accuracy"].as_f64().unwrap() >= 0.9);
    let detail: Value = server.get("/heads/toy").await.json().await.unwrap();
    assert_eq!(detail["metrics"]["test"]["confusion"].as_array().unwrap().len(), 2);
    assert_eq!(detail["encoder_stamp"]["name"], "tiny-distilbert");
    assert_eq!(detail["encoder"], "tiny-distilbert", "the summary's name, not a second `encoder` key");
    let raw = server.get("/heads/toy").await.text().await.unwrap();
    assert_eq!(raw.matches("\"encoder\":").count(), 1, "one `encoder` key: {raw}");
    assert!(detail["training"]["candidates"].as_array().unwrap().len() >= 2);
    server.stop().await;

    // Restarted: loaded from disk, ready at once, same answers.
    let server = TestServer::start(settings_with_toy_head(tmp.path(), false)).await;
    assert_eq!(server.get("/health").await.status(), 200);
    let again: Value = server
        .post_json("/classify", json!({"inputs": ["good great fun", "bad dull boring"], "head": "toy"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["predictions"], first);
    server.stop().await;
}

#[tokio::test]
async fn classify_errors_are_json_with_the_right_status() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start(settings_with_toy_head(tmp.path(), true)).await;
    wait_ready(&server).await;
    let cases = vec![
        (server.post_json("/classify", json!({"inputs": "good", "head": "nope"})).await, 404, "not_found"),
        (server.post_json("/classify", json!({"inputs": "good", "head": "../etc/passwd"})).await, 404, "not_found"),
        (server.post_json("/classify", json!({"inputs": []})).await, 422, "empty_input"),
        (server.post_json("/classify", json!({"inputs": [""]})).await, 422, "empty_input"),
        (server.post_json("/classify", json!({"text": "good"})).await, 422, "invalid_request"),
        (
            server.post_json("/classify", json!({"inputs": "the movie is good ".repeat(40), "truncate": false})).await,
            422,
            "input_too_long",
        ),
        (server.get("/heads/nope").await, 404, "not_found"),
        (
            server
                .client
                .post(server.url("/classify"))
                .header("content-type", "application/json")
                .body("{")
                .send()
                .await
                .unwrap(),
            400,
            "invalid_json",
        ),
    ];
    for (response, status, code) in cases {
        let (got_status, got_code, message) = error_of(response).await;
        assert_eq!((got_status, got_code.as_str()), (status, code), "{message}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_pretrained_onnx_classifier_is_served_as_a_head() {
    let server = TestServer::start(common::settings_with_onnx_head()).await;

    let expected = reference(&fixture("tiny-distilbert-sst2/expected.json"));
    let texts: Vec<&str> = expected.items.iter().map(|i| i.text.as_str()).collect();
    let body: Value = server.post_json("/classify", json!({"inputs": texts})).await.json().await.unwrap();
    for (item, prediction) in expected.items.iter().zip(body["predictions"].as_array().unwrap()) {
        let logits = item.logits.as_ref().unwrap();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        let (neg, pos) = (exp[0] / sum, exp[1] / sum);
        assert!((prediction["probabilities"]["neg"].as_f64().unwrap() as f32 - neg).abs() < 1e-4);
        assert!((prediction["probabilities"]["pos"].as_f64().unwrap() as f32 - pos).abs() < 1e-4);
        assert_eq!(prediction["label"], if pos > neg { "pos" } else { "neg" });
    }
    let heads: Value = server.get("/heads").await.json().await.unwrap();
    assert_eq!(heads["heads"][0]["kind"], "onnx");
    // The head's own runtime is visible in /metrics beside the encoder's, and
    // stopping the server drains it (stop() waits for every runtime's workers).
    let metrics = server.get("/metrics").await.text().await.unwrap();
    let computed = format!("distilserve_sequences_total{{runtime=\"head:sst2\"}} {}\n", texts.len());
    assert!(metrics.contains(&computed), "{metrics}");
    assert!(
        metrics.contains("distilserve_model_info{runtime=\"head:sst2\",name=\"tiny-distilbert-sst2\""),
        "{metrics}"
    );
    assert!(metrics.contains("distilserve_sequences_total{runtime=\"encoder\"} 0\n"), "{metrics}");
    // Which version answered, in the body and a header, the same id /heads reports.
    let version = heads["heads"][0]["version"].as_str().unwrap().to_string();
    assert_eq!(version.len(), 16);
    let response = server.post_json("/classify", json!({"inputs": "good"})).await;
    assert_eq!(response.headers()["x-head-version"], version.as_str());
    let fingerprint = response.headers()["x-encoder-fingerprint"].to_str().unwrap().to_string();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["head_version"], version.as_str());
    assert_eq!(answer["encoder_fingerprint"], fingerprint.as_str());
    // An ONNX head reads its own model, not the service's encoder.
    assert!(version.len() == 16 && fingerprint.starts_with(&version), "{version} {fingerprint}");
    let info: Value = server.get("/info").await.json().await.unwrap();
    assert_ne!(info["model"]["fingerprint"], fingerprint.as_str());
    let embed = server.post_json("/embed", json!({"inputs": "good"})).await;
    assert_eq!(embed.headers()["x-encoder-fingerprint"], info["model"]["fingerprint"].as_str().unwrap());
    assert_eq!(heads["heads"][0]["labels"], json!(["neg", "pos"]));
    server.stop().await;
}

#[tokio::test]
async fn damaged_or_missing_head_files_stop_startup_with_the_file_named() {
    let tmp = tempfile::tempdir().unwrap();
    // Train once, then damage the file.
    let server = TestServer::start(settings_with_toy_head(tmp.path(), true)).await;
    wait_ready(&server).await;
    server.stop().await;
    let path = tmp.path().join("heads/toy.json");
    let good = std::fs::read(&path).unwrap();
    std::fs::write(&path, &good[..good.len() - 10]).unwrap();
    let err = Application::build(settings_with_toy_head(tmp.path(), true)).await.err().expect("refused");
    let message = format!("{err:#}");
    assert!(message.contains(&path.display().to_string()) && message.contains("corrupt or truncated"), "{message}");

    // Missing, and not to be trained: the error says how to make it.
    std::fs::remove_file(&path).unwrap();
    let err = Application::build(settings_with_toy_head(tmp.path(), false)).await.err().expect("refused");
    let message = format!("{err:#}");
    assert!(message.contains("missing") && message.contains("distilserve train --head toy"), "{message}");

    // A head trained on another encoder is refused too.
    std::fs::write(&path, &good).unwrap();
    let mut settings = settings_with_toy_head(tmp.path(), false);
    settings.model.dir = fixture("tiny-bert");
    let err = Application::build(settings).await.err().expect("refused");
    assert!(format!("{err:#}").contains("retrain"), "{err:#}");
}

#[tokio::test]
async fn a_head_that_fails_to_train_at_startup_is_reported_and_embed_keeps_serving() {
    // Stopping would make a crash loop (the next start fails the same way).
    let tmp = tempfile::tempdir().unwrap();
    let mut settings = settings_with_toy_head(tmp.path(), true);
    settings.heads.get_mut("toy").unwrap().data = Some(tmp.path().join("no-such-data"));
    let server = TestServer::start(settings).await;
    wait_ready(&server).await;
    let heads: serde_json::Value = server.get("/heads").await.json().await.unwrap();
    let reason = heads["failed"]["toy"].as_str().expect("the failure is reported");
    assert!(reason.contains("no-such-data"), "{reason}");
    assert_eq!(heads["pending"], json!([]));
    let (status, code, _) = error_of(server.post_json("/classify", json!({"inputs": "good"})).await).await;
    assert_eq!((status, code.as_str()), (503, "head_failed"));
    assert_eq!(server.post_json("/embed", json!({"inputs": "good"})).await.status(), 200);
    assert_eq!(server.get("/health/live").await.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn an_onnx_head_whose_labels_do_not_match_its_logits_is_refused_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sst2");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture("tiny-distilbert-sst2")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let manifest_path = dir.join("manifest.json");
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest["labels"] = json!(["NEGATIVE", "POSITIVE", "NEUTRAL"]);
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let mut settings = common::settings_with_onnx_head();
    let head = settings.heads.get_mut("sst2").unwrap();
    head.model_dir = Some(dir);
    head.label_map.insert("NEUTRAL".into(), "neutral".into());
    let err = Application::build(settings).await.err().expect("refused");
    let message = format!("{err:#}");
    assert!(message.contains("2 logits") && message.contains("3 labels"), "{message}");
}

/// The default configuration end to end: the `sentiment` head is missing, so
/// the service trains it on Rotten Tomatoes at startup (live, not ready), then
/// classifies; restarted, it loads the head from disk and is ready at once.
#[tokio::test]
async fn default_sentiment_head_trains_at_startup_and_classifies() {
    let dir = default_model_dir();
    let heads = tempfile::tempdir().unwrap();
    let mut settings = distilserve::config::Settings::defaults();
    settings.server.host = "127.0.0.1".into();
    settings.server.port = 0;
    settings.model.dir = dir.clone();
    settings.classify.heads_dir = heads.path().to_path_buf();
    // Features are cached in the repository's cache folder, as in normal use.
    settings.classify.feature_cache_dir = common::repo_path("features/cache");
    for (key, data) in settings.heads.iter_mut() {
        assert_eq!(key, "sentiment");
        data.data = Some(common::repo_path("data/rotten_tomatoes"));
    }

    let server = TestServer::start(settings.clone()).await;
    let started = std::time::Instant::now();
    while server.get("/health").await.status() != 200 {
        assert!(started.elapsed().as_secs() < 900, "the default head did not train within 15 minutes");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    eprintln!("default head trained at startup in {:.1} s", started.elapsed().as_secs_f64());

    let detail: Value = server.get("/heads/sentiment").await.json().await.unwrap();
    let test_accuracy = detail["metrics"]["test"]["accuracy"].as_f64().unwrap();
    eprintln!(
        "sentiment head: pooling {}, alpha {}, held-out (cv) accuracy {:.4}, test accuracy {test_accuracy:.4}",
        detail["pooling"],
        detail["training"]["alpha"],
        detail["training"]["held_out_accuracy"].as_f64().unwrap()
    );
    assert_eq!(detail["labels"], json!(["neg", "pos"]));
    // Measured 0.7730 with the committed search; a plain LogisticRegression()
    // on raw [CLS] features reaches 0.72 (docs/heads.md, "Results on Rotten Tomatoes").
    assert!(test_accuracy >= 0.77, "test accuracy {test_accuracy}");
    assert_eq!(detail["metrics"]["test"]["examples"], 1031);
    // The exact graph's training and the comparison follow readiness and may
    // rewrite the head's file: the answer compared after the restart is the
    // settled head's (before, this raced the comparison: a fast machine
    // finished it before the restart, a slow one after).
    compared(&server, "sentiment").await;

    let body: Value = server
        .post_json(
            "/classify",
            json!({"inputs": ["a gripping, funny and moving film", "a dull, lifeless and boring mess"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["predictions"][0]["label"], "pos", "{body}");
    assert_eq!(body["predictions"][1]["label"], "neg", "{body}");
    server.stop().await;

    // Parity: scikit-learn trained with the head's protocol on the same
    // features (bench/parity.py) is within 1 point of the head.
    let out = Command::new(python())
        .arg(common::repo_path("bench/parity.py"))
        .args(["--head", heads.path().join("sentiment.json").to_str().unwrap()])
        .args(["--bin", env!("CARGO_BIN_EXE_distilserve")])
        .output()
        .expect("python runs");
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("{report}");
    assert!(out.status.success(), "parity failed:\n{report}\n{}", String::from_utf8_lossy(&out.stderr));

    // Restart: the head comes from disk and the service is ready at once.
    for head in settings.heads.values_mut() {
        head.train_on_startup = false;
    }
    let server = TestServer::start(settings).await;
    assert_eq!(server.get("/health").await.status(), 200);
    // The same request: on the int8 graph a text's features depend a little on
    // the batch it shares (activations are quantised per batch), so the same
    // texts together give the same answer, exactly.
    let again: Value = server
        .post_json(
            "/classify",
            json!({"inputs": ["a gripping, funny and moving film", "a dull, lifeless and boring mess"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["predictions"], body["predictions"]);
    assert_eq!(again["head_version"], body["head_version"]);
    server.stop().await;
}

/// `classify.model_file`: the heads are trained and served on a second graph
/// of the model, in a runtime of its own, while /embed keeps the fp32 graph's
/// exact hidden states.
/// A copy of the tiny DistilBERT fixture in `root/model` with a second graph,
/// `model.int8.onnx`, made from its `model.onnx` by `python_code` (given the
/// two paths as `sys.argv[1:3]`).
fn model_with_second_graph(root: &std::path::Path, python_code: &str) -> std::path::PathBuf {
    let model = root.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for entry in std::fs::read_dir(fixture("tiny-distilbert")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, model.join(path.file_name().unwrap())).unwrap();
    }
    let made = Command::new(python())
        .current_dir(common::repo_path(""))
        .args(["-c", python_code])
        .arg(model.join("model.onnx"))
        .arg(model.join("model.int8.onnx"))
        .output()
        .expect("python runs");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    model
}

/// Runs tests/export/int8_outliers.py: the export's `quantise_int8` on the
/// fixture's graph with a planted outlier channel, written to `argv[2]`; its
/// JSON measurements.
const EXPORT_INT8_WITH_OUTLIER: &str = "import runpy, sys; sys.argv[0] = 'tests/export/int8_outliers.py'; \
     runpy.run_path(sys.argv[0], run_name='__main__')";

/// The export keeps an encoder's outlier channels fp32 where quantising whole
/// moves its output by more than 20% (scripts/export_model.py `quantise_int8`):
/// on the tiny DistilBERT with one LayerNorm channel planted 40x above the rest,
/// the split finds that channel alone, computes the same function in fp32, and
/// its int8 graph is several times closer to fp32 than plain dynamic
/// quantisation (45% -> 8% on all-mpnet-base-v2); without the plant the graph is
/// quantised whole, as plain.
#[test]
fn the_int8_export_keeps_outlier_channels_fp32() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(python())
        .current_dir(common::repo_path(""))
        .args(["-c", EXPORT_INT8_WITH_OUTLIER])
        .arg(fixture("tiny-distilbert/model.onnx"))
        .arg(tmp.path().join("model.int8.onnx"))
        .output()
        .expect("python runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let measured: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(measured["split_channels"], json!([measured["planted_channel"]]), "{measured}");
    assert!(measured["split_fp32_max_abs_diff"].as_f64().unwrap() < 1e-4, "{measured}");
    let (plain, split) =
        (measured["int8_plain_error"].as_f64().unwrap(), measured["int8_split_error"].as_f64().unwrap());
    assert!(split * 3.0 < plain, "{measured}");
    assert!(measured["summary"]["plain_error"].as_f64().unwrap() > 0.2, "{measured}");
    // Without the plant quantising whole keeps the output within 20%, and the
    // export does just that.
    let unplanted = &measured["unplanted"];
    assert!(unplanted["summary"]["plain_error"].as_f64().unwrap() <= 0.2, "{measured}");
    assert_eq!(unplanted["summary"]["inputs_split"], 0, "{measured}");
    assert_eq!(unplanted["same_as_plain"], true, "{measured}");
}

/// A dynamically quantised graph (ONNX Runtime's `quantize_dynamic`, as the
/// export's `model.int8.onnx`, here with an outlier channel split off as the
/// export does) scales each call's activations by the whole batch, so
/// distilserve runs it one sequence per call: a text's hidden states are the
/// same, bit for bit, alone and in a request of texts of other lengths (with
/// batching they moved, and a served label with them).
#[tokio::test]
async fn a_dynamically_quantised_graph_answers_each_text_as_if_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_with_second_graph(tmp.path(), EXPORT_INT8_WITH_OUTLIER);
    let mut settings = tiny_distilbert();
    settings.model.dir = model;
    settings.model.file = "model.int8.onnx".into();
    let server = TestServer::start(settings).await;
    wait_ready(&server).await;
    let info: Value = server.get("/info").await.json().await.unwrap();
    assert_eq!(info["model"]["one_sequence_per_call"], true, "{info}");

    let reference = reference(&fixture("tiny-distilbert/expected.json"));
    let texts: Vec<&str> = reference.items.iter().map(|i| i.text.as_str()).collect();
    let embed = |inputs: Value| server.post_json("/embed", json!({"inputs": inputs, "pooling": "mean"}));
    let together: Value = embed(json!(texts)).await.json().await.unwrap();
    for (i, text) in texts.iter().enumerate() {
        let alone: Value = embed(json!([text])).await.json().await.unwrap();
        assert_eq!(alone["embeddings"][0], together["embeddings"][i], "{text:?}");
    }
    server.stop().await;
}

/// The default model's int8 graph runs in several single-threaded sessions
/// beside the exact graph: each weight they share is held once
/// (`weights::SharedWeights`). The word embeddings, fp32 in both graphs, are
/// one tensor for all three sessions; every int8 weight one for its two; the
/// exact graph's own weights, used by one session, are left to ONNX Runtime.
/// And the sessions answer as they did with copies of their own, bit for bit.
#[test]
fn the_sessions_of_both_graphs_hold_one_copy_of_the_weights_they_share() {
    use distilserve::forward::ForwardPass;
    use distilserve::model::{ort_environment, Model};
    use distilserve::weights::{initializers, SharedWeights, MIN_SHARED_BYTES};
    let dir = common::default_model_dir();
    let (exact, int8) = (dir.join("model.onnx"), dir.join("model.int8.onnx"));
    let settings = common::settings_for(&dir);
    ort_environment(&settings.model.onnxruntime_library).unwrap();
    let plan = SharedWeights::plan(&[(exact.clone(), 1), (int8.clone(), 2)]).unwrap();

    let embeddings = |path: &std::path::Path| {
        plan.of(path).iter().find(|(name, _)| name.ends_with("word_embeddings.weight")).map(|(_, v)| v.clone())
    };
    let (in_exact, in_int8) = (embeddings(&exact).expect("exact: shared"), embeddings(&int8).expect("int8: shared"));
    assert!(std::sync::Arc::ptr_eq(&in_exact, &in_int8), "one tensor for both graphs");
    for (name, value) in plan.of(&exact) {
        let twin = plan.of(&int8).iter().find(|(n, _)| n == name).map(|(_, v)| v);
        assert!(twin.is_some_and(|t| std::sync::Arc::ptr_eq(t, value)), "{name}: shared with one session only");
    }
    assert!(plan.of(&exact).len() <= 3, "the exact graph shares its embeddings alone: {}", plan.of(&exact).len());
    let large = initializers(&int8).unwrap().into_iter().filter(|t| t.raw_len >= MIN_SHARED_BYTES).count();
    assert_eq!(plan.of(&int8).len(), large, "every large int8-graph tensor is shared by its sessions");
    let (shared_mb, instead_mb) = (plan.bytes >> 20, plan.bytes_unshared >> 20);
    assert!((50..70).contains(&shared_mb) && instead_mb > 2 * shared_mb, "{shared_mb} MiB instead of {instead_mb}");

    let mut heads_graph = settings.model.clone();
    heads_graph.file = "model.int8.onnx".into();
    heads_graph.intra_threads = 1;
    let mut sharing = Model::load_with(&heads_graph, 2, None, &plan).unwrap();
    let mut alone = Model::load_with(&heads_graph, 1, None, &SharedWeights::none()).unwrap();
    let text = sharing.tokenizer.encode(0, "a gripping, funny and moving film", true).unwrap();
    let expected = alone.sessions[0].encode(&[&text]).unwrap();
    for session in &mut sharing.sessions {
        assert_eq!(session.encode(&[&text]).unwrap(), expected, "a sharing session answers as one alone");
    }
}

/// `/classify` of a clearly positive and a clearly negative text by `head`
/// (else the default), its labels checked: the answer.
async fn classify_pos_neg(server: &TestServer, head: Option<&str>) -> Value {
    let mut body = json!({"inputs": ["good great fun", "bad dull boring"]});
    if let Some(head) = head {
        body["head"] = head.into();
    }
    let answer: Value = server.post_json("/classify", body).await.json().await.unwrap();
    assert_eq!(answer["predictions"][0]["label"], "pos", "{answer}");
    assert_eq!(answer["predictions"][1]["label"], "neg", "{answer}");
    answer
}

/// `GET /heads/{name}` once the head's graphs are compared (the head is
/// served on the heads' graph as soon as it is trained there; the exact
/// graph's training and the comparison follow): each graph `served` or `kept`.
async fn compared(server: &TestServer, name: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let detail: Value = server.get(&format!("/heads/{name}")).await.json().await.unwrap();
        let phases: Vec<&str> =
            detail["graphs"].as_array().expect("graphs").iter().filter_map(|g| g["phase"].as_str()).collect();
        assert!(!phases.contains(&"failed"), "{detail}");
        if phases.len() == 2 && phases.iter().all(|p| *p == "served" || *p == "kept") {
            return detail;
        }
        assert!(std::time::Instant::now() < deadline, "graphs not compared in 2 minutes: {detail}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Head `name`'s entry in `GET /heads`.
async fn served_head(server: &TestServer, name: &str) -> Value {
    let heads: Value = server.get("/heads").await.json().await.unwrap();
    heads["heads"].as_array().unwrap().iter().find(|h| h["name"] == name).expect("head served").clone()
}

#[tokio::test]
async fn heads_run_on_their_own_graph_while_embed_keeps_the_exact_one() {
    let tmp = tempfile::tempdir().unwrap();
    // The same weights in another file (its own fingerprint): the head keeps its
    // accuracy there exactly, so the comparison keeps it on this graph. (A
    // quantised copy of this 60-example toy may lose one held-out example,
    // 1.7 points: the next test is that case.)
    let model = model_with_second_graph(
        tmp.path(),
        "import sys, onnx; m = onnx.load(sys.argv[1]); m.producer_name = 'second graph'; onnx.save(m, sys.argv[2])",
    );
    let mut settings = settings_with_toy_head(tmp.path(), true);
    settings.model.dir = model.clone();
    settings.classify.model_file = "model.int8.onnx".into();
    let server = TestServer::start(settings).await;
    wait_ready(&server).await;

    // /embed: the fp32 graph, as PyTorch computes it.
    let reference = reference(&fixture("tiny-distilbert/expected.json"));
    let texts: Vec<&str> = reference.items.iter().map(|i| i.text.as_str()).collect();
    let embed = server.post_json("/embed", json!({"inputs": texts})).await;
    let embed_fingerprint = embed.headers()["x-encoder-fingerprint"].to_str().unwrap().to_string();
    let body: Value = embed.json().await.unwrap();
    for (i, item) in reference.items.iter().enumerate() {
        let got: Vec<Vec<f32>> = serde_json::from_value(body["embeddings"][i].clone()).unwrap();
        let want = item.last_hidden_state.as_ref().unwrap();
        assert!(common::max_abs_diff(&got.concat(), &want.concat()) < 1e-4, "{:?}", item.text);
    }

    // The head: trained on the second graph's features, served there.
    let toy = served_head(&server, "toy").await;
    assert_eq!(toy["graph"], "model.int8.onnx", "{toy}");
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("heads/toy.json")).unwrap()).unwrap();
    let head_fingerprint = file["encoder"]["fingerprint"].as_str().unwrap().to_string();
    assert_ne!(head_fingerprint, embed_fingerprint, "the head was trained on the fp32 graph");
    let answer = classify_pos_neg(&server, None).await;
    assert_eq!(answer["encoder_fingerprint"], head_fingerprint.as_str(), "{answer}");

    // Two runtimes, each labelled with its graph in /metrics.
    let metrics = server.get("/metrics").await.text().await.unwrap();
    let info_of = |runtime: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with("distilserve_model_info") && l.contains(&format!("runtime=\"{runtime}\"")))
            .unwrap_or_else(|| panic!("no model_info for {runtime}:\n{metrics}"))
            .to_string()
    };
    assert!(info_of("encoder").contains("file=\"model.onnx\""));
    let heads_graph = info_of("heads_graph");
    assert!(heads_graph.contains("file=\"model.int8.onnx\"") && heads_graph.contains(&head_fingerprint));
    server.stop().await;

    // A graph that does not exist stops startup, naming the setting.
    let mut settings = settings_with_toy_head(tmp.path(), true);
    settings.model.dir = model;
    settings.classify.model_file = "model.missing.onnx".into();
    let error = Application::build(settings).await.err().expect("refused");
    assert!(format!("{error:#}").contains("classify.model_file"), "{error:#}");
}

/// A second graph with every large weight drowned in noise, as a quantisation
/// gone wrong would leave it: a head trained on its features is no better than chance.
const USELESS_SECOND_GRAPH: &str = "import sys, numpy as np, onnx; from onnx import numpy_helper; \
     m = onnx.load(sys.argv[1]); rng = np.random.default_rng(0)\n\
     for t in m.graph.initializer:\n\
     \ta = numpy_helper.to_array(t)\n\
     \tif a.dtype == np.float32 and a.size >= 1024: t.CopyFrom(numpy_helper.from_array((a + rng.normal(0, 50 * a.std(), a.shape)).astype(np.float32), t.name))\n\
     onnx.save(m, sys.argv[2])";

/// The heads' graph is worth it only where the head keeps its accuracy there:
/// here it is made useless on purpose (every large weight drowned in noise, as
/// a quantisation gone wrong would), so the head trained on it loses to the
/// one trained on the exact graph and is served on the exact graph, which
/// `GET /heads` says and a restart keeps.
#[tokio::test]
async fn a_head_that_loses_accuracy_on_the_heads_graph_is_served_on_the_exact_one() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_with_second_graph(tmp.path(), USELESS_SECOND_GRAPH);
    let mut settings = settings_with_toy_head(tmp.path(), true);
    settings.model.dir = model;
    settings.classify.model_file = "model.int8.onnx".into();
    let server = TestServer::start(settings.clone()).await;
    wait_ready(&server).await;
    let embed = server.post_json("/embed", json!({"inputs": "good"})).await;
    let exact_fingerprint = embed.headers()["x-encoder-fingerprint"].to_str().unwrap().to_string();
    // Ready with the head on the heads' graph; the comparison then swaps in the exact graph's.
    let detail = compared(&server, "toy").await;
    assert_eq!(
        detail["graphs"],
        json!([{"graph": "model.int8.onnx", "phase": "kept"}, {"graph": "model.onnx", "phase": "served"}]),
        "{detail}"
    );

    let toy = served_head(&server, "toy").await;
    assert_eq!(toy["graph"], "model.onnx", "{toy}");
    let reason = toy["graph_reason"].as_str().expect("a reason");
    assert!(reason.contains("model.int8.onnx") && reason.contains("more than the 0.5 allowed"), "{reason}");
    let answer = classify_pos_neg(&server, None).await;
    assert_eq!(answer["encoder_fingerprint"], exact_fingerprint.as_str(), "{answer}");
    // Both heads kept in the folder's history, the served one active.
    let detail: Value = server.get("/heads/toy").await.json().await.unwrap();
    assert_eq!(detail["versions"].as_array().map(|v| v.len()), Some(2), "{detail}");
    // No head left on the heads' graph: its runtime is closed once the
    // startup heads are in (just after ready), gone from /metrics.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let metrics = server.get("/metrics").await.text().await.unwrap();
        let runtimes: Vec<String> =
            metrics.lines().filter(|l| l.starts_with("distilserve_model_info")).map(String::from).collect();
        assert!(runtimes.iter().any(|l| l.contains("runtime=\"encoder\"")), "{runtimes:?}");
        if !runtimes.iter().any(|l| l.contains("runtime=\"heads_graph\"")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the unused heads' graph is still open: {runtimes:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.stop().await;

    // After a restart the same head serves from disk, nothing trained again.
    for head in settings.heads.values_mut() {
        head.train_on_startup = false;
    }
    let server = TestServer::start(settings).await;
    assert_eq!(server.get("/health").await.status(), 200);
    let again: Value = server.post_json("/classify", json!({"inputs": ["good great fun"]})).await.json().await.unwrap();
    assert_eq!(again["encoder_fingerprint"], exact_fingerprint.as_str(), "{again}");
    assert_eq!(again["head_version"], answer["head_version"], "{again}");
    server.stop().await;
}

/// A head trained over the API (`POST /heads`) is compared on both graphs as
/// one trained at startup is: on the useless second graph it loses, so it is
/// served on the exact one, `GET /heads` says why, and both are kept.
#[tokio::test]
async fn a_head_trained_over_the_api_is_served_on_the_graph_that_keeps_its_accuracy() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_with_second_graph(tmp.path(), USELESS_SECOND_GRAPH);
    let mut settings = tiny_distilbert();
    settings.model.dir = model;
    settings.classify.model_file = "model.int8.onnx".into();
    settings.classify.heads_dir = tmp.path().join("heads");
    settings.classify.feature_cache_dir = tmp.path().join("cache");
    settings.security.admin_key = "adm1n-key".into();
    let server = TestServer::start(settings).await;
    wait_ready(&server).await;
    let embed = server.post_json("/embed", json!({"inputs": "good"})).await;
    let exact_fingerprint = embed.headers()["x-encoder-fingerprint"].to_str().unwrap().to_string();

    let data = tmp.path().join("data");
    common::synthetic_dataset(&data);
    let examples: Vec<Value> = ["train", "validation", "test"]
        .iter()
        .flat_map(|split| {
            std::fs::read_to_string(data.join(format!("{split}.jsonl")))
                .unwrap()
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .map(|line| {
            let row: Value = serde_json::from_str(&line).unwrap();
            json!({"text": row["text"], "label": if row["label"] == 1 { "pos" } else { "neg" }})
        })
        .collect();
    let created = server
        .client
        .post(server.url("/heads"))
        .bearer_auth("adm1n-key")
        .json(&json!({"name": "uploaded", "examples": examples}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 202, "{}", created.text().await.unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let detail = loop {
        let detail: Value = server.get("/heads/uploaded").await.json().await.unwrap();
        assert_ne!(detail["status"], "failed", "{detail}");
        if detail["status"] == "ready" {
            break detail;
        }
        assert!(std::time::Instant::now() < deadline, "not trained in 2 minutes: {detail}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    // Ready with the head of the heads' graph (the version the job made); then
    // compared with the exact graph's head, which is swapped in, and the first
    // version gives way to the two compared ones.
    let first_version = detail["job"]["version"].as_str().expect("the job's version").to_string();
    let detail = compared(&server, "uploaded").await;
    assert_eq!(
        detail["graphs"],
        json!([{"graph": "model.int8.onnx", "phase": "kept"}, {"graph": "model.onnx", "phase": "served"}]),
        "{detail}"
    );
    assert_ne!(detail["version"], first_version.as_str(), "{detail}");
    let versions: Vec<&str> =
        detail["versions"].as_array().unwrap().iter().filter_map(|v| v["version"].as_str()).collect();
    assert_eq!(versions.len(), 2, "{detail}");
    assert!(!versions.contains(&first_version.as_str()), "{detail}");
    let head = served_head(&server, "uploaded").await;
    assert_eq!(head["graph"], "model.onnx", "{head}");
    let reason = head["graph_reason"].as_str().expect("a reason");
    assert!(reason.contains("model.int8.onnx") && reason.contains("more than the 0.5 allowed"), "{reason}");
    let answer = classify_pos_neg(&server, Some("uploaded")).await;
    assert_eq!(answer["encoder_fingerprint"], exact_fingerprint.as_str(), "{answer}");
    server.stop().await;
}

/// `distilserve train` compares the graphs as the service does: on the useless
/// second graph the head loses, so the head file it leaves active is the exact
/// graph's, with the comparison recorded and printed; `evaluate` then
/// evaluates that head, on the exact graph.
#[test]
fn the_train_command_keeps_the_head_of_the_graph_that_keeps_its_accuracy() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_with_second_graph(tmp.path(), USELESS_SECOND_GRAPH);
    let data = tmp.path().join("data");
    common::synthetic_dataset(&data);
    let config = tmp.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[classify]\nheads_dir = \"{}\"\nfeature_cache_dir = \"{}\"\n",
            tmp.path().join("heads").display(),
            tmp.path().join("cache").display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_distilserve"))
            .args(args)
            .args(["--classify-model-file", "model.int8.onnx", "--model-dir", model.to_str().unwrap()])
            .args(["--config", config.to_str().unwrap()])
            .output()
            .expect("binary runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{args:?}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        stdout
    };
    let stdout = run(&["train", "--head", "toy", "--alphas", "0.1,1", "--data", data.to_str().unwrap()]);
    assert!(stdout.contains("served on model.onnx: ") && stdout.contains("more than the 0.5 allowed"), "{stdout}");
    let head: Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("heads/toy.json")).unwrap()).unwrap();
    assert_eq!(head["training"]["graph_choice"]["served_on"], "model.onnx", "{}", head["training"]);
    assert_eq!(head["training"]["graph_choice"]["heads_graph"], "model.int8.onnx", "{}", head["training"]);

    let stdout = run(&["evaluate", "--head", "toy", "--report-dir", tmp.path().join("reports").to_str().unwrap()]);
    assert!(stdout.contains("served on model.onnx: "), "{stdout}");
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("reports/toy-tiny-distilbert-test.json")).expect("the report"),
    )
    .unwrap();
    // On the useless graph's features a head is no better than chance (0.5).
    let accuracy = report["rows"][0]["metrics"]["accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.9, "the exact graph's head on its own features: {accuracy}");
}
