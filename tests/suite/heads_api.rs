//! Heads created over the API (`POST /heads`): create → ready → classify →
//! restart → still served; replace, rollback, delete; two replicas sharing the
//! heads folder; every refusal with its status and code; single sentences
//! while a head trains. Tiny BERT fixture over a socket (the nginx topology:
//! topology.rs; the 2,000-sentence figure on MiniLM: bench/heads_api.py).

use crate::common;

use std::time::{Duration, Instant};

use common::{error_of, fixture, settings_for, TestServer};
use distilserve::config::Settings;
use serde_json::{json, Value};

const ADMIN: &str = "adm1n-key";

fn settings(heads_dir: &std::path::Path) -> Settings {
    let mut s = settings_for(&fixture("tiny-bert"));
    s.classify.heads_dir = heads_dir.to_path_buf();
    s.classify.watch_interval_ms = 200;
    s.security.admin_key = ADMIN.into();
    s
}

/// `per_label` examples of each of three labels, worded so that the tiny
/// model's features tell them apart somewhat.
fn examples(per_label: usize) -> Vec<Value> {
    let words =
        [("sport", "match goal team score"), ("food", "soup bread cheese taste"), ("tech", "chip code screen battery")];
    words
        .iter()
        .flat_map(|(label, vocabulary)| {
            let vocabulary: Vec<&str> = vocabulary.split(' ').collect();
            (0..per_label).map(move |i| {
                let text = format!(
                    "{} {} and {} number {i}",
                    vocabulary[i % 4],
                    vocabulary[(i + 1) % 4],
                    vocabulary[(i + 2) % 4]
                );
                json!({"text": text, "label": label})
            })
        })
        .collect()
}

fn plus(mut a: Vec<Value>, b: Vec<Value>) -> Vec<Value> {
    a.extend(b);
    a
}

/// `body` sent with the admin key to `path` as `content_type` (CSV or JSONL uploads).
async fn upload(server: &TestServer, path: &str, content_type: &str, body: String) -> reqwest::Response {
    server
        .client
        .post(server.url(path))
        .bearer_auth(ADMIN)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn create(server: &TestServer, body: Value) -> reqwest::Response {
    server.client.post(server.url("/heads")).bearer_auth(ADMIN).json(&body).send().await.unwrap()
}

/// Polls `GET /heads/{name}` until its status is `want` (panics on `failed` unless wanted).
async fn wait_for(server: &TestServer, name: &str, want: &str) -> Value {
    let started = Instant::now();
    loop {
        let response = server.get(&format!("/heads/{name}")).await;
        if response.status() == 200 {
            let detail: Value = response.json().await.unwrap();
            if detail["status"] == want {
                return detail;
            }
            assert!(detail["status"] != "failed" || want == "failed", "training failed: {detail}");
        }
        assert!(started.elapsed() < Duration::from_secs(60), "head {name} not {want} within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn classify(server: &TestServer, head: &str) -> reqwest::Response {
    server.post_json("/classify", json!({"inputs": ["chip and screen"], "head": head})).await
}

#[tokio::test]
async fn create_classify_restart_replace_rollback_delete_across_two_replicas() {
    let folder = tempfile::tempdir().unwrap();
    let a = TestServer::start(settings(folder.path())).await;
    let b = TestServer::start(settings(folder.path())).await;

    let response = create(&a, json!({"name": "topics", "examples": examples(12), "description": "three topics"})).await;
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["location"], "/heads/topics");
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["job"]["state"], "queued");
    assert_eq!(accepted["job"]["examples"], 36);

    let detail = wait_for(&a, "topics", "ready").await;
    let v1 = detail["version"].as_str().unwrap().to_string();
    assert_eq!(detail["labels"], json!(["food", "sport", "tech"]));
    assert_eq!(detail["description"], "three topics");
    assert_eq!(detail["job"]["state"], "ready");
    assert_eq!(detail["job"]["version"], v1);
    // Held out by the service, stratified: 20% of 12 per label.
    let counts: Vec<(u64, u64)> = detail["job"]["label_counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["train"].as_u64().unwrap(), c["test"].as_u64().unwrap()))
        .collect();
    assert_eq!(counts, vec![(10, 2), (10, 2), (10, 2)]);
    let test = &detail["metrics"]["test"];
    assert_eq!(test["examples"], 6);
    assert_eq!(test["per_class"].as_array().unwrap().len(), 3);
    assert!(test["per_class"][0]["f1"].is_number() && test["per_class"][0]["precision"].is_number());
    assert_eq!(detail["versions"], json!([{"version": v1, "created_unix": detail["created_unix"], "active": true}]));
    let svg = a.get("/heads/topics/confusion.svg").await;
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");
    assert!(svg.text().await.unwrap().contains("<svg"));

    let answer = classify(&a, "topics").await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-head-version"].to_str().unwrap(), v1);

    // Replica b shares the folder: it serves the head within a few watch intervals.
    let started = Instant::now();
    while classify(&b, "topics").await.status() != 200 {
        assert!(started.elapsed() < Duration::from_secs(5), "replica b did not pick up the head");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Taken without replace; a new version with it (the old one serves meanwhile).
    let (status, code, _) = error_of(create(&a, json!({"name": "topics", "examples": examples(12)})).await).await;
    assert_eq!((status, code.as_str()), (409, "head_exists"));
    let replace = json!({"name": "topics", "examples": examples(14), "replace": true, "options": {"pooling": "cls"}});
    assert_eq!(create(&a, replace).await.status(), 202);
    let detail = loop {
        let d = wait_for(&a, "topics", "ready").await;
        if d["version"] != v1 {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let v2 = detail["version"].as_str().unwrap().to_string();
    assert_eq!(detail["pooling"], "cls");
    assert_eq!(detail["versions"].as_array().unwrap().len(), 2);

    // Rollback through b: both replicas serve v1 again.
    let rolled = b.client.post(b.url("/heads/topics/rollback")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(rolled.status(), 200);
    assert_eq!(rolled.json::<Value>().await.unwrap()["version"], v1);
    let started = Instant::now();
    loop {
        let version = classify(&a, "topics").await.headers()["x-head-version"].to_str().unwrap().to_string();
        if version == v1 {
            break;
        }
        assert_eq!(version, v2);
        assert!(started.elapsed() < Duration::from_secs(5), "replica a did not follow the rollback");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, code, _) =
        error_of(b.client.post(b.url("/heads/topics/rollback")).bearer_auth(ADMIN).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (409, "no_previous_version"));
    a.stop().await;

    // A restart serves what is in the folder: the head, at the version rolled back to.
    let mut restarted = settings(folder.path());
    restarted.classify.watch_interval_ms = 0;
    let a = TestServer::start(restarted).await;
    let answer = classify(&a, "topics").await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-head-version"].to_str().unwrap(), v1);

    // Delete through a: b stops serving it too.
    let deleted = a.client.delete(a.url("/heads/topics")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(classify(&a, "topics").await.status(), 404);
    let started = Instant::now();
    while classify(&b, "topics").await.status() != 404 {
        assert!(started.elapsed() < Duration::from_secs(5), "replica b still serves a deleted head");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, code, _) =
        error_of(a.client.delete(a.url("/heads/topics")).bearer_auth(ADMIN).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (404, "not_found"));
    assert!(!folder.path().join("topics.json").exists() && !folder.path().join(".versions/topics").exists());
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn csv_and_jsonl_uploads_with_their_own_test_split() {
    let folder = tempfile::tempdir().unwrap();
    let server = TestServer::start(settings(folder.path())).await;
    let mut csv = String::from("text,label,split\n");
    for (i, e) in examples(10).iter().enumerate() {
        let split = if i % 5 == 0 { "test" } else { "train" };
        csv.push_str(&format!("\"{}\",{},{split}\n", e["text"].as_str().unwrap(), e["label"].as_str().unwrap()));
    }
    let response = upload(&server, "/heads?name=from-csv&cv_folds=2&alphas=1,100", "text/csv", csv).await;
    assert_eq!(response.status(), 202);
    let detail = wait_for(&server, "from-csv", "ready").await;
    assert_eq!(detail["job"]["test_source"], "upload");
    assert_eq!(detail["metrics"]["test"]["examples"], 6);
    assert_eq!(detail["training"]["selection"], json!({"cross_validation": {"folds": 2}}));
    // 2 layer options ("-1", "concat(-2,-1)": the 2-layer encoder has no last four) x 3 poolings x 2 alphas.
    assert_eq!(detail["training"]["candidates"].as_array().unwrap().len(), 2 * 3 * 2);

    let jsonl: String = examples(10).iter().map(|e| format!("{e}\n")).collect();
    let response = upload(&server, "/heads?name=from-jsonl", "application/jsonl", jsonl).await;
    assert_eq!(response.status(), 202);
    wait_for(&server, "from-jsonl", "ready").await;
    let heads: Value = server.get("/heads").await.json().await.unwrap();
    let names: Vec<&str> = heads["heads"].as_array().unwrap().iter().map(|h| h["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["from-csv", "from-jsonl"]);
    server.stop().await;
}

#[tokio::test]
async fn every_refusal_has_its_status_and_code() {
    let folder = tempfile::tempdir().unwrap();
    let mut s = settings(folder.path());
    s.training.max_examples = 3000;
    s.training.max_labels = 3;
    s.training.max_upload_bytes = 400_000;
    s.training.max_queued = 1;
    let server = TestServer::start(s).await;
    let refused = |body: Value| {
        let server = &server;
        async move { error_of(create(server, body).await).await }
    };
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"name": "bad name!", "examples": examples(10)}), 422, "invalid_head_name"),
        (json!({"name": "one", "examples": vec![json!({"text": "a", "label": "x"}); 10]}), 422, "too_few_labels"),
        (
            json!({"name": "few", "examples": (plus(examples(10)[..10].to_vec(), vec![json!({"text": "y", "label": "rare"}); 3]))}),
            422,
            "too_few_examples",
        ),
        (
            json!({"name": "empty", "examples": (plus(examples(10), vec![json!({"text": "", "label": "food"})]))}),
            422,
            "empty_text",
        ),
        (
            json!({"name": "split", "examples": (plus(examples(10), vec![json!({"text": "x", "label": "food", "split": "dev"})]))}),
            422,
            "invalid_split",
        ),
        (json!({"name": "opt", "examples": examples(10), "options": {"cv_folds": 1}}), 422, "invalid_option"),
        (json!({"name": "opt", "examples": examples(10), "options": {"pooling": "max"}}), 422, "invalid_option"),
        (json!({"name": "many", "examples": examples(1001)}), 413, "too_many_examples"),
        (
            json!({"name": "labels", "examples": (plus(examples(10), vec![json!({"text": "x", "label": "new"}); 10]))}),
            413,
            "too_many_labels",
        ),
        (json!({"name": "typo", "examples": examples(10), "colour": "red"}), 422, "invalid_request"),
    ];
    for (body, status, code) in cases {
        let (got_status, got_code, message) = refused(body).await;
        assert_eq!((got_status, got_code.as_str()), (status, code), "{message}");
    }
    let big = json!({"name": "big", "examples": [{"text": "x".repeat(500_000), "label": "a"}]});
    assert_eq!(refused(big).await.0, 413);
    // Rows past training.max_examples stop the reading of a CSV or JSONL body too.
    for (content_type, row) in [("text/csv", "x,a\n"), ("application/jsonl", "{\"text\":\"x\",\"label\":\"a\"}\n")] {
        let header = if content_type == "text/csv" { "text,label\n" } else { "" };
        let body = format!("{header}{}", row.repeat(3001));
        let response = server
            .client
            .post(server.url("/heads?name=rows"))
            .bearer_auth(ADMIN)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let (status, code, message) = error_of(response).await;
        assert_eq!((status, code.as_str()), (413, "too_many_examples"), "{content_type}: {message}");
    }
    let (status, code, _) = error_of(
        server
            .client
            .post(server.url("/heads"))
            .bearer_auth(ADMIN)
            .body("{")
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (400, "invalid_json"));
    let (status, code, _) = error_of(
        server
            .client
            .post(server.url("/heads"))
            .bearer_auth(ADMIN)
            .body("text,label")
            .header("content-type", "text/plain")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (415, "unsupported_media_type"));
    let (status, code, _) =
        error_of(server.client.post(server.url("/heads")).json(&json!({"name": "x"})).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (401, "unauthorized"));

    // One training and training.max_queued (1) waiting: the next is refused,
    // as is a second training of a head already queued.
    let long = examples(900);
    assert_eq!(create(&server, json!({"name": "q1", "examples": long})).await.status(), 202);
    assert_eq!(create(&server, json!({"name": "q2", "examples": long})).await.status(), 202);
    let (status, code, _) = error_of(create(&server, json!({"name": "q2", "examples": long})).await).await;
    assert_eq!((status, code.as_str()), (409, "training_in_progress"));
    let response = create(&server, json!({"name": "q3", "examples": long})).await;
    assert_eq!(response.headers()["retry-after"], "1");
    let (status, code, _) = error_of(response).await;
    assert_eq!((status, code.as_str()), (429, "training_queue_full"));
    // Not served while queued: 503, not 404.
    let (status, code, _) = error_of(classify(&server, "q2").await).await;
    assert!((status, code.as_str()) == (503, "not_ready") || status == 200, "{status} {code}");
    wait_for(&server, "q2", "ready").await;
    server.stop().await;

    // Without an admin key configured the routes are off.
    let mut s = settings(folder.path());
    s.security.admin_key.clear();
    let server = TestServer::start(s).await;
    let (status, code, _) = error_of(create(&server, json!({"name": "x", "examples": examples(10)})).await).await;
    assert_eq!((status, code.as_str()), (403, "admin_disabled"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_sentences_keep_answering_while_a_head_trains() {
    let folder = tempfile::tempdir().unwrap();
    let server = TestServer::start(settings(folder.path())).await;
    let steady = |seconds: f64| {
        let (client, url) = (server.client.clone(), server.url("/embed"));
        async move {
            let mut latencies = Vec::new();
            let started = Instant::now();
            let mut ticks = tokio::time::interval(Duration::from_millis(25)); // 40 requests/s
            while started.elapsed().as_secs_f64() < seconds {
                ticks.tick().await;
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .json(&json!({"inputs": "a single sentence", "pooling": "mean"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                latencies.push(sent.elapsed().as_secs_f64() * 1e3);
            }
            latencies.sort_by(f64::total_cmp);
            let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
            (latencies.len(), at(0.5), at(0.99))
        }
    };
    let (n, p50, p99) = steady(1.5).await;
    println!("idle: {n} single-sentence /embed, p50 {p50:.1} ms, p99 {p99:.1} ms");
    assert_eq!(create(&server, json!({"name": "busy", "examples": examples(700)})).await.status(), 202);
    let during = tokio::spawn(steady(3.0));
    let detail = wait_for(&server, "busy", "ready").await;
    let (n, p50, p99) = during.await.unwrap();
    println!(
        "while training a head on 2,100 examples ({:.1} s): {n} single-sentence /embed, all 200, p50 {p50:.1} ms, p99 {p99:.1} ms",
        detail["job"]["seconds"].as_f64().unwrap()
    );
    server.stop().await;
}

/// `/classify` with `explain` against the same computation in NumPy, from the
/// head file and the token states `/embed` returns: exact for `mean` and
/// `cls_mean` pooling (parts + cls + bias = logits, whose softmax is the
/// answer's probabilities), no per-token parts for `cls`.
#[tokio::test]
async fn explanations_match_numpy_on_the_head_file_and_token_states() {
    let folder = tempfile::tempdir().unwrap();
    let server = TestServer::start(settings(folder.path())).await;
    let text = "chip and screen, not soup";
    for pooling in ["mean", "cls_mean", "cls"] {
        let name = format!("explain-{}", pooling.replace('_', "-"));
        let body = json!({"name": name, "examples": examples(10), "options": {"pooling": pooling, "alphas": [1.0]}});
        assert_eq!(create(&server, body).await.status(), 202);
        wait_for(&server, &name, "ready").await;
        let answer: Value = server
            .post_json("/classify", json!({"inputs": [text], "head": name, "explain": true}))
            .await
            .json()
            .await
            .unwrap();
        let prediction = &answer["predictions"][0];
        let explanation = &prediction["explanation"];
        assert_eq!(explanation["pooling"], pooling);
        assert_eq!(explanation["exact"], pooling != "cls");
        // The token states the head reads: its layers, combined as it combines them.
        let head_file: Value =
            serde_json::from_str(&std::fs::read_to_string(folder.path().join(format!("{name}.json"))).unwrap())
                .unwrap();
        let layers = head_file["layers"]["indices"].as_array().cloned().unwrap_or_else(|| vec![json!(-1)]);
        let combine = head_file["layers"]["combine"].as_str().unwrap_or("mean").to_string();
        let embedded: Value = server
            .post_json(
                "/embed",
                json!({"inputs": [text], "pooling": "none", "return_tokens": true, "layers": layers, "layer_combine": combine}),
            )
            .await
            .json()
            .await
            .unwrap();
        let tokens: Vec<&str> =
            explanation["tokens"].as_array().unwrap().iter().map(|t| t["text"].as_str().unwrap()).collect();
        assert_eq!(json!(tokens), embedded["tokens"][0]);
        let input = json!({
            "head": serde_json::from_str::<Value>(&std::fs::read_to_string(folder.path().join(format!("{name}.json"))).unwrap()).unwrap(),
            "states": embedded["embeddings"][0],
            "explanation": explanation,
            "probabilities": prediction["probabilities"],
        });
        let script = r#"
import json, sys
import numpy as np
d = json.load(sys.stdin)
h, e = d["head"], d["explanation"]
H = np.array(d["states"], dtype=np.float64)            # tokens x hidden
T = h.get("temperature") or 1.0                       # probabilities = softmax(logits / T)
W = np.array(h["weights"], dtype=np.float64) / T       # labels x features
A = W / np.array(h["scaler_scale"], dtype=np.float64)  # weight of a raw feature
bias = np.array(h["intercept"], dtype=np.float64) / T - A @ np.array(h["scaler_mean"], dtype=np.float64)
labels, hid, pool = h["labels"], H.shape[1], h["pooling"]
pick = lambda m: np.array([m[l] for l in labels])
if pool == "mean":
    parts, cls = (H @ A.T) / len(H), np.zeros(len(labels))
    feats = H.mean(axis=0)
elif pool == "cls_mean":
    parts, cls = (H @ A[:, hid:].T) / len(H), A[:, :hid] @ H[0]
    feats = np.concatenate([H[0], H.mean(axis=0)])
else:
    parts, cls = None, A @ H[0]
    feats = H[0]
logits = W @ ((feats - np.array(h["scaler_mean"])) / np.array(h["scaler_scale"])) + np.array(h["intercept"]) / T
worst = max(abs(pick(e["bias"]) - bias).max(), abs(pick(e["scores"]) - logits).max())
if pool != "mean":
    worst = max(worst, abs(pick(e["cls"]) - cls).max())
if parts is not None:
    got = np.array([pick(t["parts"]) for t in e["tokens"]])
    worst = max(worst, abs(got - parts).max())
    worst = max(worst, abs(bias + cls + parts.sum(axis=0) - logits).max())
p = np.exp(logits - logits.max()); p /= p.sum()
worst = max(worst, abs(pick(d["probabilities"]) - p).max())
print(worst)
"#;
        let mut child = std::process::Command::new(common::python())
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the set-up venv's python");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let worst: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        println!("{pooling}: largest difference from NumPy {worst:.2e}");
        assert!(worst < 1e-4, "{pooling}: the explanation differs from NumPy by {worst}");
    }
    server.stop().await;
}

fn encoder_sequences(metrics: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with("distilserve_sequences_total{runtime=\"encoder\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn several_heads_answer_from_one_encoder_pass() {
    let folder = tempfile::tempdir().unwrap();
    let server = TestServer::start(settings(folder.path())).await;
    for (name, pooling) in [("by-mean", "mean"), ("by-cls", "cls"), ("by-mean-too", "mean")] {
        let body =
            json!({"name": name, "examples": examples(10), "options": {"pooling": pooling, "alphas": [1.0, 10.0]}});
        assert_eq!(create(&server, body).await.status(), 202);
        wait_for(&server, name, "ready").await;
    }
    let texts = json!(["chip and screen", "soup and bread", "a goal"]);
    let mut single = Vec::new();
    for name in ["by-mean", "by-cls", "by-mean-too"] {
        let answer: Value =
            server.post_json("/classify", json!({"inputs": texts, "head": name})).await.json().await.unwrap();
        single.push(answer);
    }
    let before = encoder_sequences(&server.get("/metrics").await.text().await.unwrap());
    let response =
        server.post_json("/classify", json!({"inputs": texts, "heads": ["by-mean", "by-cls", "by-mean-too"]})).await;
    assert_eq!(response.status(), 200);
    let versions = response.headers()["x-head-version"].to_str().unwrap().to_string();
    let many: Value = response.json().await.unwrap();
    let after = encoder_sequences(&server.get("/metrics").await.text().await.unwrap());
    assert_eq!(after - before, 3.0, "three texts for three heads: one encoder pass");
    let results = many["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for (result, alone) in results.iter().zip(&single) {
        assert_eq!(result, alone, "the same answer as asking the head alone");
    }
    assert_eq!(
        versions,
        single
            .iter()
            .map(|a| format!("{}={}", a["head"].as_str().unwrap(), a["head_version"].as_str().unwrap()))
            .collect::<Vec<_>>()
            .join(",")
    );
    for (body, code) in [
        (json!({"inputs": "x", "head": "by-mean", "heads": ["by-cls"]}), "invalid_request"),
        (json!({"inputs": "x", "heads": []}), "invalid_request"),
        (json!({"inputs": "x", "heads": ["by-cls", "by-cls"]}), "invalid_request"),
    ] {
        let (status, got, _) = error_of(server.post_json("/classify", body).await).await;
        assert_eq!((status, got.as_str()), (422, code));
    }
    let (status, _, _) =
        error_of(server.post_json("/classify", json!({"inputs": "x", "heads": ["by-cls", "nope"]})).await).await;
    assert_eq!(status, 404);
    server.stop().await;
}

#[tokio::test]
async fn calibration_is_reported_and_low_confidence_answers_abstain() {
    let folder = tempfile::tempdir().unwrap();
    let server = TestServer::start(settings(folder.path())).await;
    let body =
        json!({"name": "cal", "examples": examples(12), "options": {"min_probability": 0.999, "alphas": [10000.0]}});
    assert_eq!(create(&server, body).await.status(), 202);
    let detail = wait_for(&server, "cal", "ready").await;
    let calibration = &detail["training"]["calibration"];
    let fitted = calibration["fitted_temperature"].as_f64().unwrap();
    assert!((0.05..=20.0).contains(&fitted), "{calibration}");
    let (before, after) =
        (calibration["held_out_log_loss"].as_f64().unwrap(), calibration["held_out_log_loss_scaled"].as_f64().unwrap());
    assert!(after <= before + 1e-9, "{calibration}");
    // Used only when it lowered the held-out log-loss by 1% or more.
    assert_eq!(calibration["temperature"].is_null(), after > before * 0.99, "{calibration}");
    let ece = &detail["metrics"]["test_calibration"];
    for key in ["ece", "ece_without_temperature"] {
        assert!((0.0..=1.0).contains(&ece[key].as_f64().unwrap()), "{ece}");
    }

    let ask = |extra: Value| {
        let mut body = json!({"inputs": ["chip and screen"], "head": "cal"});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let server = &server;
        async move { server.post_json("/classify", body).await.json::<Value>().await.unwrap()["predictions"][0].clone() }
    };
    // The head's own threshold (0.999) applies unless the request sets one.
    let by_default = ask(json!({})).await;
    let top = by_default["probability"].as_f64().unwrap();
    assert_eq!(by_default["abstained"].as_bool().unwrap_or(false), top < 0.999);
    // Just above and below the top probability (f32: it may round to exactly 1).
    assert!(top < 1.0, "the tiny model's top probability is {top}");
    let strict = ask(json!({"min_probability": (top + 1.0) / 2.0})).await;
    assert_eq!((strict["label"].as_str(), strict["abstained"].as_bool()), (Some("abstain"), Some(true)));
    assert!(strict["probabilities"].as_object().unwrap().len() == 3, "the probabilities are still given");
    let lenient = ask(json!({"min_probability": top / 2.0})).await;
    assert!(lenient.get("abstained").is_none() && lenient["label"] != "abstain", "{lenient}");
    let (status, _, _) =
        error_of(server.post_json("/classify", json!({"inputs": "x", "head": "cal", "min_probability": 1.5})).await)
            .await;
    assert_eq!(status, 422);

    // Every route that classifies makes the head's decision: the same
    // probabilities, and the predictions metric counts the same label (TEI's
    // answer cannot say "abstain": it lists every label's score).
    let counted = |metrics: &str, label: &str| -> u64 {
        let line = format!("distilserve_head_predictions_total{{head=\"cal\",label=\"{label}\"}}");
        metrics.lines().find_map(|l| l.strip_prefix(&line)).map_or(0, |v| v.trim().parse().unwrap())
    };
    let label = by_default["label"].as_str().unwrap().to_string();
    assert_eq!(label == "abstain", top < 0.999, "{by_default}");
    let before = counted(&server.get("/metrics").await.text().await.unwrap(), &label);
    let tei_routes = [
        ("/tei/heads/cal/predict", json!({"inputs": "chip and screen"})),
        ("/tei/heads/cal", json!({"inputs": "chip and screen"})),
    ];
    for (route, body) in tei_routes {
        let answer: Value = server.post_json(route, body).await.json().await.unwrap();
        let scores = if answer.is_array() && answer[0].is_array() { answer[0].clone() } else { answer };
        for entry in scores.as_array().expect("label scores") {
            let ours = by_default["probabilities"][entry["label"].as_str().unwrap()].as_f64().unwrap();
            assert!((entry["score"].as_f64().unwrap() - ours).abs() < 1e-6, "{route}: {entry} vs {by_default}");
        }
    }
    let after = counted(&server.get("/metrics").await.text().await.unwrap(), &label);
    assert_eq!(after - before, 2, "each TEI answer counted as {label:?}, as /classify counts it");

    let mut named_abstain = examples(10);
    for e in named_abstain.iter_mut().take(10) {
        e["label"] = json!("abstain");
    }
    let (status, code, _) = error_of(create(&server, json!({"name": "bad", "examples": named_abstain})).await).await;
    assert_eq!((status, code.as_str()), (422, "invalid_label"));
    server.stop().await;
}

#[tokio::test]
async fn the_hidden_states_searched_are_an_option_of_the_upload() {
    let folder = tempfile::tempdir().unwrap();
    let server = TestServer::start(settings(folder.path())).await;
    let body = json!({"name": "layered", "examples": examples(10),
        "options": {"layers": ["concat(-2,-1)"], "pooling": "mean", "alphas": [1.0], "cv_folds": 2}});
    assert_eq!(create(&server, body).await.status(), 202);
    let detail = wait_for(&server, "layered", "ready").await;
    let candidates = detail["training"]["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 1, "one layer option x one pooling x one alpha: {candidates:?}");
    assert_eq!(detail["layers"], "concat(-2,-1)");
    assert_eq!(candidates[0]["layers"], json!({"indices": [1, 2], "combine": "concat"}));
    // In the query of a CSV upload, options are separated by ';'.
    let mut csv = String::from("text,label\n");
    for e in examples(10) {
        csv.push_str(&format!("\"{}\",{}\n", e["text"].as_str().unwrap(), e["label"].as_str().unwrap()));
    }
    let response = upload(
        &server,
        "/heads?name=layered-csv&layers=-1;concat(-2,-1)&pooling=cls&alphas=1&cv_folds=2",
        "text/csv",
        csv,
    )
    .await;
    assert_eq!(response.status(), 202);
    let detail = wait_for(&server, "layered-csv", "ready").await;
    assert_eq!(detail["training"]["candidates"].as_array().unwrap().len(), 2);
    // Refused before anything is queued: none the 2-layer encoder can give, not a layer option, none at all.
    for layers in [json!(["mean(-4,-3,-2,-1)"]), json!(["bogus"]), json!([])] {
        let body = json!({"name": "refused", "examples": examples(10), "options": {"layers": layers}});
        let (status, code, message) = error_of(create(&server, body).await).await;
        assert_eq!((status, code.as_str()), (422, "invalid_option"), "{layers}: {message}");
    }
    assert_eq!(server.get("/heads/refused").await.status(), 404);
    server.stop().await;
}

/// `n` examples of `label`, worded from `examples`'s vocabulary of it.
fn of_label(label: &str, n: usize) -> Vec<Value> {
    examples(n).into_iter().filter(|e| e["label"] == label).collect()
}

#[tokio::test]
async fn label_weights_are_an_option_searched_by_macro_f1_and_rare_labels_are_warned_of() {
    let folder = tempfile::tempdir().unwrap();
    let server = TestServer::start(settings(folder.path())).await;
    // 1:5, each label held out at 20%: 8 and 2 held out, both under 10.
    let imbalanced = plus(of_label("sport", 40), of_label("tech", 8));
    let options = json!({"class_weight": "auto", "pooling": "mean", "alphas": [1.0], "cv_folds": 2, "layers": ["-1"]});
    let response = create(&server, json!({"name": "weighted", "examples": imbalanced, "options": options})).await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    let warnings: Vec<&str> = accepted["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("\"sport\" has 8 held-out") && warnings[1].contains("\"tech\" has 2 held-out"));
    let detail = wait_for(&server, "weighted", "ready").await;
    let training = &detail["training"];
    assert_eq!(training["select_by"], "macro_f1");
    assert_eq!(training["upload"]["warnings"].as_array().unwrap().len(), 2);
    // "auto": one unweighted and one balanced candidate, each with its held-out macro-F1.
    let candidates = training["candidates"].as_array().unwrap();
    let weightings: Vec<&Value> = candidates.iter().map(|c| &c["weighting"]).collect();
    assert_eq!(weightings, vec![&Value::Null, &json!("balanced")]);
    assert!(candidates.iter().all(|c| c["macro_f1"].as_f64().is_some_and(|f| (0.0..=1.0).contains(&f))));
    let effect = &training["weighting_effect"];
    assert_eq!(effect["unweighted_macro_f1"], candidates[0]["macro_f1"]);
    assert_eq!(effect["weighted_macro_f1"], candidates[1]["macro_f1"]);

    // Given weights, as repeats in their ratio; balanced weights are n / (labels x n_c) of the fitted rows.
    let options =
        json!({"class_weight": {"tech": 5}, "pooling": "mean", "alphas": [1.0], "cv_folds": 2, "layers": ["-1"]});
    let body =
        json!({"name": "given", "examples": plus(of_label("sport", 40), of_label("tech", 8)), "options": options});
    assert_eq!(create(&server, body).await.status(), 202);
    let given = wait_for(&server, "given", "ready").await;
    assert_eq!(
        given["training"]["class_weights"],
        json!({"weighting": "given", "weights": [1.0, 5.0], "repeats": [1, 5]})
    );
    let csv: String = std::iter::once("text,label\n".to_string())
        .chain(
            plus(of_label("sport", 40), of_label("tech", 8))
                .iter()
                .map(|e| format!("\"{}\",{}\n", e["text"].as_str().unwrap(), e["label"].as_str().unwrap())),
        )
        .collect();
    let response = upload(
        &server,
        "/heads?name=balanced&class_weight=balanced&pooling=mean&alphas=1&cv_folds=2&layers=-1",
        "text/csv",
        csv,
    )
    .await;
    assert_eq!(response.status(), 202);
    let balanced = wait_for(&server, "balanced", "ready").await;
    let record = &balanced["training"]["class_weights"];
    assert_eq!(record["weighting"], "balanced");
    let fitted: Vec<f64> =
        balanced["job"]["label_counts"].as_array().unwrap().iter().map(|c| c["train"].as_f64().unwrap()).collect();
    let n: f64 = fitted.iter().sum();
    let weights: Vec<f64> = record["weights"].as_array().unwrap().iter().map(|w| w.as_f64().unwrap()).collect();
    for (w, count) in weights.iter().zip(&fitted) {
        assert!((w - n / (2.0 * count)).abs() < 1e-9, "{weights:?} for {fitted:?}");
    }
    let repeats: Vec<f64> = record["repeats"].as_array().unwrap().iter().map(|r| r.as_f64().unwrap()).collect();
    let (asked, applied) = (weights[1] / weights[0], repeats[1] / repeats[0]);
    assert!((applied / asked - 1.0).abs() <= 0.05, "repeats {repeats:?} for weights {weights:?}");

    // Refused before anything is queued.
    for weight in [json!("heavy"), json!({"nope": 2}), json!({"tech": 1000}), json!({"tech": -1}), json!("tech:2")] {
        let body = json!({"name": "refused", "examples": examples(10), "options": {"class_weight": weight}});
        let (status, code, message) = error_of(create(&server, body).await).await;
        assert_eq!((status, code.as_str()), (422, "invalid_option"), "{weight}: {message}");
    }
    server.stop().await;
}

#[tokio::test]
async fn suspects_are_the_training_rows_whose_held_out_probability_of_their_label_is_lowest() {
    let folder = tempfile::tempdir().unwrap();
    let server = TestServer::start(settings(folder.path())).await;
    let mut upload = examples(20);
    // Two sport texts labelled food and tech: wrong labels, as users make them.
    upload[3]["label"] = json!("food");
    upload[7]["label"] = json!("tech");
    let options = json!({"pooling": "mean", "alphas": [1.0], "cv_folds": 4, "layers": ["-1"]});
    let body = json!({"name": "noisy", "examples": upload, "options": options});
    assert_eq!(create(&server, body).await.status(), 202);
    wait_for(&server, "noisy", "ready").await;
    // The admin's: the texts are training data.
    assert_eq!(server.get("/heads/noisy/suspects").await.status(), 401);
    let response = server.client.get(server.url("/heads/noisy/suspects")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["selection"], "4-fold cross-validation on train+validation");
    let suspects = answer["suspects"].as_array().unwrap();
    assert!(!suspects.is_empty());
    let mut previous = 0.0;
    for s in suspects {
        // Each names its row of the upload, as sent.
        let row = s["row"].as_u64().unwrap() as usize;
        assert_eq!(s["source"], "upload");
        assert_eq!((&s["text"], &s["label"]), (&upload[row]["text"], &upload[row]["label"]), "{s}");
        let p = s["probability"].as_f64().unwrap();
        assert!(p < 0.5 && p >= previous, "lowest first, below one half: {suspects:?}");
        previous = p;
    }
    let rows: Vec<u64> = suspects.iter().map(|s| s["row"].as_u64().unwrap()).collect();
    assert!(rows.contains(&3) && rows.contains(&7), "the mislabelled rows are suspects: {suspects:?}");
    server.stop().await;
}

/// The label a keyword rule gives `text` (a classifier the user already has).
fn keyword_rule(text: &str) -> &'static str {
    if ["match", "goal", "team"].iter().any(|w| text.contains(w)) {
        "sport"
    } else if ["soup", "bread", "cheese"].iter().any(|w| text.contains(w)) {
        "food"
    } else {
        "tech"
    }
}

/// P(X <= k) doubled, at most 1, for X ~ Binomial(n, 1/2), summed directly.
fn mcnemar_p(only_a: usize, only_b: usize) -> f64 {
    let n = only_a + only_b;
    let mut choose = 1.0f64;
    let mut tail = 0.0;
    for i in 0..=only_a.min(only_b) {
        tail += choose;
        choose = choose * (n - i) as f64 / (i + 1) as f64;
    }
    (2.0 * tail / 2f64.powi(n as i32)).min(1.0)
}

#[tokio::test]
async fn evaluate_compares_heads_and_prediction_columns_on_the_same_texts_with_mcnemar() {
    let folder = tempfile::tempdir().unwrap();
    let server = TestServer::start(settings(folder.path())).await;
    let quick = |name: &str, pooling: &str, examples: Vec<Value>| json!({"name": name, "examples": examples, "options": {"pooling": pooling, "alphas": [1.0], "cv_folds": 2, "layers": ["-1"]}});
    for body in [
        quick("topics", "mean", examples(12)),
        quick("topics-cls", "cls", examples(12)),
        quick("two", "mean", plus(of_label("sport", 12), of_label("tech", 12))),
    ] {
        assert_eq!(create(&server, body).await.status(), 202);
    }
    for name in ["topics", "topics-cls", "two"] {
        wait_for(&server, name, "ready").await;
    }
    // Texts the heads were not trained on; the rule's label is not always right.
    let texts: Vec<(String, &str)> = (0..8)
        .flat_map(|i| {
            [
                (format!("team {i} and bread"), "sport"),
                (format!("cheese with code {i}"), "food"),
                (format!("screen of the match {i}"), "tech"),
            ]
        })
        .map(|(t, l)| (t, l))
        .collect();
    let examples: Vec<Value> = texts
        .iter()
        .map(|(t, l)| json!({"text": t, "label": l, "predictions": {"keyword": keyword_rule(t)}}))
        .collect();
    let evaluate =
        |body: Value| server.client.post(server.url("/heads/topics/evaluate")).bearer_auth(ADMIN).json(&body).send();
    let response = evaluate(json!({"examples": examples, "compare": ["topics-cls"]})).await.unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["examples"], 24);
    let systems = answer["systems"].as_array().unwrap();
    let roles: Vec<(&str, &str)> =
        systems.iter().map(|s| (s["name"].as_str().unwrap(), s["role"].as_str().unwrap())).collect();
    assert_eq!(roles, vec![("topics", "head"), ("topics-cls", "compared"), ("keyword", "predictions")]);

    // Every figure is what /classify's answers and the rule give on the same texts.
    let inputs: Vec<&str> = texts.iter().map(|(t, _)| t.as_str()).collect();
    let classified: Value = server
        .post_json("/classify", json!({"inputs": inputs, "heads": ["topics", "topics-cls"]}))
        .await
        .json()
        .await
        .unwrap();
    let mut correct: Vec<Vec<bool>> = Vec::new();
    for result in classified["results"].as_array().unwrap() {
        correct.push(
            result["predictions"].as_array().unwrap().iter().zip(&texts).map(|(p, (_, l))| p["label"] == *l).collect(),
        );
    }
    correct.push(texts.iter().map(|(t, l)| keyword_rule(t) == *l).collect());
    for (system, right) in systems.iter().zip(&correct) {
        let accuracy = right.iter().filter(|r| **r).count() as f64 / 24.0;
        assert!((system["scores"]["accuracy"].as_f64().unwrap() - accuracy).abs() < 1e-12, "{system}");
        let confusion: u64 = system["scores"]["confusion"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap())
            .map(|c| c.as_u64().unwrap())
            .sum();
        assert_eq!(confusion, 24);
    }
    assert!(systems[0]["calibration_error"].is_number() && systems[2]["calibration_error"].is_null());
    let comparisons = answer["comparisons"].as_array().unwrap();
    assert_eq!(comparisons.len(), 3);
    for (c, (a, b)) in comparisons.iter().zip([(0, 1), (0, 2), (1, 2)]) {
        assert_eq!((&c["a"], &c["b"]), (&systems[a]["name"], &systems[b]["name"]));
        let only_a = correct[a].iter().zip(&correct[b]).filter(|(x, y)| **x && !**y).count();
        let only_b = correct[a].iter().zip(&correct[b]).filter(|(x, y)| !**x && **y).count();
        assert_eq!(
            (c["only_a_correct"].as_u64().unwrap(), c["only_b_correct"].as_u64().unwrap()),
            (only_a as u64, only_b as u64)
        );
        assert!((c["p_value"].as_f64().unwrap() - mcnemar_p(only_a, only_b)).abs() < 1e-9, "{c}");
    }

    // The same file as CSV (the rule a column, labels by index) gives the same figures; SVG draws them.
    let mut csv = String::from("text,label,keyword\n");
    let index = |l: &str| ["food", "sport", "tech"].iter().position(|x| *x == l).unwrap();
    for (t, l) in &texts {
        csv.push_str(&format!("{t},{},{}\n", index(l), keyword_rule(t)));
    }
    let post_csv = |query: &str, body: String| {
        let path = format!("/heads/topics/evaluate{query}");
        let server = &server;
        async move { upload(server, &path, "text/csv", body).await }
    };
    let from_csv: Value = post_csv("?compare=topics-cls", csv.clone()).await.json().await.unwrap();
    assert_eq!(from_csv["systems"], answer["systems"]);
    assert_eq!(from_csv["comparisons"], answer["comparisons"]);
    let picture = post_csv("?compare=topics-cls&format=svg", csv.clone()).await;
    assert_eq!(picture.headers()["content-type"], "image/svg+xml");
    assert_eq!(picture.text().await.unwrap().matches("<svg").count(), 4);

    // Refusals.
    let no_key = server.client.post(server.url("/heads/topics/evaluate")).json(&json!({"examples": []})).send();
    assert_eq!(no_key.await.unwrap().status(), 401);
    let refused = |body: Value| async { error_of(evaluate(body).await.unwrap()).await };
    let (status, code, _) = refused(json!({"examples": []})).await;
    assert_eq!((status, code.as_str()), (422, "empty_input"));
    let (status, code, message) = refused(json!({"examples": [{"text": "x", "label": "cars"}]})).await;
    assert_eq!((status, code.as_str()), (422, "unknown_label"), "{message}");
    let (status, code, message) = refused(json!({"examples": examples, "compare": ["two"]})).await;
    assert_eq!((status, code.as_str()), (422, "labels_differ"), "{message}");
    let (status, _, _) = refused(json!({"examples": examples, "compare": ["nobody"]})).await;
    assert_eq!(status, 404);
    let uneven = json!({"examples": [examples[0].clone(), {"text": "x", "label": "food"}]});
    let (status, code, message) = refused(uneven).await;
    assert_eq!((status, code.as_str()), (422, "invalid_request"), "{message}");
    let (status, code, _) = error_of(post_csv("?format=pdf", csv).await).await;
    assert_eq!((status, code.as_str()), (422, "invalid_option"));
    server.stop().await;
}

/// Texts about one or two of the three topics, labelled with the topics they are about.
fn multi_labelled(n: usize) -> Vec<(String, Vec<&'static str>)> {
    let words = [
        ("sport", ["match", "goal", "team", "score"]),
        ("food", ["soup", "bread", "cheese", "taste"]),
        ("tech", ["chip", "code", "screen", "battery"]),
    ];
    (0..n)
        .map(|i| {
            let first = i % 3;
            let mut topics = vec![first];
            if i % 2 == 0 {
                topics.push((first + 1 + (i / 6) % 2) % 3);
            }
            let text: Vec<String> =
                topics.iter().map(|&t| format!("{} {}", words[t].1[i % 4], words[t].1[(i + 1) % 4])).collect();
            (format!("{} number {i}", text.join(" and ")), topics.iter().map(|&t| words[t].0).collect())
        })
        .collect()
}

#[tokio::test]
async fn multi_label_heads_answer_the_labels_over_their_thresholds() {
    let folder = tempfile::tempdir().unwrap();
    let server = TestServer::start(settings(folder.path())).await;
    let rows = multi_labelled(60);
    let uploaded: Vec<Value> = rows.iter().map(|(t, l)| json!({"text": t, "label": l})).collect();
    let options =
        json!({"multi_label": true, "pooling": "mean", "alphas": [0.1, 1.0], "cv_folds": 3, "layers": ["-1"]});
    assert_eq!(
        create(&server, json!({"name": "topics-ml", "examples": uploaded, "options": options})).await.status(),
        202
    );
    let detail = wait_for(&server, "topics-ml", "ready").await;
    assert_eq!(detail["multi_label"], true);
    assert_eq!(detail["training"]["select_by"], "micro_f1");
    let candidates = detail["training"]["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 2);
    assert!(candidates.iter().all(|c| c["micro_f1"].is_number() && c["macro_f1"].is_number()));
    let test = &detail["metrics"]["multi_label_test"];
    assert_eq!(test["examples"], 12, "20% of 60 held out: {test}");
    assert_eq!(detail["test_micro_f1"], test["micro_f1"]);
    let thresholds: Vec<f64> =
        test["per_label"].as_array().unwrap().iter().map(|l| l["threshold"].as_f64().unwrap()).collect();
    assert_eq!(thresholds.len(), 3);
    assert!(thresholds.iter().all(|t| (0.05..=0.95).contains(t)), "{thresholds:?}");
    assert!(test["subset_accuracy"].is_number() && test["per_label"][0]["recall"].is_number());

    // /classify: the labels at or over their thresholds, most probable first; `label` the most probable.
    let inputs = ["goal team and soup bread", "chip screen", "cheese taste and code battery"];
    let answer: Value =
        server.post_json("/classify", json!({"inputs": inputs, "head": "topics-ml"})).await.json().await.unwrap();
    let labels = ["food", "sport", "tech"];
    for prediction in answer["predictions"].as_array().unwrap() {
        let p: Vec<f64> = labels.iter().map(|l| prediction["probabilities"][l].as_f64().unwrap()).collect();
        let mut expected: Vec<usize> = (0..3).filter(|&l| p[l] >= thresholds[l] - 1e-6).collect();
        expected.sort_by(|a, b| p[*b].total_cmp(&p[*a]));
        let got: Vec<&str> = prediction["labels"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
        assert_eq!(got, expected.iter().map(|&l| labels[l]).collect::<Vec<_>>(), "{prediction}");
        let top = (0..3).max_by(|a, b| p[*a].total_cmp(&p[*b])).unwrap();
        assert_eq!(prediction["label"], labels[top]);
    }
    // A single-label head's answer has no label set.
    let single = create(&server, json!({"name": "single", "examples": examples(10), "options": {"cv_folds": 2, "alphas": [1.0], "pooling": "mean", "layers": ["-1"]}})).await;
    assert_eq!(single.status(), 202);
    wait_for(&server, "single", "ready").await;
    let answer: Value =
        server.post_json("/classify", json!({"inputs": "chip", "head": "single"})).await.json().await.unwrap();
    assert!(answer["predictions"][0].get("labels").is_none());

    // CSV: labels separated in one cell.
    let mut csv = String::from("text,label\n");
    for (t, l) in &rows {
        csv.push_str(&format!("{t},{}\n", l.join(";")));
    }
    let query = "/heads?name=topics-csv&multi_label=true&label_separator=;&pooling=mean&alphas=1&cv_folds=3&layers=-1";
    let response = upload(&server, query, "text/csv", csv).await;
    assert_eq!(response.status(), 202);
    let from_csv = wait_for(&server, "topics-csv", "ready").await;
    assert_eq!(from_csv["labels"], json!(labels));
    assert_eq!(from_csv["job"]["label_counts"], detail["job"]["label_counts"]);

    // Refusals.
    let listed: Vec<Value> = rows.iter().map(|(t, l)| json!({"text": t, "label": l})).collect();
    for (body, code) in [
        (json!({"name": "r", "examples": listed.clone()}), "invalid_label"),
        (json!({"name": "r", "examples": listed.clone(), "options": {"label_separator": ";"}}), "invalid_option"),
        (
            json!({"name": "r", "examples": listed.clone(), "options": {"multi_label": true, "class_weight": "balanced"}}),
            "invalid_option",
        ),
        (json!({"name": "r", "examples": listed[..9].to_vec(), "options": {"multi_label": true}}), "too_few_examples"),
    ] {
        let (status, got, message) = error_of(create(&server, body).await).await;
        assert_eq!((status, got.as_str()), (422, code), "{message}");
    }
    let evaluate = server
        .client
        .post(server.url("/heads/topics-ml/evaluate"))
        .bearer_auth(ADMIN)
        .json(&json!({"examples": [{"text": "chip", "label": "tech"}]}))
        .send()
        .await
        .unwrap();
    let (status, code, _) = error_of(evaluate).await;
    assert_eq!((status, code.as_str()), (422, "invalid_request"));
    server.stop().await;
}

/// Probabilities of a head file on one feature vector: standardise, weigh, scale by the temperature, softmax.
fn head_probabilities(head: &Value, x: &[f64]) -> Vec<f64> {
    let floats = |v: &Value| v.as_array().unwrap().iter().map(|f| f.as_f64().unwrap()).collect::<Vec<f64>>();
    let (mean, scale) = (floats(&head["scaler_mean"]), floats(&head["scaler_scale"]));
    let z: Vec<f64> = head["weights"]
        .as_array()
        .unwrap()
        .iter()
        .zip(floats(&head["intercept"]))
        .map(|(w, b)| b + floats(w).iter().enumerate().map(|(j, w)| w * (x[j] - mean[j]) / scale[j]).sum::<f64>())
        .map(|z| z / head["temperature"].as_f64().unwrap_or(1.0))
        .collect();
    let top = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let total: f64 = z.iter().map(|v| (v - top).exp()).sum();
    z.iter().map(|v| (v - top).exp() / total).collect()
}

/// 60 pairs of `examples(10)`'s texts labelled `same` or `different`: the
/// label is about the pair (same topic or not), not either text.
fn same_topic_pairs() -> Vec<Value> {
    let texts = examples(10);
    (0..60)
        .map(|i| {
            let (a, b) = (&texts[i % 30], &texts[(i * 7 + 3) % 30]);
            let label = if a["label"] == b["label"] { "same" } else { "different" };
            json!({"text": a["text"], "text_pair": b["text"], "label": label})
        })
        .collect()
}

#[tokio::test]
async fn pair_heads_read_both_texts_as_sentence_bert_does() {
    let folder = tempfile::tempdir().unwrap();
    let server = TestServer::start(settings(folder.path())).await;
    let texts = examples(10);
    let pairs = same_topic_pairs();
    let options = json!({"pooling": "mean", "alphas": [1.0], "cv_folds": 3, "layers": ["-1"]});
    assert_eq!(
        create(&server, json!({"name": "same-topic", "examples": pairs, "options": options})).await.status(),
        202
    );
    let detail = wait_for(&server, "same-topic", "ready").await;
    assert_eq!(detail["pair"], true);
    assert!(detail["metrics"]["test"]["accuracy"].is_number());

    // /classify: the head file on [u, v, |u - v|, u * v] of the two texts' pooled vectors, from /embed.
    let (a, b) = ("goal team and score", "soup bread cheese");
    let answer: Value = server
        .post_json("/classify", json!({"inputs": [a], "text_pair": [b], "head": "same-topic"}))
        .await
        .json()
        .await
        .unwrap();
    let embedded: Value =
        server.post_json("/embed", json!({"inputs": [a, b], "pooling": "mean"})).await.json().await.unwrap();
    let vector = |i: usize| -> Vec<f64> {
        embedded["embeddings"][i].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
    };
    let (u, v) = (vector(0), vector(1));
    let mut x = u.clone();
    x.extend(&v);
    x.extend(u.iter().zip(&v).map(|(p, q)| (p - q).abs()));
    x.extend(u.iter().zip(&v).map(|(p, q)| p * q));
    let head_file: Value =
        serde_json::from_str(&std::fs::read_to_string(folder.path().join("same-topic.json")).unwrap()).unwrap();
    assert_eq!(head_file["pair"], true);
    let expected = head_probabilities(&head_file, &x);
    let labels: Vec<&str> = head_file["labels"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    for (label, p) in labels.iter().zip(&expected) {
        let got = answer["predictions"][0]["probabilities"][label].as_f64().unwrap();
        assert!((got - p).abs() < 1e-4, "{label}: {got} vs {p}");
    }
    // TEI's predict with a batch of pairs, [[text, text_pair]], answers the same.
    let tei: Value =
        server.post_json("/tei/heads/same-topic/predict", json!({"inputs": [[a, b]]})).await.json().await.unwrap();
    for item in tei[0].as_array().unwrap() {
        let got = item["score"].as_f64().unwrap();
        let want = answer["predictions"][0]["probabilities"][item["label"].as_str().unwrap()].as_f64().unwrap();
        assert!((got - want).abs() < 1e-6);
    }
    // CSV with a text_pair column.
    let mut csv = String::from("text,text_pair,label\n");
    for i in 0..60 {
        let (a, b) = (&texts[i % 30], &texts[(i * 7 + 3) % 30]);
        let label = if a["label"] == b["label"] { "same" } else { "different" };
        csv.push_str(&format!("{},{},{label}\n", a["text"].as_str().unwrap(), b["text"].as_str().unwrap()));
    }
    let response =
        upload(&server, "/heads?name=same-csv&pooling=mean&alphas=1&cv_folds=3&layers=-1", "text/csv", csv).await;
    assert_eq!(response.status(), 202);
    assert_eq!(wait_for(&server, "same-csv", "ready").await["pair"], true);

    // Refusals.
    let mut uneven = pairs_of(&texts);
    uneven[5].as_object_mut().unwrap().remove("text_pair");
    let (status, code, message) = error_of(create(&server, json!({"name": "r", "examples": uneven})).await).await;
    assert_eq!((status, code.as_str()), (422, "invalid_pair"), "{message}");
    assert_eq!(
        create(&server, json!({"name": "plain", "examples": examples(10), "options": options})).await.status(),
        202
    );
    wait_for(&server, "plain", "ready").await;
    for body in [
        json!({"inputs": [a], "head": "same-topic"}),
        json!({"inputs": [a], "text_pair": [b], "head": "plain"}),
        json!({"inputs": [a, a], "text_pair": [b], "head": "same-topic"}),
        json!({"inputs": [a], "text_pair": [b], "head": "same-topic", "windows": true}),
        json!({"inputs": [a], "text_pair": [b], "heads": ["same-topic", "plain"]}),
    ] {
        let (status, code, message) = error_of(server.post_json("/classify", body.clone()).await).await;
        assert_eq!((status, code.as_str()), (422, "invalid_request"), "{body}: {message}");
    }
    // Both texts of a pair count toward limits.max_inputs (256): 129 pairs are 258 texts.
    let many = json!({"inputs": vec![a; 129], "text_pair": vec![b; 129], "head": "same-topic"});
    let (status, code, _) = error_of(server.post_json("/classify", many).await).await;
    assert_eq!((status, code.as_str()), (413, "too_many_inputs"));
    let single = server.post_json("/tei/heads/same-topic/predict", json!({"inputs": a})).await;
    assert_eq!(single.status(), 422);
    let body: Value = single.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("pairs"), "{body}");
    server.stop().await;
}

fn pairs_of(texts: &[Value]) -> Vec<Value> {
    (0..30)
        .map(
            |i| json!({"text": texts[i]["text"], "text_pair": texts[(i + 1) % 30]["text"], "label": texts[i]["label"]}),
        )
        .collect()
}

#[tokio::test]
async fn the_alpha_grid_and_a_time_budget_are_options_of_the_search() {
    let folder = tempfile::tempdir().unwrap();
    let server = TestServer::start(settings(folder.path())).await;
    // 3 alphas log-spaced over [training] alphas (1 to 10,000), with a budget that leaves everything in.
    let options = json!({"alpha_grid": 3, "pooling": "mean", "cv_folds": 2, "time_budget_s": 600});
    assert_eq!(
        create(&server, json!({"name": "grid", "examples": examples(10), "options": options})).await.status(),
        202
    );
    let detail = wait_for(&server, "grid", "ready").await;
    let alphas: Vec<f64> =
        detail["training"]["candidates"].as_array().unwrap().iter().map(|c| c["alpha"].as_f64().unwrap()).collect();
    // Two layer options of the 2-layer fixture, one pooling, three alphas.
    assert_eq!(alphas.len(), 6);
    for (got, want) in alphas.iter().zip([1.0, 100.0, 10_000.0, 1.0, 100.0, 10_000.0]) {
        assert!((got - want).abs() < 1e-6 * want, "{alphas:?}");
    }
    assert_eq!(
        detail["training"]["budget"],
        json!({"seconds": 600.0, "feature_sets_searched": 2, "feature_sets_left_out": 0})
    );
    // A budget over before the first fit starts: the training fails, saying so.
    let options = json!({"pooling": "mean", "cv_folds": 2, "time_budget_s": 1e-9});
    assert_eq!(
        create(&server, json!({"name": "no-time", "examples": examples(10), "options": options})).await.status(),
        202
    );
    let failed = wait_for(&server, "no-time", "failed").await;
    assert!(failed["job"]["error"].as_str().unwrap().contains("time budget"), "{failed}");
    for options in [
        json!({"alpha_grid": 1}),
        json!({"alpha_grid": 3, "alphas": [1.0]}),
        json!({"time_budget_s": 0}),
        json!({"time_budget_s": 1e9}),
    ] {
        let (status, code, message) =
            error_of(create(&server, json!({"name": "r", "examples": examples(10), "options": options})).await).await;
        assert_eq!((status, code.as_str()), (422, "invalid_option"), "{message}");
    }
    server.stop().await;
}

#[tokio::test]
async fn evaluate_compares_with_a_pretrained_onnx_classifier() {
    let folder = tempfile::tempdir().unwrap();
    let mut settings = common::settings_with_onnx_head();
    settings.classify.heads_dir = folder.path().to_path_buf();
    settings.security.admin_key = ADMIN.into();
    let server = TestServer::start(settings).await;
    let words = [("pos", ["great", "funny", "moving", "superb"]), ("neg", ["dull", "slow", "boring", "awful"])];
    let labelled = |n: usize, offset: usize| -> Vec<(String, &'static str)> {
        (0..n)
            .flat_map(|i| {
                words
                    .iter()
                    .map(move |(l, w)| (format!("a {} and {} film {}", w[i % 4], w[(i + 1) % 4], i + offset), *l))
            })
            .collect()
    };
    let examples: Vec<Value> = labelled(12, 0).iter().map(|(t, l)| json!({"text": t, "label": l})).collect();
    let options = json!({"pooling": "mean", "alphas": [1.0], "cv_folds": 2, "layers": ["-1"]});
    assert_eq!(create(&server, json!({"name": "mine", "examples": examples, "options": options})).await.status(), 202);
    wait_for(&server, "mine", "ready").await;
    let texts = labelled(6, 100);
    let body = json!({"examples": texts.iter().map(|(t, l)| json!({"text": t, "label": l})).collect::<Vec<_>>(), "compare": ["sst2"]});
    let response =
        server.client.post(server.url("/heads/mine/evaluate")).bearer_auth(ADMIN).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    // The ONNX classifier's figures are its /classify answers on the same texts (labels mapped to neg/pos).
    let inputs: Vec<&str> = texts.iter().map(|(t, _)| t.as_str()).collect();
    let classified: Value =
        server.post_json("/classify", json!({"inputs": inputs, "head": "sst2"})).await.json().await.unwrap();
    let right =
        classified["predictions"].as_array().unwrap().iter().zip(&texts).filter(|(p, (_, l))| p["label"] == *l).count();
    let onnx = &answer["systems"][1];
    assert_eq!((onnx["name"].as_str(), onnx["role"].as_str()), (Some("sst2"), Some("compared")));
    assert!(
        (onnx["scores"]["accuracy"].as_f64().unwrap() - right as f64 / texts.len() as f64).abs() < 1e-12,
        "{answer}"
    );
    assert!(onnx["calibration_error"].is_number());
    assert_eq!(answer["comparisons"][0]["b"], "sst2");
    server.stop().await;
}

/// /classify reduces each sequence to the heads' features as soon as it is
/// computed (layers combined, then pooled): its probabilities must still be
/// the head file applied to /embed's vectors of the head's layers, for two
/// heads reading different layers in one pass, over windows, and with
/// explanations (which keep every token's rows).
#[tokio::test]
async fn heads_reading_several_layers_answer_as_their_file_on_embed_vectors() {
    let folder = tempfile::tempdir().unwrap();
    let server = TestServer::start(settings(folder.path())).await;
    for (name, layers, pooling) in [("two-layers", "concat(-2,-1)", "cls_mean"), ("last", "-1", "mean")] {
        let options = json!({"layers": [layers], "pooling": pooling, "alphas": [1.0], "cv_folds": 2});
        assert_eq!(
            create(&server, json!({"name": name, "examples": examples(10), "options": options})).await.status(),
            202
        );
        wait_for(&server, name, "ready").await;
    }
    let long = "the match had a late goal and the team kept the score ".repeat(12);
    let texts = ["chip and screen", "soup and bread", long.as_str()];
    for windows in [false, true] {
        let answer: Value = server
            .post_json("/classify", json!({"inputs": texts, "heads": ["two-layers", "last"], "windows": windows}))
            .await
            .json()
            .await
            .unwrap();
        for (h, name) in ["two-layers", "last"].iter().enumerate() {
            let head_file: Value =
                serde_json::from_str(&std::fs::read_to_string(folder.path().join(format!("{name}.json"))).unwrap())
                    .unwrap();
            let layers = head_file["layers"]["indices"].clone();
            let combine = head_file["layers"]["combine"].as_str().unwrap_or("mean").to_string();
            let embedded = |pooling: &str| {
                let body = json!({"inputs": texts, "pooling": pooling, "layers": layers, "layer_combine": combine, "windows": windows});
                let server = &server;
                async move { server.post_json("/embed", body).await.json::<Value>().await.unwrap() }
            };
            let (cls, mean) = (embedded("cls").await, embedded("mean").await);
            for i in 0..texts.len() {
                let vector = |e: &Value| -> Vec<f64> {
                    e["embeddings"][i].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
                };
                let x = match head_file["pooling"].as_str().unwrap() {
                    "cls_mean" => [vector(&cls), vector(&mean)].concat(),
                    "mean" => vector(&mean),
                    other => panic!("{other}"),
                };
                let expected = head_probabilities(&head_file, &x);
                let labels = head_file["labels"].as_array().unwrap();
                for (label, p) in labels.iter().zip(&expected) {
                    let got = answer["results"][h]["predictions"][i]["probabilities"][label.as_str().unwrap()]
                        .as_f64()
                        .unwrap();
                    assert!((got - p).abs() < 1e-4, "{name}, text {i}, windows {windows}: {got} vs {p}");
                }
            }
        }
        if !windows {
            let explained: Value = server
                .post_json("/classify", json!({"inputs": texts, "heads": ["two-layers", "last"], "explain": true}))
                .await
                .json()
                .await
                .unwrap();
            for h in 0..2 {
                for i in 0..texts.len() {
                    let (a, b) = (
                        &answer["results"][h]["predictions"][i]["probabilities"],
                        &explained["results"][h]["predictions"][i]["probabilities"],
                    );
                    for (label, p) in a.as_object().unwrap() {
                        assert!((p.as_f64().unwrap() - b[label].as_f64().unwrap()).abs() < 1e-5, "{a} vs {b}");
                    }
                }
            }
        }
    }
    server.stop().await;
}

/// `(label, score)` of a TEI answer for one text, in the answer's order.
fn tei_scores(answer: &Value) -> Vec<(String, f64)> {
    answer
        .as_array()
        .expect("label scores")
        .iter()
        .map(|e| (e["label"].as_str().unwrap().to_string(), e["score"].as_f64().unwrap()))
        .collect()
}

/// `distilserve_head_predictions_total` of `head` by label.
async fn predictions_counted(server: &TestServer, head: &str) -> std::collections::BTreeMap<String, u64> {
    let metrics = server.get("/metrics").await.text().await.unwrap();
    let prefix = format!("distilserve_head_predictions_total{{head=\"{head}\",label=\"");
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix)?.split_once("\"} "))
        .map(|(label, n)| (label.to_string(), n.trim().parse().unwrap()))
        .collect()
}

/// One answer per operation, whatever the door: for a single-label head with
/// its own `min_probability`, a multi-label head and a pair head, every route
/// that classifies (`/classify`, `/tei/predict` for the default head,
/// `/tei/heads/{name}/predict`, `/tei/heads/{name}`, evaluate) gives the same
/// probabilities (1e-6), the same decision wherever its format can say it (TEI's
/// and evaluate's cannot say "abstain" nor a label set: they give every label's
/// score, and evaluate scores the most probable label), and `/metrics` counts
/// each answer as the head decided it, on every route alike.
#[tokio::test]
async fn every_route_that_classifies_gives_the_heads_probabilities_and_decision() {
    let folder = tempfile::tempdir().unwrap();
    let server = TestServer::start(settings(folder.path())).await;
    let texts = ["chip and screen", "goal team and soup bread", "cheese taste and code battery", "number 7"];
    let options = json!({"pooling": "mean", "alphas": [1.0], "cv_folds": 2, "layers": ["-1"]});

    // The threshold falls between the texts' top probabilities, so that some
    // abstain and some do not: found on a twin without it (the same examples
    // and options train the same head, checked below).
    assert_eq!(
        create(&server, json!({"name": "twin", "examples": examples(10), "options": options})).await.status(),
        202
    );
    wait_for(&server, "twin", "ready").await;
    let twin: Value =
        server.post_json("/classify", json!({"inputs": texts, "head": "twin"})).await.json().await.unwrap();
    let mut tops: Vec<f64> =
        twin["predictions"].as_array().unwrap().iter().map(|p| p["probability"].as_f64().unwrap()).collect();
    tops.sort_by(f64::total_cmp);
    assert!(tops[0] + 1e-3 < tops[3], "the texts' top probabilities differ: {tops:?}");
    let threshold = (tops[0] + tops[3]) / 2.0;
    let mut single_options = options.clone();
    single_options["min_probability"] = json!(threshold);
    let single = json!({"name": "single", "examples": examples(10), "options": single_options});
    assert_eq!(create(&server, single).await.status(), 202);
    let rows = multi_labelled(60);
    let uploaded: Vec<Value> = rows.iter().map(|(t, l)| json!({"text": t, "label": l})).collect();
    let mut multi_options = options.clone();
    multi_options["multi_label"] = json!(true);
    multi_options["cv_folds"] = json!(3);
    let multi = json!({"name": "topics", "examples": uploaded, "options": multi_options});
    assert_eq!(create(&server, multi).await.status(), 202);
    let pairs = same_topic_pairs();
    let mut pair_options = options.clone();
    pair_options["cv_folds"] = json!(3);
    assert_eq!(
        create(&server, json!({"name": "pair", "examples": pairs, "options": pair_options})).await.status(),
        202
    );
    for name in ["single", "topics", "pair"] {
        wait_for(&server, name, "ready").await;
    }
    server.stop().await;

    // Again from the folder, with `single` as the default head (/tei/predict's).
    let mut again = settings(folder.path());
    // Loaded from the folder, never trained at start (no data set needed).
    let configured = distilserve::config::HeadSettings::logistic(folder.path().join("no-data"));
    again.heads.insert("single".into(), configured);
    again.classify.serve = vec!["single".into()];
    again.classify.default_head = "single".into();
    let server = TestServer::start(again).await;
    // The heads created over the API are picked up from the folder by its watch.
    let started = Instant::now();
    loop {
        let listed: Value = server.get("/heads").await.json().await.unwrap();
        let names: Vec<&str> = listed["heads"].as_array().unwrap().iter().filter_map(|h| h["name"].as_str()).collect();
        if ["single", "topics", "pair"].iter().all(|n| names.contains(n)) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "not all served after the restart: {listed}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The single-label head.
    let before = predictions_counted(&server, "single").await;
    let ours: Value =
        server.post_json("/classify", json!({"inputs": texts, "head": "single"})).await.json().await.unwrap();
    let ours = ours["predictions"].as_array().unwrap().clone();
    for (p, t) in ours.iter().zip(&twin["predictions"].as_array().unwrap()[..]) {
        for (label, probability) in p["probabilities"].as_object().unwrap() {
            let twin_p = t["probabilities"][label].as_f64().unwrap();
            assert!((probability.as_f64().unwrap() - twin_p).abs() < 1e-6, "the twin is the same head: {p} vs {t}");
        }
    }
    let decided: Vec<&str> = ours.iter().map(|p| p["label"].as_str().unwrap()).collect();
    assert!(decided.contains(&"abstain") && decided.iter().any(|l| *l != "abstain"), "{decided:?}");
    let batch: Vec<Value> = texts.iter().map(|t| json!([t])).collect();
    let mut tei_answers: Vec<(&str, Vec<Value>)> = Vec::new();
    for route in ["/tei/predict", "/tei/heads/single/predict"] {
        let answer: Value = server.post_json(route, json!({"inputs": batch})).await.json().await.unwrap();
        tei_answers.push((route, answer.as_array().unwrap().clone()));
    }
    let mut one_by_one = Vec::new();
    for text in texts {
        let answer: Value = server.post_json("/tei/heads/single", json!({"inputs": text})).await.json().await.unwrap();
        one_by_one.push(answer[0].clone());
    }
    tei_answers.push(("/tei/heads/single", one_by_one));
    for (route, answers) in &tei_answers {
        for (answer, p) in answers.iter().zip(&ours) {
            let scores = tei_scores(answer);
            assert_eq!(scores.len(), 3, "{route}: every label's score: {answer}");
            assert!(scores.windows(2).all(|w| w[0].1 >= w[1].1), "{route}: most probable first: {answer}");
            for (label, score) in &scores {
                let want = p["probabilities"][label].as_f64().unwrap();
                assert!((score - want).abs() < 1e-6, "{route}: {label} {score} vs /classify {want}");
            }
        }
    }
    let after = predictions_counted(&server, "single").await;
    for label in ["abstain", "food", "sport", "tech"] {
        let answered = decided.iter().filter(|l| **l == label).count() as u64;
        let counted = after.get(label).copied().unwrap_or(0) - before.get(label).copied().unwrap_or(0);
        assert_eq!(counted, 4 * answered, "{label}: /classify and three TEI routes each count the head's decision");
    }
    // Evaluate: the same texts, each labelled with its most probable label, so
    // that the head's evaluation is right on every one (its format scores the
    // most probable label; abstentions are /classify's).
    let most_probable = |p: &Value| {
        let probabilities = p["probabilities"].as_object().unwrap();
        probabilities.iter().max_by(|a, b| a.1.as_f64().unwrap().total_cmp(&b.1.as_f64().unwrap())).unwrap().0.clone()
    };
    let labelled_texts: Vec<Value> =
        texts.iter().zip(&ours).map(|(t, p)| json!({"text": t, "label": most_probable(p)})).collect();
    let evaluated: Value = server
        .client
        .post(server.url("/heads/single/evaluate"))
        .bearer_auth(ADMIN)
        .json(&json!({"examples": labelled_texts}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(evaluated["systems"][0]["scores"]["accuracy"], 1.0, "{evaluated}");
    assert_eq!(predictions_counted(&server, "single").await, after, "an evaluation is not a served prediction");

    // The multi-label head: TEI's routes give every label's score, /classify the set.
    let before = predictions_counted(&server, "topics").await;
    let ours: Value =
        server.post_json("/classify", json!({"inputs": texts, "head": "topics"})).await.json().await.unwrap();
    let ours = ours["predictions"].as_array().unwrap().clone();
    assert!(ours.iter().all(|p| p["labels"].is_array()), "{ours:?}");
    let answer: Value =
        server.post_json("/tei/heads/topics/predict", json!({"inputs": batch})).await.json().await.unwrap();
    for (answer, p) in answer.as_array().unwrap().iter().zip(&ours) {
        for (label, score) in tei_scores(answer) {
            assert!((score - p["probabilities"][&label].as_f64().unwrap()).abs() < 1e-6, "{answer} vs {p}");
        }
    }
    for (text, p) in texts.iter().zip(&ours) {
        let answer: Value = server.post_json("/tei/heads/topics", json!({"inputs": text})).await.json().await.unwrap();
        for (label, score) in tei_scores(&answer[0]) {
            assert!((score - p["probabilities"][&label].as_f64().unwrap()).abs() < 1e-6, "{answer} vs {p}");
        }
    }
    let after = predictions_counted(&server, "topics").await;
    for p in &ours {
        let label = p["label"].as_str().unwrap();
        let answered = ours.iter().filter(|q| q["label"] == label).count() as u64;
        let counted = after.get(label).copied().unwrap_or(0) - before.get(label).copied().unwrap_or(0);
        assert_eq!(counted, 3 * answered, "{label}: each route counts the head's decision");
    }

    // The pair head: /classify with text_pair and TEI's [[text, text_pair]].
    let (firsts, seconds) = (["goal team and score", "chip code"], ["soup bread cheese", "screen battery"]);
    let before = predictions_counted(&server, "pair").await;
    let ours: Value = server
        .post_json("/classify", json!({"inputs": firsts, "text_pair": seconds, "head": "pair"}))
        .await
        .json()
        .await
        .unwrap();
    let ours = ours["predictions"].as_array().unwrap_or_else(|| panic!("{ours}")).clone();
    let tei_pairs: Vec<Value> = firsts.iter().zip(seconds).map(|(a, b)| json!([a, b])).collect();
    let answer: Value =
        server.post_json("/tei/heads/pair/predict", json!({"inputs": tei_pairs})).await.json().await.unwrap();
    for (answer, p) in answer.as_array().unwrap().iter().zip(&ours) {
        let scores = tei_scores(answer);
        assert_eq!(scores[0].0, p["label"].as_str().unwrap(), "the same decision: {answer} vs {p}");
        for (label, score) in scores {
            assert!((score - p["probabilities"][&label].as_f64().unwrap()).abs() < 1e-6, "{answer} vs {p}");
        }
    }
    let after = predictions_counted(&server, "pair").await;
    let total = |m: &std::collections::BTreeMap<String, u64>| m.values().sum::<u64>();
    assert_eq!(total(&after) - total(&before), 4, "two pairs, two routes");
    server.stop().await;
}
