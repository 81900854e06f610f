//! `DISTILSERVE_` variables: those that are no setting stop the start,
//! naming the nearest setting's.

use figment::providers::{Format, Toml};
use figment::Figment;

use super::{ConfigError, DEFAULT_TOML, ENV_PREFIX};

/// `DISTILSERVE_` variables that are not settings (those are
/// `DISTILSERVE_<SECTION>__<KEY>`): the command line's (`--config`, `extract
/// --remote-api-key`), the set-up scripts', `deploy/compose.yaml`'s (the
/// image and the host's port) and the tests'.
pub const OTHER_VARIABLES: &[&str] = &[
    "CONFIG",
    "REMOTE_API_KEY",
    "CACHE",
    "VENV",
    "PYTHON",
    "CLIENTS_PYTHON",
    "IMAGE",
    "PORT",
    "BIN",
    "SKIP_ROOT_TESTS",
    "FAULT_PAUSE_BEFORE_RENAME_MS",
];

/// Refuses a `DISTILSERVE_` variable that is neither a setting's nor one of
/// [`OTHER_VARIABLES`], naming the setting's variable it most likely meant: a
/// `DISTILSERVE_ADMIN_KEY` would otherwise be ignored, and the service start
/// without the key its operator set. (Unknown `SECTION__KEY` names are refused
/// when the settings are read.)
pub(super) fn check_variables(names: impl Iterator<Item = String>) -> Result<(), ConfigError> {
    for name in names {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
        if rest.contains("__") || OTHER_VARIABLES.contains(&rest) || is_service_link(rest) {
            continue;
        }
        return Err(ConfigError::Invalid {
            key: "environment".into(),
            problem: format!(
                "{name} is not a setting's variable (DISTILSERVE_<SECTION>__<KEY>, two underscores) nor one of \
                 DISTILSERVE_{{{}}}; did you mean {}?",
                OTHER_VARIABLES.join(","),
                nearest_variable(rest)
            ),
        });
    }
    Ok(())
}

/// Kubernetes gives a pod variables of every service in its namespace (unless
/// `enableServiceLinks: false`): a service named `distilserve` (or
/// `distilserve-...`) makes `DISTILSERVE_SERVICE_HOST`, `DISTILSERVE_SERVICE_PORT[_NAME]`,
/// `DISTILSERVE_PORT` and `DISTILSERVE_PORT_8080_TCP[_PROTO|_PORT|_ADDR]`. `rest`
/// is the name after the prefix.
fn is_service_link(rest: &str) -> bool {
    let parts: Vec<&str> = rest.split('_').collect();
    let port_link = |p: &[&str]| match p {
        ["PORT"] => true,
        ["PORT", number, protocol, tail @ ..] => {
            number.chars().all(|c| c.is_ascii_digit())
                && ["TCP", "UDP", "SCTP"].contains(protocol)
                && matches!(tail, [] | ["PROTO"] | ["PORT"] | ["ADDR"])
        }
        _ => false,
    };
    (0..parts.len()).any(|start| {
        let p = &parts[start..];
        matches!(p, ["SERVICE", "HOST"]) || p.starts_with(&["SERVICE", "PORT"]) || port_link(p)
    })
}

/// The setting's variable nearest to `wrong` (a key of `config/default.toml`
/// without its section, or misspelt): same key name first, else the fewest edits.
fn nearest_variable(wrong: &str) -> String {
    let defaults: serde_json::Value = Figment::from(Toml::string(DEFAULT_TOML)).extract().expect("the defaults parse");
    let mut variables = Vec::new();
    for (section, table) in defaults.as_object().into_iter().flatten() {
        for (key, value) in table.as_object().into_iter().flatten() {
            if !value.is_object() {
                variables.push((
                    key.to_uppercase(),
                    format!("{ENV_PREFIX}{}__{}", section.to_uppercase(), key.to_uppercase()),
                ));
            }
        }
    }
    let wrong = wrong.to_uppercase();
    let distance = |(key, variable): &(String, String)| {
        if *key == wrong {
            0
        } else {
            1 + edits(&wrong, key).min(edits(&wrong, &variable[ENV_PREFIX.len()..]))
        }
    };
    variables.iter().min_by_key(|v| distance(v)).map(|(_, v)| v.clone()).unwrap_or_default()
}

/// Levenshtein distance.
fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != cb)).min(row[j] + 1).min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `DISTILSERVE_` variable the service does not read stops the start,
    /// naming the variable it most likely meant; the others it knows pass.
    #[test]
    fn variables_that_are_no_setting_are_refused_with_the_nearest_setting() {
        let refused = |name: &str| check_variables(std::iter::once(name.to_string())).unwrap_err().to_string();
        let err = refused("DISTILSERVE_ADMIN_KEY");
        assert!(
            err.contains("DISTILSERVE_ADMIN_KEY") && err.contains("did you mean DISTILSERVE_SECURITY__ADMIN_KEY?"),
            "{err}"
        );
        assert!(refused("DISTILSERVE_HOST").contains("DISTILSERVE_SERVER__HOST?"));
        assert!(refused("DISTILSERVE_LOG_FORMAT").contains("DISTILSERVE_LOGGING__FORMAT?"));
        let known = ["DISTILSERVE_CONFIG", "DISTILSERVE_CACHE", "DISTILSERVE_SERVER__PORT", "PATH", "DISTILSERVEX"];
        assert!(check_variables(known.iter().map(|s| s.to_string())).is_ok());
        // What Kubernetes gives a pod for a service named distilserve (or distilserve-private).
        let links = [
            "DISTILSERVE_SERVICE_HOST",
            "DISTILSERVE_SERVICE_PORT",
            "DISTILSERVE_SERVICE_PORT_HTTP",
            "DISTILSERVE_PORT",
            "DISTILSERVE_PORT_8080_TCP",
            "DISTILSERVE_PORT_8080_TCP_PROTO",
            "DISTILSERVE_PORT_8080_TCP_ADDR",
            "DISTILSERVE_PRIVATE_SERVICE_HOST",
            "DISTILSERVE_PRIVATE_PORT_9090_TCP_PORT",
        ];
        assert!(check_variables(links.iter().map(|s| s.to_string())).is_ok());
        assert!(refused("DISTILSERVE_PORT_NUMBER").contains("did you mean"));
    }
}
