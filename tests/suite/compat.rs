//! The routes other clients speak, over a socket on the tiny DistilBERT
//! fixture: POST /tokenize; OpenAI's /v1/embeddings and /embeddings (token-id
//! inputs, corpus-sized requests in parts, their bounds); TEI's API under
//! /tei (shapes, defaults, error body and statuses) and a head's base URL.
//! The real client libraries drive the real model in `clients.rs`.

use crate::common;

use base64::Engine as _;
use common::{error_of, fixture, max_abs_diff, reference, settings_for, TestServer};
use serde_json::{json, Value};

#[tokio::test]
async fn tokenize_gives_ids_pieces_and_offsets() {
    let server = TestServer::start(settings_for(&fixture("tiny-distilbert"))).await;
    let expected = reference(&fixture("tiny-distilbert/expected.json"));
    let text = &expected.items[0].text; // "a gripping, funny film"
    let body: Value = server.post_json("/tokenize", json!({"inputs": [text]})).await.json().await.unwrap();
    let tokens = body["tokens"][0].as_array().unwrap();
    let ids: Vec<i64> = tokens.iter().map(|t| t["id"].as_i64().unwrap()).collect();
    let pieces: Vec<&str> = tokens.iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(ids, expected.items[0].ids);
    assert_eq!(pieces, expected.items[0].tokens.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!((tokens[0]["special"].as_bool(), tokens.last().unwrap()["special"].as_bool()), (Some(true), Some(true)));
    for t in &tokens[1..tokens.len() - 1] {
        assert_eq!(t["special"], false);
        let (start, end) = (t["start"].as_u64().unwrap() as usize, t["end"].as_u64().unwrap() as usize);
        let piece: String = text.chars().skip(start).take(end - start).collect();
        assert_eq!(piece, t["text"].as_str().unwrap().trim_start_matches("##"));
    }
    let (status, code, _) = error_of(server.post_json("/tokenize", json!({"inputs": ""})).await).await;
    assert_eq!((status, code.as_str()), (422, "empty_input"));
    server.stop().await;
}

#[tokio::test]
async fn openai_embeddings_are_normalised_mean_vectors() {
    let server = TestServer::start(settings_for(&fixture("tiny-distilbert"))).await;
    let texts = ["a gripping, funny film", "dull"];
    let openai: Value =
        server.post_json("/v1/embeddings", json!({"input": texts, "model": "anything"})).await.json().await.unwrap();
    assert_eq!(openai["object"], "list");
    assert_eq!(openai["model"], "anything", "the model named in the request is echoed");
    assert_eq!(openai["usage"]["prompt_tokens"], 7 + 3);
    let ours: Value = server
        .post_json("/embed", json!({"inputs": texts, "pooling": "mean", "normalize": true}))
        .await
        .json()
        .await
        .unwrap();
    for i in 0..2 {
        assert_eq!(openai["data"][i]["index"], i);
        assert_eq!(openai["data"][i]["object"], "embedding");
        let v: Vec<f32> = serde_json::from_value(openai["data"][i]["embedding"].clone()).unwrap();
        let w: Vec<f32> = serde_json::from_value(ours["embeddings"][i].clone()).unwrap();
        assert!(max_abs_diff(&v, &w) < 1e-6);
        assert!((v.iter().map(|x| x * x).sum::<f32>().sqrt() - 1.0).abs() < 1e-5);
    }
    let b64: Value = server
        .post_json("/v1/embeddings", json!({"input": "dull", "encoding_format": "base64"}))
        .await
        .json()
        .await
        .unwrap();
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(b64["data"][0]["embedding"].as_str().unwrap()).unwrap();
    let decoded: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let floats: Vec<f32> = serde_json::from_value(openai["data"][1]["embedding"].clone()).unwrap();
    assert_eq!(decoded, floats);
    let (status, code, _) =
        error_of(server.post_json("/v1/embeddings", json!({"input": "x", "encoding_format": "int8"})).await).await;
    assert_eq!((status, code.as_str()), (422, "invalid_request"));
    server.stop().await;
}

/// The characters of `text` from `start` to `end` (offsets in characters).
fn chars(text: &str, start: usize, end: usize) -> String {
    text.chars().skip(start).take(end - start).collect()
}

#[tokio::test]
async fn tokenize_offsets_count_characters_not_bytes() {
    let server = TestServer::start(settings_for(&fixture("tiny-distilbert"))).await;
    for text in ["Ça été café", "東京タワー と 大阪", "I love 🍕 and 🎉 parties", "naïve résumé über"]
    {
        let body: Value = server.post_json("/tokenize", json!({"inputs": text})).await.json().await.unwrap();
        let tokens = body["tokens"][0].as_array().unwrap();
        // Word pieces cover every character but spaces, in order: slicing the
        // text by the offsets, as a client does, gives it back.
        let mut covered = String::new();
        let mut last_end = 0;
        for t in tokens.iter().filter(|t| t["special"] == false) {
            let (start, end) = (t["start"].as_u64().unwrap() as usize, t["end"].as_u64().unwrap() as usize);
            assert!(start >= last_end && end > start && end <= text.chars().count(), "{text}: {t}");
            covered.push_str(&chars(text, start, end));
            last_end = end;
        }
        assert_eq!(covered, text.replace(' ', ""), "{text}: {tokens:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn openai_dimensions_truncate_then_normalise_and_unknown_fields_are_refused() {
    let server = TestServer::start(settings_for(&fixture("tiny-distilbert"))).await;
    let full: Value = server.post_json("/v1/embeddings", json!({"input": "dull"})).await.json().await.unwrap();
    let short: Value =
        server.post_json("/v1/embeddings", json!({"input": "dull", "dimensions": 8})).await.json().await.unwrap();
    let full: Vec<f32> = serde_json::from_value(full["data"][0]["embedding"].clone()).unwrap();
    let short: Vec<f32> = serde_json::from_value(short["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(short.len(), 8);
    // The first 8 values of the unit vector, scaled to unit length again.
    let mut expected = full[..8].to_vec();
    let norm = expected.iter().map(|x| x * x).sum::<f32>().sqrt();
    expected.iter_mut().for_each(|x| *x /= norm);
    assert!(max_abs_diff(&short, &expected) < 1e-5, "{short:?} vs {expected:?}");
    let (status, code, message) =
        error_of(server.post_json("/v1/embeddings", json!({"input": "x", "dimensions": 0})).await).await;
    assert_eq!((status, code.as_str()), (422, "invalid_dimensions"), "{message}");
    let wide: Value =
        server.post_json("/v1/embeddings", json!({"input": "dull", "dimensions": 5000})).await.json().await.unwrap();
    assert_eq!(wide["data"][0]["embedding"].as_array().unwrap().len(), 32, "more than the model has: the whole vector");
    let (status, code, message) =
        error_of(server.post_json("/v1/embeddings", json!({"input": "x", "dimension": 8})).await).await;
    assert_eq!((status, code.as_str()), (422, "invalid_request"));
    assert!(message.contains("dimension"), "{message}");
    server.stop().await;
}

/// The tiny fixture serving the tiny ONNX classifier as head `sst2`.
async fn server_with_head() -> TestServer {
    TestServer::start(common::settings_with_onnx_head()).await
}

#[tokio::test]
async fn embeddings_alias_and_token_ids_embed_like_texts() {
    let server = TestServer::start(settings_for(&fixture("tiny-distilbert"))).await;
    let text = "a gripping, funny film";
    let by_text: Value = server.post_json("/embeddings", json!({"input": text})).await.json().await.unwrap();
    let tokens: Value = server.post_json("/tokenize", json!({"inputs": text})).await.json().await.unwrap();
    let ids: Vec<u64> = tokens["tokens"][0].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap()).collect();
    for input in [json!(ids), json!([ids])] {
        let by_ids: Value = server.post_json("/v1/embeddings", json!({"input": input})).await.json().await.unwrap();
        assert_eq!(by_ids["data"][0]["embedding"], by_text["data"][0]["embedding"], "ids as /tokenize gives them");
        assert_eq!(by_ids["usage"]["prompt_tokens"], ids.len());
    }
    // Texts and id lists mixed, in order.
    let mixed: Value =
        server.post_json("/v1/embeddings", json!({"input": [text, ids, "dull"]})).await.json().await.unwrap();
    assert_eq!(mixed["data"][1]["embedding"], by_text["data"][0]["embedding"]);
    assert_eq!(mixed["data"][2]["index"], 2);
    for (input, code) in [
        (json!([[1_000_000]]), "invalid_input"),
        (json!([[-1]]), "invalid_request"),
        (json!([[]]), "invalid_input"),
        (json!([]), "empty_input"),
        (json!([""]), "empty_input"),
        (json!([{"a": 1}]), "invalid_request"),
    ] {
        let (status, got, message) = error_of(server.post_json("/v1/embeddings", json!({"input": input})).await).await;
        assert_eq!((status, got.as_str()), (422, code), "{input}: {message}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_corpus_request_is_computed_in_parts_in_order() {
    let mut settings = settings_for(&fixture("tiny-distilbert"));
    // Parts of at most 16 texts and 200 tokens: 300 texts are many parts.
    settings.limits.max_inputs = 16;
    settings.limits.max_request_tokens = 200;
    settings.batching.queue_capacity_tokens = 400;
    let server = TestServer::start(settings).await;
    let texts: Vec<String> = (0..300).map(|i| format!("review {i} of a gripping, funny film")).collect();
    let whole: Value = server.post_json("/v1/embeddings", json!({"input": texts})).await.json().await.unwrap();
    let data = whole["data"].as_array().unwrap();
    assert_eq!(data.len(), 300);
    for i in [0usize, 15, 16, 151, 299] {
        assert_eq!(data[i]["index"], i);
        let one: Value = server.post_json("/v1/embeddings", json!({"input": texts[i]})).await.json().await.unwrap();
        let (a, b): (Vec<f32>, Vec<f32>) = (
            serde_json::from_value(data[i]["embedding"].clone()).unwrap(),
            serde_json::from_value(one["data"][0]["embedding"].clone()).unwrap(),
        );
        assert!(max_abs_diff(&a, &b) < 1e-5, "text {i} differs when sent in a corpus");
    }
    // The per-request routes keep their own bound.
    let (status, code, _) =
        error_of(server.post_json("/embed", json!({"inputs": texts, "pooling": "mean"})).await).await;
    assert_eq!((status, code.as_str()), (413, "too_many_inputs"));
    server.stop().await;
}

#[tokio::test]
async fn corpus_bounds_name_their_limits() {
    let mut settings = settings_for(&fixture("tiny-distilbert"));
    settings.limits.max_pooled_inputs = 10;
    settings.limits.max_pooled_tokens = 50;
    let server = TestServer::start(settings).await;
    let response = server.post_json("/v1/embeddings", json!({"input": vec!["good"; 11]})).await;
    let (status, code, message) = error_of(response).await;
    assert_eq!((status, code.as_str()), (413, "too_many_inputs"), "{message}");
    assert!(message.contains("10"), "{message}");
    let (status, code, message) =
        error_of(server.post_json("/v1/embeddings", json!({"input": vec!["good fun film, so good"; 10]})).await).await;
    assert_eq!((status, code.as_str()), (413, "too_many_tokens"), "{message}");
    assert!(message.contains("50"), "{message}");
    let info: Value = server.get("/info").await.json().await.unwrap();
    assert_eq!(
        (info["limits"]["max_pooled_inputs"].as_u64(), info["limits"]["max_pooled_tokens"].as_u64()),
        (Some(10), Some(50))
    );
    server.stop().await;
}

#[tokio::test]
async fn tei_embed_answers_bare_pooled_vectors_with_tei_defaults() {
    let server = TestServer::start(settings_for(&fixture("tiny-distilbert"))).await;
    let texts = ["a gripping, funny film", "dull"];
    let openai: Value = server.post_json("/v1/embeddings", json!({"input": texts})).await.json().await.unwrap();
    for path in ["/tei", "/tei/", "/tei/embed"] {
        let body: Value = server.post_json(path, json!({"inputs": texts})).await.json().await.unwrap();
        assert_eq!(body[0], openai["data"][0]["embedding"], "{path}: normalised mean, as OpenAI's");
        assert_eq!(body.as_array().unwrap().len(), 2);
    }
    let one: Value = server.post_json("/tei/embed", json!({"inputs": "dull"})).await.json().await.unwrap();
    assert_eq!(one.as_array().unwrap().len(), 1, "one text answers [[...]], as TEI");
    let raw: Vec<Vec<f32>> =
        server.post_json("/tei/embed", json!({"inputs": "dull", "normalize": false})).await.json().await.unwrap();
    let norm = raw[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() > 1e-3, "normalize false: norm {norm}");
    let cut: Vec<Vec<f32>> =
        server.post_json("/tei/embed", json!({"inputs": "dull", "dimensions": 4})).await.json().await.unwrap();
    assert_eq!(cut[0].len(), 4);
    // Over-long without truncate: TEI's 413 Validation; with it, cut at either end.
    let long = "good ".repeat(600);
    let response = server.post_json("/tei/embed", json!({"inputs": long})).await;
    assert_eq!(response.status(), 413);
    let error: Value = response.json().await.unwrap();
    assert_eq!((error["error_type"].as_str(), error["code"].as_str()), (Some("Validation"), Some("input_too_long")));
    assert!(error["error"].as_str().unwrap().contains("truncate"), "{error}");
    let right: Value =
        server.post_json("/tei/embed", json!({"inputs": long, "truncate": true})).await.json().await.unwrap();
    let left: Value = server
        .post_json("/tei/embed", json!({"inputs": long, "truncate": true, "truncation_direction": "left"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(right[0].as_array().unwrap().len(), left[0].as_array().unwrap().len());
    for (body, status, error_type, code) in [
        (json!({"inputs": []}), 400, "Empty", "empty_input"),
        (json!({"inputs": "x", "prompt_name": "query"}), 422, "Validation", "unsupported"),
        (json!({"inputs": "x", "bogus": 1}), 422, "Validation", "invalid_request"),
        (json!({"inputs": vec!["x"; 3000]}), 413, "Validation", "too_many_inputs"),
    ] {
        let response = server.post_json("/tei/embed", body.clone()).await;
        assert_eq!(response.status(), status, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!((error["error_type"].as_str(), error["code"].as_str()), (Some(error_type), Some(code)), "{body}");
    }
    server.stop().await;
}

#[tokio::test]
async fn tei_embed_all_tokenize_decode_and_info() {
    let server = TestServer::start(settings_for(&fixture("tiny-distilbert"))).await;
    let text = "a gripping, funny film";
    let ours: Value = server.post_json("/embed", json!({"inputs": [text]})).await.json().await.unwrap();
    let all: Value = server.post_json("/tei/embed_all", json!({"inputs": text})).await.json().await.unwrap();
    assert_eq!(all[0], ours["embeddings"][0], "every token's last hidden state, as /embed's");
    let tokens: Value = server.post_json("/tei/tokenize", json!({"inputs": [text]})).await.json().await.unwrap();
    let tokens = tokens[0].as_array().unwrap();
    assert_eq!((tokens[0]["special"].as_bool(), tokens[0]["start"].is_null()), (Some(true), true));
    assert_eq!((tokens[1]["start"].as_u64(), tokens[1]["stop"].as_u64()), (Some(0), Some(1)));
    let plain: Value = server
        .post_json("/tei/tokenize", json!({"inputs": text, "add_special_tokens": false}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(plain[0].as_array().unwrap().len(), tokens.len() - 2);
    let ids: Vec<u64> = tokens.iter().map(|t| t["id"].as_u64().unwrap()).collect();
    let decoded: Vec<String> = server.post_json("/tei/decode", json!({"ids": ids})).await.json().await.unwrap();
    assert_eq!(decoded, vec![text.to_string()]);
    let (status, error_type, code) =
        tei_error_of(server.post_json("/tei/decode", json!({"ids": [[1_000_000]]})).await).await;
    assert_eq!((status, error_type.as_str(), code.as_str()), (422, "Tokenizer", "invalid_input"));
    let info: Value = server.get("/tei/info").await.json().await.unwrap();
    assert_eq!(info["model_type"]["embedding"]["pooling"], "mean");
    assert_eq!(info["max_client_batch_size"], 2048);
    let ours: Value = server.get("/info").await.json().await.unwrap();
    assert_eq!(info["max_input_length"], ours["model"]["max_tokens"]);
    assert_eq!(server.get("/tei/health").await.status(), 200);
    assert!(server.get("/tei/metrics").await.text().await.unwrap().contains("distilserve_"));
    let response = server.post_json("/tei/embed_all", json!({"inputs": "x", "truncation_direction": "left"})).await;
    assert_eq!(response.status(), 422);
    server.stop().await;
}

/// `error_of` for TEI's body: (status, error_type, code).
async fn tei_error_of(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (status, body["error_type"].as_str().unwrap().into(), body["code"].as_str().unwrap().into())
}

#[tokio::test]
async fn tei_predict_and_a_heads_base_url_answer_the_heads_labels() {
    let server = server_with_head().await;
    let texts = ["a gripping, funny film", "dull"];
    let ours: Value = server.post_json("/classify", json!({"inputs": texts})).await.json().await.unwrap();
    let single: Value = server.post_json("/tei/predict", json!({"inputs": texts[0]})).await.json().await.unwrap();
    let single = single.as_array().unwrap();
    assert_eq!(single.len(), 2, "every label");
    assert_eq!(single[0]["label"], ours["predictions"][0]["label"], "most probable first");
    assert!(single[0]["score"].as_f64() >= single[1]["score"].as_f64());
    let batch: Value =
        server.post_json("/tei/predict", json!({"inputs": [[texts[0]], [texts[1]]]})).await.json().await.unwrap();
    assert_eq!(batch[1][0]["label"], ours["predictions"][1]["label"]);
    let named: Value =
        server.post_json("/tei/heads/sst2/predict", json!({"inputs": texts[1]})).await.json().await.unwrap();
    assert_eq!(named[0]["label"], ours["predictions"][1]["label"]);
    // The Inference API's shape at the head's base URL: [[{label, score}]], top_k.
    let hf: Value = server
        .post_json("/tei/heads/sst2", json!({"inputs": texts[0], "parameters": {"top_k": 1}}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(hf.as_array().unwrap().len(), 1);
    assert_eq!(hf[0].as_array().unwrap().len(), 1);
    assert_eq!(hf[0][0]["label"], ours["predictions"][0]["label"]);
    let p = ours["predictions"][0]["probability"].as_f64().unwrap();
    assert!((hf[0][0]["score"].as_f64().unwrap() - p).abs() < 1e-6);
    let info: Value = server.get("/tei/heads/sst2/info").await.json().await.unwrap();
    assert_eq!(info["model_type"]["classifier"]["id2label"]["0"], "neg");
    assert_eq!(info["model_type"]["classifier"]["label2id"]["pos"], 1);
    for (path, body, status, code) in [
        ("/tei/predict", json!({"inputs": ["a", "b"]}), 422, "unsupported"),
        ("/tei/predict", json!({"inputs": "a", "raw_scores": true}), 422, "unsupported"),
        ("/tei/heads/sst2", json!({"inputs": "a", "parameters": {"function_to_apply": "sigmoid"}}), 422, "unsupported"),
        ("/tei/heads/nope/predict", json!({"inputs": "a"}), 404, "not_found"),
    ] {
        let (got_status, _, got_code) = tei_error_of(server.post_json(path, body.clone()).await).await;
        assert_eq!((got_status, got_code.as_str()), (status, code), "{path} {body}");
    }
    server.stop().await;
}
