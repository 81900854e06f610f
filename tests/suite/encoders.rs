//! Switching encoders: heads kept per encoder in one heads folder (tiny
//! DistilBERT and tiny BERT fixtures), and the base-size second encoder,
//! all-mpnet-base-v2, against PyTorch where it is set up
//! (`scripts/fetch-model.sh all-mpnet-base-v2`; skipped with the reason otherwise).

use crate::common;

use common::{fixture, max_abs_diff, settings_for, settings_with_toy_head, wait_ready, TestServer};
use serde_json::{json, Value};

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

/// all-mpnet-base-v2 served as exported: the per-token hidden states of a
/// padded batch (pad id 1, no token_type_ids) against PyTorch's, each text run
/// alone by transformers at export time.
#[tokio::test]
async fn mpnet_matches_pytorch_within_1e_3() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-mpnet-base-v2");
    let reference_path = dir.join("torch_reference.json");
    if !reference_path.is_file() {
        eprintln!(
            "SKIPPED mpnet_matches_pytorch_within_1e_3: {} is not set up \
             (scripts/fetch-model.sh all-mpnet-base-v2, or make setup MODEL=all-mpnet-base-v2)",
            dir.display()
        );
        return;
    }
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(&reference_path).unwrap()).unwrap();
    let items = reference["texts"].as_array().unwrap();
    let server = TestServer::start(settings_for(&dir)).await;
    let info: Value = server.get("/info").await.json().await.unwrap();
    assert_eq!(info["model"]["hidden_size"], 768);
    assert_eq!(info["model"]["layers"], 12);
    assert_eq!(info["model"]["inputs"], json!(["input_ids", "attention_mask"]));
    let texts: Vec<&str> = items.iter().map(|i| i["text"].as_str().unwrap()).collect();
    let body: Value = server.post_json("/embed", json!({"inputs": texts})).await.json().await.unwrap();
    let mut worst = 0f32;
    for (i, item) in items.iter().enumerate() {
        let want: Vec<Vec<f32>> = serde_json::from_value(item["last_hidden_state"].clone()).unwrap();
        let got: Vec<Vec<f32>> = serde_json::from_value(body["embeddings"][i].clone()).unwrap();
        assert_eq!(got.len(), want.len(), "tokens of {:?}", texts[i]);
        worst = worst.max(max_abs_diff(&got.concat(), &want.concat()));
    }
    eprintln!("all-mpnet-base-v2: max abs difference to PyTorch {worst:.2e}");
    assert!(worst < 1e-3, "max abs difference to PyTorch {worst}");
    server.stop().await;
}
