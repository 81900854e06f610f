//! The client libraries people already have (openai, langchain-openai,
//! huggingface_hub, Haystack's and LlamaIndex's embedders; pinned in
//! tests/clients/requirements.txt, installed by scripts/clients-env.sh) against
//! the real service on the default model: every client snippet of the README and
//! docs/clients.md run as written, the wire details, and corpus-sized requests in the
//! clients' default chunks (tests/clients/test_clients.py).

use crate::common;

use std::process::Command;

use common::{default_model_dir, repo_path, settings_for, synthetic_dataset, wait_ready, TestServer};

/// The client libraries' venv: $DISTILSERVE_CLIENTS_PYTHON (set by the
/// Makefile), else the one scripts/clients-env.sh makes.
fn clients_python() -> String {
    std::env::var("DISTILSERVE_CLIENTS_PYTHON").unwrap_or_else(|_| {
        let cache = std::env::var("DISTILSERVE_CACHE")
            .unwrap_or_else(|_| format!("{}/.cache/distilserve", std::env::var("HOME").unwrap_or_default()));
        format!("{cache}/clients-venv/bin/python")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_people_use_work_unchanged() {
    let root = tempfile::tempdir().unwrap();
    let mut settings = settings_for(&default_model_dir());
    // A head named as the snippets' (the default model's real head takes minutes to train).
    let data = root.path().join("data");
    synthetic_dataset(&data);
    let mut head = distilserve::config::HeadSettings::logistic(data);
    head.alphas = vec![1.0];
    head.layers = vec![distilserve::config::LayerSpec::try_from("-1".to_string()).unwrap()];
    head.train_on_startup = true;
    settings.heads.insert("sentiment".into(), head);
    settings.classify.serve = vec!["sentiment".into()];
    settings.classify.default_head = "sentiment".into();
    settings.classify.heads_dir = root.path().join("heads");
    settings.classify.feature_cache_dir = root.path().join("cache");
    settings.model.intra_threads = 0;
    // The suite runs tests side by side on few cores: corpus requests get time.
    settings.server.request_timeout_ms = 300_000;
    let server = TestServer::start(settings).await;
    wait_ready(&server).await;
    let url = format!("http://{}", server.addr);
    let python = clients_python();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(repo_path("tests/clients/test_clients.py"))
            .args(["--url", &url])
            .env("NO_COLOR", "1")
            .env("HF_HUB_OFFLINE", "0")
            .output()
            .unwrap_or_else(|e| panic!("{python}: {e} (make test installs it: scripts/clients-env.sh)"))
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("clients: all checks passed"), "{stdout}");
    server.stop().await;
}
