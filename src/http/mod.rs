//! HTTP surface: shared state, the router with its middleware, and the
//! OpenAPI document. Handlers live in one file per concern.

pub mod auth;
pub mod classify;
pub mod embed;
pub mod error;
pub mod evaluate;
pub mod heads;
pub mod heads_admin;
pub mod meta;
pub mod openai;
pub mod overload;
pub mod tei;
pub mod tokenize;
pub mod types;
pub mod upload;

use std::ops::Deref;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa::OpenApi;

use crate::config::Settings;
use crate::error_code::ErrorCode;
use crate::heads::jobs::{Trainer, TrainingJobs};
use crate::heads::store::HeadStore;
use crate::heads::Heads;
use crate::inference::{Inference, Timing};
use crate::metrics::Metrics;
use crate::runtimes::Runtimes;
use error::ApiError;

pub struct AppInner {
    /// The encoder and the ONNX heads' runtimes.
    pub runtimes: Arc<Runtimes>,
    pub heads: Arc<Heads>,
    /// The heads folder: versions, rollback, delete.
    pub store: HeadStore,
    /// Heads being trained over the API (`POST /heads`).
    pub jobs: TrainingJobs,
    pub settings: Settings,
    /// Set on shutdown: health answers 503 so load balancers stop sending.
    pub draining: AtomicBool,
    /// Set until the warm-up (`model.warm_up`) is done: not ready meanwhile.
    pub warming: AtomicBool,
    pub metrics: Arc<Metrics>,
    /// Routes that change the served heads run one at a time.
    pub admin_lock: tokio::sync::Mutex<()>,
    /// Uploads to `POST /heads` are decoded one at a time (their memory is bounded).
    pub uploads: tokio::sync::Semaphore,
    /// Spaces out refusals past `limits.immediate_refusals_per_second`.
    pub refusals: overload::RefusalPacer,
}

/// Cheap to clone; handed to every handler.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

/// Whether the service should get traffic: the one answer `/health/ready`,
/// `/tei/health` and the `distilserve_ready` metric give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Heads still training at startup, or the model warming up.
    Starting,
    /// Shutting down: load balancers should stop sending.
    Draining,
    /// An inference worker died: requests to it would fail (liveness says restart).
    WorkerDead,
}

impl Readiness {
    /// The `status` the health routes answer.
    pub fn status(self) -> &'static str {
        match self {
            Readiness::Ready => "ok",
            Readiness::Starting => "starting",
            Readiness::Draining => "draining",
            Readiness::WorkerDead => "worker_dead",
        }
    }
}

impl AppState {
    /// Never runs the model: a probe must stay cheap when the encoder is saturated.
    pub fn readiness(&self) -> Readiness {
        if self.draining.load(std::sync::atomic::Ordering::Relaxed) {
            Readiness::Draining
        } else if !self.heads.ready() || self.warming.load(std::sync::atomic::Ordering::Relaxed) {
            Readiness::Starting
        } else if self.runtimes.health().dead > 0 {
            Readiness::WorkerDead
        } else {
            Readiness::Ready
        }
    }

    pub fn new(runtimes: Arc<Runtimes>, heads: Heads, settings: Settings, metrics: Arc<Metrics>) -> Self {
        let heads = Arc::new(heads);
        let store = HeadStore::of(&settings);
        let jobs = TrainingJobs::start(Trainer {
            runtimes: runtimes.clone(),
            heads: heads.clone(),
            store: store.clone(),
            settings: settings.training.clone(),
            metrics: metrics.clone(),
        });
        AppState(Arc::new(AppInner {
            runtimes,
            heads,
            store,
            jobs,
            draining: AtomicBool::new(false),
            warming: AtomicBool::new(false),
            metrics,
            admin_lock: tokio::sync::Mutex::new(()),
            uploads: tokio::sync::Semaphore::new(1),
            refusals: overload::RefusalPacer::new(
                settings.limits.immediate_refusals_per_second,
                settings.server.max_connections,
            ),
            settings,
        }))
    }

    /// State over any encoders that `info` describes, and no heads:
    /// `router(state)` is then the whole HTTP application without ONNX Runtime
    /// (tests drive it with `tower::ServiceExt::oneshot`, the fuzz target too).
    pub fn with_forward_passes<E: crate::forward::ForwardPass + 'static>(
        info: crate::model::ModelInfo,
        tokenizer: crate::tokenize::TextTokenizer,
        encoders: Vec<E>,
        settings: Settings,
    ) -> Self {
        let metrics = Arc::new(Metrics::new());
        let batching = crate::batching::BatcherConfig::new(&settings.batching, &settings.limits);
        let runtime_metrics = metrics.runtime(crate::runtimes::ENCODER);
        let encoder = Inference::with_forward_passes(
            Arc::new(info),
            Arc::new(tokenizer),
            encoders,
            batching.clone(),
            runtime_metrics,
        );
        let runtimes = Arc::new(Runtimes::with_encoder(encoder, batching, metrics.clone()));
        AppState::new(runtimes, Heads::new(String::new(), Vec::new()), settings, metrics)
    }

    /// The encoder's runtime (`model.file`: tokenizer, queue, workers), what
    /// `/embed` and `/tokenize` use.
    pub fn encoder_runtime(&self) -> &Inference {
        &self.runtimes.encoder
    }

    /// The graph new logistic heads are trained on (`classify.model_file`;
    /// the encoder's when that is not set): [`Runtimes::training_graph`].
    pub fn training_graph(&self) -> &Inference {
        self.runtimes.training_graph()
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
    paths(
        embed::embed,
        classify::classify,
        heads::list_heads,
        heads::get_head,
        heads::confusion_svg,
        heads::suspects,
        evaluate::evaluate,
        heads_admin::create_head,
        heads_admin::rollback_head,
        heads_admin::delete_head,
        heads_admin::reload_head,
        tokenize::tokenize,
        openai::embeddings,
        openai::embeddings_alias,
        openai::tei_embeddings,
        openai::tei_v1_embeddings,
        tei::root,
        tei::embed,
        tei::embed_all,
        tei::predict,
        tei::head_classify,
        tei::head_predict,
        tei::head_info,
        tei::tokenize,
        tei::decode,
        tei::info,
        tei::health,
        meta::ready,
        meta::health,
        meta::live,
        meta::metrics,
        meta::tei_metrics,
        meta::info
    ),
    components(schemas(error::ErrorResponse)),
    modifiers(&BearerAuth),
    tags(
        (name = "inference", description = "Model passes"),
        (name = "heads", description = "Classification heads: list, inspect; with the admin key create from labelled examples, roll back, delete"),
        (name = "service", description = "Health and description"),
        (name = "tei", description = "Text Embeddings Inference's API under /tei (docs/api.md, \"Moving from TEI\"); /tei/embeddings and /tei/v1/embeddings are the OpenAI routes, /tei/metrics is /metrics")
    )
)]
pub struct ApiDoc;

/// Documents the optional bearer API key (`security.api_key`).
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("Required on inference routes when security.api_key is set"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("security.admin_key: required on the routes that change the served heads"))
                    .build(),
            ),
        );
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Which head version answered a `/classify` request.
pub const HEAD_VERSION: HeaderName = HeaderName::from_static("x-head-version");
/// Which encoder computed an answer: on `/classify`, `/embed` and `/v1/embeddings`.
pub const ENCODER_FINGERPRINT: HeaderName = HeaderName::from_static("x-encoder-fingerprint");

/// `x-tokenize-time-ms`, `x-queue-time-ms`, `x-inference-time-ms` for a response.
pub fn timing_headers(timing: &Timing) -> axum::response::AppendHeaders<Vec<(HeaderName, HeaderValue)>> {
    let ms = |d: Duration| HeaderValue::from_str(&format!("{:.3}", d.as_secs_f64() * 1e3)).expect("digits");
    let mut headers = vec![
        (HeaderName::from_static("x-tokenize-time-ms"), ms(timing.tokenize)),
        (HeaderName::from_static("x-queue-time-ms"), ms(timing.queue)),
        (HeaderName::from_static("x-inference-time-ms"), ms(timing.inference)),
    ];
    if let Some(estimate) = timing.queue_estimate {
        // What admission expected the queue time to be: beside x-queue-time-ms, its error.
        headers.push((HeaderName::from_static("x-queue-estimate-ms"), ms(estimate)));
    }
    axum::response::AppendHeaders(headers)
}

/// Reads the whole request body within `server.body_read_timeout_ms` (408
/// `body_timeout` after) and at most `server.max_body_bytes` (413), so that a
/// client trickling its body cannot hold a connection and a handler open.
async fn read_body_with_deadline(State(state): State<AppState>, request: Request<Body>, next: Next) -> Response {
    let limit = state.settings.server.max_body_bytes;
    read_body_within(&state, request, next, limit).await
}

/// Like [`read_body_with_deadline`] with `training.max_upload_bytes`: for `POST /heads`.
async fn read_upload_with_deadline(State(state): State<AppState>, request: Request<Body>, next: Next) -> Response {
    let limit = state.settings.training.max_upload_bytes;
    read_body_within(&state, request, next, limit).await
}

async fn read_body_within(state: &AppState, request: Request<Body>, next: Next, limit: usize) -> Response {
    let server = &state.settings.server;
    let (parts, body) = request.into_parts();
    let deadline = Duration::from_millis(server.body_read_timeout_ms);
    let bytes = match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_too_large_or_broken)) => {
            return ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("the request body is larger than the limit of {limit} bytes, or was cut off"),
            )
            .into_response()
        }
        Err(_elapsed) => {
            return ApiError::new(
                ErrorCode::BodyTimeout,
                format!("the request body did not arrive within {} ms", deadline.as_millis()),
            )
            .into_response()
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// Counts every answered request by route template (not raw path, which would
/// let clients create unbounded label values) and status.
async fn track_metrics(State(state): State<AppState>, request: Request<Body>, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let response = next.run(request).await;
    state.metrics.record_request(&method, &route, response.status().as_u16(), started.elapsed());
    response
}

/// A client's `x-request-id` is kept only when short and plain (it goes into
/// logs and back into the response); otherwise a UUID replaces it.
async fn keep_plain_request_ids(mut request: Request<Body>) -> Request<Body> {
    if client_request_id(request.headers()).is_none() {
        request.headers_mut().remove(&REQUEST_ID);
    }
    request
}

/// The client's `x-request-id` where it is kept: one value, short and plain.
fn client_request_id(headers: &HeaderMap) -> Option<&HeaderValue> {
    let mut values = headers.get_all(&REQUEST_ID).iter();
    let (first, second) = (values.next()?, values.next());
    let plain = (1..=MAX_REQUEST_ID_LEN).contains(&first.len())
        && first.as_bytes().iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(b));
    (second.is_none() && plain).then_some(first)
}

const MAX_REQUEST_ID_LEN: usize = 128;

/// CORS: off (no headers) unless origins are configured.
fn cors(origins: &[String]) -> CorsLayer {
    if origins.is_empty() {
        return CorsLayer::new();
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([axum::http::Method::GET, axum::http::Method::POST, axum::http::Method::DELETE])
        .allow_headers([
            axum::http::header::CONTENT_TYPE,
            axum::http::header::AUTHORIZATION,
            axum::http::header::ACCEPT,
        ])
        .expose_headers([
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("x-token-counts"),
            HeaderName::from_static("x-inference-time-ms"),
            axum::http::header::LOCATION,
            HEAD_VERSION,
            ENCODER_FINGERPRINT,
        ])
}

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// Everything: one listener (no `server.private_address`).
    All,
    /// Inference, heads to read, health, docs: the public port when a private one is set.
    Public,
    /// `/metrics`, `/info`, the routes that change heads, and health probes.
    Private,
}

/// The whole HTTP application; tests drive it with `tower::ServiceExt::oneshot`.
pub fn router(state: AppState) -> Router {
    router_for(state, Routes::All)
}

/// The application as served over a socket on one listener: [`router_for`],
/// behind the refusal past capacity that comes before routing where the
/// listener serves inference ([`overload::RefuseBeforeRouting`]).
pub fn service_for(state: AppState, routes: Routes) -> overload::RefuseBeforeRouting {
    let serves_inference = routes != Routes::Private;
    overload::RefuseBeforeRouting::new(state.clone(), router_for(state, routes), serves_inference)
}

/// The application as served on one listener: see [`Routes`].
pub fn router_for(state: AppState, routes: Routes) -> Router {
    let max_body = state.settings.server.max_body_bytes;
    let handler_panics = state.metrics.handler_panics.clone();
    let require_key = axum::middleware::from_fn_with_state(state.clone(), auth::require_api_key);
    let require_admin = axum::middleware::from_fn_with_state(state.clone(), auth::require_admin_key);
    // Each group reads the body inside its authentication (route layers run
    // outermost last-added first): a client without the key cannot make the
    // service read, buffer or wait for a body.
    let read_body = axum::middleware::from_fn_with_state(state.clone(), read_body_with_deadline);
    let read_upload = axum::middleware::from_fn_with_state(state.clone(), read_upload_with_deadline);
    // Past capacity, inference requests are refused before their body is read.
    let refuse_when_full = axum::middleware::from_fn_with_state(state.clone(), overload::refuse_when_full);
    let upload = Router::new()
        .route("/heads", post(heads_admin::create_head))
        .route("/heads/{name}/evaluate", post(evaluate::evaluate))
        .route_layer(DefaultBodyLimit::max(state.settings.training.max_upload_bytes))
        .route_layer(read_upload)
        .route_layer(require_admin.clone());
    let admin = Router::new()
        .route("/heads/{name}/reload", post(heads_admin::reload_head))
        .route("/heads/{name}/rollback", post(heads_admin::rollback_head))
        .route("/heads/{name}", axum::routing::delete(heads_admin::delete_head))
        .route("/heads/{name}/suspects", get(heads::suspects))
        .route_layer(read_body.clone())
        .route_layer(require_admin);
    let inference = Router::new()
        .route("/embed", post(embed::embed))
        .route("/classify", post(classify::classify))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/embeddings", post(openai::embeddings))
        .route("/tei", post(tei::root))
        .route("/tei/", post(tei::root))
        .route("/tei/embed", post(tei::embed))
        .route("/tei/embed_all", post(tei::embed_all))
        .route("/tei/predict", post(tei::predict))
        .route("/tei/tokenize", post(tei::tokenize))
        .route("/tei/decode", post(tei::decode))
        .route("/tei/info", get(tei::info))
        .route("/tei/embeddings", post(openai::tei_embeddings))
        .route("/tei/v1/embeddings", post(openai::tei_v1_embeddings))
        .route("/tei/heads/{name}", post(tei::head_classify))
        .route("/tei/heads/{name}/", post(tei::head_classify))
        .route("/tei/heads/{name}/predict", post(tei::head_predict))
        .route("/tei/heads/{name}/info", get(tei::head_info))
        .route("/heads", get(heads::list_heads))
        .route("/heads/{name}", get(heads::get_head))
        .route("/heads/{name}/confusion.svg", get(heads::confusion_svg))
        .route_layer(read_body.clone())
        .route_layer(refuse_when_full)
        .route_layer(require_key.clone());
    let health = Router::new()
        .route("/health", get(meta::health))
        .route("/health/ready", get(meta::ready))
        .route("/health/live", get(meta::live))
        .route("/tei/health", get(tei::health));
    let mut operator = Router::new()
        .route("/metrics", get(meta::metrics))
        .route("/tei/metrics", get(meta::tei_metrics))
        .route("/info", get(meta::info));
    let mut operational = Router::new()
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .route("/", get(meta::playground))
        .route("/docs", get(meta::docs))
        .nest_service(
            "/docs/assets",
            tower_http::services::ServeDir::new(&state.settings.server.docs_dir).not_found_service(
                axum::handler::HandlerWithoutStateExt::into_service(|| async {
                    ApiError::not_found("no such documentation asset")
                }),
            ),
        );
    let mut health = health.route_layer(read_body.clone());
    operator = operator.route_layer(read_body.clone());
    operational = operational.route_layer(read_body);
    if state.settings.security.protect_operational_routes {
        health = health.route_layer(require_key.clone());
        operator = operator.route_layer(require_key.clone());
        operational = operational.route_layer(require_key);
    }
    let served = match routes {
        Routes::All => Router::new().merge(upload).merge(admin).merge(operator).merge(inference).merge(operational),
        Routes::Public => Router::new().merge(inference).merge(operational),
        Routes::Private => Router::new().merge(upload).merge(admin).merge(operator),
    }
    .merge(health);
    served
        .fallback(|| async { ApiError::not_found("no such route; see /openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed on this route")
        })
        .layer(cors(&state.settings.security.cors_allowed_origins))
        // read_body_with_deadline enforces the limit; this lifts axum's own 2 MiB
        // default for the JSON extractor to the configured one.
        .layer(DefaultBodyLimit::max(max_body))
        // Inside the metrics layer, so that a panicking handler's 500 is counted
        // like any answer; the message goes to the log (with the request id of
        // the enclosing span), never to the client.
        .layer(CatchPanicLayer::custom(move |panic: Box<dyn std::any::Any + Send>| {
            handler_panics.inc();
            let message = crate::telemetry::panic_message(&*panic);
            tracing::error!(panic = %message, "handler panicked");
            axum::response::IntoResponse::into_response(ApiError::new(
                ErrorCode::Internal,
                "internal error; the details are in the service log",
            ))
        }))
        .layer(axum::middleware::from_fn_with_state(state.clone(), track_metrics))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    let id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
                    let span = tracing::info_span!(
                        "request",
                        method = %req.method(),
                        path = %req.uri().path(),
                        request_id = %id
                    );
                    crate::telemetry::join_callers_trace(&span, req.headers());
                    span
                })
                // One access-log line per request; refusals (503) are answers, not
                // failures, and real 500s are logged where they happen (ApiError).
                // Overload refusals are logged at debug: at thousands a second
                // the line was 40% of a refusal's CPU, and /metrics counts them.
                .on_response(|response: &Response, latency: Duration, span: &tracing::Span| {
                    use tower_http::trace::OnResponse;
                    let level = if response.extensions().get::<overload::Refusal>().is_some() {
                        tracing::Level::DEBUG
                    } else {
                        tracing::Level::INFO
                    };
                    DefaultOnResponse::new().level(level).on_response(response, latency, span)
                })
                .on_failure(()),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(axum::middleware::map_request(keep_plain_request_ids))
        .with_state(state)
}
