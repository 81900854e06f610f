//! Texts longer than the model's maximum, in overlapping windows pooled
//! together (`"windows": true` on pooled `/embed` and on `/classify`): the
//! pooled vector equals the one computed from each window's own hidden
//! states; a 2,000-token text is served with every window's tokens counted
//! against the request budget. Tiny BERT fixture (64 tokens) over a socket.

use crate::common;

use common::{error_of, fixture, max_abs_diff, settings_for, TestServer};
use serde_json::{json, Value};

async fn embed(server: &TestServer, body: Value) -> Value {
    let response = server.post_json("/embed", body).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn vector(answer: &Value, i: usize) -> Vec<f32> {
    answer["embeddings"][i].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
}

async fn token_count(server: &TestServer, text: &str) -> usize {
    let t: Value = server.post_json("/tokenize", json!({"inputs": text})).await.json().await.unwrap();
    t["tokens"][0].as_array().unwrap().len()
}

#[tokio::test]
async fn windows_pool_exactly_what_each_window_computes() {
    let mut settings = settings_for(&fixture("tiny-bert"));
    // 64-token windows of 62 word pieces that do not overlap: two windows below.
    settings.limits.window_stride_tokens = 62;
    let server = TestServer::start(settings).await;
    let (a, b) = ("the ".repeat(62), "a ".repeat(62));
    assert_eq!((token_count(&server, &a).await, token_count(&server, &b).await), (64, 64));
    let long = format!("{a}{b}");
    for pooling in ["mean", "cls"] {
        let windowed = embed(&server, json!({"inputs": [long], "pooling": pooling, "windows": true})).await;
        assert_eq!(windowed["token_counts"], json!([128]));
        let parts = embed(&server, json!({"inputs": [a, b], "pooling": pooling})).await;
        let expected: Vec<f32> = vector(&parts, 0).iter().zip(vector(&parts, 1)).map(|(x, y)| (x + y) / 2.0).collect();
        let diff = max_abs_diff(&vector(&windowed, 0), &expected);
        assert!(diff < 1e-5, "{pooling}: windows differ from their parts by {diff}");
        // Truncated, the same text is only its first window.
        let truncated = embed(&server, json!({"inputs": [long], "pooling": pooling})).await;
        assert!(max_abs_diff(&vector(&truncated, 0), &vector(&parts, 0)) < 1e-5);
    }
    // A text within the maximum is one window: the same as without windows.
    let short = embed(&server, json!({"inputs": ["a short text"], "pooling": "mean", "windows": true})).await;
    let plain = embed(&server, json!({"inputs": ["a short text"], "pooling": "mean"})).await;
    assert_eq!(short["embeddings"], plain["embeddings"]);
    server.stop().await;
}

#[tokio::test]
async fn a_two_thousand_token_text_is_embedded_and_classified_within_the_budget() {
    let folder = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&fixture("tiny-bert"));
    settings.classify.heads_dir = folder.path().to_path_buf();
    settings.security.admin_key = "k".into();
    let server = TestServer::start(settings).await;
    let sentences = ["the cat sat on the mat", "a dog ran in the park", "we ate soup and bread"];
    let long: String = (0..130).map(|i| format!("{} {i}. ", sentences[i % 3])).collect();
    let whole = common::TokenCount::of(&server, &long).await;
    assert!(whole >= 2000, "{whole} tokens");

    let answer = embed(&server, json!({"inputs": [long], "pooling": "mean", "windows": true, "normalize": true})).await;
    // Half-window stride (31 of 62 pieces): about twice the text's tokens computed.
    let computed = answer["token_counts"][0].as_u64().unwrap() as usize;
    let windows = computed / 64;
    assert!(
        computed % 64 == 0 && (2 * whole / 64..=2 * whole / 64 + 2).contains(&windows),
        "{computed} tokens in windows for {whole}"
    );
    let v = vector(&answer, 0);
    assert!((v.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-4);

    let examples: Vec<Value> = (0..30)
        .map(|i| json!({"text": format!("{} {i}", sentences[i % 2]), "label": (["pets", "food"][i % 2])}))
        .collect();
    let created = server
        .client
        .post(server.url("/heads"))
        .bearer_auth("k")
        .json(&json!({"name": "t", "examples": examples}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 202);
    loop {
        let d: Value = server.get("/heads/t").await.json().await.unwrap();
        if d["status"] == "ready" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let classified = server.post_json("/classify", json!({"inputs": [long], "head": "t", "windows": true})).await;
    assert_eq!(classified.status(), 200);
    let body: Value = classified.json().await.unwrap();
    let p = &body["predictions"][0]["probabilities"];
    assert!((p["pets"].as_f64().unwrap() + p["food"].as_f64().unwrap() - 1.0).abs() < 1e-5);

    // Every window counts against limits.max_request_tokens (8,192): 4 such texts do not fit.
    let (status, code, _) = error_of(
        server.post_json("/embed", json!({"inputs": vec![long.clone(); 4], "pooling": "mean", "windows": true})).await,
    )
    .await;
    assert_eq!((status, code.as_str()), (413, "too_many_tokens"));
    for body in [
        json!({"inputs": [long], "pooling": "none", "windows": true}),
        json!({"inputs": [long], "pooling": "mean", "windows": true, "return_tokens": true}),
    ] {
        let (status, code, _) = error_of(server.post_json("/embed", body).await).await;
        assert_eq!((status, code.as_str()), (422, "invalid_request"));
    }
    let (status, _, _) = error_of(
        server.post_json("/classify", json!({"inputs": [long], "head": "t", "windows": true, "explain": true})).await,
    )
    .await;
    assert_eq!(status, 422);
    server.stop().await;
}
