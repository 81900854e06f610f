//! What one client can cost, bounded (the attacks of the "bound what one client
//! can cost" issue, each reproduced): the token budget per request, silent and
//! idle connections, a cap on connections, clients that stop reading, auth
//! before the body, admin routes off without the admin key, made-up methods and
//! request ids. Tiny DistilBERT fixture over real sockets.

use crate::common;

use std::time::{Duration, Instant};

use common::{error_of, fixture, settings_for, TestServer};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn tiny() -> distilserve::config::Settings {
    settings_for(&fixture("tiny-distilbert"))
}

/// The request that every other limit admitted: 256 texts of 600 words, every token back.
fn attack_body() -> Value {
    json!({"inputs": vec!["a ".repeat(600); 256], "pooling": "none"})
}

#[tokio::test]
async fn a_request_over_the_token_budget_is_refused_with_413_naming_count_and_limit() {
    let server = TestServer::start(tiny()).await;
    let info: Value = server.get("/info").await.json().await.unwrap();
    assert_eq!(info["limits"]["max_request_tokens"], 8192);
    for route in ["/embed", "/tokenize", "/classify"] {
        let started = Instant::now();
        let mut body = attack_body();
        if route != "/embed" {
            body.as_object_mut().unwrap().remove("pooling");
        }
        let response = server.post_json(route, body).await;
        if route == "/classify" {
            // No head is served here: the head lookup answers first.
            assert_eq!(response.status(), 404);
            continue;
        }
        let (status, code, message) = error_of(response).await;
        assert_eq!((status, code.as_str()), (413, "too_many_tokens"), "{route}: {message}");
        // 256 texts truncated to the tiny model's 64 tokens.
        assert!(message.contains("16384") && message.contains("8192"), "{route}: {message}");
        assert!(started.elapsed() < Duration::from_secs(5), "{route}: refused after {:?}", started.elapsed());
    }
    // Within the budget: served, and the encoder computed nothing for the refusals.
    let ok = server.post_json("/embed", json!({"inputs": vec!["a ".repeat(600); 128], "pooling": "none"})).await;
    assert_eq!(ok.status(), 200);
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("distilserve_sequences_total{runtime=\"encoder\"} 128\n"), "{metrics}");
    server.stop().await;
}

/// True when the server closed `stream` (EOF or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // a 408 or similar before the close
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn silent_and_idle_connections_are_closed_within_the_header_timeout() {
    let mut settings = tiny();
    settings.server.header_read_timeout_ms = 1000;
    let server = TestServer::start(settings).await;
    let started = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // An idle keep-alive connection after one answered request.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    // Header timeout + 2 s from the start.
    let deadline = started + Duration::from_secs(3);
    for (i, stream) in silent.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(closed_within(stream, left).await, "silent connection {i} still open after 3 s");
    }
    assert!(closed_within(&mut idle, deadline.saturating_duration_since(Instant::now())).await, "idle connection open");
    assert_eq!(server.get("/health/live").await.status(), 200, "others are still served");
    server.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_to_be_accepted() {
    let mut settings = tiny();
    settings.server.max_connections = 2;
    settings.server.header_read_timeout_ms = 1000;
    let server = TestServer::start(settings).await;
    let _a = TcpStream::connect(server.addr).await.unwrap();
    let _b = TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A third client waits in the backlog until the silent ones time out.
    let started = Instant::now();
    let response = reqwest::Client::new().get(server.url("/health/live")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(700), "served after {waited:?}: the limit did not hold");
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_after_the_write_timeout() {
    let mut settings = tiny();
    settings.server.write_timeout_ms = 500;
    settings.limits.max_request_tokens = 20_000;
    settings.batching.queue_capacity_tokens = 20_000;
    let server = TestServer::start(settings).await;
    // About 30 MB of JSON: far more than the socket buffers hold.
    let body = json!({"inputs": vec!["a ".repeat(600); 256], "pooling": "none"}).to_string();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(server.addr).await.unwrap();
    let request = format!(
        "POST /embed HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await; // read nothing meanwhile
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut received)).await;
    let text = String::from_utf8_lossy(&received);
    let header_end = text.find("\r\n\r\n").map(|i| i + 4).unwrap_or(received.len());
    let length: usize = text
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap()))
        .unwrap_or(usize::MAX);
    assert!(read.is_ok(), "the connection stayed open");
    assert!(received.len() - header_end < length, "the whole response arrived: the stalled write was not cut off");
    assert_eq!(server.get("/health/live").await.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn authentication_comes_before_reading_the_body() {
    let mut settings = tiny();
    settings.security.api_key = "k3y".into();
    settings.server.body_read_timeout_ms = 10_000;
    let server = TestServer::start(settings).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // Headers promising a large body that never comes, with a wrong key.
    stream
        .write_all(b"POST /embed HTTP/1.1\r\nhost: x\r\nauthorization: Bearer nope\r\ncontent-type: application/json\r\ncontent-length: 1000000\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(3), stream.read_exact(&mut head))
        .await
        .expect("answered at once")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 401");
    assert!(started.elapsed() < Duration::from_secs(2));
    server.stop().await;
}

/// Every route that changes the served heads.
const ADMIN_ROUTES: [(&str, &str); 4] =
    [("POST", "/heads/x/reload"), ("POST", "/heads/x/rollback"), ("DELETE", "/heads/x"), ("POST", "/heads")];

fn admin_request(server: &TestServer, method: &str, path: &str) -> reqwest::RequestBuilder {
    let request = match method {
        "DELETE" => server.client.delete(server.url(path)),
        _ => server.client.post(server.url(path)),
    };
    request.json(&serde_json::json!({"name": "x", "examples": []}))
}

#[tokio::test]
async fn admin_routes_are_off_without_an_admin_key_and_need_it_when_set() {
    let server = TestServer::start(tiny()).await;
    for (method, path) in ADMIN_ROUTES {
        let (status, code, message) = error_of(admin_request(&server, method, path).send().await.unwrap()).await;
        assert_eq!((status, code.as_str()), (403, "admin_disabled"), "{method} {path}");
        assert!(message.contains("security.admin_key"), "{message}");
    }
    server.stop().await;

    let mut settings = tiny();
    settings.security.admin_key = "adm1n".into();
    settings.security.api_key = "user".into();
    let server = TestServer::start(settings).await;
    for (method, path) in ADMIN_ROUTES {
        for key in [None, Some("user"), Some("adm1"), Some("wrong")] {
            let mut request = admin_request(&server, method, path);
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            let (status, code, _) = error_of(request.send().await.unwrap()).await;
            assert_eq!((status, code.as_str()), (401, "unauthorized"), "{method} {path} with {key:?}");
        }
        // With the admin key the handler answers: no head named x (or no examples).
        let response = admin_request(&server, method, path).bearer_auth("adm1n").send().await.unwrap();
        let (status, _, _) = error_of(response).await;
        assert!(status == 404 || status == 422, "{method} {path}: {status}");
    }
    server.stop().await;
}

#[tokio::test]
async fn made_up_methods_and_request_ids_do_not_reach_metrics_or_logs() {
    let server = TestServer::start(tiny()).await;
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
