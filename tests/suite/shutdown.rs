//! Graceful shutdown of the real binary: on SIGTERM readiness turns 503 at once,
//! requests keep being served through the grace period, every request already
//! accepted is answered, and the process exits 0.

use crate::common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::fixture;
use serde_json::json;

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

async fn start(extra: &[&str]) -> Server {
    let port = common::free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_distilserve"))
        .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string(), "--log-format", "text"])
        .args(["--model-dir", fixture("tiny-distilbert").to_str().unwrap(), "--heads", "", "--default-head", ""])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server { child, base: format!("http://127.0.0.1:{port}") };
    let client = reqwest::Client::new();
    let started = Instant::now();
    while client.get(format!("{}/health/ready", server.base)).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(started.elapsed() < Duration::from_secs(30), "server did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server
}

fn sigterm(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sigterm_under_load_answers_every_accepted_request() {
    // Each batch waits 300 ms to fill: requests are in flight when SIGTERM lands.
    let mut server =
        start(&["--max-wait-ms", "300", "--shutdown-grace-ms", "500", "--shutdown-timeout-ms", "10000"]).await;
    let client = reqwest::Client::new();
    let mut in_flight = Vec::new();
    for i in 0..24 {
        let (client, url) = (client.clone(), format!("{}/embed", server.base));
        in_flight.push(tokio::spawn(async move {
            client.post(url).json(&json!({"inputs": format!("request number {i}"), "pooling": "cls"})).send().await
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    sigterm(&server.child);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // During the grace period: not ready, yet still serving.
    let ready = client.get(format!("{}/health/ready", server.base)).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(ready.json::<serde_json::Value>().await.unwrap()["status"], "draining");
    assert_eq!(client.get(format!("{}/health/live", server.base)).send().await.unwrap().status(), 200);
    let late = client.post(format!("{}/embed", server.base)).json(&json!({"inputs": "late"})).send().await.unwrap();
    assert_eq!(late.status(), 200, "requests in the grace period are served");

    let mut answered = 0;
    for task in in_flight {
        let response = task.await.unwrap().expect("an accepted request is answered, not dropped");
        assert_eq!(response.status(), 200);
        answered += 1;
    }
    assert_eq!(answered, 24);

    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "did not exit after draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status:?}");
    // After exit nothing listens any more.
    assert!(client.get(format!("{}/health/live", server.base)).send().await.is_err());
}
