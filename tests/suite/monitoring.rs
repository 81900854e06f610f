//! What an operator looks at (deploy/grafana/distilserve.json,
//! deploy/prometheus/alerts.yaml) names only metrics the service exports, the
//! dashboard charts every family but the two info ones, and `promtool check
//! rules` accepts the alert rules. Tiny DistilBERT fixture over a socket.

use crate::common;

use std::collections::BTreeSet;
use std::process::Command;

use common::{repo_path, settings_with_toy_head, wait_ready, TestServer};
use serde_json::json;

/// Sample names a scrape can contain, from the `# TYPE` lines (families with
/// no sample yet included): counters as `_total`, histograms as
/// `_bucket`/`_sum`/`_count`, gauges as they are.
fn exported_sample_names(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let (family, kind) = rest.split_once(' ').unwrap();
        match kind {
            "counter" => names.insert(format!("{family}_total")),
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{family}{suffix}"));
                }
                true
            }
            _ => names.insert(family.to_string()),
        };
    }
    names
}

/// Every `distilserve_*` or `process_*` identifier in `text`.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (start, _) in text.match_indices(['d', 'p']) {
        let rest = &text[start..];
        if !(rest.starts_with("distilserve_") || rest.starts_with("process_")) {
            continue;
        }
        if start > 0 && text.as_bytes()[start - 1].is_ascii_alphanumeric() {
            continue;
        }
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        names.insert(rest[..end].to_string());
    }
    names
}

fn family_of(sample: &str) -> &str {
    ["_total", "_bucket", "_sum", "_count"].iter().find_map(|s| sample.strip_suffix(s)).unwrap_or(sample)
}

#[tokio::test]
async fn dashboard_and_alerts_name_only_exported_metrics_and_chart_every_family() {
    // A head trained at startup and used once: every family has a series.
    let root = tempfile::tempdir().unwrap();
    let server = TestServer::start(settings_with_toy_head(root.path(), true)).await;
    wait_ready(&server).await;
    assert_eq!(server.post_json("/classify", json!({"inputs": ["a film"]})).await.status(), 200);
    let metrics = server.get("/metrics").await.text().await.unwrap();
    server.stop().await;
    let exported = exported_sample_names(&metrics);
    // Scrape-time readings are there on Linux, in or out of a container.
    assert!(metrics.contains("\nprocess_resident_memory_bytes "), "{metrics}");
    assert!(metrics.contains("\ndistilserve_worker_longest_call_seconds "), "{metrics}");

    let dashboard = std::fs::read_to_string(repo_path("deploy/grafana/distilserve.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let expressions: Vec<String> = parsed["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap().iter())
        .map(|target| target["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(expressions.len() >= 20, "{} queries", expressions.len());
    let alerts = std::fs::read_to_string(repo_path("deploy/prometheus/alerts.yaml")).unwrap();

    for (file, text) in
        [("deploy/grafana/distilserve.json", expressions.join("\n")), ("deploy/prometheus/alerts.yaml", alerts)]
    {
        let named = metric_names_in(&text);
        assert!(!named.is_empty(), "{file} names no metric");
        let unknown: Vec<_> = named.difference(&exported).collect();
        assert!(unknown.is_empty(), "{file} names metrics the service does not export: {unknown:?}");
    }
    let charted_samples = metric_names_in(&expressions.join("\n"));
    let charted: BTreeSet<&str> = charted_samples.iter().map(|s| family_of(s)).collect();
    let not_charted: BTreeSet<&str> = exported
        .iter()
        .map(|s| family_of(s))
        .filter(|family| !charted.contains(family))
        .filter(|family| !["distilserve_model_info", "distilserve_head_info"].contains(family))
        .collect();
    assert!(not_charted.is_empty(), "families on no dashboard panel: {not_charted:?}");
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let cached = std::env::var("DISTILSERVE_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/distilserve"))
        .join("bin/promtool");
    let promtool = if cached.exists() { cached } else { "promtool".into() };
    let output = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(repo_path("deploy/prometheus/alerts.yaml"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {} ({e}): scripts/install-test-deps.sh installs it", promtool.display())
        });
    let said = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{said}");
    assert!(said.contains("SUCCESS: 9 rules found"), "{said}");
}
