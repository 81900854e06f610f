//! The playground page at `/`, in a real browser: headless Chromium (Debian
//! package) loads `/?text=...`, which fills the box and submits it like a click;
//! the page must show the head's prediction (the same label the API gives).
//! Driven through the DevTools protocol (tests/browser/cdp.mjs, Node), the page
//! trains a head from a CSV with the admin key typed in, shows its progress,
//! lists it with its held-out accuracy and confusion matrix, and colours each
//! token by its part of the answer (the API's explanation). Needs chromium and
//! node (scripts/install-test-deps.sh).

use crate::common;

use std::process::Command;

use common::TestServer;
use serde_json::{json, Value};

fn chromium_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=15000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .expect("chromium runs (scripts/install-test-deps.sh installs it)");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

async fn server_with_a_head() -> TestServer {
    TestServer::start(common::settings_with_onnx_head()).await
}

#[tokio::test]
async fn the_page_is_served_self_contained() {
    let server = server_with_a_head().await;
    let response = server.get("/").await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let page = response.text().await.unwrap();
    assert!(page.contains("distilserve playground"));
    for remote in ["src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(!page.contains(remote), "the page loads something remote: {remote}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prediction_appears_in_headless_chromium() {
    let server = server_with_a_head().await;
    let text = "a gripping, funny film";
    let api: Value =
        server.post_json("/classify", json!({"inputs": [text], "head": "sst2"})).await.json().await.unwrap();
    let expected_label = api["predictions"][0]["label"].as_str().unwrap().to_string();
    let tokens: Value = server.post_json("/tokenize", json!({"inputs": [text]})).await.json().await.unwrap();
    let token_count = tokens["tokens"][0].as_array().unwrap().len();

    let url = format!("{}?text=a%20gripping%2C%20funny%20film", server.url("/"));
    let dom = tokio::task::spawn_blocking(move || chromium_dom(&url)).await.unwrap();
    assert!(!dom.contains("id=\"error\""), "the page showed an error: {dom}");
    let card = format!("class=\"card prediction\" data-head=\"sst2\" data-label=\"{expected_label}\"");
    assert!(dom.contains(&card), "no prediction card {card:?} in the page: {dom}");
    // An ONNX classifier has no per-token explanation: no strip.
    assert_eq!(dom.matches("class=\"tok\"").count(), 0, "{dom}");
    assert!(token_count > 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_trains_a_head_from_a_csv_and_explains_its_answer() {
    let folder = tempfile::tempdir().unwrap();
    let mut settings = common::settings_for(&common::fixture("tiny-bert"));
    settings.classify.heads_dir = folder.path().to_path_buf();
    settings.security.admin_key = "page-admin".into();
    let server = TestServer::start(settings).await;
    let rows = |n: usize| -> Vec<(String, &'static str)> {
        (0..n)
            .flat_map(|i| {
                [(format!("soup bread cheese taste {i}"), "food"), (format!("chip code screen battery {i}"), "tech")]
            })
            .collect()
    };
    // A large training first, so that the page's upload waits its turn and the
    // page shows that it does.
    let blocker: Vec<Value> = rows(3000).into_iter().map(|(t, l)| json!({"text": t, "label": l})).collect();
    let queued = server
        .client
        .post(server.url("/heads"))
        .bearer_auth("page-admin")
        .json(&json!({"name": "blocker", "examples": blocker}))
        .send()
        .await
        .unwrap();
    assert_eq!(queued.status(), 202);
    let mut csv = String::from("text,label\n");
    for (text, label) in rows(15) {
        csv.push_str(&format!("{text},{label}\n"));
    }
    let text = "cheese and a screen";
    // Labelled texts to evaluate on, with what a keyword rule answers for each.
    let mut eval_csv = String::from("text,label,rule\n");
    for (i, (t, l)) in
        [("cheese soup", "food"), ("a screen and code", "tech"), ("bread battery", "food"), ("chip taste", "tech")]
            .iter()
            .cycle()
            .take(12)
            .enumerate()
    {
        let rule = if t.contains("cheese") || t.contains("bread") { "food" } else { "tech" };
        eval_csv.push_str(&format!("{t} {i},{l},{rule}\n"));
    }
    let args = json!({"name": "page-head", "key": "page-admin", "csv": csv, "text": text, "compare": "blocker", "eval_csv": eval_csv});
    let script = format!("const ARGS = {args};\n{}", include_str!("../browser/train-and-explain.js"));
    let script_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script_file.path(), script).unwrap();
    let url = server.url("/");
    let driver = common::repo_path("tests/browser/cdp.mjs");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node").arg(driver).arg(url).arg(script_file.path()).arg("90000").output().expect("node runs")
    })
    .await
    .unwrap();
    assert!(out.status.success(), "the browser run failed: {}", String::from_utf8_lossy(&out.stderr));
    let page: Value = serde_json::from_slice(&out.stdout).unwrap();
    let page = &page["value"];
    println!("the page showed: {}", page["statuses"]);
    assert!(page["error"].is_null(), "{page}");
    let statuses: Vec<&str> = page["statuses"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert!(statuses.iter().any(|s| *s == "queued" || s.starts_with("training")), "no progress shown: {statuses:?}");
    assert_eq!(statuses.last(), Some(&"ready: page-head"));

    // The numbers the page shows are the API's.
    let head: Value = server.get("/heads/page-head").await.json().await.unwrap();
    let accuracy = head["metrics"]["test"]["accuracy"].as_f64().unwrap();
    assert_eq!(page["accuracy"], format!("{:.1}%", accuracy * 100.0));
    assert!(page["row"].as_str().unwrap().contains(head["version"].as_str().unwrap()), "{page}");
    assert!(page["image_width"].as_u64().unwrap() > 100);
    // The comparison the page shows is the API's.
    let evaluated: Value = server
        .client
        .post(server.url("/heads/page-head/evaluate?compare=blocker"))
        .bearer_auth("page-admin")
        .header("content-type", "text/csv")
        .body(eval_csv)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let shown: Vec<(String, String)> = page["systems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s[0].as_str().unwrap().to_string(), s[1].as_str().unwrap().to_string()))
        .collect();
    let api_systems: Vec<(String, String)> = evaluated["systems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let accuracy = s["scores"]["accuracy"].as_f64().unwrap();
            (s["name"].as_str().unwrap().to_string(), format!("{:.1}%", accuracy * 100.0))
        })
        .collect();
    assert_eq!(shown, api_systems);
    assert_eq!(page["comparisons"].as_array().unwrap().len(), 3, "{page}");
    let p = evaluated["comparisons"][0]["p_value"].as_f64().unwrap();
    let shown_p: f64 = page["comparisons"][0][2].as_str().unwrap().parse().unwrap();
    assert!((shown_p - p).abs() <= 1e-3 * p.max(1e-12), "page {shown_p} vs API {p}");
    assert!(page["matrices_width"].as_u64().unwrap() > 300);
    let api: Value = server
        .post_json("/classify", json!({"inputs": [text], "head": "page-head", "explain": true}))
        .await
        .json()
        .await
        .unwrap();
    let prediction = &api["predictions"][0];
    assert_eq!(page["label"], prediction["label"]);
    let explanation = &prediction["explanation"];
    let label = prediction["label"].as_str().unwrap();
    let tokens = explanation["tokens"].as_array().unwrap();
    assert_eq!(page["tokens"].as_array().unwrap().len(), tokens.len());
    // A head the search gave [CLS] pooling has no per-token split: the page
    // shows the tokens uncoloured (no push) and says why.
    if explanation["exact"] == false {
        assert!(tokens.iter().all(|t| t.get("parts").is_none_or(Value::is_null)), "{explanation}");
        for (i, token) in tokens.iter().enumerate() {
            assert_eq!(page["tokens"][i], token["text"]);
            assert!(page["pushes"][i].is_null() || page["pushes"][i].as_f64().is_some_and(f64::is_nan), "{page}");
        }
        server.stop().await;
        return;
    }
    for (i, token) in tokens.iter().enumerate() {
        assert_eq!(page["tokens"][i], token["text"]);
        let parts = token["parts"].as_object().unwrap();
        let others: Vec<f64> =
            parts.iter().filter(|(l, _)| l.as_str() != label).map(|(_, v)| v.as_f64().unwrap()).collect();
        let push = parts[label].as_f64().unwrap() - others.iter().sum::<f64>() / others.len() as f64;
        let shown = page["pushes"][i].as_f64().unwrap();
        assert!((shown - push).abs() < 1e-3, "token {i}: the page shows {shown}, the API gives {push}");
    }
    server.stop().await;
}
