//! Helpers shared by the integration tests: fixture paths, settings for a test
//! server, and a real server on a loopback port.
#![allow(dead_code)]

pub mod fakes;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use distilserve::config::Settings;
use distilserve::startup::Application;
use serde::Deserialize;
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The set-up venv's Python (NumPy, scikit-learn, spec validator):
/// $DISTILSERVE_PYTHON (set by the Makefile), else ~/.cache/distilserve/venv.
pub fn python() -> String {
    std::env::var("DISTILSERVE_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/distilserve/venv/bin/python")
    })
}

/// A port nothing listens on now (for a binary told to listen on it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn fixture(name: &str) -> PathBuf {
    repo_path("tests/fixtures").join(name)
}

/// The default model set up by scripts/setup.sh; a clear failure when missing.
pub fn default_model_dir() -> PathBuf {
    let dir = repo_path("models/all-minilm-l6-v2");
    assert!(
        dir.join("manifest.json").is_file() && dir.join("reference.json").is_file(),
        "the default model is not set up in {}: run `make setup` (scripts/setup.sh) first",
        dir.display()
    );
    dir
}

/// Defaults with the given model, a free loopback port, one thread per session
/// and no heads.
pub fn settings_for(model_dir: &Path) -> Settings {
    let mut s = Settings::defaults();
    s.classify.serve.clear();
    s.classify.default_head.clear();
    s.server.host = "127.0.0.1".into();
    s.server.port = 0;
    s.model.dir = model_dir.to_path_buf();
    s.model.intra_threads = 1;
    // One graph: the tests of the heads' own graph (classify.rs) ask for it,
    // so that the others do not load and train on a second one.
    s.classify.model_file = String::new();
    // Not the repository's models/heads: a head trained there for another
    // model must not be found, nor one a test creates be left there.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    s.classify.heads_dir = std::env::temp_dir().join(format!("distilserve-test-heads-{}-{n}", std::process::id()));
    s
}

/// `settings_for` the tiny DistilBERT fixture.
pub fn tiny_distilbert() -> Settings {
    settings_for(&fixture("tiny-distilbert"))
}

/// Settings that serve the tiny ONNX sentiment classifier fixture as head `sst2`
/// (labels neg/pos), on the tiny DistilBERT encoder.
pub fn settings_with_onnx_head() -> Settings {
    use distilserve::config::{HeadKind, HeadSettings};
    let mut settings = settings_for(&fixture("tiny-distilbert"));
    let mut head = HeadSettings::logistic("unused".into());
    head.kind = HeadKind::Onnx;
    head.data = None;
    head.model_dir = Some(fixture("tiny-distilbert-sst2"));
    head.label_map =
        [("NEGATIVE", "neg"), ("POSITIVE", "pos")].into_iter().map(|(a, b)| (a.into(), b.into())).collect();
    settings.heads.insert("sst2".into(), head);
    settings.classify.serve = vec!["sst2".into()];
    settings.classify.default_head = "sst2".into();
    settings
}

/// Python onnxruntime's outputs for a fixture or the default model (scripts/reference.py).
#[derive(Debug, Deserialize)]
pub struct Reference {
    pub items: Vec<ReferenceItem>,
}

#[derive(Debug, Deserialize)]
pub struct ReferenceItem {
    pub text: String,
    pub ids: Vec<i64>,
    pub tokens: Vec<String>,
    pub last_hidden_state: Option<Vec<Vec<f32>>>,
    pub logits: Option<Vec<f32>>,
    /// Earlier layers' hidden states: `hidden_state_0` (embeddings) .. `hidden_state_{N-1}`.
    #[serde(flatten)]
    pub layers: std::collections::BTreeMap<String, serde_json::Value>,
}

impl ReferenceItem {
    /// Hidden state `index` (absolute; `last` is `last_hidden_state`), per token.
    pub fn hidden_state(&self, index: usize, last: usize) -> Vec<Vec<f32>> {
        if index == last {
            return self.last_hidden_state.clone().expect("last hidden state");
        }
        let value = self.layers.get(&format!("hidden_state_{index}")).expect("reference has the layer");
        serde_json::from_value(value.clone()).expect("matrix of floats")
    }
}

pub fn reference(path: &Path) -> Reference {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("reference JSON")
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length differs");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A real server on 127.0.0.1, stopped (gracefully) when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The private listener (`server.private_address`), when set.
    pub private_addr: Option<SocketAddr>,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start(settings: Settings) -> TestServer {
        let app = Application::build(settings).await.expect("application starts");
        let addr = app.local_addr();
        let private_addr = app.private_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        TestServer { addr, private_addr, client: reqwest::Client::new(), stop: Some(stop), handle: Some(handle) }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn post_json(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        self.client.post(self.url(path)).json(&body).send().await.expect("request sent")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("request sent")
    }

    /// Stops the server and waits until it has drained.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("server task").expect("server stopped cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Reads an error body and checks its shape; returns (code, message).
pub async fn error_of(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.expect("error body is JSON");
    let code = body["error"]["code"].as_str().expect("error.code").to_string();
    let message = body["error"]["message"].as_str().expect("error.message").to_string();
    (status, code, message)
}

/// A small synthetic sentiment data set in the fixtures' vocabulary, written to
/// `dir` as train/validation/test JSONL with meta.json: texts made only of
/// positive or only of negative words, so that even the random-weight tiny
/// encoder's features separate them.
pub fn synthetic_dataset(dir: &Path) {
    let positive = ["good", "great", "fun", "love", "best", "happy"];
    let negative = ["bad", "dull", "boring", "hate", "worst", "sad"];
    let mut rows: Vec<(String, usize)> = Vec::new();
    // Three words of one sentiment per text, every split with both labels.
    for i in 0..36 {
        let pick =
            |words: &[&str; 6]| format!("{} {} {}", words[i % 6], words[(i / 6 + i + 1) % 6], words[(i * 5 + 2) % 6]);
        rows.push((pick(&positive), 1));
        rows.push((pick(&negative), 0));
    }
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("meta.json"), r#"{"labels": ["neg", "pos"]}"#).unwrap();
    let write = |name: &str, rows: &[(String, usize)]| {
        let text: String =
            rows.iter().map(|(t, l)| serde_json::json!({"text": t, "label": l}).to_string() + "\n").collect();
        std::fs::write(dir.join(format!("{name}.jsonl")), text).unwrap();
    };
    // 72 rows: 48 train, 12 validation, 12 test, both labels in each.
    write("train", &rows[..48]);
    write("validation", &rows[48..60]);
    write("test", &rows[60..]);
}

/// Tiny DistilBERT serving one logistic head "toy" on the synthetic data set.
pub fn settings_with_toy_head(root: &Path, train_on_startup: bool) -> Settings {
    let data = root.join("data");
    if !data.exists() {
        synthetic_dataset(&data);
    }
    let mut s = settings_for(&fixture("tiny-distilbert"));
    let mut head = distilserve::config::HeadSettings::logistic(data);
    head.alphas = vec![0.1, 1.0];
    head.train_on_startup = train_on_startup;
    s.heads.insert("toy".into(), head);
    s.classify.serve = vec!["toy".into()];
    s.classify.default_head = "toy".into();
    s.classify.heads_dir = root.join("heads");
    s.classify.feature_cache_dir = root.join("cache");
    s
}

pub async fn wait_ready(server: &TestServer) {
    let started = Instant::now();
    loop {
        let response = server.get("/health").await;
        if response.status() == 200 {
            return;
        }
        assert_eq!(response.status(), 503);
        assert_eq!(response.json::<Value>().await.unwrap()["status"], "starting");
        assert!(started.elapsed() < Duration::from_secs(120), "not ready after 2 minutes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Trains head "toy" with `settings` on `model`'s first session and saves it in `heads`.
pub fn train_toy_head(
    model: &mut distilserve::model::Model,
    settings: &distilserve::config::HeadSettings,
    heads: &Path,
    cache: &Path,
) -> distilserve::heads::logistic::LogisticHead {
    use distilserve::features::FeatureCache;
    use distilserve::heads::training::{save_head, train_head, Extraction};
    let info = model.info.clone();
    let tokenizer = model.tokenizer.clone();
    let cache = FeatureCache::new(cache);
    let mut extraction = Extraction {
        source: &mut model.sessions[0],
        info: &info,
        tokenizer: &tokenizer,
        cache: &cache,
        max_batch_size: 16,
        max_batch_tokens: 1024,
    };
    let options = settings
        .training_options()
        .resolve(&distilserve::config::Settings::defaults().training, distilserve::config::Examples::DataSet)
        .expect("options within bounds");
    let data = settings.data.as_deref().expect("a data set");
    let mut head = train_head("toy", data, &options, &mut extraction).expect("training succeeds");
    save_head(&mut head, &distilserve::heads::store::HeadStore::new(heads, 5)).expect("head saved");
    head
}

/// Tokens of a text without truncation, counted from `/tokenize` on its pieces
/// (a text over the model's maximum cannot be tokenized whole there).
pub struct TokenCount;

impl TokenCount {
    /// Word pieces of `text` plus [CLS] and [SEP], from its sentences tokenized one by one.
    pub async fn of(server: &TestServer, text: &str) -> usize {
        let mut pieces = 0;
        for sentence in text.split_inclusive(". ") {
            let t: Value =
                server.post_json("/tokenize", serde_json::json!({"inputs": sentence})).await.json().await.unwrap();
            pieces += t["tokens"][0].as_array().unwrap().len() - 2;
        }
        pieces + 2
    }
}
