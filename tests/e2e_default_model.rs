//! End to end on the real default model (all-MiniLM-L6-v2, set up by
//! scripts/setup.sh): hidden states of Rotten Tomatoes test sentences over HTTP
//! equal Python onnxruntime's, and the `.npy` answer loads in NumPy.

mod common;

use std::process::Command;

use common::{default_model_dir, max_abs_diff, reference, settings_for, TestServer};
use serde_json::{json, Value};

/// The Python with NumPy: $DISTILSERVE_PYTHON (set by the Makefile), else the set-up venv.
fn python() -> String {
    std::env::var("DISTILSERVE_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/distilserve/venv/bin/python")
    })
}

#[tokio::test]
async fn hidden_states_match_python_onnxruntime() {
    let dir = default_model_dir();
    let reference = reference(&dir.join("reference.json"));
    assert!(reference.items.len() >= 8);
    let server = TestServer::start(settings_for(&dir)).await;
    let texts: Vec<&str> = reference.items.iter().map(|i| i.text.as_str()).collect();
    let body: Value =
        server.post_json("/embed", json!({"inputs": texts, "return_tokens": true})).await.json().await.unwrap();
    assert_eq!(body["dimensions"], 384);
    let mut worst = 0f32;
    for (i, item) in reference.items.iter().enumerate() {
        assert_eq!(body["tokens"][i], json!(item.tokens), "{:?}", item.text);
        let got: Vec<Vec<f32>> = serde_json::from_value(body["embeddings"][i].clone()).unwrap();
        let want = item.last_hidden_state.as_ref().unwrap();
        assert_eq!(got.len(), want.len());
        worst = worst.max(max_abs_diff(&got.concat(), &want.concat()));
    }
    assert!(worst < 1e-4, "max abs difference {worst}");
    eprintln!("default model: max abs difference to Python onnxruntime {worst:.2e}");
    server.stop().await;
}

#[tokio::test]
async fn npy_answer_loads_in_numpy() {
    let dir = default_model_dir();
    let server = TestServer::start(settings_for(&dir)).await;
    let texts = ["a gripping, funny film", "dull", "the acting is wooden and the plot goes nowhere"];
    let tmp = tempfile::tempdir().unwrap();
    for (pooling, want_shape) in [("mean", "(3, 384)"), ("none", "(3, 11, 384)")] {
        let response = server
            .client
            .post(server.url("/embed"))
            .header("accept", "application/x-npy")
            .json(&json!({"inputs": texts, "pooling": pooling}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let counts = response.headers()["x-token-counts"].to_str().unwrap().to_string();
        let path = tmp.path().join(format!("{pooling}.npy"));
        std::fs::write(&path, response.bytes().await.unwrap()).unwrap();
        let script = "import io, sys, numpy as np; a = np.load(io.BytesIO(open(sys.argv[1], 'rb').read())); \
                      print(a.shape, a.dtype, bool(np.isfinite(a).all()))";
        let out = Command::new(python()).args(["-c", script]).arg(&path).output().expect("python runs");
        assert!(out.status.success(), "numpy failed: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("{want_shape} float32 True"));
        assert_eq!(counts, "7,3,11");
    }
    server.stop().await;
}
