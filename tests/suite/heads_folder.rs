//! The heads folder as replicas share it, and as it fails: a listing that
//! fails keeps every head; a file removed by hand is treated as `DELETE`
//! would treat it; a head the settings name cannot be deleted; a training's
//! status names its owner, and one whose owner died reads as failed
//! (interrupted) everywhere; training, rollback and delete of one head are
//! exclusive across replicas. Tiny fixtures over a socket; killing the real
//! binary mid-training is at the end.

use crate::common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{error_of, settings_with_toy_head, wait_ready, TestServer};
use distilserve::config::Settings;
use serde_json::{json, Value};

const ADMIN: &str = "adm1n-key";

fn settings(root: &Path) -> Settings {
    let mut s = settings_with_toy_head(root, true);
    s.classify.watch_interval_ms = 100;
    s.security.admin_key = ADMIN.into();
    s
}

async fn classify(server: &TestServer, head: &str) -> u16 {
    server.post_json("/classify", json!({"inputs": ["good fun"], "head": head})).await.status().as_u16()
}

fn examples(per_label: usize) -> Vec<Value> {
    let words = [("pos", ["good", "great", "fun", "love"]), ("neg", ["bad", "dull", "boring", "sad"])];
    words
        .iter()
        .flat_map(|(label, w)| {
            (0..per_label).map(move |i| json!({"text": format!("{} {} {i}", w[i % 4], w[(i + 1) % 4]), "label": label}))
        })
        .collect()
}

async fn create(server: &TestServer, name: &str, per_label: usize) -> reqwest::Response {
    let body = json!({"name": name, "examples": examples(per_label)});
    server.client.post(server.url("/heads")).bearer_auth(ADMIN).json(&body).send().await.unwrap()
}

async fn status(server: &TestServer, name: &str) -> Value {
    server.get(&format!("/heads/{name}")).await.json().await.unwrap()
}

async fn wait_status(server: &TestServer, name: &str, want: &str, within: Duration) -> Value {
    let started = Instant::now();
    loop {
        let detail = status(server, name).await;
        if detail["status"] == want {
            return detail;
        }
        assert!(started.elapsed() < within, "head {name} not {want} within {within:?}: {detail}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_folder_that_cannot_be_listed_keeps_every_head_serving() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(settings(root.path())).await;
    wait_ready(&server).await;
    assert_eq!(create(&server, "extra", 10).await.status(), 202);
    wait_status(&server, "extra", "ready", Duration::from_secs(60)).await;

    // The folder gone for a while (an NFS hiccup, a remount): nothing is unserved.
    let heads = root.path().join("heads");
    let away = root.path().join("heads-away");
    std::fs::rename(&heads, &away).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(classify(&server, "toy").await, 200);
    assert_eq!(classify(&server, "extra").await, 200);
    let listed: Value = server.get("/heads").await.json().await.unwrap();
    assert_eq!(listed["heads"].as_array().unwrap().len(), 2, "{listed}");
    let error = listed["folder_error"].as_str().expect("the failure is shown");
    assert!(error.contains("classify.heads_dir") && !error.contains(root.path().to_str().unwrap()), "{error}");
    let metrics = server.get("/metrics").await.text().await.unwrap();
    let failures: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("distilserve_heads_folder_errors_total "))
        .and_then(|v| v.parse().ok())
        .expect("the failures are counted");
    assert!(failures >= 2.0, "{failures}");
    assert_eq!(server.get("/health/ready").await.status(), 200);

    // Back: the error clears; the heads are the same.
    std::fs::rename(&away, &heads).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let listed: Value = server.get("/heads").await.json().await.unwrap();
    assert!(listed.get("folder_error").is_none(), "{listed}");

    // A head file removed by hand is handled as DELETE would: the configured
    // (default) head keeps serving; a head created over the API goes.
    std::fs::remove_file(heads.join("toy.json")).unwrap();
    std::fs::remove_file(heads.join("extra.json")).unwrap();
    let started = Instant::now();
    while classify(&server, "extra").await != 404 {
        assert!(started.elapsed() < Duration::from_secs(5), "a hand-deleted head is still served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(classify(&server, "toy").await, 200);
    server.stop().await;
}

#[tokio::test]
async fn a_heads_folder_not_made_yet_is_no_failure() {
    // A fresh deployment: no head written, so no folder yet.
    let mut s = common::settings_for(&common::fixture("tiny-distilbert"));
    s.classify.watch_interval_ms = 50;
    assert!(!s.classify.heads_dir.exists());
    let server = TestServer::start(s).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let listed: Value = server.get("/heads").await.json().await.unwrap();
    assert!(listed.get("folder_error").is_none(), "{listed}");
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "distilserve_heads_folder_errors_total 0"), "no failure counted");
    server.stop().await;
}

#[tokio::test]
async fn a_head_named_in_the_settings_cannot_be_deleted_and_a_restart_works() {
    let root = tempfile::tempdir().unwrap();
    let mut s = settings(root.path());
    let toy = s.heads["toy"].clone();
    s.heads.insert("second".into(), toy);
    s.classify.serve = vec!["toy".into(), "second".into()];
    let server = TestServer::start(s.clone()).await;
    wait_ready(&server).await;
    let delete =
        |name: &'static str| server.client.delete(server.url(&format!("/heads/{name}"))).bearer_auth(ADMIN).send();
    let (status, code, message) = error_of(delete("second").await.unwrap()).await;
    assert_eq!((status, code.as_str()), (409, "head_in_settings"), "{message}");
    let (status, code, _) = error_of(delete("toy").await.unwrap()).await;
    assert_eq!((status, code.as_str()), (409, "default_head"));
    assert_eq!(classify(&server, "second").await, 200);
    server.stop().await;
    let restarted = TestServer::start(s).await;
    wait_ready(&restarted).await;
    assert_eq!(classify(&restarted, "second").await, 200);
    restarted.stop().await;
}

/// What a replica that died mid-training left in the folder.
fn orphaned_status(heads: &Path, name: &str, heartbeat_age_s: u64) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let status = json!({
        "state": "training", "phase": "extracting", "done": 10, "total": 40, "error": null,
        "request_id": "r1", "examples": 40, "label_counts": [], "test_source": "held_out",
        "submitted_unix": now - heartbeat_age_s, "started_unix": now - heartbeat_age_s,
        "finished_unix": null, "seconds": null, "version": null,
        "owner": "another-host/4242/1", "heartbeat_unix": now - heartbeat_age_s,
    });
    std::fs::create_dir_all(heads.join(".jobs")).unwrap();
    std::fs::write(heads.join(".jobs").join(format!("{name}.json")), status.to_string()).unwrap();
}

#[tokio::test]
async fn a_training_whose_replica_died_reads_as_interrupted_and_can_be_sent_again() {
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(settings(root.path())).await;
    wait_ready(&server).await;
    let heads = root.path().join("heads");

    // Its owner's lock is free (the kernel released it with the process): interrupted at once.
    orphaned_status(&heads, "stale", 1);
    let detail = status(&server, "stale").await;
    assert_eq!(detail["status"], "failed", "{detail}");
    assert!(detail["job"]["error"].as_str().unwrap().starts_with("interrupted"), "{detail}");
    let (code, _, _) = error_of(server.post_json("/classify", json!({"inputs": "x", "head": "stale"})).await).await;
    assert_eq!(code, 404, "not 503 `not_ready` forever");

    // Its lock held (the owner alive on another host of an NFS share, say) but
    // no heartbeat for a minute: interrupted too.
    orphaned_status(&heads, "hung", 60);
    let lock = std::fs::File::options().create(true).truncate(false).write(true).open({
        std::fs::create_dir_all(heads.join(".locks")).unwrap();
        heads.join(".locks/hung.lock")
    });
    let lock = lock.unwrap();
    lock.lock().unwrap();
    assert_eq!(status(&server, "hung").await["status"], "failed");
    // Recent heartbeat, lock held: still training.
    orphaned_status(&heads, "hung", 1);
    assert_eq!(status(&server, "hung").await["status"], "training");
    // ... and no other replica may train it meanwhile.
    let (code, error, _) = error_of(create(&server, "hung", 10).await).await;
    assert_eq!((code, error.as_str()), (409, "training_in_progress"));
    drop(lock);

    // The name can be trained again.
    assert_eq!(create(&server, "stale", 10).await.status(), 202);
    let detail = wait_status(&server, "stale", "ready", Duration::from_secs(60)).await;
    assert!(detail["job"]["owner"].is_string() && detail["job"]["heartbeat_unix"].is_u64(), "{detail}");
    server.stop().await;
}

#[tokio::test]
async fn a_second_replica_cannot_train_roll_back_or_delete_a_head_another_is_training() {
    let root = tempfile::tempdir().unwrap();
    let mut slow = settings(root.path());
    // Enough examples and alphas that the training lasts a while.
    slow.training.search_threads = 1;
    let a = TestServer::start(slow.clone()).await;
    let b = TestServer::start(slow).await;
    wait_ready(&a).await;
    wait_ready(&b).await;
    assert_eq!(create(&a, "shared", 10).await.status(), 202);
    wait_status(&a, "shared", "ready", Duration::from_secs(60)).await;

    let body = json!({"name": "shared", "examples": examples(400), "replace": true,
                      "options": {"alphas": [0.001, 0.01, 0.1, 1.0, 10.0, 100.0]}});
    let response = a.client.post(a.url("/heads")).bearer_auth(ADMIN).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 202);
    // b sees a's training, and is refused every change to that head.
    let seen = status(&b, "shared").await;
    assert!(matches!(seen["job"]["state"].as_str(), Some("queued" | "training")), "{seen}");
    let (code, error, _) =
        error_of(b.client.post(b.url("/heads")).bearer_auth(ADMIN).json(&body).send().await.unwrap()).await;
    assert_eq!((code, error.as_str()), (409, "training_in_progress"));
    let (code, error, _) =
        error_of(b.client.delete(b.url("/heads/shared")).bearer_auth(ADMIN).send().await.unwrap()).await;
    assert_eq!((code, error.as_str()), (409, "training_in_progress"));
    let rollback = b.client.post(b.url("/heads/shared/rollback")).bearer_auth(ADMIN).send().await.unwrap();
    let (code, error, _) = error_of(rollback).await;
    assert_eq!((code, error.as_str()), (409, "training_in_progress"));

    // Once a is done, both serve the new version and its history has both.
    let detail = wait_status(&a, "shared", "ready", Duration::from_secs(120)).await;
    let started = Instant::now();
    loop {
        let d = status(&a, "shared").await;
        if d["job"]["state"] == "ready" && d["versions"].as_array().map_or(0, |v| v.len()) == 2 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "retraining never finished: {detail}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rolled = b.client.post(b.url("/heads/shared/rollback")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(rolled.status(), 200, "the history holds the version before");
    a.stop().await;
    b.stop().await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The real binary serving heads created over the API from `root/heads`,
/// which every replica started on `root` shares.
fn replica(root: &Path, port: u16, pause_writes_ms: u64) -> Child {
    let config = root.join(format!("replica-{port}.toml"));
    let text = format!(
        "[server]\nhost = \"127.0.0.1\"\nport = {port}\n\n[model]\ndir = {:?}\n\n\
         [classify]\nserve = []\ndefault_head = \"\"\nheads_dir = {:?}\nfeature_cache_dir = {:?}\nwatch_interval_ms = 100\n\n\
         [security]\nadmin_key = {ADMIN:?}\n",
        common::fixture("tiny-distilbert"),
        root.join("heads"),
        root.join("cache"),
    );
    std::fs::write(&config, text).unwrap();
    Command::new(env!("CARGO_BIN_EXE_distilserve"))
        .args(["serve", "--log-format", "text", "--config"])
        .arg(&config)
        // Every file write (statuses included) waits this long before its
        // rename: a training that lasts long enough to be killed in the middle.
        .env("DISTILSERVE_FAULT_PAUSE_BEFORE_RENAME_MS", pause_writes_ms.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn get(client: &reqwest::Client, port: u16, path: &str) -> (u16, Value) {
    match client.get(format!("http://127.0.0.1:{port}{path}")).send().await {
        Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

async fn until_ready(client: &reqwest::Client, port: u16) {
    let started = Instant::now();
    while get(client, port, "/health/ready").await.0 != 200 {
        assert!(started.elapsed() < Duration::from_secs(30), "replica on {port} not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two real replicas on one folder: a training killed with SIGKILL is shown
/// as interrupted by the other at once and after the restart, the name trains
/// again, a delete through one replica reaches the other, and the history
/// holds every version published (rollback works).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_training_leaves_nothing_stuck() {
    let root = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let (mut a, mut b) = (replica(root.path(), pa, 1000), replica(root.path(), pb, 0));
    let client = reqwest::Client::new();
    until_ready(&client, pa).await;
    until_ready(&client, pb).await;
    let post = |port: u16, body: Value| {
        client.post(format!("http://127.0.0.1:{port}/heads")).bearer_auth(ADMIN).json(&body).send()
    };
    let wait = |port: u16, name: &'static str, want: &'static str| {
        let client = client.clone();
        async move {
            let started = Instant::now();
            loop {
                let (_, d) = get(&client, port, &format!("/heads/{name}")).await;
                if d["status"] == want {
                    return d;
                }
                assert!(started.elapsed() < Duration::from_secs(90), "{name} not {want} on {port}: {d}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // A long training on a, killed while it runs.
    let long = json!({"name": "topic", "examples": examples(100)});
    assert_eq!(post(pa, long.clone()).await.unwrap().status(), 202);
    wait(pb, "topic", "training").await;
    let _ = a.kill();
    let _ = a.wait();
    let d = wait(pb, "topic", "failed").await;
    assert!(d["job"]["error"].as_str().unwrap().starts_with("interrupted"), "{d}");
    // Restarted, a agrees; the name trains again (through b), then once more through a.
    a = replica(root.path(), pa, 0);
    until_ready(&client, pa).await;
    assert_eq!(wait(pa, "topic", "failed").await["job"]["error"], d["job"]["error"]);
    let short = |n| json!({"name": "topic", "examples": examples(n), "replace": true});
    assert_eq!(post(pb, short(10)).await.unwrap().status(), 202);
    wait(pb, "topic", "ready").await;
    assert_eq!(post(pa, short(12)).await.unwrap().status(), 202);
    let started = Instant::now();
    let versions = loop {
        let (_, d) = get(&client, pb, "/heads/topic").await;
        let versions = d["versions"].as_array().cloned().unwrap_or_default();
        // b serves the newest version once its watcher has read the file.
        if versions.len() == 2 && versions[1]["active"] == true {
            break versions;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "second version not seen by b: {d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(versions[0]["active"], false, "{versions:?}");
    let rolled = client.post(format!("http://127.0.0.1:{pb}/heads/topic/rollback")).bearer_auth(ADMIN).send();
    assert_eq!(rolled.await.unwrap().status(), 200);
    // Deleted through b: a stops serving it, and nothing is left in progress.
    let deleted = client.delete(format!("http://127.0.0.1:{pb}/heads/topic")).bearer_auth(ADMIN).send();
    assert_eq!(deleted.await.unwrap().status(), 204);
    let started = Instant::now();
    while get(&client, pa, "/heads/topic").await.0 != 404 {
        assert!(started.elapsed() < Duration::from_secs(5), "a still knows the deleted head");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for port in [pa, pb] {
        let (_, listed) = get(&client, port, "/heads").await;
        assert_eq!(listed["heads"], json!([]), "{listed}");
        assert_eq!(listed["pending"], json!([]), "{listed}");
    }
    let _ = a.kill();
    let _ = b.kill();
    let _ = (a.wait(), b.wait());
}
