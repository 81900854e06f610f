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

/// Every error code the code can answer with, collected from the source:
/// `ApiError::invalid("code", ...)`, `(StatusCode::X, "code")` and the
/// `=> "code"` arms of `src/http/error.rs`.
fn error_codes_in_source() -> std::collections::BTreeSet<String> {
    fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()) {
            if entry.is_dir() {
                rust_files(&entry, out);
            } else if entry.extension().is_some_and(|e| e == "rs") {
                out.push(entry);
            }
        }
    }
    let mut files = Vec::new();
    rust_files(&common::repo_path("src"), &mut files);
    let mut codes = std::collections::BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut markers = vec!["ApiError::invalid(\""];
        if file.ends_with("error.rs") {
            markers.push("=> \"");
        }
        let mut rest = flat.as_str();
        while let Some(i) = rest.find("StatusCode::") {
            rest = &rest[i + "StatusCode::".len()..];
            let name_end = rest.find(|c: char| !(c.is_ascii_uppercase() || c == '_')).unwrap_or(rest.len());
            if let Some(after) = rest[name_end..].strip_prefix(", \"") {
                codes.insert(after[..after.find('"').unwrap()].to_string());
            }
        }
        for marker in markers {
            for (i, _) in flat.match_indices(marker) {
                let after = &flat[i + marker.len()..];
                let code = &after[..after.find('"').unwrap()];
                if !code.is_empty() && code.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    codes.insert(code.to_string());
                }
            }
        }
    }
    codes
}

#[test]
fn the_readme_lists_every_error_code_the_code_can_return() {
    let codes = error_codes_in_source();
    assert!(codes.len() >= 15 && codes.contains("too_many_tokens") && codes.contains("admin_disabled"), "{codes:?}");
    let readme = std::fs::read_to_string(common::repo_path("README.md")).unwrap();
    let missing: Vec<&String> = codes.iter().filter(|c| !readme.contains(&format!("`{c}`"))).collect();
    assert!(missing.is_empty(), "error codes missing from README.md: {missing:?}");
}

/// The section of README.md under `heading`, up to the next `## `.
fn readme_section(heading: &str) -> String {
    let readme = std::fs::read_to_string(common::repo_path("README.md")).unwrap();
    let start = readme.find(heading).unwrap_or_else(|| panic!("README.md has no {heading}"));
    let rest = &readme[start + heading.len()..];
    rest[..rest.find("\n## ").unwrap_or(rest.len())].to_string()
}

#[test]
fn the_readme_tests_table_names_exactly_the_suites_modules() {
    let main = std::fs::read_to_string(common::repo_path("tests/suite/main.rs")).unwrap();
    let modules: std::collections::BTreeSet<String> = main
        .lines()
        .filter_map(|l| l.strip_prefix("mod ")?.strip_suffix(';'))
        .filter(|m| *m != "common")
        .map(String::from)
        .collect();
    let tests = readme_section("## Tests");
    let rows: std::collections::BTreeSet<String> = tests
        .lines()
        .filter_map(|l| l.strip_prefix("| `tests/suite/")?.split_once(".rs`").map(|(m, _)| m.to_string()))
        .collect();
    assert_eq!(rows, modules, "README's tests table and tests/suite/main.rs differ");
}

#[test]
fn the_readme_layout_and_the_crate_map_name_every_source_file() {
    fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = common::repo_path("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let layout = readme_section("## Layout");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let map: String = lib.lines().filter(|l| l.starts_with("//!")).collect::<Vec<_>>().join("\n");
    let mut missing = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let name = relative.file_name().unwrap().to_str().unwrap();
        let named = if relative.components().count() == 1 {
            layout.contains(&format!("src/{name}")) || name == "lib.rs" || name == "main.rs"
        } else {
            // Files of a folder are named in its row: `src/heads/` (`search.rs`, ...).
            let folder = relative.parent().unwrap().to_str().unwrap();
            layout.contains(&format!("src/{folder}/")) && layout.contains(&format!("`{name}`"))
        };
        if !named {
            missing.push(format!("README Layout: src/{}", relative.display()));
        }
        if relative.components().count() == 1 && name != "lib.rs" && name != "main.rs" {
            let module = name.trim_end_matches(".rs");
            if !map.contains(&format!("`{module}`")) {
                missing.push(format!("src/lib.rs module map: {module}"));
            }
        }
    }
    assert!(missing.is_empty(), "not named: {missing:?}");
}
