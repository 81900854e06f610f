//! POST /tokenize and the OpenAI-style POST /v1/embeddings over a socket, on
//! the tiny DistilBERT fixture.

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
