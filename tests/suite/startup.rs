//! Starting the service: liveness and readiness are distinct probes, warm-up runs
//! the model before ready, and bad set-ups (missing model or library, CUDA
//! without a GPU, a bad setting, a corrupt model) are refused by the binary with
//! one clear line naming the problem, exit 1.

use crate::common;

use std::process::Command;

use common::{fixture, settings_for, TestServer};

#[tokio::test]
async fn liveness_and_readiness_are_distinct_probes() {
    let server = TestServer::start(settings_for(&fixture("tiny-distilbert"))).await;
    for path in ["/health/live", "/health/ready", "/health"] {
        let response = server.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
    }
    assert_eq!(server.get("/health/live").await.json::<serde_json::Value>().await.unwrap()["status"], "alive");
    assert_eq!(server.get("/health/ready").await.json::<serde_json::Value>().await.unwrap()["status"], "ok");
    server.stop().await;
}

#[tokio::test]
async fn with_warm_up_the_model_has_run_before_ready() {
    let mut settings = common::settings_for(&common::fixture("tiny-distilbert"));
    settings.model.warm_up = true;
    let server = common::TestServer::start(settings).await;
    common::wait_ready(&server).await;
    let metrics = server.get("/metrics").await.text().await.unwrap();
    let batches = metrics
        .lines()
        .find(|l| l.starts_with("distilserve_batches_total{runtime=\"encoder\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse::<f64>().unwrap())
        .unwrap_or(0.0);
    // 3 lengths x 3 batch sizes, before any request.
    assert!(batches >= 9.0, "{batches} model calls before the first request");
    server.stop().await;
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_distilserve"));
    cmd.arg("serve").args(["--host", "127.0.0.1", "--port", "0", "--log-format", "text"]).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

fn error_line(stderr: &str) -> &str {
    stderr.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no error line in {stderr:?}"))
}

#[test]
fn missing_model_folder() {
    let (code, stderr) = run(&["--model-dir", "/nonexistent/model"], &[]);
    assert_eq!(code, 1);
    let line = error_line(&stderr);
    assert!(line.contains("/nonexistent/model") && line.contains("scripts/setup.sh"), "{line}");
}

#[test]
fn missing_model_file() {
    let dir = fixture("tiny-distilbert");
    let (code, stderr) = run(&["--model-dir", dir.to_str().unwrap(), "--model-file", "model.int8.onnx"], &[]);
    assert_eq!(code, 1);
    assert!(error_line(&stderr).contains("model.int8.onnx is missing"), "{stderr}");
}

#[test]
fn missing_onnxruntime_library() {
    let dir = fixture("tiny-distilbert");
    let (code, stderr) =
        run(&["--model-dir", dir.to_str().unwrap(), "--onnxruntime-library", "/nonexistent/libonnxruntime.so"], &[]);
    assert_eq!(code, 1);
    let line = error_line(&stderr);
    assert!(line.contains("/nonexistent/libonnxruntime.so") && line.contains("scripts/setup.sh"), "{line}");
}

#[test]
fn cuda_without_a_gpu_is_a_clear_error_or_an_announced_fallback() {
    let dir = fixture("tiny-distilbert");
    let (code, stderr) = run(&["--model-dir", dir.to_str().unwrap(), "--execution-provider", "cuda"], &[]);
    assert_eq!(code, 1);
    let line = error_line(&stderr);
    assert!(line.contains("CUDA") && line.contains("allow_cpu_fallback"), "{line}");
}

#[test]
fn bad_environment_setting_names_the_key() {
    let (code, stderr) = run(&[], &[("DISTILSERVE_BATCHING__MAX_BATCH_SIZE", "lots")]);
    assert_eq!(code, 1);
    let line = error_line(&stderr);
    assert!(line.contains("batching.max_batch_size") && line.contains("lots"), "{line}");
}

#[test]
fn corrupt_model_file_is_refused_before_loading() {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["model.onnx", "tokenizer.json", "config.json", "manifest.json"] {
        std::fs::copy(fixture("tiny-distilbert").join(f), tmp.path().join(f)).unwrap();
    }
    let model = tmp.path().join("model.onnx");
    let mut bytes = std::fs::read(&model).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&model, &bytes).unwrap();
    let (code, stderr) = run(&["--model-dir", tmp.path().to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(error_line(&stderr).contains("sha256"), "{stderr}");

    std::fs::write(&model, &bytes[..middle]).unwrap();
    let (code, stderr) = run(&["--model-dir", tmp.path().to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(error_line(&stderr).contains("truncated"), "{stderr}");
}

#[test]
fn a_file_that_is_not_the_onnxruntime_library() {
    let dir = fixture("tiny-distilbert");
    let bogus = tempfile::tempdir().unwrap();
    let lib = bogus.path().join("libonnxruntime.so");
    std::fs::write(&lib, b"not a shared library").unwrap();
    let (code, stderr) =
        run(&["--model-dir", dir.to_str().unwrap(), "--onnxruntime-library", lib.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    let line = error_line(&stderr);
    assert!(line.contains(lib.to_str().unwrap()) && line.contains("scripts/setup.sh"), "{line}");
}

#[test]
fn a_file_that_is_not_an_onnx_model() {
    let model = tempfile::tempdir().unwrap();
    for f in ["tokenizer.json", "config.json"] {
        std::fs::copy(fixture("tiny-distilbert").join(f), model.path().join(f)).unwrap();
    }
    std::fs::write(model.path().join("model.onnx"), b"<html>a download error page</html>").unwrap();
    let (code, stderr) = run(&["--model-dir", model.path().to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(error_line(&stderr).contains("model.onnx"), "{stderr}");
}

/// Each thread of a process: (name, scheduling policy as /proc gives it:
/// 0 SCHED_OTHER, 3 SCHED_BATCH).
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|task| {
            let name = std::fs::read_to_string(task.path().join("comm")).ok()?.trim_end().to_string();
            let sched = std::fs::read_to_string(task.path().join("sched")).ok()?;
            let policy = sched.lines().find(|l| l.starts_with("policy"))?.rsplit(' ').next()?.parse().ok()?;
            Some((name, policy))
        })
        .collect()
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn past_capacity_http_threads_yield_to_the_models_unless_told_not_to() {
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    // A queue of one sequence: a request of two is refused.
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "[classify]\nserve = []\ndefault_head = \"\"\n[batching]\nqueue_capacity = 1\n")
        .unwrap();
    let client = reqwest::Client::new();
    for (setting, past_capacity) in [("true", 3), ("false", 0)] {
        let port = common::free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_distilserve"))
            .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string(), "--intra-threads", "2", "--config"])
            .arg(config.path())
            .arg("--model-dir")
            .arg(fixture("tiny-distilbert"))
            .env("DISTILSERVE_SERVER__HTTP_THREADS_YIELD_TO_MODEL", setting)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let child = Killed(child);
        let base = format!("http://127.0.0.1:{port}");
        let started = std::time::Instant::now();
        while client.get(format!("{base}/health/ready")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
            assert!(started.elapsed() < std::time::Duration::from_secs(30), "not ready");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let embed = |inputs: serde_json::Value| {
            client.post(format!("{base}/embed")).json(&serde_json::json!({"inputs": inputs})).send()
        };
        // (HTTP threads' policies, the model's threads' policies.)
        let policies = || {
            let threads = thread_policies(child.0.id());
            let of = |prefixes: &[&str]| -> Vec<u32> {
                threads.iter().filter(|(n, _)| prefixes.iter().any(|p| n.starts_with(p))).map(|t| t.1).collect()
            };
            let (http, model) = (of(&["tokio"]), of(&["onnxruntime", "encoder-"]));
            assert!(!http.is_empty() && model.len() >= 2, "{threads:?}");
            (http, model)
        };
        let (http, model) = policies();
        assert!(http.iter().chain(&model).all(|&p| p == 0), "{setting}, below capacity: {http:?} {model:?}");

        assert_eq!(embed(serde_json::json!(["one", "two"])).await.unwrap().status(), 503);
        let (http, model) = policies();
        assert!(http.iter().all(|&p| p == past_capacity), "{setting}, past capacity: {http:?}");
        assert!(model.iter().all(|&p| p == 0), "{setting}, the model's threads: {model:?}");

        assert_eq!(embed(serde_json::json!("one")).await.unwrap().status(), 200);
        assert!(policies().0.iter().all(|&p| p == past_capacity), "{setting}: within the calm after a refusal");
        tokio::time::sleep(distilserve::threads::CALM).await;
        assert_eq!(embed(serde_json::json!("one")).await.unwrap().status(), 200);
        assert!(policies().0.iter().all(|&p| p == 0), "{setting}: admitted after the calm");
    }
}
