//! HTTP surface: shared state, the router with its middleware, and the
//! OpenAPI document. Handlers live in one file per concern.

pub mod classify;
pub mod embed;
pub mod error;
pub mod meta;
pub mod types;

use std::ops::Deref;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa::OpenApi;

use crate::config::Settings;
use crate::heads::Heads;
use crate::inference::Inference;
use error::ApiError;

pub struct AppInner {
    pub inference: Inference,
    pub heads: Heads,
    pub settings: Settings,
    /// Set on shutdown: health answers 503 so load balancers stop sending.
    pub draining: AtomicBool,
}

/// Cheap to clone; handed to every handler.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

impl AppState {
    pub fn new(inference: Inference, heads: Heads, settings: Settings) -> Self {
        AppState(Arc::new(AppInner { inference, heads, settings, draining: AtomicBool::new(false) }))
    }

    /// When a request arriving now must be answered by.
    pub fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.settings.server.request_timeout_ms)
    }
}

impl Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "distilserve", description = "Last hidden states and classification heads of BERT-family encoders"),
    paths(embed::embed, classify::classify, classify::list_heads, classify::get_head, meta::health, meta::info),
    components(schemas(error::ErrorResponse)),
    tags((name = "inference", description = "Model passes"), (name = "service", description = "Health and description"))
)]
pub struct ApiDoc;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole HTTP application; tests drive it with `tower::ServiceExt::oneshot`.
pub fn router(state: AppState) -> Router {
    let max_body = state.settings.server.max_body_bytes;
    Router::new()
        .route("/embed", post(embed::embed))
        .route("/classify", post(classify::classify))
        .route("/heads", get(classify::list_heads))
        .route("/heads/{name}", get(classify::get_head))
        .route("/health", get(meta::health))
        .route("/info", get(meta::info))
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .fallback(|| async { ApiError::not_found("no such route; see /openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(CatchPanicLayer::custom(|_panic: Box<dyn std::any::Any + Send>| {
            axum::response::IntoResponse::into_response(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            ))
        }))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    let id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
                    tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
                })
                // One access-log line per request; refusals (503) are answers, not
                // failures, and real 500s are logged where they happen (ApiError).
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO))
                .on_failure(()),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}
