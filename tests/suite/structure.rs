//! The module graph of src/ has no cycle and settings depend on nothing
//! (scripts/module-graph.py prints the graph).

use crate::common;

#[test]
fn modules_import_no_cycle_and_config_imports_nothing() {
    let output = std::process::Command::new("python3")
        .arg(common::repo_path("scripts/module-graph.py"))
        .output()
        .expect("python3 runs scripts/module-graph.py");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}{}", String::from_utf8_lossy(&output.stderr));
    assert!(text.lines().any(|l| l.starts_with("config") && l.ends_with("-> (nothing)")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("pooling") && l.ends_with("-> (nothing)")), "{text}");
}
