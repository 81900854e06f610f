//! What an operator watches: Prometheus metrics that move as requests are
//! served, one readiness whatever the door (health routes, TEI's, the metric),
//! request ids kept or made, made-up methods and request ids kept out of
//! metrics and logs, request spans exported over OTLP/HTTP into the caller's
//! trace, and the dashboard and alert rules (deploy/grafana, deploy/prometheus)
//! naming only metrics the service exports. Tiny DistilBERT fixture over a socket.

use crate::common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use common::{fixture, repo_path, settings_for, settings_with_toy_head, tiny_distilbert, wait_ready, TestServer};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The value of the sample `name{labels}` (labels exactly as rendered), or 0.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().expect("a number"))
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_move_as_requests_are_served() {
    let server = TestServer::start(settings_for(&fixture("tiny-distilbert"))).await;
    let before = server.get("/metrics").await;
    assert!(before.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let before = before.text().await.unwrap();
    let embed_ok = r#"distilserve_http_requests_total{method="POST",route="/embed",status="200"}"#;
    let embed_422 = r#"distilserve_http_requests_total{method="POST",route="/embed",status="422"}"#;
    assert_eq!(sample(&before, embed_ok), 0.0);

    let response =
        server.post_json("/embed", json!({"inputs": ["a gripping, funny film", "dull"], "pooling": "cls"})).await;
    assert_eq!(response.status(), 200);
    for h in ["x-tokenize-time-ms", "x-queue-time-ms", "x-inference-time-ms"] {
        let v: f64 = response.headers()[h].to_str().unwrap().parse().unwrap();
        assert!(v >= 0.0, "{h}");
    }
    assert_eq!(server.post_json("/embed", json!({"inputs": []})).await.status(), 422);
    assert_eq!(server.get("/no/such/path").await.status(), 404);

    let after = server.get("/metrics").await.text().await.unwrap();
    assert_eq!(sample(&after, embed_ok), 1.0, "{after}");
    assert_eq!(sample(&after, embed_422), 1.0);
    assert_eq!(sample(&after, r#"distilserve_http_requests_total{method="GET",route="unmatched",status="404"}"#), 1.0);
    assert_eq!(
        sample(&after, r#"distilserve_sequences_total{runtime="encoder"}"#)
            - sample(&before, r#"distilserve_sequences_total{runtime="encoder"}"#),
        2.0
    );
    assert!(sample(&after, r#"distilserve_batches_total{runtime="encoder"}"#) >= 1.0);
    assert!(sample(&after, r#"distilserve_batch_size_count{runtime="encoder"}"#) >= 1.0);
    assert!(sample(&after, r#"distilserve_inference_seconds_count{runtime="encoder"}"#) >= 1.0);
    assert_eq!(
        sample(&after, r#"distilserve_tokenize_seconds_count{runtime="encoder"}"#),
        1.0,
        "the 422 request failed before tokenizing"
    );
    assert_eq!(sample(&after, r#"distilserve_queue_wait_seconds_count{runtime="encoder"}"#), 2.0);
    assert!(sample(&after, r#"distilserve_http_request_duration_seconds_count{route="/embed"}"#) >= 2.0);
    assert_eq!(sample(&after, r#"distilserve_queue_depth{runtime="encoder"}"#), 0.0);
    assert_eq!(sample(&after, "distilserve_ready"), 1.0);
    assert!(after.contains(r#"distilserve_model_info{runtime="encoder",name="tiny-distilbert""#), "{after}");
    assert!(after.contains("# TYPE distilserve_inference_seconds histogram"));
    server.stop().await;
}

#[tokio::test]
async fn request_ids_are_kept_or_made() {
    let server = TestServer::start(settings_for(&fixture("tiny-distilbert"))).await;
    let given = server.client.get(server.url("/info")).header("x-request-id", "trace-abc-123").send().await.unwrap();
    assert_eq!(given.headers()["x-request-id"], "trace-abc-123");
    let made = server.get("/info").await;
    let id = made.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let other = server.get("/info").await;
    assert_ne!(other.headers()["x-request-id"].to_str().unwrap(), id);
    server.stop().await;
}

#[tokio::test]
async fn made_up_methods_and_request_ids_do_not_reach_metrics_or_logs() {
    let server = TestServer::start(tiny_distilbert()).await;
    for method in ["XMETHOD1", "XMETHOD2", "BREW"] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let request = format!("{method} /embed HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
    }
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(!metrics.contains("XMETHOD") && !metrics.contains("BREW"), "{metrics}");
    assert!(metrics.contains("method=\"other\""), "{metrics}");

    let long = "x".repeat(10_000);
    for (given, kept) in [("trace-abc-123", true), (long.as_str(), false), ("two words", false), ("é", false)] {
        let Ok(value) = reqwest::header::HeaderValue::from_bytes(given.as_bytes()) else { continue };
        let response =
            server.client.get(server.url("/health/live")).header("x-request-id", value).send().await.unwrap();
        let echoed = response.headers()["x-request-id"].to_str().unwrap().to_string();
        if kept {
            assert_eq!(echoed, given);
        } else {
            assert_eq!(echoed.len(), 36, "replaced by a UUID, got {} chars", echoed.len());
        }
    }
    server.stop().await;
}

/// Sample names a scrape can contain, from the `# TYPE` lines (families with
/// no sample yet included): counters as `_total`, histograms as
/// `_bucket`/`_sum`/`_count`, gauges as they are.
fn exported_sample_names(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let (family, kind) = rest.split_once(' ').unwrap();
        match kind {
            "counter" => names.insert(format!("{family}_total")),
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{family}{suffix}"));
                }
                true
            }
            _ => names.insert(family.to_string()),
        };
    }
    names
}

/// Every `distilserve_*` or `process_*` identifier in `text`.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (start, _) in text.match_indices(['d', 'p']) {
        let rest = &text[start..];
        if !(rest.starts_with("distilserve_") || rest.starts_with("process_")) {
            continue;
        }
        if start > 0 && text.as_bytes()[start - 1].is_ascii_alphanumeric() {
            continue;
        }
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        names.insert(rest[..end].to_string());
    }
    names
}

fn family_of(sample: &str) -> &str {
    ["_total", "_bucket", "_sum", "_count"].iter().find_map(|s| sample.strip_suffix(s)).unwrap_or(sample)
}

#[tokio::test]
async fn dashboard_and_alerts_name_only_exported_metrics_and_chart_every_family() {
    // A head trained at startup and used once: every family has a series.
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(settings_with_toy_head(root.path(), true)).await;
    wait_ready(&server).await;
    assert_eq!(server.post_json("/classify", json!({"inputs": ["a film"]})).await.status(), 200);
    let metrics = server.get("/metrics").await.text().await.unwrap();
    server.stop().await;
    let exported = exported_sample_names(&metrics);
    // Scrape-time readings are there on Linux, in or out of a container.
    assert!(metrics.contains("\nprocess_resident_memory_bytes "), "{metrics}");
    assert!(metrics.contains("\ndistilserve_worker_longest_call_seconds "), "{metrics}");

    let dashboard = std::fs::read_to_string(repo_path("deploy/grafana/distilserve.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let expressions: Vec<String> = parsed["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap().iter())
        .map(|target| target["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(expressions.len() >= 20, "{} queries", expressions.len());
    // /classify's heads are served by another model runtime than /embed's
    // (the int8 graph by default): a panel of one runtime hides the other.
    let one_runtime: Vec<_> = expressions.iter().filter(|e| e.contains("runtime=")).collect();
    assert!(one_runtime.is_empty(), "queries of one model runtime, not grouped by runtime: {one_runtime:?}");
    let alerts = std::fs::read_to_string(repo_path("deploy/prometheus/alerts.yaml")).unwrap();

    for (file, text) in
        [("deploy/grafana/distilserve.json", expressions.join("\n")), ("deploy/prometheus/alerts.yaml", alerts)]
    {
        let named = metric_names_in(&text);
        assert!(!named.is_empty(), "{file} names no metric");
        let unknown: Vec<_> = named.difference(&exported).collect();
        assert!(unknown.is_empty(), "{file} names metrics the service does not export: {unknown:?}");
    }
    let charted_samples = metric_names_in(&expressions.join("\n"));
    let charted: BTreeSet<&str> = charted_samples.iter().map(|s| family_of(s)).collect();
    let not_charted: BTreeSet<&str> = exported
        .iter()
        .map(|s| family_of(s))
        .filter(|family| !charted.contains(family))
        .filter(|family| !["distilserve_model_info", "distilserve_head_info"].contains(family))
        .collect();
    assert!(not_charted.is_empty(), "families on no dashboard panel: {not_charted:?}");
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let cached = std::env::var("DISTILSERVE_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/distilserve"))
        .join("bin/promtool");
    let promtool = if cached.exists() { cached } else { "promtool".into() };
    let output = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(repo_path("deploy/prometheus/alerts.yaml"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {} ({e}): scripts/install-test-deps.sh installs it", promtool.display())
        });
    let said = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    assert!(said.contains("SUCCESS: 10 rules found"), "{said}");
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_reach_an_otlp_receiver_under_the_callers_trace() {
    // The receiver: keeps every export's content type and body.
    let received: Arc<Mutex<Vec<(String, Bytes)>>> = Arc::default();
    let store = received.clone();
    let receiver = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let store = store.clone();
            async move {
                let kind = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                store.lock().unwrap().push((kind, body));
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "[classify]\nserve = []\ndefault_head = \"\"\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_distilserve"))
        .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string(), "--log-format", "json"])
        .arg("--config")
        .arg(config.path())
        .arg("--model-dir")
        .arg(common::fixture("tiny-distilbert"))
        .args(["--otlp-endpoint", &format!("http://{collector}/v1/traces")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while client.get(format!("{base}/health")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(started.elapsed() < Duration::from_secs(30), "not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (trace_id, parent_id) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let response = client
        .post(format!("{base}/embed"))
        .header("traceparent", format!("00-{trace_id}-{parent_id}-01"))
        .json(&serde_json::json!({"inputs": "a traced request", "pooling": "mean"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // SIGTERM: the spans still buffered are sent before the process exits.
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let exited = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(exited.success());

    let exports = received.lock().unwrap().clone();
    assert!(!exports.is_empty(), "no span reached the receiver");
    assert!(
        exports.iter().all(|(kind, _)| kind == "application/x-protobuf"),
        "{:?}",
        exports.iter().map(|e| &e.0).collect::<Vec<_>>()
    );
    // Protobuf keeps ids as raw bytes and names as UTF-8.
    let traced = exports.iter().find(|(_, body)| contains(body, &hex(trace_id))).expect("a span of the caller's trace");
    assert!(contains(&traced.1, &hex(parent_id)), "the caller's span is not the parent");
    for text in [&b"request"[..], b"/embed", b"distilserve"] {
        assert!(contains(&traced.1, text), "{} missing from the export", String::from_utf8_lossy(text));
    }
}

/// `/health/ready`, `/health`, `/tei/health` and the `distilserve_ready`
/// metric: one readiness (`AppState::readiness`), whatever the door.
#[tokio::test]
async fn every_door_gives_one_readiness_ready_starting_and_draining() {
    use axum::body::Body;
    use axum::http::Request;
    use std::sync::atomic::Ordering;
    use tower::ServiceExt;

    let state = common::fakes::state_over("constant", common::fakes::Constant, |_| {});
    let app = distilserve::http::router(state.clone());
    let doors = || async {
        let mut seen = Vec::new();
        for path in ["/health/ready", "/health", "/tei/health"] {
            let response = app.clone().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
            seen.push(response.status().as_u16());
        }
        let response = app.clone().oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
        let text = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (seen, sample(std::str::from_utf8(&text).unwrap(), "distilserve_ready"))
    };
    let status = || async {
        let response = app.clone().oneshot(Request::get("/health/ready").body(Body::empty()).unwrap()).await.unwrap();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()["status"].as_str().unwrap().to_string()
    };
    assert_eq!(doors().await, (vec![200, 200, 200], 1.0));
    assert_eq!(status().await, "ok");
    state.warming.store(true, Ordering::Relaxed);
    assert_eq!(doors().await, (vec![503, 503, 503], 0.0));
    assert_eq!(status().await, "starting");
    state.warming.store(false, Ordering::Relaxed);
    state.draining.store(true, Ordering::Relaxed);
    assert_eq!(doors().await, (vec![503, 503, 503], 0.0));
    assert_eq!(status().await, "draining");
}
