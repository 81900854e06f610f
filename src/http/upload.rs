//! The body of `POST /heads` decoded whatever its format (JSON with options,
//! or CSV/JSONL rows with options in the query), stopping at the first row
//! past `training.max_examples`; run on a blocking thread by the handler.

use axum::http::StatusCode;

use super::error::ApiError;
use super::types::{CreateHeadQuery, CreateHeadRequest, ExampleInput, LabelValue, TrainingOptions};
use crate::config::PoolingChoice;
use crate::data::{parse_rows, RowFormat, RowsError};
use crate::heads::upload::{Example, Options};

fn parse_pooling(value: Option<&str>) -> Result<Option<PoolingChoice>, ApiError> {
    value
        .map(|p| match p {
            "auto" => Ok(PoolingChoice::Auto),
            "cls" => Ok(PoolingChoice::Cls),
            "mean" => Ok(PoolingChoice::Mean),
            "cls_mean" => Ok(PoolingChoice::ClsMean),
            other => Err(ApiError::invalid(
                "invalid_option",
                format!("pooling {other:?} is not one of auto, cls, mean, cls_mean"),
            )),
        })
        .transpose()
}

/// The request, whatever the body's format: name, examples, options.
pub(super) struct Creation {
    pub(super) name: String,
    pub(super) examples: Vec<Example>,
    pub(super) replace: bool,
    pub(super) description: Option<String>,
    pub(super) options: Options,
}

fn too_many_examples(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_many_examples",
        format!("more than training.max_examples ({max}) examples; reading stopped there"),
    )
}

pub(super) fn from_json(body: &[u8], max_examples: usize) -> Result<Creation, ApiError> {
    super::types::MAX_EXAMPLES.with(|m| m.set(max_examples));
    let parsed = serde_json::from_slice::<CreateHeadRequest>(body);
    super::types::MAX_EXAMPLES.with(|m| m.set(usize::MAX));
    let request: CreateHeadRequest = parsed.map_err(|e| {
        if e.to_string().starts_with(super::types::TOO_MANY_EXAMPLES) {
            too_many_examples(max_examples)
        } else if e.is_syntax() || e.is_eof() {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("the body is not valid JSON: {e}"))
        } else {
            ApiError::invalid("invalid_request", format!("the body is not a head to create: {e}"))
        }
    })?;
    let TrainingOptions { pooling, alphas, cv_folds, test_fraction, min_probability } = request.options;
    Ok(Creation {
        name: request.name,
        examples: request
            .examples
            .into_iter()
            .map(|ExampleInput { text, label, split }| Example {
                text,
                label: match label {
                    LabelValue::Name(n) => n,
                    LabelValue::Index(i) => i.to_string(),
                },
                split,
            })
            .collect(),
        replace: request.replace,
        description: request.description,
        options: Options {
            pooling: parse_pooling(pooling.as_deref())?,
            alphas,
            cv_folds,
            test_fraction,
            min_probability,
        },
    })
}

pub(super) fn from_rows(
    body: &[u8],
    format: RowFormat,
    query: CreateHeadQuery,
    max_examples: usize,
) -> Result<Creation, ApiError> {
    let name = query.name.ok_or_else(|| {
        ApiError::invalid("invalid_request", "with a CSV or JSONL body the head's name goes in the query: ?name=...")
    })?;
    let text = std::str::from_utf8(body).map_err(|_| ApiError::invalid("invalid_request", "the body is not UTF-8"))?;
    let rows = parse_rows(text, format, max_examples).map_err(|e| match e {
        RowsError::TooMany(max) => too_many_examples(max),
        RowsError::Invalid(e) => ApiError::invalid("invalid_request", format!("{e:#}")),
    })?;
    let alphas = query
        .alphas
        .map(|a| a.split(',').map(|v| v.trim().parse::<f64>()).collect::<Result<Vec<_>, _>>())
        .transpose()
        .map_err(|_| ApiError::invalid("invalid_option", "alphas must be comma-separated numbers"))?;
    Ok(Creation {
        name,
        examples: rows.into_iter().map(|r| Example { text: r.text, label: r.label, split: r.split }).collect(),
        replace: query.replace.unwrap_or(false),
        description: query.description,
        options: Options {
            pooling: parse_pooling(query.pooling.as_deref())?,
            alphas,
            cv_folds: query.cv_folds,
            test_fraction: query.test_fraction,
            min_probability: query.min_probability,
        },
    })
}
