//! Contract testing: schemathesis (PyPI, in the set-up venv) generates requests
//! from openapi.yaml — valid, invalid and edge cases, and stateful sequences —
//! against the real server over a socket, with every check on: no 5xx,
//! responses conform to their schemas, status codes and content types are
//! documented, schema-valid requests are accepted and invalid ones refused.
//! Bounded for CI (seeded, a time budget); `make contract` runs a longer one.

use crate::common;

use std::process::Command;

use common::{python, repo_path, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_contract_violation() {
    // With an admin key, which schemathesis sends, so that the routes that
    // change heads are exercised too (and checked to refuse a missing key with 401).
    let mut settings = common::settings_with_onnx_head();
    settings.security.admin_key = "contract-admin".into();
    let server = TestServer::start(settings).await;
    let url = format!("http://{}", server.addr);
    let seconds = std::env::var("CONTRACT_SECONDS").unwrap_or_else(|_| "60".into());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .args(["-m", "schemathesis.cli", "--config-file"])
            .arg(repo_path("tests/contract-schemathesis.toml"))
            .arg("run")
            .arg(repo_path("openapi.yaml"))
            .args(["--url", &url, "--max-examples", "10", "--seed", "1"])
            .args(["--header", "Authorization: Bearer contract-admin"])
            .args(["--max-time", &seconds])
            .env("NO_COLOR", "1")
            .output()
            .expect("schemathesis runs (pip: scripts/requirements-export.txt)")
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let summary = report.lines().filter(|l| l.contains("generated")).collect::<Vec<_>>().join(" ");
    eprintln!("schemathesis: {summary}");
    assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(summary.contains("passed") && !summary.contains("found"), "{report}");
    server.stop().await;
}
