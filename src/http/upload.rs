//! The body of `POST /heads` as an extractor that picks the format by
//! `Content-Type` (JSON with options, or CSV/JSONL rows with options in the
//! query): decoded one upload at a time on a blocking thread, stopping at the
//! first row past `training.max_examples`, the head's name parsed once.

use axum::body::Bytes;
use axum::extract::{FromRequest, Query, Request};
use axum::http::{header, StatusCode};

use super::error::ApiError;
use super::types::{
    ClassWeightInput, CreateHeadQuery, CreateHeadRequest, ExampleInput, LabelValue, TrainingOptionsInput,
};
use super::AppState;
use crate::config::{ClassWeightOption, LayerSpec, TrainingOptions};
use crate::config::{HeadName, PoolingChoice};
use crate::data::{parse_rows, LabelledRow, RowFormat, RowsError};
use crate::error_code::ErrorCode;
use crate::heads::upload::Example;

/// A pooling option as `PoolingChoice` spells it (its serde names).
fn parse_pooling(value: Option<&str>) -> Result<Option<PoolingChoice>, ApiError> {
    value
        .map(|p| {
            serde_json::from_value(serde_json::Value::String(p.to_string())).map_err(|_| {
                ApiError::new(
                    ErrorCode::InvalidOption,
                    format!("pooling {p:?} is not one of auto, cls, mean, cls_mean"),
                )
            })
        })
        .transpose()
}

/// What splits one label string into several: only for a multi-label upload.
fn separator_of(multi_label: Option<bool>, separator: Option<String>) -> Result<Option<String>, ApiError> {
    match (multi_label.unwrap_or(false), separator) {
        (true, Some(sep)) if sep.is_empty() => {
            Err(ApiError::new(ErrorCode::InvalidOption, "label_separator must not be empty"))
        }
        (true, sep) => Ok(Some(sep.unwrap_or_else(|| "|".into()))),
        (false, Some(_)) => Err(ApiError::new(ErrorCode::InvalidOption, "label_separator needs multi_label: true")),
        (false, None) => Ok(None),
    }
}

/// `options.class_weight` of a JSON body: a name as the query spells it, or weights by label.
fn class_weight_option(input: ClassWeightInput) -> Result<ClassWeightOption, ApiError> {
    Ok(match input {
        ClassWeightInput::Name(name) if !name.contains(':') => name.parse()?,
        ClassWeightInput::Name(name) => {
            return Err(ApiError::new(
                ErrorCode::InvalidOption,
                format!(
                    "class_weight is \"none\", \"balanced\", \"auto\" or an object of weights by label, got {name:?}"
                ),
            ))
        }
        ClassWeightInput::PerLabel(weights) => ClassWeightOption::PerLabel(weights),
    })
}

/// A body of labelled rows, whatever its format: JSON (`T` as a whole),
/// or CSV/JSONL rows with the rest in the query (`T::Query`).
pub trait UploadBody: Sized + Send + 'static {
    type Query: serde::de::DeserializeOwned + Send + 'static;
    /// `Some(reason)` when the query says what a JSON body must say itself.
    fn query_with_json(query: &Self::Query) -> Option<&'static str>;
    fn from_json(body: &[u8], query: Self::Query, max_rows: usize) -> Result<Self, ApiError>;
    fn from_rows(rows: Vec<LabelledRow>, query: Self::Query) -> Result<Self, ApiError>;
}

/// The request of `POST /heads` ([`Creation`]) or `POST /heads/{name}/evaluate`.
pub struct Upload<T>(pub T);

impl<T: UploadBody> FromRequest<AppState> for Upload<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let Query(query) = Query::<T::Query>::try_from_uri(req.uri())
            .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("bad query string: {}", e.body_text())))?;
        let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        let format = match mime.as_str() {
            "application/json" => {
                if let Some(reason) = T::query_with_json(&query) {
                    return Err(ApiError::new(ErrorCode::InvalidRequest, reason));
                }
                None
            }
            "text/csv" => Some(RowFormat::Csv),
            "application/jsonl" | "application/x-ndjson" | "application/jsonlines" => Some(RowFormat::Jsonl),
            _ => {
                return Err(ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    "send the examples as application/json, text/csv or application/jsonl",
                ))
            }
        };
        let body = Bytes::from_request(req, state).await.map_err(|e| {
            let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ErrorCode::PayloadTooLarge
            } else {
                ErrorCode::InvalidRequest
            };
            ApiError::new(code, e.body_text())
        })?;
        // One upload is decoded at a time, on a blocking thread: a body of many
        // tiny rows costs the rows kept (at most training.max_examples), once.
        let _one_upload = state
            .uploads
            .acquire()
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, format!("upload queue closed: {e}")))?;
        let max_examples = state.settings.training.max_examples;
        let decoded = tokio::task::spawn_blocking(move || match format {
            None => T::from_json(&body, query, max_examples),
            Some(format) => T::from_rows(parse_upload_rows(&body, format, max_examples)?, query),
        })
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("decoding failed: {e}")))??;
        Ok(Upload(decoded))
    }
}

fn parse_upload_rows(body: &[u8], format: RowFormat, max_examples: usize) -> Result<Vec<LabelledRow>, ApiError> {
    let text =
        std::str::from_utf8(body).map_err(|_| ApiError::new(ErrorCode::InvalidRequest, "the body is not UTF-8"))?;
    parse_rows(text, format, max_examples).map_err(|e| match e {
        RowsError::TooMany(max) => too_many_examples(max),
        RowsError::Invalid(e) => ApiError::new(ErrorCode::InvalidRequest, format!("{e:#}")),
    })
}

/// A JSON body of at most `max_examples` examples; `what` names it in errors.
/// The examples are counted first, none kept ([`ExampleCount`]): a body of
/// many tiny examples never becomes more than `max_examples` of them in memory.
pub(super) fn parse_json<T: serde::de::DeserializeOwned>(
    body: &[u8],
    max_examples: usize,
    what: &str,
) -> Result<T, ApiError> {
    let not_json =
        |e: serde_json::Error| ApiError::new(ErrorCode::InvalidJson, format!("the body is not valid JSON: {e}"));
    match serde_json::from_slice::<ExampleCount>(body) {
        Ok(ExampleCount { examples: Count(n) }) if n > max_examples => return Err(too_many_examples(max_examples)),
        Err(e) if e.is_syntax() || e.is_eof() => return Err(not_json(e)),
        // Within bounds, or a shape the full parse below names.
        _ => {}
    }
    serde_json::from_slice::<T>(body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            not_json(e)
        } else {
            ApiError::new(ErrorCode::InvalidRequest, format!("the body is not {what}: {e}"))
        }
    })
}

/// The `examples` list of a JSON body, counted without keeping any; every
/// other field skipped.
#[derive(serde::Deserialize)]
struct ExampleCount {
    #[serde(default)]
    examples: Count,
}

#[derive(Default)]
struct Count(usize);

impl<'de> serde::Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Counter;
        impl<'de> serde::de::Visitor<'de> for Counter {
            type Value = usize;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of examples")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
                let mut n = 0;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(n)
            }
        }
        deserializer.deserialize_seq(Counter).map(Count)
    }
}

/// The request, whatever the body's format: name, examples, options.
pub struct Creation {
    pub name: HeadName,
    pub examples: Vec<Example>,
    pub replace: bool,
    pub description: Option<String>,
    pub options: TrainingOptions,
}

fn head_name(name: &str) -> Result<HeadName, ApiError> {
    HeadName::parse(name).map_err(|e| ApiError::new(ErrorCode::InvalidHeadName, e.to_string()))
}

fn too_many_examples(max: usize) -> ApiError {
    ApiError::new(
        ErrorCode::TooManyExamples,
        format!("more than training.max_examples ({max}) examples; reading stopped there"),
    )
}

impl UploadBody for Creation {
    type Query = CreateHeadQuery;

    fn query_with_json(query: &CreateHeadQuery) -> Option<&'static str> {
        (query.name.is_some() || query.alphas.is_some() || query.pooling.is_some() || query.layers.is_some())
            .then_some("with a JSON body, name and options go in the body")
    }

    fn from_json(body: &[u8], _query: CreateHeadQuery, max_examples: usize) -> Result<Creation, ApiError> {
        creation_from_json(parse_json(body, max_examples, "a head to create")?)
    }

    fn from_rows(rows: Vec<LabelledRow>, query: CreateHeadQuery) -> Result<Creation, ApiError> {
        creation_from_rows(rows, query)
    }
}

fn creation_from_json(request: CreateHeadRequest) -> Result<Creation, ApiError> {
    let (options, separator) = options_of(request.options)?;
    Ok(Creation {
        name: head_name(&request.name)?,
        examples: request
            .examples
            .into_iter()
            .map(|ExampleInput { text, text_pair, label, split }| Example {
                text,
                labels: label.written(separator.as_deref()),
                split,
                text_pair,
            })
            .collect(),
        replace: request.replace,
        description: request.description,
        options,
    })
}

/// The training options of either door (a JSON body's `options`, or a CSV or
/// JSONL upload's query read by [`query_options`]) as the search takes them,
/// and the multi-label separator. One conversion: the doors differ only in
/// how they spell lists.
fn options_of(options: TrainingOptionsInput) -> Result<(TrainingOptions, Option<String>), ApiError> {
    let TrainingOptionsInput {
        pooling,
        layers,
        alphas,
        cv_folds,
        test_fraction,
        min_probability,
        class_weight,
        multi_label,
        label_separator,
        alpha_grid,
        time_budget_s,
    } = options;
    let separator = separator_of(multi_label, label_separator)?;
    let layers = layers
        .map(|specs| specs.into_iter().map(LayerSpec::try_from).collect::<Result<Vec<_>, _>>())
        .transpose()
        .map_err(|e| ApiError::new(ErrorCode::InvalidOption, format!("layers: {e}")))?;
    let options = TrainingOptions {
        pooling: parse_pooling(pooling.as_deref())?,
        layers,
        alphas,
        cv_folds,
        test_fraction,
        min_probability,
        class_weight: class_weight.map(class_weight_option).transpose()?,
        multi_label,
        alpha_grid,
        time_budget_s,
        max_iterations: None,
    };
    Ok((options, separator))
}

/// A CSV or JSONL upload's query in the JSON body's form: `layers` written
/// `-1;concat(-2,-1)`, `alphas` `1,10,100`, `class_weight` a name or
/// `label:weight` pairs separated by `;`.
fn query_options(query: &CreateHeadQuery) -> Result<TrainingOptionsInput, ApiError> {
    let alphas = query
        .alphas
        .as_deref()
        .map(|a| a.split(',').map(|v| v.trim().parse::<f64>()).collect::<Result<Vec<_>, _>>())
        .transpose()
        .map_err(|_| ApiError::new(ErrorCode::InvalidOption, "alphas must be comma-separated numbers"))?;
    let class_weight = match query.class_weight.as_deref().map(str::parse::<ClassWeightOption>).transpose()? {
        Some(ClassWeightOption::PerLabel(weights)) => Some(ClassWeightInput::PerLabel(weights)),
        Some(_) => query.class_weight.clone().map(ClassWeightInput::Name),
        None => None,
    };
    Ok(TrainingOptionsInput {
        pooling: query.pooling.clone(),
        layers: query.layers.as_deref().map(|l| l.split(';').map(|s| s.trim().to_string()).collect()),
        alphas,
        cv_folds: query.cv_folds,
        test_fraction: query.test_fraction,
        min_probability: query.min_probability,
        class_weight,
        multi_label: query.multi_label,
        label_separator: query.label_separator.clone(),
        alpha_grid: query.alpha_grid,
        time_budget_s: query.time_budget_s,
    })
}

fn creation_from_rows(rows: Vec<LabelledRow>, query: CreateHeadQuery) -> Result<Creation, ApiError> {
    let (options, separator) = options_of(query_options(&query)?)?;
    let name = query.name.ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            "with a CSV or JSONL body the head's name goes in the query: ?name=...",
        )
    })?;
    Ok(Creation {
        name: head_name(&name)?,
        examples: rows
            .into_iter()
            .map(|r| {
                let labels = match (&separator, <[String; 1]>::try_from(r.labels)) {
                    (Some(sep), Ok([one])) => LabelValue::Name(one).written(Some(sep)),
                    (_, Ok([one])) => vec![one],
                    (_, Err(several)) => several,
                };
                Example { text: r.text, labels, split: r.split, text_pair: r.text_pair }
            })
            .collect(),
        replace: query.replace.unwrap_or(false),
        description: query.description,
        options,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_of_a_csv_upload_and_a_json_body_give_the_same_options() {
        let query = CreateHeadQuery {
            name: Some("x".into()),
            pooling: Some("mean".into()),
            layers: Some("-1; concat(-2,-1)".into()),
            alphas: Some("1, 10,100".into()),
            cv_folds: Some(3),
            test_fraction: Some(0.25),
            min_probability: Some(0.6),
            class_weight: Some("spam:5;ham:1".into()),
            multi_label: Some(true),
            label_separator: Some(";".into()),
            time_budget_s: Some(60.0),
            ..Default::default()
        };
        let body: TrainingOptionsInput = serde_json::from_value(serde_json::json!({
            "pooling": "mean", "layers": ["-1", "concat(-2,-1)"], "alphas": [1, 10, 100], "cv_folds": 3,
            "test_fraction": 0.25, "min_probability": 0.6, "class_weight": {"spam": 5, "ham": 1},
            "multi_label": true, "label_separator": ";", "time_budget_s": 60
        }))
        .unwrap();
        let from_query = options_of(query_options(&query).unwrap()).unwrap();
        assert_eq!(from_query, options_of(body).unwrap());
        assert_eq!(from_query.1.as_deref(), Some(";"));
        let named =
            CreateHeadQuery { class_weight: Some("balanced".into()), alpha_grid: Some(5), ..Default::default() };
        let body: TrainingOptionsInput =
            serde_json::from_value(serde_json::json!({"class_weight": "balanced", "alpha_grid": 5})).unwrap();
        assert_eq!(options_of(query_options(&named).unwrap()).unwrap(), options_of(body).unwrap());
        let bad = CreateHeadQuery { alphas: Some("1,x".into()), ..Default::default() };
        assert_eq!(query_options(&bad).unwrap_err().code, ErrorCode::InvalidOption);
    }

    #[test]
    fn a_json_body_is_refused_past_its_examples_before_any_is_kept() {
        let body = |n: usize| {
            let examples = vec![serde_json::json!({"text": "t", "label": "a"}); n];
            serde_json::to_vec(&serde_json::json!({"name": "x", "examples": examples})).unwrap()
        };
        let parsed: CreateHeadRequest = parse_json(&body(5), 5, "a head").unwrap();
        assert_eq!(parsed.examples.len(), 5);
        let refused = parse_json::<CreateHeadRequest>(&body(6), 5, "a head").unwrap_err();
        assert_eq!((refused.code, refused.status().as_u16()), (ErrorCode::TooManyExamples, 413));
        // Counted whatever they hold: six of anything are six too many.
        let odd = br#"{"name": "x", "examples": [1, 2, "3", null, {}, []]}"#;
        assert_eq!(parse_json::<CreateHeadRequest>(odd, 5, "a head").unwrap_err().code, ErrorCode::TooManyExamples);
        let cut = &body(3)[..20];
        assert_eq!(parse_json::<CreateHeadRequest>(cut, 5, "a head").unwrap_err().code, ErrorCode::InvalidJson);
        let not_a_list = br#"{"name": "x", "examples": "many"}"#;
        let wrong = parse_json::<CreateHeadRequest>(not_a_list, 5, "a head").unwrap_err();
        assert_eq!(wrong.code, ErrorCode::InvalidRequest, "{}", wrong.message);
        assert!(wrong.message.starts_with("the body is not a head"), "{}", wrong.message);
    }
}
