//! Malformed and hostile input gets a clear error, never a panic or a 5xx: every
//! extractor rejection as our JSON error with its status (in process over a fake
//! encoder); property tests (proptest) where a fuzzer would go: bodies thrown at
//! every POST route over a real socket, tokenization of arbitrary text, `.npy`
//! encoding and decoding, and head files mutated or edited, each with the
//! crashers' classics pinned as cases (empty, whitespace, emoji, control
//! characters, 1 MB of one character, lone surrogates in JSON escapes). Bounded
//! for CI: PROPTEST_CASES raises it.

use crate::common;

use std::sync::OnceLock;

use common::fakes::send;
use common::{fixture, settings_for, TestServer};
use distilserve::heads::logistic::LogisticHead;
use distilserve::model::Model;
use distilserve::npy;
use distilserve::tokenize::TextTokenizer;
use proptest::prelude::*;
use serde_json::{json, Value};

/// Cases per property: `default` in CI, PROPTEST_CASES for a longer run.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn tokenizer() -> &'static TextTokenizer {
    static T: OnceLock<TextTokenizer> = OnceLock::new();
    T.get_or_init(|| TextTokenizer::from_file(&fixture("tiny-distilbert/tokenizer.json"), 64).unwrap())
}

/// Text with the characters that break tokenizers: controls, combining marks,
/// emoji, right-to-left, zero-width, CJK, and plain ASCII.
fn nasty_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            any::<char>(),
            prop::sample::select(vec![
                '\0',
                '\u{7}',
                '\n',
                '\t',
                '\u{85}',
                '\u{200b}',
                '\u{feff}',
                '\u{301}',
                '😀',
                '👍',
                '\u{1f3fd}',
                '\u{202e}',
                '語',
                ' ',
                'a'
            ]),
        ],
        0..200,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

fn check_tokenized(text: &str) {
    for truncate in [true, false] {
        match tokenizer().encode(0, text, truncate) {
            Ok(t) => {
                assert!(t.len() <= 64, "longer than the maximum: {}", t.len());
                assert_eq!(t.ids.len(), t.offsets.len());
                assert_eq!(t.ids.len(), t.tokens.len());
                for &(start, end) in &t.offsets {
                    assert!(start <= end && end <= text.len(), "offset ({start}, {end}) outside {} bytes", text.len());
                    assert!(text.is_char_boundary(start) && text.is_char_boundary(end));
                }
            }
            Err(e) => assert!(!truncate, "truncating must not fail: {e}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(256)))]

    #[test]
    fn tokenizing_any_text_keeps_offsets_and_limits(text in nasty_text()) {
        check_tokenized(&text);
    }

    #[test]
    fn npy_round_trips_any_shape(shape in prop::collection::vec(0usize..6, 0..4), seed in any::<u32>()) {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|i| (i as f32 + seed as f32).sin()).collect();
        let bytes = npy::encode(&shape, &data);
        // The format's rule: magic, version, header padded so that data starts on a 64-byte boundary.
        prop_assert_eq!(&bytes[..6], b"\x93NUMPY");
        prop_assert_eq!((bytes.len() - 4 * n) % 64, 0);
        let (got_shape, got) = npy::decode::<f32>(&bytes).unwrap();
        prop_assert_eq!(got_shape, shape);
        prop_assert_eq!(got, data);
    }

    #[test]
    fn npy_decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300), header in any::<bool>()) {
        let mut input = if header { b"\x93NUMPY\x01\x00".to_vec() } else { Vec::new() };
        input.extend(bytes);
        let _ = npy::decode::<f32>(&input);
        let _ = npy::decode::<i64>(&input);
    }
}

#[test]
fn tokenizing_the_classics() {
    let megabyte_a = "a".repeat(1 << 20);
    let megabyte_emoji = "😀".repeat(1 << 18);
    for text in ["", " ", "\t\n\r", "\0\u{1}\u{7f}", "😀👍🏽🇫🇷", "\u{202e}abc", &megabyte_a, &megabyte_emoji]
    {
        check_tokenized(text);
    }
}

#[test]
fn npy_headers_with_absurd_shapes_are_errors() {
    for dict in [
        "{'descr': '<f4', 'fortran_order': False, 'shape': (18446744073709551615, 2), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 16), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }",
    ] {
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((dict.len() as u16).to_le_bytes());
        bytes.extend(dict.as_bytes());
        assert!(npy::decode::<f32>(&bytes).is_err(), "{dict}");
    }
}

/// A real head file to mutate: trained once on the synthetic set with the tiny model.
fn head_file() -> &'static Vec<u8> {
    static HEAD: OnceLock<Vec<u8>> = OnceLock::new();
    HEAD.get_or_init(|| {
        let root = tempfile::tempdir().unwrap();
        common::synthetic_dataset(&root.path().join("data"));
        let mut settings = common::settings_with_toy_head(root.path(), false);
        settings.model.intra_threads = 1;
        let mut model = Model::load(&settings.model, 1).unwrap();
        let heads = root.path().join("heads");
        let head = common::train_toy_head(&mut model, &settings.heads["toy"], &heads, &root.path().join("cache"));
        let path = distilserve::heads::logistic::head_path(&heads, &head.name).unwrap();
        std::fs::read(path).unwrap()
    })
}

fn write_head(dir: &std::path::Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(128)))]

    #[test]
    fn a_mutated_head_file_is_refused_never_loaded_nor_a_panic(
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        truncate in any::<bool>(),
    ) {
        let good = head_file();
        let mut bytes = good.clone();
        for (at, value) in &flips {
            let i = at.index(bytes.len());
            bytes[i] = *value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = write_head(dir.path(), "toy.json", &bytes);
        match LogisticHead::load(&path) {
            // A change may be meaningless (e.g. renaming the key of a null field); what
            // loads must be exactly the head that was written.
            Ok(loaded) => {
                let original = LogisticHead::load(&write_head(dir.path(), "good.json", good)).unwrap();
                prop_assert!(loaded == original, "an altered head file loaded as a different head");
            }
            Err(e) => prop_assert!(e.to_string().contains("toy.json"), "error does not name the file: {}", e),
        }
    }
}

/// The tiny model's description, for checking heads against it.
fn tiny_info() -> &'static distilserve::model::ModelInfo {
    static INFO: OnceLock<distilserve::model::ModelInfo> = OnceLock::new();
    INFO.get_or_init(|| {
        let settings = settings_for(&fixture("tiny-distilbert"));
        (*Model::load(&settings.model, 1).unwrap().info).clone()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(128)))]

    /// Edits that keep the file well-formed and its checksum right (recomputed,
    /// as someone editing the file would): only the shape and encoder checks can
    /// refuse them. What loads must classify a vector of the encoder's width
    /// into finite probabilities, one per label, never panic.
    #[test]
    fn a_consistently_edited_head_is_refused_or_safe_to_serve(
        edit in 0usize..8,
        at in any::<prop::sample::Index>(),
        value in any::<u16>(),
    ) {
        let mut head: LogisticHead = serde_json::from_slice(head_file()).unwrap();
        let k = head.labels.len();
        let width = head.scaler_mean.len();
        match edit {
            0 => head.encoder.hidden_size = usize::from(value % 100),
            1 => { let row = at.index(k); let keep = usize::from(value) % (width + 1); head.weights[row].truncate(keep) }
            2 => { head.weights.pop(); }
            3 => { head.intercept.pop(); }
            4 => head.scaler_scale[at.index(width)] = [0.0, -1.0, f32::NAN, f32::INFINITY][usize::from(value % 4)],
            5 => head.labels.push(format!("extra{value}")),
            6 => head.pooling = distilserve::pooling::FeaturePooling::ALL[usize::from(value % 3)],
            _ => { let keep = usize::from(value) % (width + 1); head.scaler_mean.truncate(keep); head.scaler_scale.truncate(keep) }
        }
        let bytes = serde_json::to_vec(&head.sealed()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = write_head(dir.path(), "toy.json", &bytes);
        let loaded = LogisticHead::load(&path).map_err(|e| e.to_string()).and_then(|h| {
            h.check_encoder(&path, tiny_info()).map_err(|e| e.to_string())?;
            Ok(h)
        });
        match loaded {
            Ok(h) => {
                let features = vec![0.5f32; h.pooling.width(tiny_info().hidden_size)];
                let p = h.probabilities(&features);
                prop_assert_eq!(p.len(), h.labels.len());
                prop_assert!(p.iter().all(|v| v.is_finite()) && (p.iter().sum::<f32>() - 1.0).abs() < 1e-4);
            }
            Err(e) => prop_assert!(e.contains("toy.json"), "error does not name the file: {}", e),
        }
    }
}

/// Bodies thrown at every POST route over a real socket: never a 5xx, always JSON.
#[test]
fn arbitrary_bodies_get_json_answers_and_never_a_5xx() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let server = runtime.block_on(TestServer::start(settings_for(&fixture("tiny-distilbert"))));
    let send = |path: &str, body: Vec<u8>| -> (u16, Value) {
        runtime.block_on(async {
            let response = server
                .client
                .post(server.url(path))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON ({status}): {text:?}"));
            (status, value)
        })
    };
    let routes = ["/embed", "/classify", "/tokenize", "/v1/embeddings"];
    // The classics: lone surrogates, huge texts, wrong types, deep nesting.
    let classics: Vec<Vec<u8>> = vec![
        br#"{"inputs": "\ud800"}"#.to_vec(),
        br#"{"inputs": ["ok", "\udfff"], "input": "\ud83d"}"#.to_vec(),
        format!(r#"{{"inputs": "{}", "input": "x"}}"#, "a".repeat(1 << 20)).into_bytes(),
        format!(r#"{{"inputs": ["{}"], "truncate": false}}"#, "😀".repeat(1 << 16)).into_bytes(),
        br#"{"inputs": 42}"#.to_vec(),
        br#"{"inputs": [null]}"#.to_vec(),
        br#"{"inputs": "x", "pooling": "max"}"#.to_vec(),
        format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        b"".to_vec(),
        b"\xff\xfe\x00".to_vec(),
    ];
    for route in routes {
        for body in &classics {
            let (status, value) = send(route, body.clone());
            assert!(status < 500, "{route}: {status} {value}");
            if status != 200 {
                assert!(value["error"]["code"].is_string(), "{route}: {value}");
            }
        }
    }
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(cases(64)));
    let bodies = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        (nasty_text(), any::<bool>(), prop::sample::select(vec!["none", "cls", "mean", "bogus"])).prop_map(
            |(t, truncate, pooling)| json!({"inputs": [t], "input": "x", "truncate": truncate, "pooling": pooling})
                .to_string()
                .into_bytes()
        ),
    ];
    runner
        .run(&(prop::sample::select(routes.to_vec()), bodies), |(route, body)| {
            let (status, value) = send(route, body);
            prop_assert!(status < 500, "{}: {} {}", route, status, value);
            prop_assert!(status == 200 || value["error"]["code"].is_string(), "{}: {}", route, value);
            Ok(())
        })
        .unwrap();
    runtime.block_on(server.stop());
}

#[tokio::test]
async fn every_rejection_is_our_json_error_with_its_status() {
    let cases: [(&str, &str, Option<&str>, &str, u16, &str); 7] = [
        ("POST", "/embed", Some("application/json"), "{not json", 400, "invalid_json"),
        ("POST", "/embed", Some("text/plain"), "{}", 415, "unsupported_media_type"),
        ("POST", "/embed", Some("application/json"), r#"{"inputs": "x", "pooling": "max"}"#, 422, "invalid_request"),
        ("POST", "/embed", Some("application/json"), r#"{"inputs": []}"#, 422, "empty_input"),
        ("GET", "/embed", None, "", 405, "method_not_allowed"),
        ("GET", "/no/such/route", None, "", 404, "not_found"),
        ("POST", "/heads/x/reload", None, "", 403, "admin_disabled"),
    ];
    for (method, uri, ct, body, status, code) in cases {
        let (got, answer) = send(method, uri, ct, body).await;
        assert_eq!((got.as_u16(), answer["error"]["code"].as_str()), (status, Some(code)), "{method} {uri} {body}");
    }
    // Over the token budget (413 `too_many_tokens`): limits.rs.
}
