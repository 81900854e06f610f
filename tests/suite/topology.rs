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

/// A head created through nginx (on whichever replica it reaches) is served
/// by every replica sharing the heads folder: every `/classify` through nginx
/// with it answers 200 within 10 s of the head becoming ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_created_through_nginx_is_served_by_every_replica() {
    let ports = free_ports(4);
    let (nginx_port, base_port) = (ports[0], ports[1]);
    let dir = tempfile::tempdir().unwrap();
    let heads = dir.path().join("shared-heads");
    let config = dir.path().join("replica.toml");
    std::fs::write(
        &config,
        format!(
            "[classify]\nserve = []\ndefault_head = \"\"\nheads_dir = {:?}\nwatch_interval_ms = 1000\n\n[security]\nadmin_key = \"adm1n\"\n",
            heads.display().to_string()
        ),
    )
    .unwrap();
    let flags =
        format!("--config {} --model-dir {} --intra-threads 1", config.display(), fixture("tiny-distilbert").display());
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
    topology.run(&["up", &dir]);
    let base = format!("http://127.0.0.1:{nginx_port}");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();

    let examples: Vec<serde_json::Value> = (0..40)
        .map(|i| {
            let label = ["pos", "neg"][i % 2];
            json!({"text": format!("{} example number {i}", if i % 2 == 0 { "good great" } else { "bad awful" }), "label": label})
        })
        .collect();
    let created = client
        .post(format!("{base}/heads"))
        .bearer_auth("adm1n")
        .json(&json!({"name": "shared", "examples": examples}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 202, "{}", created.text().await.unwrap());
    let trained_by = created.headers()["x-upstream"].to_str().unwrap().to_string();

    // Ready as any replica reports it (the status is in the shared folder).
    let started = Instant::now();
    loop {
        let detail: serde_json::Value =
            client.get(format!("{base}/heads/shared")).send().await.unwrap().json().await.unwrap();
        if detail["status"] == "ready" {
            break;
        }
        assert_ne!(detail["status"], "failed", "{detail}");
        assert!(started.elapsed() < Duration::from_secs(60), "not ready within 60 s: {detail}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready_at = Instant::now();

    // Classify through nginx for 12 s: note when each replica first answers 200
    // and the last answer that was not 200.
    let mut first_ok: std::collections::BTreeMap<String, f64> = Default::default();
    let mut last_failure: Option<(f64, u16)> = None;
    let mut sent = 0;
    while ready_at.elapsed() < Duration::from_secs(12) {
        let response = client
            .post(format!("{base}/classify"))
            .json(&json!({"inputs": "good great film", "head": "shared"}))
            .send()
            .await
            .unwrap();
        sent += 1;
        let at = ready_at.elapsed().as_secs_f64();
        let upstream = response.headers()["x-upstream"].to_str().unwrap().to_string();
        let answering = upstream.rsplit(", ").next().unwrap().to_string();
        if response.status() == 200 {
            first_ok.entry(answering).or_insert(at);
        } else {
            last_failure = Some((at, response.status().as_u16()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "head trained by {trained_by}; {sent} /classify through nginx; first 200 per replica (s after ready): {first_ok:?}; last non-200: {last_failure:?}"
    );
    assert_eq!(first_ok.len(), 3, "not every replica served the head: {first_ok:?}");
    if let Some((at, status)) = last_failure {
        assert!(at < 10.0, "a /classify {at:.1} s after ready answered {status}");
    }
}

/// `.npy` float32 array at `path`: (shape, values).
fn read_npy(path: &std::path::Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    distilserve::npy::decode::<f32>(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_extraction_through_nginx_resumes_after_a_kill_and_equals_a_local_one() {
    let ports = free_ports(4);
    let (nginx_port, base_port) = (ports[0], ports[1]);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let config = root.join("replica.toml");
    std::fs::write(&config, "[classify]\nserve = []\ndefault_head = \"\"\n").unwrap();
    let flags =
        format!("--config {} --model-dir {} --intra-threads 1", config.display(), fixture("tiny-distilbert").display());
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
    let up = topology.run(&["up", root.to_str().unwrap()]);
    assert!(up.contains("nginx on"), "{up}");

    // 3,000 labelled texts of the fixtures' vocabulary.
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let words = ["good", "great", "fun", "bad", "dull", "boring", "film", "plot", "acting", "story"];
    let rows: String = (0..3000)
        .map(|i| {
            let text = (0..3 + i % 7).map(|k| words[(i * 7 + k * 3) % words.len()]).collect::<Vec<_>>().join(" ");
            let label = usize::from(words[(i * 7) % words.len()].starts_with(['g', 'f']));
            json!({"text": text, "label": label}).to_string() + "\n"
        })
        .collect();
    std::fs::write(data.join("train.jsonl"), rows).unwrap();
    std::fs::write(data.join("meta.json"), r#"{"labels": ["neg", "pos"]}"#).unwrap();

    let bin = env!("CARGO_BIN_EXE_distilserve");
    let remote_out = root.join("remote");
    let remote = |cmd: &mut Command| {
        cmd.args(["extract", "--split", "train", "--pooling", "mean", "--shard-size", "8", "--concurrency", "2"])
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&remote_out)
            .args(["--remote", &format!("http://127.0.0.1:{nginx_port}")])
            .env("DISTILSERVE_LOGGING__FORMAT", "text")
            .env("NO_COLOR", "1");
    };
    // Killed once about a third of its 375 shards are on disk.
    let mut first = Command::new(bin);
    remote(&mut first);
    let mut child = first.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let partial = remote_out.join(".partial/train");
    let started = Instant::now();
    let shards = || std::fs::read_dir(&partial).map(|d| d.filter(|e| e.is_ok()).count()).unwrap_or(0);
    let killed_after = loop {
        let n = shards();
        if n >= 120 {
            child.kill().unwrap();
            break n;
        }
        assert!(child.try_wait().unwrap().is_none(), "finished before it could be interrupted ({n} shards)");
        assert!(started.elapsed() < Duration::from_secs(120), "only {n} shards in 2 minutes");
        std::thread::sleep(Duration::from_millis(5));
    };
    child.wait().unwrap();
    assert!(!remote_out.join("train/X.npy").exists(), "an interrupted run writes no arrays");

    // Run again: it continues where it stopped.
    let mut second = Command::new(bin);
    remote(&mut second);
    let out = second.output().unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{log}");
    let resumed: usize = log
        .split("resuming: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no resume line: {log}"));
    assert!(
        resumed >= killed_after * 8 - 16 && resumed < 3000,
        "resumed after {resumed} texts ({killed_after} shards seen)"
    );
    assert!(!remote_out.join(".partial").exists(), "the partial folder is removed once complete");

    // The same arrays as a local extraction with the same model.
    let local_out = root.join("local");
    let out = Command::new(bin)
        .args(["extract", "--split", "train", "--pooling", "mean", "--intra-threads", "1"])
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&local_out)
        .arg("--model-dir")
        .arg(fixture("tiny-distilbert"))
        .env("DISTILSERVE_CLASSIFY__FEATURE_CACHE_DIR", root.join("cache"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (remote_shape, remote_x) = read_npy(&remote_out.join("train/X.npy"));
    let (local_shape, local_x) = read_npy(&local_out.join("train/X.npy"));
    assert_eq!(remote_shape, local_shape);
    assert_eq!(remote_shape[0], 3000);
    let worst = crate::common::max_abs_diff(&remote_x, &local_x);
    assert!(worst < 1e-5, "remote and local features differ by {worst}");
    assert_eq!(
        std::fs::read(remote_out.join("train/y.npy")).unwrap(),
        std::fs::read(local_out.join("train/y.npy")).unwrap()
    );
    let meta = |dir: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap()
    };
    let (remote_meta, local_meta) = (meta(&remote_out), meta(&local_out));
    for key in ["model_fingerprint", "max_tokens", "layer_indices", "width", "pooling", "labels"] {
        assert_eq!(remote_meta[key], local_meta[key], "meta.json {key}");
    }
    eprintln!(
        "remote extraction: interrupted after {killed_after} shards, resumed at {resumed} texts; max diff {worst:e}"
    );

    // A head trained on the remote arrays (no model run) is served for the model they came from.
    let heads = root.join("heads");
    let out = Command::new(bin)
        .args(["train", "--head", "remote", "--alphas", "0.1,1"])
        .arg("--features")
        .arg(&remote_out)
        .arg("--heads-dir")
        .arg(&heads)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut settings = crate::common::settings_for(&fixture("tiny-distilbert"));
    settings.heads.insert("remote".into(), distilserve::config::HeadSettings::logistic(data.clone()));
    settings.classify.serve = vec!["remote".into()];
    settings.classify.default_head = "remote".into();
    settings.classify.heads_dir = heads;
    let server = crate::common::TestServer::start(settings).await;
    let answer: serde_json::Value =
        server.post_json("/classify", json!({"inputs": ["good fun film"]})).await.json().await.unwrap();
    let label = answer["predictions"][0]["label"].as_str().unwrap_or_default().to_string();
    assert!(label == "neg" || label == "pos", "{answer}");
    server.stop().await;
}
