//! The one place where errors become HTTP answers: a status, a stable code and
//! a message, always as `{"error": {"code", "message"}}`.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::batching::BatchError;
use crate::cost::CostError;
use crate::heads::upload::UploadError;
use crate::inference::InferenceError;
use crate::tokenize::TokenizeError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
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
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Refusals (503 overloaded, starting, draining) are intended answers, counted in
        // /metrics and warned about once per interval by the queue, not logged one by one.
        if self.status.is_server_error() && self.status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let body = ErrorResponse { error: ErrorDetail { code: self.code.to_string(), message: self.message } };
        let mut response = (self.status, Json(body)).into_response();
        if matches!(self.status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS) {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let (status, code) = match &rejection {
            JsonRejection::JsonSyntaxError(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            JsonRejection::JsonDataError(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
            JsonRejection::MissingJsonContentType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            _ => (rejection.status(), "invalid_request"),
        };
        ApiError::new(status, code, rejection.body_text())
    }
}

impl From<TokenizeError> for ApiError {
    fn from(e: TokenizeError) -> Self {
        let code = match e {
            TokenizeError::TooLong { .. } => "input_too_long",
            TokenizeError::Failed { .. } => "invalid_input",
        };
        ApiError::invalid(code, e.to_string())
    }
}

impl From<BatchError> for ApiError {
    fn from(e: BatchError) -> Self {
        let (status, code) = match e {
            BatchError::QueueFull { .. } | BatchError::QueueFullTokens { .. } | BatchError::QueueWait { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "overloaded")
            }
            BatchError::TooManyTokens { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_many_tokens"),
            BatchError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            BatchError::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
            BatchError::WorkerPanicked => (StatusCode::INTERNAL_SERVER_ERROR, "worker_panicked"),
            // ONNX Runtime's own text stays in the log (with the worker's error line).
            BatchError::Inference(_) => {
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "inference_failed",
                    "the model call failed; the details are in the service log",
                )
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> Self {
        let status = if e.too_large { StatusCode::PAYLOAD_TOO_LARGE } else { StatusCode::UNPROCESSABLE_ENTITY };
        ApiError::new(status, e.code, e.message)
    }
}

impl From<CostError> for ApiError {
    fn from(e: CostError) -> Self {
        let code = match e {
            CostError::Answer { .. } => "response_too_large",
            CostError::Memory { .. } => "request_too_costly",
        };
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, code, e.to_string())
    }
}

impl From<InferenceError> for ApiError {
    fn from(e: InferenceError) -> Self {
        match e {
            InferenceError::Tokenize(e) => e.into(),
            InferenceError::Batch(e) => e.into(),
            InferenceError::Cost(e) => e.into(),
            e @ InferenceError::TooMuchWork { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_much_work", e.to_string())
            }
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
