//! The names and choices settings are made of, each parsed once: a head's
//! name, its kind, pooling and layers.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    /// Logistic regression on pooled hidden states, trained by distilserve.
    Logistic,
    /// A pre-trained ONNX sequence classifier (logits output).
    Onnx,
}

impl HeadKind {
    /// Its name in settings and answers (`logistic`, `onnx`).
    pub fn as_str(self) -> &'static str {
        match self {
            HeadKind::Logistic => "logistic",
            HeadKind::Onnx => "onnx",
        }
    }
}

/// Pooling of a logistic head as a setting: one of `pooling::FeaturePooling`,
/// or `auto` to let the search choose among them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum PoolingChoice {
    Auto,
    Cls,
    Mean,
    #[value(name = "cls_mean")]
    ClsMean,
}

/// How several hidden states become one vector per token (`layers::LayerSelection`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LayerCombine {
    /// Element-wise mean: the hidden size stays the same.
    #[default]
    Mean,
    /// Side by side, in the order asked: hidden size x number of layers.
    Concat,
}

impl LayerCombine {
    pub fn as_str(self) -> &'static str {
        match self {
            LayerCombine::Mean => "mean",
            LayerCombine::Concat => "concat",
        }
    }
}

/// One layer option of a head's search, written `"-1"`, `"mean(-4,-3,-2,-1)"`
/// or `"concat(-2,-1)"`: hidden-state indices (0 the embeddings, negative from
/// the end) and how several combine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LayerSpec {
    pub indices: Vec<i64>,
    pub combine: LayerCombine,
}

impl TryFrom<String> for LayerSpec {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let t = text.trim();
        let (combine, list) = if let Some(rest) = t.strip_prefix("mean(") {
            (LayerCombine::Mean, rest.strip_suffix(')'))
        } else if let Some(rest) = t.strip_prefix("concat(") {
            (LayerCombine::Concat, rest.strip_suffix(')'))
        } else {
            (LayerCombine::Mean, Some(t))
        };
        let bad = || format!("layer option {text:?}: write \"-1\", \"mean(-4,-3,-2,-1)\" or \"concat(-2,-1)\"");
        let indices = list
            .ok_or_else(bad)?
            .split(',')
            .map(|i| i.trim().parse::<i64>().map_err(|_| bad()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LayerSpec { indices, combine })
    }
}

impl From<LayerSpec> for String {
    fn from(spec: LayerSpec) -> String {
        spec.to_string()
    }
}

impl std::fmt::Display for LayerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> = self.indices.iter().map(i64::to_string).collect();
        match list.as_slice() {
            [one] => f.write_str(one),
            _ => write!(f, "{}({})", self.combine.as_str(), list.join(",")),
        }
    }
}

/// The layer options every logistic head's search tries unless told otherwise.
pub fn default_layer_options() -> Vec<LayerSpec> {
    ["-1", "mean(-4,-3,-2,-1)", "concat(-2,-1)"]
        .into_iter()
        .map(|s| LayerSpec::try_from(s.to_string()).expect("valid"))
        .collect()
}

/// A head's name, checked by one rule wherever one comes in (settings,
/// `POST /heads`, rollback and delete, the heads folder's listing, the files
/// of a head): 1-64 ASCII letters, digits, '_' or '-', not starting with '-'.
/// It names files in the heads folder, a URL segment and a metrics label; the
/// paths of a head's files are made from it only ([`HeadName::file_in`]), so
/// none can leave its folder. The heads folder ([`crate::heads::store::HeadStore`])
/// and trainings take only `HeadName`s; maps keyed by it are looked up by `&str`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HeadName(String);

impl std::ops::Deref for HeadName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// As the string (messages write `{name:?}`).
impl std::fmt::Debug for HeadName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl std::borrow::Borrow<str> for HeadName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for HeadName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The one wording of the rule, for every place that refuses a name.
#[derive(Debug, thiserror::Error)]
#[error("head name {0:?} must be 1-64 letters, digits, '_' or '-', not starting with '-'")]
pub struct InvalidHeadName(pub String);

impl HeadName {
    pub fn parse(name: &str) -> Result<HeadName, InvalidHeadName> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            && !name.starts_with('-');
        if valid {
            Ok(HeadName(name.to_string()))
        } else {
            Err(InvalidHeadName(name.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `<dir>/<name><suffix>`.
    pub fn file_in(&self, dir: &Path, suffix: &str) -> PathBuf {
        dir.join(format!("{}{suffix}", self.0))
    }
}

/// `classify.model_file = "auto"`: [`QUANTISED_GRAPH`] where exported and the
/// model runs on the CPU.
pub const AUTO_HEADS_GRAPH: &str = "auto";
/// The int8 graph `scripts/export_model.py` writes beside `model.onnx`.
pub const QUANTISED_GRAPH: &str = "model.int8.onnx";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_kinds_name_in_answers_is_its_name_in_settings() {
        for kind in [HeadKind::Logistic, HeadKind::Onnx] {
            assert_eq!(serde_json::to_value(kind).unwrap(), serde_json::json!(kind.as_str()));
        }
    }

    #[test]
    fn head_names_are_parsed_once_with_one_rule() {
        for good in ["sentiment", "a", "topics_v2", "x-y", &"n".repeat(64)] {
            let name = HeadName::parse(good).unwrap();
            assert_eq!(name.as_str(), good);
            assert_eq!(name.file_in(Path::new("/heads"), ".json"), PathBuf::from(format!("/heads/{good}.json")));
        }
        for bad in ["", "-x", "../etc", "a/b", "a.b", "é", "a b", &"n".repeat(65)] {
            let refused = HeadName::parse(bad).unwrap_err();
            assert_eq!(
                refused.to_string(),
                format!("head name {bad:?} must be 1-64 letters, digits, '_' or '-', not starting with '-'")
            );
        }
    }
}
