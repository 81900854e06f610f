//! What a connection can hold, bounded (transport, `src/server.rs`): silent and
//! idle connections closed within the header timeout, connections beyond
//! `server.max_connections`, clients that stop reading cut off after the write
//! timeout, unfinished headers cut off, a trickled body answered 408 while
//! others are served. Tiny DistilBERT fixture over raw TCP.

use crate::common;

use std::time::{Duration, Instant};

use common::{error_of, fixture, settings_for, tiny_distilbert, TestServer};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    let mut settings = tiny_distilbert();
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
async fn connections_beyond_the_limit_are_answered_503_at_once() {
    let mut settings = tiny_distilbert();
    settings.server.max_connections = 2;
    settings.server.header_read_timeout_ms = 1000;
    let server = TestServer::start(settings).await;
    let _a = TcpStream::connect(server.addr).await.unwrap();
    let _b = TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A third client is answered at once, a JSON 503 the load balancer retries elsewhere.
    let client = reqwest::Client::new();
    let started = Instant::now();
    let response = client.post(server.url("/embed")).json(&json!({"inputs": ["good"]})).send().await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(500), "refused after {:?}", started.elapsed());
    assert_eq!(response.headers()["retry-after"], "1");
    let (status, code, message) = error_of(response).await;
    assert_eq!((status, code.as_str()), (503, "overloaded"), "{message}");
    assert!(message.contains("server.max_connections"), "{message}");
    // Once the silent ones time out, the service serves again, and counted the refusal.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let metrics = client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("distilserve_refused_connections_total 1\n"), "{metrics}");
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_after_the_write_timeout() {
    let mut settings = tiny_distilbert();
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

async fn server() -> TestServer {
    let mut settings = settings_for(&fixture("tiny-distilbert"));
    settings.server.header_read_timeout_ms = 300;
    settings.server.body_read_timeout_ms = 300;
    TestServer::start(settings).await
}

/// Reads until the server closes the connection (or 10 s pass); returns what came.
async fn read_until_closed(stream: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept the connection open for 10 s"),
        }
    }
    (String::from_utf8_lossy(&received).into_owned(), started.elapsed())
}

#[tokio::test]
async fn unfinished_headers_are_cut_off() {
    let server = server().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"POST /embed HTTP/1.1\r\nHost: localhost\r\nContent-Type: app").await.unwrap();
    // Meanwhile the service answers others.
    assert_eq!(server.post_json("/embed", json!({"inputs": "fine"})).await.status(), 200);
    let (_, waited) = read_until_closed(&mut stream).await;
    assert!(waited < Duration::from_secs(5), "closed after {waited:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_trickled_body_gets_408() {
    let server = server().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"POST /embed HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"inputs\": ")
        .await
        .unwrap();
    let (response, waited) = read_until_closed(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("\"body_timeout\""), "{response}");
    assert!(waited < Duration::from_secs(5), "answered after {waited:?}");
    assert_eq!(server.post_json("/embed", json!({"inputs": "fine"})).await.status(), 200);
    server.stop().await;
}
