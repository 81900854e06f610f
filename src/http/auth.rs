//! Bearer keys, compared in constant time: the optional API key on inference
//! routes (and on operational routes when asked), and the admin key on routes
//! that change what the service serves (off, 403, until one is configured).

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::AppState;
use crate::error_code::ErrorCode;

/// Equal digests, compared without an early exit: the time taken does not
/// depend on where a guess first differs, nor on the key's length.
fn same_key(given: &str, expected: &str) -> bool {
    let (a, b) = (Sha256::digest(given.as_bytes()), Sha256::digest(expected.as_bytes()));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
}

fn unauthorized(message: &'static str) -> Response {
    let mut response = ApiError::new(ErrorCode::Unauthorized, message).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Whether a request may use the inference routes: no API key is set, or it sends it.
pub fn has_api_key(state: &AppState, headers: &HeaderMap) -> bool {
    let expected = &state.settings.security.api_key;
    expected.is_empty() || bearer(headers).is_some_and(|key| same_key(key, expected))
}

pub async fn require_api_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if has_api_key(&state, request.headers()) {
        next.run(request).await
    } else {
        unauthorized("a valid API key is required: send `Authorization: Bearer <key>`")
    }
}

/// Routes that change what the service serves need `security.admin_key`;
/// with none configured they are off (403), as model control is in Triton.
pub async fn require_admin_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let expected = &state.settings.security.admin_key;
    if expected.is_empty() {
        return ApiError::new(
            ErrorCode::AdminDisabled,
            "this route changes what the service serves and is off: set security.admin_key \
             (DISTILSERVE_SECURITY__ADMIN_KEY) and send `Authorization: Bearer <admin key>`",
        )
        .into_response();
    }
    match bearer(request.headers()) {
        Some(key) if same_key(key, expected) => next.run(request).await,
        _ => unauthorized("the admin key is required: send `Authorization: Bearer <admin key>`"),
    }
}

#[cfg(test)]
mod tests {
    use super::same_key;

    #[test]
    fn keys_compare_by_content() {
        assert!(same_key("s3cret", "s3cret"));
        assert!(!same_key("s3cret", "s3creT"));
        assert!(!same_key("", "s3cret"));
        assert!(!same_key("s3cret-and-more", "s3cret"));
    }
}
