//! The container image's runtime layout, without Docker: scripts/stage-runtime.sh
//! (what the Dockerfile copies into its runtime stage) and the service run from
//! it like the image runs it: working directory the staged folder, the ONNX
//! Runtime library found beside the binary (no ORT_DYLIB_PATH), the real default
//! model, and `distilserve healthcheck` (the image's HEALTHCHECK) as the probe.

use crate::common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{default_model_dir, repo_path};
use serde_json::json;

fn healthcheck(app: &Path, port: u16) -> std::process::Output {
    Command::new(app.join("distilserve"))
        .current_dir(app)
        .env_remove("ORT_DYLIB_PATH")
        .args(["healthcheck", "--port", &port.to_string(), "--timeout-ms", "500"])
        .output()
        .unwrap()
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_staged_runtime_layout_serves_and_passes_its_healthcheck() {
    default_model_dir(); // set up
    let app = tempfile::tempdir().unwrap();
    let staged = Command::new(repo_path("scripts/stage-runtime.sh"))
        .arg(app.path())
        .args(["--bin", env!("CARGO_BIN_EXE_distilserve")])
        .output()
        .unwrap();
    assert!(staged.status.success(), "{}", String::from_utf8_lossy(&staged.stderr));
    for file in
        ["distilserve", "libonnxruntime.so", "models/all-minilm-l6-v2/model.onnx", "vendor/swagger-ui/swagger-ui.css"]
    {
        assert!(app.path().join(file).exists(), "{file} not staged");
    }
    // The heads' graph (classify.model_file = "auto") ships too: the image
    // answers /classify as `make run` does.
    if default_model_dir().join("model.int8.onnx").exists() {
        assert!(app.path().join("models/all-minilm-l6-v2/model.int8.onnx").exists(), "the heads' graph not staged");
    }
    assert!(!app.path().join("models/all-minilm-l6-v2/model.opt.onnx").exists(), "a graph nothing serves staged");

    let port = common::free_port();
    // Nothing listens yet: the healthcheck fails, saying so.
    let down = healthcheck(app.path(), port);
    assert!(!down.status.success());
    assert!(String::from_utf8_lossy(&down.stderr).contains("nothing listens"), "{down:?}");

    // Serve from the staged folder only; heads are left out so that nothing trains.
    std::fs::write(app.path().join("test.toml"), "[classify]\nserve = []\ndefault_head = \"\"\n").unwrap();
    let child = Command::new(app.path().join("distilserve"))
        .current_dir(app.path())
        .env_remove("ORT_DYLIB_PATH")
        .args(["serve", "--config", "test.toml", "--port", &port.to_string(), "--intra-threads", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Killed(child);
    let started = Instant::now();
    loop {
        if healthcheck(app.path(), port).status.success() {
            break;
        }
        if let Some(status) = child.0.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("the staged service exited with {status}: {err}");
        }
        assert!(started.elapsed() < Duration::from_secs(60), "not ready after 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let info: serde_json::Value = client.get(format!("{base}/info")).send().await.unwrap().json().await.unwrap();
    assert_eq!(info["model"]["name"], "all-minilm-l6-v2", "{info}");
    let library = info["onnxruntime_library"].as_str().unwrap();
    assert!(
        library.contains(app.path().file_name().unwrap().to_str().unwrap()),
        "library not the staged one: {library}"
    );
    let embed =
        client.post(format!("{base}/embed")).json(&json!({"inputs": "a gripping, funny film"})).send().await.unwrap();
    assert_eq!(embed.status(), 200);
    let docs = client.get(format!("{base}/docs/assets/swagger-ui.css")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
}
