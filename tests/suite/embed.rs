//! POST /embed, /info and /health: results against Python onnxruntime, every
//! output form (pooling, normalisation, layers, `.npy` that NumPy loads), every
//! documented error, concurrent callers. Tiny DistilBERT fixture over a socket;
//! pooling below the handler in process over a fake encoder; `.npy` of the real
//! model in NumPy.

use crate::common;

use std::process::Command;

use common::fakes::send;
use common::{default_model_dir, error_of, fixture, max_abs_diff, python, reference, settings_for, TestServer};
use distilserve::npy;
use serde_json::{json, Value};

async fn server() -> TestServer {
    TestServer::start(settings_for(&fixture("tiny-distilbert"))).await
}

fn expected() -> common::Reference {
    reference(&fixture("tiny-distilbert/expected.json"))
}

fn as_matrix(v: &Value) -> Vec<Vec<f32>> {
    serde_json::from_value(v.clone()).expect("matrix of floats")
}

#[tokio::test]
async fn per_token_states_match_python_onnxruntime() {
    let server = server().await;
    let reference = expected();
    let texts: Vec<&str> = reference.items.iter().map(|i| i.text.as_str()).collect();
    let response = server.post_json("/embed", json!({"inputs": texts, "return_tokens": true})).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["pooling"], "none");
    assert_eq!(body["dimensions"], 32);
    for (i, item) in reference.items.iter().enumerate() {
        let got = as_matrix(&body["embeddings"][i]);
        let want = item.last_hidden_state.as_ref().unwrap();
        assert_eq!(got.len(), want.len());
        assert_eq!(body["token_counts"][i], want.len());
        assert!(max_abs_diff(&got.concat(), &want.concat()) < 1e-4, "{:?}", item.text);
        assert_eq!(body["tokens"][i], json!(item.tokens));
    }
    server.stop().await;
}

#[tokio::test]
async fn pooling_cls_mean_and_normalize() {
    let server = server().await;
    let item = &expected().items[0];
    let states = item.last_hidden_state.as_ref().unwrap();
    let n = states.len() as f32;
    let mean: Vec<f32> = (0..32).map(|j| states.iter().map(|r| r[j]).sum::<f32>() / n).collect();

    let body: Value =
        server.post_json("/embed", json!({"inputs": item.text, "pooling": "cls"})).await.json().await.unwrap();
    assert!(body.get("tokens").is_none());
    assert!(max_abs_diff(&as_matrix(&body["embeddings"])[0], &states[0]) < 1e-4);

    let body: Value =
        server.post_json("/embed", json!({"inputs": [item.text], "pooling": "mean"})).await.json().await.unwrap();
    assert!(max_abs_diff(&as_matrix(&body["embeddings"])[0], &mean) < 1e-4);

    let body: Value = server
        .post_json("/embed", json!({"inputs": [item.text], "pooling": "mean", "normalize": true}))
        .await
        .json()
        .await
        .unwrap();
    let v = &as_matrix(&body["embeddings"])[0];
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let scale = mean.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);
    assert!(max_abs_diff(v, &mean.iter().map(|x| x / scale).collect::<Vec<_>>()) < 1e-4);
    assert_eq!(body["normalized"], true);
    server.stop().await;
}

#[tokio::test]
async fn npy_output_for_pooled_and_per_token() {
    let server = server().await;
    let reference = expected();
    let texts = [&reference.items[0].text, &reference.items[1].text]; // 7 and 3 tokens

    let response = server
        .client
        .post(server.url("/embed"))
        .header("accept", "application/x-npy")
        .json(&json!({"inputs": texts, "pooling": "cls"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-npy");
    assert_eq!(response.headers()["x-token-counts"], "7,3");
    let (shape, data) = npy::decode::<f32>(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(shape, vec![2, 32]);
    assert!(max_abs_diff(&data[..32], &reference.items[0].last_hidden_state.as_ref().unwrap()[0]) < 1e-4);

    let response = server
        .client
        .post(server.url("/embed"))
        .header("accept", "application/json;q=0.5, application/x-npy")
        .json(&json!({"inputs": texts}))
        .send()
        .await
        .unwrap();
    let (shape, data) = npy::decode::<f32>(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(shape, vec![2, 7, 32]);
    // The shorter text is zero-padded after its 3 real tokens.
    let second = &data[7 * 32..];
    assert!(max_abs_diff(&second[..3 * 32], &reference.items[1].last_hidden_state.as_ref().unwrap().concat()) < 1e-4);
    assert!(second[3 * 32..].iter().all(|&x| x == 0.0));
    server.stop().await;
}

#[tokio::test]
async fn info_and_health_describe_the_model() {
    let server = server().await;
    let info: Value = server.get("/info").await.json().await.unwrap();
    assert_eq!(info["model"]["name"], "tiny-distilbert");
    assert_eq!(info["model"]["hidden_size"], 32);
    assert_eq!(info["model"]["max_tokens"], 64);
    assert_eq!(info["model"]["inputs"], json!(["input_ids", "attention_mask"]));
    assert_eq!(info["execution_provider"], "cpu");
    let health = server.get("/health").await;
    assert_eq!(health.status(), 200);
    assert_eq!(health.json::<Value>().await.unwrap()["status"], "ok");
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_get_json_errors_with_the_right_status() {
    let mut settings = settings_for(&fixture("tiny-distilbert"));
    settings.limits.max_inputs = 4;
    settings.server.max_body_bytes = 4096;
    let server = TestServer::start(settings).await;
    let post_raw = |body: &'static str, content_type: &'static str| {
        server.client.post(server.url("/embed")).header("content-type", content_type).body(body).send()
    };

    let cases: Vec<(reqwest::Response, u16, &str, &str)> = vec![
        (post_raw("{\"inputs\": [", "application/json").await.unwrap(), 400, "invalid_json", "parse"),
        (post_raw("", "application/json").await.unwrap(), 400, "invalid_json", "EOF"),
        (
            post_raw("{\"inputs\": \"x\"}", "text/plain").await.unwrap(),
            415,
            "unsupported_media_type",
            "application/json",
        ),
        (server.post_json("/embed", json!({})).await, 422, "invalid_request", "inputs"),
        (server.post_json("/embed", json!({"inputs": 3})).await, 422, "invalid_request", "string or a list"),
        (server.post_json("/embed", json!({"inputs": ["a", 2]})).await, 422, "invalid_request", "inputs[1]"),
        (server.post_json("/embed", json!({"inputs": "a", "pooling": "max"})).await, 422, "invalid_request", "pooling"),
        (
            server.post_json("/embed", json!({"inputs": "a", "normalise": true})).await,
            422,
            "invalid_request",
            "normalise",
        ),
        (server.post_json("/embed", json!({"inputs": []})).await, 422, "empty_input", "empty list"),
        (server.post_json("/embed", json!({"inputs": ["ok", ""]})).await, 422, "empty_input", "input 1"),
        (server.post_json("/embed", json!({"inputs": ""})).await, 422, "empty_input", "input 0"),
        (
            server.post_json("/embed", json!({"inputs": ["a", "b", "c", "d", "e"]})).await,
            413,
            "too_many_inputs",
            "limit is 4",
        ),
        (
            server
                .post_json("/embed", json!({"inputs": ["fine", "the movie is good ".repeat(40)], "truncate": false}))
                .await,
            422,
            "input_too_long",
            "input 1 has 162 tokens",
        ),
        (server.post_json("/embed", json!({"inputs": "x".repeat(5000)})).await, 413, "payload_too_large", "limit"),
        (server.get("/nowhere").await, 404, "not_found", "route"),
        (server.get("/embed").await, 405, "method_not_allowed", "method"),
        (
            server
                .client
                .post(server.url("/embed"))
                .header("accept", "text/html")
                .json(&json!({"inputs": "a"}))
                .send()
                .await
                .unwrap(),
            406,
            "not_acceptable",
            "application/x-npy",
        ),
    ];
    for (response, status, code, fragment) in cases {
        assert_eq!(response.headers().get("content-type").map(|v| v.to_str().unwrap()), Some("application/json"));
        let (got_status, got_code, message) = error_of(response).await;
        assert_eq!((got_status, got_code.as_str()), (status, code), "message: {message}");
        assert!(message.contains(fragment), "{code}: {message:?} lacks {fragment:?}");
    }

    // Truncation is the default: the same long text is accepted and cut to 64 tokens.
    let body: Value = server
        .post_json("/embed", json!({"inputs": "the movie is good ".repeat(40), "pooling": "mean"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["token_counts"], json!([64]));
    server.stop().await;
}

#[tokio::test]
async fn concurrent_requests_each_get_their_own_results_in_order() {
    let server = server().await;
    let reference = expected();
    let mut tasks = Vec::new();
    for round in 0..24 {
        // Each request asks for a rotation of the texts, so that batches mix lengths.
        let k = round % reference.items.len();
        let order: Vec<usize> = (0..reference.items.len()).map(|i| (i + k) % reference.items.len()).collect();
        let texts: Vec<String> = order.iter().map(|&i| reference.items[i].text.clone()).collect();
        let client = server.client.clone();
        let url = server.url("/embed");
        tasks.push(tokio::spawn(async move {
            let body: Value = client
                .post(url)
                .json(&json!({"inputs": texts, "pooling": "cls"}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (order, body)
        }));
    }
    for task in tasks {
        let (order, body) = task.await.unwrap();
        let got = as_matrix(&body["embeddings"]);
        for (slot, &i) in order.iter().enumerate() {
            let want = &reference.items[i].last_hidden_state.as_ref().unwrap()[0];
            assert!(max_abs_diff(&got[slot], want) < 1e-4, "slot {slot} should hold text {i}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn layers_combined_by_mean_or_concat_over_http() {
    let server = server().await;
    let item = &expected().items[2];
    let (first, second, last) = (item.hidden_state(0, 2), item.hidden_state(1, 2), item.hidden_state(2, 2));
    let info: Value = server.get("/info").await.json().await.unwrap();
    assert_eq!(info["model"]["layers"], 2);

    // The last two side by side, per token, in the order asked.
    let body: Value = server
        .post_json("/embed", json!({"inputs": [item.text], "layers": [-1, 1], "layer_combine": "concat"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["dimensions"], 64);
    assert_eq!(body["layers"], json!([2, 1]));
    let got = as_matrix(&body["embeddings"][0]);
    let want: Vec<Vec<f32>> = last.iter().zip(&second).map(|(a, b)| [a.clone(), b.clone()].concat()).collect();
    assert!(max_abs_diff(&got.concat(), &want.concat()) < 1e-4);

    // [CLS] of the mean of all three hidden states, as .npy.
    let response = server
        .client
        .post(server.url("/embed"))
        .header("accept", "application/x-npy")
        .json(&json!({"inputs": [item.text, item.text], "pooling": "cls", "layers": [0, 1, 2]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (shape, data) = npy::decode::<f32>(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(shape, vec![2, 32]);
    let want: Vec<f32> = (0..32).map(|j| (first[0][j] + second[0][j] + last[0][j]) / 3.0).collect();
    assert!(max_abs_diff(&data[..32], &want) < 1e-4);

    // The default is the last hidden state; [-1] says the same.
    let plain: Value =
        server.post_json("/embed", json!({"inputs": [item.text], "pooling": "mean"})).await.json().await.unwrap();
    let explicit: Value = server
        .post_json("/embed", json!({"inputs": [item.text], "pooling": "mean", "layers": [-1]}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(plain["embeddings"], explicit["embeddings"]);
    assert_eq!(plain["layers"], json!([2]));

    for bad in [json!([3]), json!([-4]), json!([1, -2]), json!([])] {
        let response = server.post_json("/embed", json!({"inputs": ["dull"], "layers": bad})).await;
        let (status, code, _) = error_of(response).await;
        assert_eq!((status, code.as_str()), (422, "invalid_layers"), "layers {bad}");
    }
    let response = server.post_json("/embed", json!({"inputs": ["dull"], "layer_combine": "sum"})).await;
    assert_eq!(error_of(response).await.0, 422);
    server.stop().await;
}

#[tokio::test]
async fn embeddings_pass_through_pooling_and_normalisation_below_the_handler() {
    let body = json!({"inputs": ["good", "a long one"], "pooling": "mean", "normalize": true}).to_string();
    let (status, answer) = send("POST", "/embed", Some("application/json"), &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["dimensions"], 4);
    let v: Vec<f64> = answer["embeddings"][0].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    let norm = 30f64.sqrt();
    for (got, want) in v.iter().zip([1.0, 2.0, 3.0, 4.0]) {
        assert!((got - want / norm).abs() < 1e-6, "{v:?}");
    }
    let body = json!({"inputs": "good", "pooling": "none"}).to_string();
    let (_, answer) = send("POST", "/embed", Some("application/json"), &body).await;
    let tokens = answer["token_counts"][0].as_u64().unwrap() as usize;
    assert_eq!(answer["embeddings"][0].as_array().unwrap().len(), tokens);
    assert_eq!(answer["embeddings"][0][0], json!([1.0, 2.0, 3.0, 4.0]));
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
