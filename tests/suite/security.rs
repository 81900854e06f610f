//! Access: the API key on and off for every route, checked before the body is
//! read; operational routes optionally protected and moved to a private
//! address; admin routes off without `security.admin_key` and needing it when
//! set; CORS off by default and configurable. Tiny DistilBERT fixture over a
//! socket.

use crate::common;

use std::time::{Duration, Instant};

use common::{error_of, fixture, settings_for, tiny_distilbert, TestServer};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// Routes that change the heads take the admin key instead (below).
const INFERENCE: [(&str, &str); 7] = [
    ("POST", "/embed"),
    ("POST", "/classify"),
    ("POST", "/tokenize"),
    ("POST", "/v1/embeddings"),
    ("GET", "/heads"),
    ("GET", "/heads/none"),
    ("GET", "/heads/none/confusion.svg"),
];
const OPERATIONAL: [&str; 7] = ["/", "/health", "/health/live", "/health/ready", "/metrics", "/info", "/openapi.json"];

async fn call(server: &TestServer, method: &str, path: &str, key: Option<&str>) -> reqwest::Response {
    let mut request = match method {
        "POST" => server.client.post(server.url(path)).json(&json!({"inputs": "good", "input": "good"})),
        _ => server.client.get(server.url(path)),
    };
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn without_a_key_configured_every_route_is_open() {
    let server = TestServer::start(settings_for(&fixture("tiny-distilbert"))).await;
    for (method, path) in INFERENCE {
        assert_ne!(call(&server, method, path, None).await.status(), 401, "{method} {path}");
    }
    for path in OPERATIONAL {
        assert_eq!(call(&server, "GET", path, None).await.status(), 200, "{path}");
    }
    server.stop().await;
}

#[tokio::test]
async fn with_a_key_inference_routes_need_it_and_probes_stay_open() {
    let mut settings = settings_for(&fixture("tiny-distilbert"));
    settings.security.api_key = "s3cret-key".into();
    let server = TestServer::start(settings).await;
    for (method, path) in INFERENCE {
        for key in [None, Some("wrong"), Some("s3cret-ke"), Some("")] {
            let response = call(&server, method, path, key).await;
            assert_eq!(response.headers()["www-authenticate"], "Bearer", "{method} {path}");
            let (status, code, message) = error_of(response).await;
            assert_eq!((status, code.as_str()), (401, "unauthorized"), "{method} {path} with {key:?}");
            assert!(!message.contains("s3cret"), "the key leaked into {message:?}");
        }
        assert_ne!(call(&server, method, path, Some("s3cret-key")).await.status(), 401, "{method} {path}");
    }
    for path in OPERATIONAL {
        assert_eq!(call(&server, "GET", path, None).await.status(), 200, "{path}");
    }
    server.stop().await;
}

#[tokio::test]
async fn operational_routes_can_be_protected_too() {
    let mut settings = settings_for(&fixture("tiny-distilbert"));
    settings.security.api_key = "s3cret-key".into();
    settings.security.protect_operational_routes = true;
    let server = TestServer::start(settings).await;
    for path in OPERATIONAL {
        assert_eq!(call(&server, "GET", path, None).await.status(), 401, "{path}");
        assert_eq!(call(&server, "GET", path, Some("s3cret-key")).await.status(), 200, "{path}");
    }
    server.stop().await;
}

#[tokio::test]
async fn cors_is_off_by_default_and_follows_the_configured_origins() {
    let server = TestServer::start(settings_for(&fixture("tiny-distilbert"))).await;
    let response =
        server.client.get(server.url("/info")).header("origin", "https://app.example.com").send().await.unwrap();
    assert!(!response.headers().contains_key("access-control-allow-origin"));
    server.stop().await;

    let mut settings = settings_for(&fixture("tiny-distilbert"));
    settings.security.cors_allowed_origins = vec!["https://app.example.com".into()];
    settings.security.api_key = "k".into();
    let server = TestServer::start(settings).await;
    let preflight = server
        .client
        .request(reqwest::Method::OPTIONS, server.url("/embed"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 200, "a preflight needs no key");
    assert_eq!(preflight.headers()["access-control-allow-origin"], "https://app.example.com");
    let other =
        server.client.get(server.url("/info")).header("origin", "https://evil.example.net").send().await.unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));
    server.stop().await;
}

#[tokio::test]
async fn with_a_private_address_operator_routes_leave_the_public_port() {
    let mut settings = settings_for(&fixture("tiny-distilbert"));
    settings.server.private_address = "127.0.0.1:0".into();
    settings.security.admin_key = "adm1n".into();
    let server = TestServer::start(settings).await;
    let private = server.private_addr.expect("a private listener");
    let at = |addr: std::net::SocketAddr, path: &str| format!("http://{addr}{path}");
    let client = &server.client;
    // Public: inference, reading heads, health, docs; not metrics, info or admin routes.
    for path in ["/metrics", "/info"] {
        assert_eq!(client.get(at(server.addr, path)).send().await.unwrap().status(), 404, "public {path}");
        assert_eq!(client.get(at(private, path)).send().await.unwrap().status(), 200, "private {path}");
    }
    for (method, path) in
        [("POST", "/heads"), ("POST", "/heads/x/rollback"), ("POST", "/heads/x/reload"), ("DELETE", "/heads/x")]
    {
        let request = |base| {
            let url = at(base, path);
            let r = if method == "DELETE" { client.delete(url) } else { client.post(url) };
            r.bearer_auth("adm1n").json(&json!({"name": "x", "examples": []}))
        };
        let (status, _, _) = error_of(request(server.addr).send().await.unwrap()).await;
        assert!(status == 404 || status == 405, "public {method} {path}: {status}");
        let (status, code, _) = error_of(request(private).send().await.unwrap()).await;
        assert!((status == 404 && code == "not_found") || status == 422, "private {method} {path}: {status} {code}");
    }
    let embed = json!({"inputs": "good"});
    assert_eq!(client.post(at(server.addr, "/embed")).json(&embed).send().await.unwrap().status(), 200);
    assert_eq!(client.post(at(private, "/embed")).json(&embed).send().await.unwrap().status(), 404);
    assert_eq!(client.get(at(server.addr, "/heads")).send().await.unwrap().status(), 200);
    for path in ["/health", "/health/live", "/health/ready"] {
        assert_eq!(client.get(at(server.addr, path)).send().await.unwrap().status(), 200, "public {path}");
        assert_eq!(client.get(at(private, path)).send().await.unwrap().status(), 200, "private {path}");
    }
    server.stop().await;
}

#[tokio::test]
async fn authentication_comes_before_reading_the_body() {
    let mut settings = tiny_distilbert();
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
    let server = TestServer::start(tiny_distilbert()).await;
    for (method, path) in ADMIN_ROUTES {
        let (status, code, message) = error_of(admin_request(&server, method, path).send().await.unwrap()).await;
        assert_eq!((status, code.as_str()), (403, "admin_disabled"), "{method} {path}");
        assert!(message.contains("security.admin_key"), "{message}");
    }
    server.stop().await;

    let mut settings = tiny_distilbert();
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
