//! The heads folder as replicas share it and as it fails: a listing that fails
//! keeps every head; a file removed by hand is treated as `DELETE` would treat
//! it; a head the settings name cannot be deleted; a training's status names its
//! owner, and one whose owner died reads as failed (interrupted) everywhere;
//! training, rollback and delete of one head are exclusive across replicas;
//! head files damaged or foreign at reload (the previous head keeps serving),
//! training killed mid-write (no half-written head is ever loaded), heads and
//! feature caches that cannot be written (read-only folder, full disk): the
//! error is reported and the service serves. Tiny fixtures over a socket; the
//! real binary killed mid-training.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{error_of, fixture, settings_with_toy_head, wait_ready, TestServer};
use distilserve::config::Settings;
use distilserve::heads::logistic::LogisticHead;
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
    // Watched every 100 ms: two failed looks, however busy the machine.
    let failures = || async {
        let metrics = server.get("/metrics").await.text().await.unwrap();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("distilserve_heads_folder_errors_total "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let started = Instant::now();
    while failures().await < 2.0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the failures are counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(classify(&server, "toy").await, 200);
    assert_eq!(classify(&server, "extra").await, 200);
    let listed: Value = server.get("/heads").await.json().await.unwrap();
    assert_eq!(listed["heads"].as_array().unwrap().len(), 2, "{listed}");
    let error = listed["folder_error"].as_str().expect("the failure is shown");
    assert!(error.contains("classify.heads_dir") && !error.contains(root.path().to_str().unwrap()), "{error}");
    assert_eq!(server.get("/health/ready").await.status(), 200);

    // Back: the error clears; the heads are the same.
    std::fs::rename(&away, &heads).unwrap();
    let started = Instant::now();
    loop {
        let listed: Value = server.get("/heads").await.json().await.unwrap();
        if listed.get("folder_error").is_none() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the error stays: {listed}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

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
    let (pa, pb) = (common::free_port(), common::free_port());
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

const ADMIN_KEY: &str = "admin-k3y";
const TEXTS: [&str; 3] = ["a wonderful, moving film", "dull and tedious", "fine"];

async fn probabilities(server: &TestServer) -> Value {
    let response = server.post_json("/classify", json!({"inputs": TEXTS})).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    json!(body["predictions"].as_array().unwrap().iter().map(|p| p["probabilities"].clone()).collect::<Vec<_>>())
}

/// A config file for the CLI that defines head `toy` like settings_with_toy_head.
fn cli_config(root: &Path) -> PathBuf {
    let path = root.join("toy.toml");
    let text = format!(
        "[classify]\nserve = [\"toy\"]\ndefault_head = \"toy\"\nheads_dir = {:?}\nfeature_cache_dir = {:?}\n\n\
         [heads.toy]\nkind = \"logistic\"\ndata = {:?}\nalphas = [0.1, 1.0]\n",
        root.join("heads"),
        root.join("cache"),
        root.join("data")
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn train_command(root: &Path, model: &str, heads_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_distilserve"));
    cmd.arg("train")
        .arg("--config")
        .arg(cli_config(root))
        .args(["--head", "toy", "--intra-threads", "1", "--model-dir"])
        .arg(fixture(model))
        .arg("--heads-dir")
        .arg(heads_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

#[tokio::test]
async fn a_bad_head_file_at_reload_leaves_the_previous_head_serving() {
    let root = tempfile::tempdir().unwrap();
    let mut settings = settings_with_toy_head(root.path(), true);
    settings.security.admin_key = ADMIN_KEY.into();
    let server = TestServer::start(settings).await;
    wait_ready(&server).await;
    let before = probabilities(&server).await;
    let reload =
        |name: &str| server.client.post(server.url(&format!("/heads/{name}/reload"))).bearer_auth(ADMIN_KEY).send();
    let path = root.path().join("heads/toy.json");
    let good = std::fs::read(&path).unwrap();

    // The same head trained on another encoder (tiny BERT instead of tiny DistilBERT).
    let foreign_dir = root.path().join("foreign");
    let out = train_command(root.path(), "tiny-bert", &foreign_dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let foreign = std::fs::read(foreign_dir.join("toy.json")).unwrap();

    // One byte that matters: the leading digit of the first scaler mean (a
    // byte in a float's last digits may parse back to the same f32, and then
    // the head is the same head).
    let mut flipped = good.clone();
    let mean_at = good.windows(13).position(|w| w == b"\"scaler_mean\"").expect("scaler_mean");
    let digit = mean_at + good[mean_at..].iter().position(|b| (b'1'..=b'9').contains(b)).expect("a digit");
    flipped[digit] = if flipped[digit] == b'1' { b'2' } else { b'1' };
    // Edited to a narrower hidden size, checksum recomputed: consistent in
    // itself, so only the check against the running encoder can refuse it.
    let mut narrow: LogisticHead = serde_json::from_slice(&good).unwrap();
    let width = narrow.pooling.width(narrow.row_width(16));
    narrow.encoder.hidden_size = 16;
    narrow.scaler_mean.truncate(width);
    narrow.scaler_scale.truncate(width);
    narrow.weights.iter_mut().for_each(|w| w.truncate(width));
    let narrow = serde_json::to_vec(&narrow.sealed()).unwrap();
    let cases: [(&str, Option<Vec<u8>>, &str); 6] = [
        ("hidden size edited, checksum recomputed", Some(narrow), "features"),
        ("truncated", Some(good[..good.len() / 2].to_vec()), "toy.json"),
        ("one byte changed", Some(flipped), "toy.json"),
        ("not JSON at all", Some(b"\x00\x01garbage".to_vec()), "toy.json"),
        ("another encoder", Some(foreign), "tiny-bert"),
        ("missing", None, "missing"),
    ];
    for (what, bytes, expected) in cases {
        match bytes {
            Some(b) => std::fs::write(&path, b).unwrap(),
            None => std::fs::remove_file(&path).unwrap(),
        }
        let response = reload("toy").await.unwrap();
        let (status, code, message) = error_of(response).await;
        assert_eq!((status, code.as_str()), (422, "invalid_head_file"), "{what}: {message}");
        assert!(message.contains(expected) && message.contains("previous head keeps serving"), "{what}: {message}");
        assert_eq!(probabilities(&server).await, before, "{what}: the served head changed");
    }

    // A good file loads again; unknown heads are 404.
    std::fs::write(&path, &good).unwrap();
    let response = reload("toy").await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["name"], "toy");
    assert_eq!(probabilities(&server).await, before);
    let (status, _, _) = error_of(reload("nope").await.unwrap()).await;
    assert_eq!(status, 404);
    server.stop().await;
}

#[tokio::test]
async fn training_killed_mid_write_never_leaves_a_half_written_head() {
    let root = tempfile::tempdir().unwrap();
    common::synthetic_dataset(&root.path().join("data"));
    let heads = root.path().join("heads");
    let path = heads.join("toy.json");
    let started = Instant::now();
    let out = train_command(root.path(), "tiny-distilbert", &heads).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let full_run = started.elapsed();
    let old = std::fs::read(&path).unwrap();

    // Kill retraining (features cached or not, head being written or not) at
    // moments spread over a whole run; the file must stay whole every time.
    let mut outcomes = (0, 0);
    for k in 0..12 {
        if k % 3 == 0 {
            let _ = std::fs::remove_dir_all(root.path().join("cache")); // also kill while caching features
        }
        let mut child = train_command(root.path(), "tiny-distilbert", &heads).spawn().unwrap();
        std::thread::sleep(full_run.mul_f64(0.1 + 0.09 * k as f64));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let now = std::fs::read(&path).expect("the head file is never missing");
        if now == old {
            outcomes.0 += 1;
        } else {
            // A new complete head: it must load and check out.
            LogisticHead::load(&path).unwrap_or_else(|e| panic!("kill {k}: a half-written head: {e:#}"));
            outcomes.1 += 1;
        }
    }
    eprintln!("12 kills: {} left the old file, {} a complete new one", outcomes.0, outcomes.1);

    // One kill certain to land inside the head's write: the writer pauses after
    // writing its temporary file, the test sees that file and kills then. A
    // full run first, so that the feature cache is complete and the head is
    // the only file written.
    let out = train_command(root.path(), "tiny-distilbert", &heads).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let before = std::fs::read(&path).unwrap();
    let mut child = train_command(root.path(), "tiny-distilbert", &heads)
        .env("DISTILSERVE_FAULT_PAUSE_BEFORE_RENAME_MS", "5000")
        .spawn()
        .unwrap();
    let temporary = |dir: &Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
    };
    let waiting = Instant::now();
    while !temporary(&heads) {
        assert!(waiting.elapsed() < std::time::Duration::from_secs(120), "the head write never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(temporary(&heads), "the kill landed inside the write: its temporary file is left");
    assert_eq!(std::fs::read(&path).unwrap(), before, "the head file is the one from before the killed write");

    // The service starts on what is there; leftover temporary files are ignored.
    let server = TestServer::start(settings_with_toy_head(root.path(), false)).await;
    probabilities(&server).await;
    server.stop().await;
}

/// Makes a folder unwritable even for root (the immutable attribute on ext4),
/// or by permissions for other users; undone on drop.
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn new(dir: &Path) -> ReadOnly {
        std::fs::create_dir_all(dir).unwrap();
        let root = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
        if root {
            let ok = Command::new("chattr").arg("+i").arg(dir).status().map(|s| s.success()).unwrap_or(false);
            assert!(
                ok,
                "chattr +i {} failed: this test needs a file system with the immutable attribute",
                dir.display()
            );
        } else {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
        }
        assert!(std::fs::write(dir.join("probe"), b"x").is_err(), "{} is still writable", dir.display());
        ReadOnly(dir.to_path_buf())
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o755));
    }
}

async fn trains_and_serves_without_writing(root: &Path) {
    let server = TestServer::start(settings_with_toy_head(root, true)).await;
    wait_ready(&server).await;
    probabilities(&server).await;
    let heads: Value = server.get("/heads").await.json().await.unwrap();
    assert_eq!(heads["heads"][0]["name"], "toy");
    assert!(!root.join("heads/toy.json").exists());
    server.stop().await;
}

#[tokio::test]
async fn read_only_heads_and_cache_folders_are_reported_and_the_head_serves() {
    let root = tempfile::tempdir().unwrap();
    let _heads = ReadOnly::new(&root.path().join("heads"));
    let _cache = ReadOnly::new(&root.path().join("cache"));
    trains_and_serves_without_writing(root.path()).await;
}

#[tokio::test]
async fn a_full_disk_under_heads_and_cache_is_reported_and_the_head_serves() {
    let root = tempfile::tempdir().unwrap();
    let disk = root.path().join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    // A 4 KiB tmpfs, filled up: every write on it fails with ENOSPC.
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4k", "tmpfs"])
        .arg(&disk)
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        // Not a silent pass: a run that cannot test this says so by failing,
        // unless skipping was asked for.
        assert!(
            std::env::var_os("DISTILSERVE_SKIP_ROOT_TESTS").is_some(),
            "mounting a tmpfs failed: this test needs root (CI runs as root); set DISTILSERVE_SKIP_ROOT_TESTS=1 to skip it"
        );
        eprintln!("SKIPPED (DISTILSERVE_SKIP_ROOT_TESTS): mounting a tmpfs needs root");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(disk.clone());
    let _ = std::fs::write(disk.join("filler"), vec![0u8; 64 * 1024]);
    assert!(std::fs::write(disk.join("probe"), vec![0u8; 4096]).is_err(), "the tmpfs is not full");
    std::fs::create_dir_all(root.path().join("data")).unwrap();
    common::synthetic_dataset(&root.path().join("data"));
    for (link, target) in [("heads", "disk/heads"), ("cache", "disk/cache")] {
        // Folders on the full disk (creating them may already fail: that is the point).
        let _ = std::fs::create_dir_all(root.path().join(target));
        std::os::unix::fs::symlink(root.path().join(target), root.path().join(link)).unwrap();
    }
    trains_and_serves_without_writing(root.path()).await;
}
