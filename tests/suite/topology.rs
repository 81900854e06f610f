//! The deployment topology for real: three replicas of the binary behind
//! Debian's nginx with deploy/nginx/proxy.conf, started by deploy/local/topology.sh.
//! Under steady load one replica is SIGKILLed and later restarted: no client
//! request fails (nginx retries on another replica) and the restarted replica
//! takes traffic again; an oversized request is refused by one replica and
//! harms none. Needs nginx (scripts/install-test-deps.sh).

use crate::common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{fixture, repo_path};
use serde_json::json;

fn free_ports(n: usize) -> Vec<u16> {
    // Consecutive ports, as topology.sh numbers replicas from BASE_PORT.
    'search: for _ in 0..50 {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if first as usize + n >= 65535 {
            continue;
        }
        for p in first..first + n as u16 {
            if std::net::TcpListener::bind(("127.0.0.1", p)).is_err() {
                continue 'search;
            }
        }
        return (first..first + n as u16).collect();
    }
    panic!("no {n} consecutive free ports");
}

struct Topology {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Topology {
    /// Runs `topology.sh ARGS...`; panics with its output when it fails.
    fn run(&self, args: &[&str]) -> String {
        let out =
            Command::new(repo_path("deploy/local/topology.sh")).args(args).envs(self.env.clone()).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "topology.sh {args:?} failed: {text}");
        text
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let dir = self.dir.path().to_str().unwrap().to_string();
        let _ =
            Command::new(repo_path("deploy/local/topology.sh")).args(["down", &dir]).envs(self.env.clone()).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_loses_no_request_and_comes_back() {
    let ports = free_ports(4);
    let (nginx_port, base_port) = (ports[0], ports[1]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("replica.toml");
    std::fs::write(&config, "[classify]\nserve = []\ndefault_head = \"\"\n").unwrap();
    let flags = format!(
        "--config {} --model-dir {} --intra-threads 1 --shutdown-timeout-ms 2000",
        config.display(),
        fixture("tiny-distilbert").display()
    );
    let topology = Topology {
        dir,
        env: vec![
            ("REPLICAS".into(), "3".into()),
            ("NGINX_PORT".into(), nginx_port.to_string()),
            ("BASE_PORT".into(), base_port.to_string()),
            ("DISTILSERVE_BIN".into(), env!("CARGO_BIN_EXE_distilserve").into()),
            ("SERVE_FLAGS".into(), flags),
        ],
    };
    let dir = topology.dir.path().to_str().unwrap().to_string();
    let up = topology.run(&["up", &dir]);
    assert!(up.contains("nginx on"), "{up}");

    // 8 clients through nginx for the whole test; each records (sent at, status, replica).
    let url = format!("http://127.0.0.1:{nginx_port}/embed");
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
                let mut seen = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let body = json!({"inputs": [format!("client {c} request {i}: a gripping, funny film")], "pooling": "mean"});
                    let sent = started.elapsed();
                    let outcome = match client.post(&url).json(&body).send().await {
                        Ok(r) => {
                            let upstream = r.headers().get("x-upstream").map(|v| v.to_str().unwrap().to_string());
                            let status = r.status().as_u16();
                            let ok_body = r.bytes().await.is_ok();
                            (if ok_body { status } else { 0 }, upstream.unwrap_or_default())
                        }
                        Err(e) => (0, format!("client error: {e}")),
                    };
                    seen.push((sent, outcome.0, outcome.1));
                }
                seen
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed = topology.run(&["kill", &dir, "2"]);
    assert!(killed.contains("killed"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Starting blocks until the replica is ready: off the async threads.
    let restart = std::thread::scope(|scope| scope.spawn(|| topology.run(&["start", &dir, "2"])).join().unwrap());
    assert!(restart.contains("ready"), "{restart}");
    let restarted_at = started.elapsed();
    tokio::time::sleep(Duration::from_millis(4000)).await;
    stop.store(true, Ordering::Relaxed);

    let mut seen = Vec::new();
    for c in clients {
        seen.extend(c.await.unwrap());
    }
    let failed: Vec<_> = seen.iter().filter(|(_, status, _)| *status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        seen.len(),
        &failed[..failed.len().min(5)]
    );
    let replica2 = format!("127.0.0.1:{}", base_port + 1);
    // nginx had to retry some requests on another replica (X-Upstream lists every attempt).
    let retried = seen.iter().filter(|(_, _, up)| up.contains(',') && up.contains(&replica2)).count();
    assert!(retried > 0, "no request was retried: the kill went unnoticed");
    // The restarted replica answered requests sent after its restart.
    let served_after = seen.iter().filter(|(at, _, up)| *at > restarted_at && up.ends_with(&replica2)).count();
    assert!(served_after > 0, "the restarted replica took no traffic");
    eprintln!(
        "{} requests through nginx, 0 failed, {retried} retried on another replica, {served_after} served by the restarted replica",
        seen.len()
    );

    // The request every limit once admitted (256 texts of 600 words, every
    // token back): refused by the first replica with 413, not retried, and no
    // replica is harmed.
    let client = reqwest::Client::new();
    let attack = json!({"inputs": vec!["a ".repeat(600); 256], "pooling": "none"});
    let response = client.post(&url).json(&attack).send().await.unwrap();
    let upstream = response.headers().get("x-upstream").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    assert_eq!(response.status(), 413, "through nginx");
    assert!(!upstream.contains(','), "retried on another replica: {upstream}");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_tokens");
    for port in base_port..base_port + 3 {
        let live = client.get(format!("http://127.0.0.1:{port}/health/live")).send().await.unwrap();
        assert_eq!(live.status(), 200, "replica on port {port} after the oversized request");
    }
}
