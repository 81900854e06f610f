//! What several families' bodies share: texts in one or a list, and fields
//! read as the number sent (probabilities, whole numbers, objects).

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

/// One text or a list of texts.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Inputs {
    One(String),
    Many(Vec<String>),
}

// Written by hand: the derived schema would not say that texts and the list
// must be non-empty, which the service enforces (422 `empty_input`).
impl utoipa::PartialSchema for Inputs {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
        let text = || ObjectBuilder::new().schema_type(Type::String).min_length(Some(1));
        OneOfBuilder::new()
            .item(text().description(Some("One text")))
            .item(ArrayBuilder::new().items(text()).min_items(Some(1)).description(Some("Texts, in order")))
            .into()
    }
}

impl ToSchema for Inputs {}

impl<'de> Deserialize<'de> for Inputs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A hand-written message: serde's untagged-enum error names no types.
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(Inputs::One(s)),
            serde_json::Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    serde_json::Value::String(s) => Ok(s),
                    other => Err(serde::de::Error::custom(format!(
                        "inputs[{i}] must be a string, found {}",
                        json_type(&other)
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Inputs::Many),
            other => Err(serde::de::Error::custom(format!(
                "inputs must be a string or a list of strings, found {}",
                json_type(&other)
            ))),
        }
    }
}

/// Inputs of the corpus routes (OpenAI's `input`, TEI's `inputs`): a text, a
/// list of texts, one sequence of the model's own token ids, or a list of such
/// sequences (texts and id lists may be mixed, as TEI allows).
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingInputs(pub Vec<crate::inference::CorpusItem>);

impl utoipa::PartialSchema for EmbeddingInputs {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
        let text = || ObjectBuilder::new().schema_type(Type::String).min_length(Some(1));
        let id = || ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0));
        let ids = || ArrayBuilder::new().items(id()).min_items(Some(1));
        OneOfBuilder::new()
            .item(text().description(Some("One text")))
            .item(
                ArrayBuilder::new()
                    .items(OneOfBuilder::new().item(text()).item(ids()))
                    .min_items(Some(1))
                    .description(Some("Texts, or token-id sequences, in order")),
            )
            .item(ids().description(Some("One sequence of the model's token ids (as /tokenize gives them)")))
            .into()
    }
}

impl ToSchema for EmbeddingInputs {}

impl<'de> Deserialize<'de> for EmbeddingInputs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use crate::inference::CorpusItem;
        use serde::de::Error;
        use serde_json::Value;
        let id = |v: &Value, at: &str| -> Result<u32, D::Error> {
            v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| {
                D::Error::custom(format!("{at} must be a token id (a whole number of at least 0), found {v}"))
            })
        };
        match Value::deserialize(d)? {
            Value::String(s) => Ok(EmbeddingInputs(vec![CorpusItem::Text(s)])),
            Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_number) => {
                let ids: Result<Vec<u32>, D::Error> =
                    items.iter().enumerate().map(|(i, v)| id(v, &format!("input[{i}]"))).collect();
                Ok(EmbeddingInputs(vec![CorpusItem::Ids(ids?)]))
            }
            Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(CorpusItem::Text(s)),
                    Value::Array(ids) => ids
                        .iter()
                        .enumerate()
                        .map(|(j, v)| id(v, &format!("input[{i}][{j}]")))
                        .collect::<Result<Vec<_>, _>>()
                        .map(CorpusItem::Ids),
                    other => Err(D::Error::custom(format!(
                        "input[{i}] must be a string or a list of token ids, found {}",
                        json_type(&other)
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(EmbeddingInputs),
            other => Err(D::Error::custom(format!(
                "input must be a string, a list of strings, or token ids, found {}",
                json_type(&other)
            ))),
        }
    }
}

pub(crate) fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

impl Inputs {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Inputs::One(s) => vec![s],
            Inputs::Many(v) => v,
        }
    }
}

pub(crate) fn yes() -> bool {
    true
}

/// An optional probability, checked as the number sent: as an `f32` a value
/// just past 1 (1.0000000000000002) would round into range.
pub(crate) fn probability<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<f32>, D::Error> {
    use serde::de::Error;
    match Option::<f64>::deserialize(deserializer)? {
        Some(p) if (0.0..=1.0).contains(&p) => Ok(Some(p as f32)),
        Some(p) => Err(D::Error::custom(format!("min_probability must be between 0 and 1, got {p}"))),
        None => Ok(None),
    }
}

/// An optional nested object, refused in serde's other form of a struct (a list).
pub(crate) fn object<'de, D: serde::Deserializer<'de>, T: serde::de::DeserializeOwned>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Value>::deserialize(deserializer)? {
        None => Ok(None),
        Some(v @ serde_json::Value::Object(_)) => serde_json::from_value(v).map(Some).map_err(D::Error::custom),
        Some(other) => Err(D::Error::custom(format!("expected an object, found {}", json_type(&other)))),
    }
}

/// An optional whole number written as JSON allows (`8` or `8.0`, as JSON
/// Schema's `integer` does); values past `usize` saturate.
pub(crate) fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<usize>, D::Error> {
    use serde::de::Error;
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else { return Ok(None) };
    if let Some(n) = number.as_u64() {
        return Ok(Some(usize::try_from(n).unwrap_or(usize::MAX)));
    }
    match number.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 => {
            Ok(Some(if f >= usize::MAX as f64 { usize::MAX } else { f as usize }))
        }
        _ => Err(D::Error::custom(format!("expected a whole number of at least 0, got {number}"))),
    }
}
