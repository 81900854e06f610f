//! The one place where errors become HTTP answers: a code (its status, TEI
//! type and `Retry-After` are the code's, `crate::error_code`) and a message,
//! always as `{"error": {"code", "message"}}`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::batching::BatchError;
use crate::config::OptionError;
use crate::cost::CostError;
pub use crate::error_code::ErrorCode;
use crate::heads::upload::UploadError;
use crate::inference::InferenceError;
use crate::tokenize::TokenizeError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// `Retry-After` where the refusal knows better than its code's default
    /// (an overloaded queue: its estimated work).
    pub retry_after_seconds: Option<u32>,
}

/// Body of every error response.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_json`, `input_too_long`, `overloaded`.
    pub code: String,
    /// What went wrong and how to fix it.
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), retry_after_seconds: None }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// Its `Retry-After` in seconds, if its code has one.
    pub fn retry_after(&self) -> Option<u32> {
        self.code.retry_after_seconds().map(|default| self.retry_after_seconds.unwrap_or(default))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        log_failure(self.code, &self.message);
        let retry_after = self.retry_after();
        let body = ErrorResponse { error: ErrorDetail { code: self.code.to_string(), message: self.message } };
        with_retry_after(retry_after, (self.code.status(), Json(body)).into_response())
    }
}

/// Logs an error that is a failure of ours; refusals (503 overloaded,
/// starting, draining) are intended answers, counted in /metrics and warned
/// about once per interval by the queue, not logged one by one.
pub(super) fn log_failure(code: ErrorCode, message: &str) {
    let status = code.status();
    if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
        tracing::error!(code = code.as_str(), message = %message, "request failed");
    }
}

/// Adds a `Retry-After` ([`ApiError::retry_after`]), where there is one, to an error answer in any form.
pub(super) fn with_retry_after(seconds: Option<u32>, mut response: Response) -> Response {
    if let Some(seconds) = seconds {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let code = match &rejection {
            JsonRejection::JsonSyntaxError(_) => ErrorCode::InvalidJson,
            JsonRejection::JsonDataError(_) => ErrorCode::InvalidRequest,
            JsonRejection::MissingJsonContentType(_) => ErrorCode::UnsupportedMediaType,
            _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
            // The body could not be read (the client went away mid-body): nobody reads the answer.
            _ => ErrorCode::InvalidRequest,
        };
        ApiError::new(code, rejection.body_text())
    }
}

impl From<TokenizeError> for ApiError {
    fn from(e: TokenizeError) -> Self {
        let code = match e {
            TokenizeError::TooLong { .. } => ErrorCode::InputTooLong,
            TokenizeError::Failed { .. } => ErrorCode::InvalidInput,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<BatchError> for ApiError {
    fn from(e: BatchError) -> Self {
        let code = match e {
            BatchError::QueueFull { .. } | BatchError::QueueFullTokens { .. } | BatchError::QueueWait { .. } => {
                ErrorCode::Overloaded
            }
            BatchError::TooManyTokens { .. } => ErrorCode::TooManyTokens,
            BatchError::ShuttingDown => ErrorCode::ShuttingDown,
            BatchError::DeadlineExceeded => ErrorCode::DeadlineExceeded,
            BatchError::WorkerPanicked => ErrorCode::WorkerPanicked,
            // ONNX Runtime's own text stays in the log (with the worker's error line).
            BatchError::Inference(_) => {
                return ApiError::new(
                    ErrorCode::InferenceFailed,
                    "the model call failed; the details are in the service log",
                )
            }
        };
        ApiError { retry_after_seconds: e.retry_after_seconds(), ..ApiError::new(code, e.to_string()) }
    }
}

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> Self {
        ApiError::new(e.code, e.message)
    }
}

/// A training option out of its bounds (`config::TrainingOptions::resolve`).
impl From<OptionError> for ApiError {
    fn from(e: OptionError) -> Self {
        ApiError::new(ErrorCode::InvalidOption, e.problem)
    }
}

impl From<CostError> for ApiError {
    fn from(e: CostError) -> Self {
        let code = match e {
            CostError::Answer { .. } => ErrorCode::ResponseTooLarge,
            CostError::Memory { .. } => ErrorCode::RequestTooCostly,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<InferenceError> for ApiError {
    fn from(e: InferenceError) -> Self {
        match e {
            InferenceError::Tokenize(e) => e.into(),
            InferenceError::Batch(e) => e.into(),
            InferenceError::Cost(e) => e.into(),
            e @ InferenceError::TooMuchWork { .. } => ApiError::new(ErrorCode::TooMuchWork, e.to_string()),
        }
    }
}

/// `Json<T>` whose rejections (malformed JSON, wrong content type, wrong
/// fields, body too large) come back as our JSON errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Json::<T>::from_request(req, state).await.map(|Json(v)| ApiJson(v)).map_err(ApiError::from)
    }
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}

/// Refusals several routes answer, each declared once for the OpenAPI
/// document: a route lists those it can give (`responses(..., MalformedJson)`),
/// so the same refusal reads the same everywhere.
#[allow(dead_code)] // Only their schemas are used.
pub mod refusals {
    use super::ErrorResponse;

    #[derive(utoipa::IntoResponses)]
    #[response(status = 400, description = "Malformed JSON (`invalid_json`)")]
    pub struct MalformedJson(ErrorResponse);

    #[derive(utoipa::IntoResponses)]
    #[response(status = 415, description = "Content-Type is not application/json (`unsupported_media_type`)")]
    pub struct NotJson(ErrorResponse);

    #[derive(utoipa::IntoResponses)]
    #[response(
        status = 413,
        description = "Over a limit: the body (`payload_too_large`), texts (`too_many_inputs`, limits.max_inputs) or tokens (`too_many_tokens`, limits.max_request_tokens), or the answer (`response_too_large`, limits.max_response_bytes) or the working memory (`request_too_costly`, limits.max_request_memory_bytes) as priced before any work"
    )]
    pub struct OverLimits(ErrorResponse);

    #[derive(utoipa::IntoResponses)]
    #[response(
        status = 503,
        description = "The inference queue is full or holds more work than the request can wait for (`overloaded`), or the service is shutting down (`shutting_down`); retry after the Retry-After seconds"
    )]
    pub struct Overloaded(ErrorResponse);

    #[derive(utoipa::IntoResponses)]
    #[response(status = 504, description = "Not answered within server.request_timeout_ms (`deadline_exceeded`)")]
    pub struct DeadlinePassed(ErrorResponse);

    #[derive(utoipa::IntoResponses)]
    #[response(
        status = 401,
        description = "The admin key is missing or wrong (`Authorization: Bearer <security.admin_key>`)"
    )]
    pub struct NoAdminKey(ErrorResponse);

    #[derive(utoipa::IntoResponses)]
    #[response(
        status = 403,
        description = "Admin routes are off: no security.admin_key is configured (`admin_disabled`)"
    )]
    pub struct AdminOff(ErrorResponse);
}
