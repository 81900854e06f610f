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

/// Every error code the service can answer with is in docs/api.md's error
/// table, with its status: the codes come from `ErrorCode::ALL`, the one
/// table of codes, statuses, TEI types and `Retry-After`.
#[test]
fn the_api_page_lists_every_error_code_with_its_status() {
    use distilserve::error_code::ErrorCode;
    let api = std::fs::read_to_string(common::repo_path("docs/api.md")).unwrap();
    let errors = &api[api.find("\n## Errors").expect("docs/api.md has ## Errors")..];
    let rows: Vec<&str> = errors.lines().filter(|l| l.starts_with("| ")).collect();
    let mut missing = Vec::new();
    for code in ErrorCode::ALL {
        let (name, status) = (format!("`{}`", code.as_str()), code.status().as_u16().to_string());
        let listed = rows.iter().any(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            cells.iter().any(|c| c.split(", ").any(|part| part == name)) && cells.contains(&status.as_str())
        });
        if !listed {
            missing.push(format!("{status} {name}"));
        }
    }
    assert!(missing.is_empty(), "error codes missing from docs/api.md's error table (status, code): {missing:?}");
}

/// The section of CONTRIBUTING.md under `heading`, up to the next `## `.
fn contributing_section(heading: &str) -> String {
    let text = std::fs::read_to_string(common::repo_path("CONTRIBUTING.md")).unwrap();
    let start = text.find(heading).unwrap_or_else(|| panic!("CONTRIBUTING.md has no {heading}"));
    let rest = &text[start + heading.len()..];
    rest[..rest.find("\n## ").unwrap_or(rest.len())].to_string()
}

#[test]
fn the_contributing_tests_table_names_exactly_the_suites_modules() {
    let main = std::fs::read_to_string(common::repo_path("tests/suite/main.rs")).unwrap();
    let modules: std::collections::BTreeSet<String> = main
        .lines()
        .filter_map(|l| l.strip_prefix("mod ")?.strip_suffix(';'))
        .filter(|m| *m != "common")
        .map(String::from)
        .collect();
    let tests = contributing_section("## Tests");
    let rows: std::collections::BTreeSet<String> = tests
        .lines()
        .filter_map(|l| l.strip_prefix("| `tests/suite/")?.split_once(".rs`").map(|(m, _)| m.to_string()))
        .collect();
    assert_eq!(rows, modules, "CONTRIBUTING.md's tests table and tests/suite/main.rs differ");
}

#[test]
fn the_contributing_layout_and_the_crate_map_name_every_source_file() {
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
    let layout = contributing_section("## Layout");
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
            missing.push(format!("CONTRIBUTING.md Layout: src/{}", relative.display()));
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

/// `docs/configuration.md` (written by `scripts/config-reference.py`) lists
/// every key of `config/default.toml` (a `[heads.<name>]` key once) and no
/// other, each with its environment variable and the flag `serve --help`
/// gives it (or none).
#[test]
fn the_configuration_reference_lists_every_setting_with_its_variable_and_flag() {
    use figment::providers::Format;
    use std::collections::BTreeMap;
    let defaults: serde_json::Value =
        figment::Figment::from(figment::providers::Toml::string(distilserve::config::DEFAULT_TOML)).extract().unwrap();
    let mut keys = Vec::new();
    for (section, table) in defaults.as_object().unwrap() {
        for (key, value) in table.as_object().unwrap() {
            match (section.as_str(), value.as_object()) {
                // [heads.sentiment]: the default file's example of a head's table.
                ("heads", Some(head)) => keys.extend(head.keys().map(|k| format!("heads.<name>.{k}"))),
                _ => keys.push(format!("{section}.{key}")),
            }
        }
    }
    keys.sort();
    keys.dedup();

    // `| `key` | default | `VARIABLE` | `--flag` or - | what |`
    let reference = std::fs::read_to_string(common::repo_path("docs/configuration.md")).unwrap();
    let rows: BTreeMap<String, (String, String)> = reference
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.strip_prefix("| `")?.splitn(5, " | ").collect();
            if cells.len() < 5 {
                return None; // another table (the other variables)
            }
            let key = cells[0].strip_suffix('`')?;
            key.contains('.')
                .then(|| (key.to_string(), (cells[2].trim_matches('`').into(), cells[3].trim_matches('`').into())))
        })
        .collect();
    let listed: Vec<String> = rows.keys().cloned().collect();
    let missing: Vec<&String> = keys.iter().filter(|k| !rows.contains_key(*k)).collect();
    let unknown: Vec<&String> = listed.iter().filter(|k| !keys.contains(k)).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "missing from docs/configuration.md: {missing:?}; listed but not settings: {unknown:?} \
         (python3 scripts/config-reference.py rewrites it)"
    );

    // Each key's flag as `serve --help` says it: the flag, then `section.key: ...` on its line or the next.
    let help =
        std::process::Command::new(env!("CARGO_BIN_EXE_distilserve")).args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let mut flags: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in help.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let key_in =
            |ws: &[&str]| ws.iter().find_map(|w| w.strip_suffix(':').filter(|k| k.contains('.')).map(String::from));
        if let Some(flag) = words.iter().find(|w| w.starts_with("--")) {
            last = Some(flag.to_string());
            let after: Vec<&str> = words.iter().skip_while(|w| !w.starts_with("--")).skip(2).copied().collect();
            if let Some(key) = key_in(&after[..after.len().min(1)]) {
                flags.insert(key, flag.to_string());
                last = None;
            }
        } else if let (Some(flag), Some(key)) = (last.take(), key_in(&words[..words.len().min(1)])) {
            flags.insert(key, flag);
        }
    }
    for (key, (variable, flag)) in &rows {
        let want = format!("DISTILSERVE_{}", key.replace('.', "__").to_uppercase());
        assert_eq!(variable, &want, "{key}");
        let expected = flags.get(key).map(String::as_str).unwrap_or("-");
        assert_eq!(flag, expected, "{key}: the reference says {flag}, serve --help {expected}");
    }
    assert!(flags.keys().all(|k| rows.contains_key(k)), "flags of keys the reference lacks: {flags:?}");
}

/// Every relative link in the front page, CONTRIBUTING.md and `docs/` names a
/// file that exists (and, with `#anchor`, a heading of that page): pages were
/// split and moved, and a link left behind fails here, not in a reader's hands.
#[test]
fn every_relative_link_in_the_docs_resolves() {
    fn anchors(markdown: &str) -> Vec<String> {
        let mut fenced = false;
        let mut out = Vec::new();
        for line in markdown.lines() {
            if line.starts_with("```") {
                fenced = !fenced;
            }
            if let (false, Some(title)) = (fenced, line.trim_start_matches('#').strip_prefix(' ')) {
                if line.starts_with('#') {
                    // GitHub's rule: lower case, spaces to '-', other punctuation dropped.
                    let slug: String = title
                        .to_lowercase()
                        .chars()
                        .filter_map(|c| match c {
                            ' ' => Some('-'),
                            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                            _ => None,
                        })
                        .collect();
                    out.push(slug);
                }
            }
        }
        out
    }
    let root = common::repo_path("");
    let mut pages = vec![root.join("README.md"), root.join("CONTRIBUTING.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    assert!(pages.len() >= 10, "README, CONTRIBUTING and at least 8 pages in docs/: {pages:?}");
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        // `[text](target)`: what follows each "](" up to ")" or a space.
        let targets = text.split("](").skip(1).filter_map(|rest| {
            let end = rest.find([')', ' ', '\n'])?;
            rest[end..].starts_with(')').then(|| &rest[..end])
        });
        for target in targets {
            if target.starts_with("http://") || target.starts_with("https://") || target.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = target.split_once('#').map_or((target, None), |(f, a)| (f, Some(a)));
            let resolved = if file.is_empty() { page.clone() } else { page.parent().unwrap().join(file) };
            if !resolved.exists() {
                broken.push(format!("{}: {target} (no such file)", page.display()));
                continue;
            }
            if let Some(anchor) = anchor {
                let linked = std::fs::read_to_string(&resolved).unwrap_or_default();
                if !anchors(&linked).iter().any(|a| a == anchor) {
                    broken.push(format!("{}: {target} (no such heading)", page.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links: {broken:#?}");
}
