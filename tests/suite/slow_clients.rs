//! Slow clients cannot hold the service: a client that does not finish its
//! headers is disconnected, one that trickles its body gets 408, and normal
//! requests are served meanwhile. Raw TCP on loopback, tiny fixture.

use crate::common;

use std::time::{Duration, Instant};

use common::{fixture, settings_for, TestServer};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
