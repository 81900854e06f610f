//! Refusing past capacity at the least cost. Under overload most requests
//! are refused, and clients that retry at once (scripts, `wrk`, a load
//! balancer's retries) send them again straight away: if each refusal costs
//! reading, parsing, tokenizing and pricing the request, the refusals take
//! the CPU the model needs, and a replica past its capacity answers less
//! than one at it (BENCHMARKS.md, "Overload"). So:
//! - [`RefuseBeforeRouting`], the application as served over a socket, asks
//!   the route's queue, before routing and before the body is read, whether
//!   it could admit any request now ([`Inference::refusal_for_any`]); if not,
//!   503 `overloaded` at once (TEI's routes: 429), with a `Retry-After` of the
//!   queue's estimated work. It spares a refusal the layers an answered
//!   request goes through (span, request id, metrics, CORS, routing), and
//!   does their part itself: the request id, the request counter, a debug line;
//! - [`refuse_when_full`], the same decision as a route layer, refuses what
//!   that check passed on (a browser's cross-origin request, whose answer
//!   needs the CORS layer) and serves the application driven without a
//!   socket (`oneshot` in tests);
//! - [`RefusalPacer`]: refusals past `limits.immediate_refusals_per_second`
//!   each wait their turn (at most [`MAX_HOLD`], at most one per connection
//!   the server may hold open waiting) before they are sent, so that a client retrying at once loops no faster
//!   than the budget allows; below it, and when it is 0, a refusal goes at once.
//!
//! A request that passes is still admitted or refused by its own price when
//! it queues; this only spares the work of requests that could not be admitted.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Method, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::future::Either;
use tower::Service;
use tower_http::request_id::{MakeRequestId, MakeRequestUuid};

use super::error::ApiError;
use super::tei::TeiError;
use super::AppState;
use crate::inference::Inference;

/// Longest a refusal is held back.
pub const MAX_HOLD: Duration = Duration::from_secs(1);

/// Held refusals are released on ticks of this length, several per wake-up:
/// on a replica whose model threads keep every core busy, each wake-up of an
/// HTTP thread preempts one of them and stalls the model's parallel operator
/// it was part of, which costs the model more than the refusal costs itself
/// (issue 40: 17% slower model calls under 500 refusals/s on mpnet, 2 vCPUs).
pub const RELEASE_TICK: Duration = Duration::from_millis(10);

/// Spaces refusals out to a budget per second: see the module's comment.
pub struct RefusalPacer {
    /// Time between two refusals at the budget (zero: no budget).
    interval: Duration,
    /// When the next refusal may go at once.
    next_slot: Mutex<Instant>,
    held: AtomicUsize,
    /// Most refusals held at once; past it they go at once. A held refusal
    /// holds its connection, so `server.max_connections`: fewer (256 once)
    /// let the clients past it retry at once, which took the model's CPU, so
    /// the queue admitted fewer, so more were refused at once (a storm of
    /// 4,000-30,000 refusals a second at 1,024 clients on MiniLM).
    max_held: usize,
    /// What release ticks count from.
    epoch: Instant,
}

impl RefusalPacer {
    pub fn new(per_second: u32, max_held: usize) -> RefusalPacer {
        let interval = if per_second == 0 { Duration::ZERO } else { Duration::from_secs(1) / per_second };
        let now = Instant::now();
        RefusalPacer { interval, next_slot: Mutex::new(now), held: AtomicUsize::new(0), max_held, epoch: now }
    }

    /// How long a refusal made now waits before it is sent; takes its slot.
    /// A held refusal goes at the first release tick at or after its slot.
    pub fn hold(&self, now: Instant) -> Duration {
        if self.interval.is_zero() {
            return Duration::ZERO;
        }
        let mut next = self.next_slot.lock().unwrap_or_else(|p| p.into_inner());
        let slot = (*next).max(now);
        // Slots never run further ahead than the longest hold: a flood past it
        // waits the longest hold each, and a quiet spell resets the budget.
        *next = (slot + self.interval).min(now + MAX_HOLD);
        drop(next);
        if slot <= now {
            return Duration::ZERO;
        }
        let tick = RELEASE_TICK.as_nanos();
        let ticks = slot.saturating_duration_since(self.epoch).as_nanos().div_ceil(tick);
        let release = self.epoch + Duration::from_nanos((ticks * tick) as u64);
        release.saturating_duration_since(now).min(MAX_HOLD)
    }

    /// Sends `refusal` after its turn, unless too many are waiting already.
    pub async fn send(&self, refusal: Response) -> Response {
        let wait = self.hold(Instant::now());
        if wait.is_zero() {
            return refusal;
        }
        if self.held.fetch_add(1, Ordering::AcqRel) >= self.max_held {
            self.held.fetch_sub(1, Ordering::AcqRel);
            return refusal;
        }
        let _held = HeldRefusal(&self.held);
        tokio::time::sleep(wait).await;
        refusal
    }
}

/// Counts a held refusal until it is sent or its client goes away.
struct HeldRefusal<'a>(&'a AtomicUsize);

impl Drop for HeldRefusal<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Marks an answer as an overload refusal: its access-log line is at debug.
#[derive(Clone, Copy)]
pub struct Refusal;

/// The form a route's errors take.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Family {
    Native,
    Tei,
}

/// The queue a route's requests go to.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Queue {
    Encoder,
    /// The graph new heads are trained on, which serves the heads (where
    /// every head's comparison chose the exact graph it is closed, and this is
    /// the encoder's). Which head a request names is in its body, not read
    /// yet: a head on another graph, or an ONNX head with its own queue, meets
    /// that queue when it is admitted.
    Heads,
}

/// The inference routes as the router names them (the request counter's
/// label), with their queue and error form. By path: a layer on each route
/// would run after the body is read (route layers wrap it), which is the
/// work this check spares. A new inference route is added here too.
const INFERENCE_ROUTES: [(&str, Queue, Family); 14] = [
    ("/embed", Queue::Encoder, Family::Native),
    ("/v1/embeddings", Queue::Encoder, Family::Native),
    ("/embeddings", Queue::Encoder, Family::Native),
    ("/tei/embeddings", Queue::Encoder, Family::Native),
    ("/tei/v1/embeddings", Queue::Encoder, Family::Native),
    ("/classify", Queue::Heads, Family::Native),
    ("/tei", Queue::Encoder, Family::Tei),
    ("/tei/", Queue::Encoder, Family::Tei),
    ("/tei/embed", Queue::Encoder, Family::Tei),
    ("/tei/embed_all", Queue::Encoder, Family::Tei),
    ("/tei/predict", Queue::Heads, Family::Tei),
    ("/tei/heads/{name}", Queue::Heads, Family::Tei),
    ("/tei/heads/{name}/", Queue::Heads, Family::Tei),
    ("/tei/heads/{name}/predict", Queue::Heads, Family::Tei),
];

/// The inference route a POST to `path` reaches, if any: see [`INFERENCE_ROUTES`].
fn route_of(path: &str) -> Option<(&'static str, Queue, Family)> {
    let route = match path.strip_prefix("/tei/heads/") {
        None => path,
        Some(rest) => {
            let (name, tail) = rest.split_once('/').map_or((rest, None), |(name, tail)| (name, Some(tail)));
            match tail {
                _ if name.is_empty() => return None,
                None => "/tei/heads/{name}",
                Some("") => "/tei/heads/{name}/",
                Some("predict") => "/tei/heads/{name}/predict",
                Some(_) => return None,
            }
        }
    };
    INFERENCE_ROUTES.iter().find(|(known, ..)| *known == route).copied()
}

/// [`route_of`], with the route's queue itself.
fn queue_of<'a>(state: &'a AppState, path: &str) -> Option<(&'static str, &'a Inference, Family)> {
    let (route, queue, family) = route_of(path)?;
    let queue = match queue {
        Queue::Encoder => state.encoder_runtime(),
        Queue::Heads => state.training_graph(),
    };
    Some((route, queue, family))
}

/// Marks a request whose queue [`RefuseBeforeRouting`] asked and that it
/// passed on: the route layer does not lock the queue to ask again.
#[derive(Clone, Copy)]
struct AskedBeforeRouting;

/// The refusal of a request its queue could not admit now, if it is one.
fn refusal(state: &AppState, queue: &Inference, family: Family) -> Option<Response> {
    let refused = queue.refusal_for_any(state.deadline()).err()?;
    let mut refusal = match family {
        Family::Native => ApiError::from(refused).into_response(),
        Family::Tei => TeiError(ApiError::from(refused)).into_response(),
    };
    refusal.extensions_mut().insert(Refusal);
    Some(refusal)
}

/// Refuses a POST that its queue could not admit, before its body is read
/// (unless [`RefuseBeforeRouting`] has just asked).
pub async fn refuse_when_full(State(state): State<AppState>, request: Request<Body>, next: Next) -> Response {
    if request.method() == Method::POST && request.extensions().get::<AskedBeforeRouting>().is_none() {
        if let Some((_, queue, family)) = queue_of(&state, request.uri().path()) {
            if let Some(refused) = refusal(&state, queue, family) {
                return state.refusals.send(refused).await;
            }
        }
    }
    next.run(request).await
}

/// The application behind a refusal past capacity made before routing: see
/// the module's comment. Requests it does not refuse go to `router` as they
/// came.
#[derive(Clone)]
pub struct RefuseBeforeRouting {
    state: AppState,
    router: Router,
    /// Whether the listener serves the inference routes (not the private one).
    serves_inference: bool,
}

type Refused = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl RefuseBeforeRouting {
    pub fn new(state: AppState, router: Router, serves_inference: bool) -> Self {
        RefuseBeforeRouting { state, router, serves_inference }
    }

    /// The refusal, if `request` is a POST to an inference route, would pass
    /// the route's own checks (the API key; a cross-origin request is left to
    /// the route layer, after CORS), and its queue could admit nothing now;
    /// with the route's name. A request whose queue it asked and that it
    /// passes on is marked [`AskedBeforeRouting`].
    fn refuse(&self, request: &mut Request<Body>) -> Option<(Response, &'static str)> {
        if !self.serves_inference || request.method() != Method::POST {
            return None;
        }
        let state = &self.state;
        let (route, queue, family) = queue_of(state, request.uri().path())?;
        let headers = request.headers();
        let cross_origin = !state.settings.security.cors_allowed_origins.is_empty()
            && headers.contains_key(axum::http::header::ORIGIN);
        if cross_origin || !super::auth::has_api_key(state, headers) {
            return None;
        }
        let Some(mut refused) = refusal(state, queue, family) else {
            request.extensions_mut().insert(AskedBeforeRouting);
            return None;
        };
        let headers = request.headers();
        let id = match super::client_request_id(headers) {
            Some(id) => id.clone(),
            None => MakeRequestUuid
                .make_request_id(request)
                .map(|id| id.header_value().clone())
                .unwrap_or(HeaderValue::from_static("-")),
        };
        tracing::debug!(path = request.uri().path(), request_id = ?id, status = refused.status().as_u16(), "refused before routing: overloaded");
        refused.headers_mut().insert(super::REQUEST_ID, id);
        Some((refused, route))
    }
}

impl Service<Request<Body>> for RefuseBeforeRouting {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Refused, <Router as Service<Request<Body>>>::Future>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        match self.refuse(&mut request) {
            Some((refused, route)) => {
                let (state, started) = (self.state.clone(), Instant::now());
                Either::Left(Box::pin(async move {
                    let refused = state.refusals.send(refused).await;
                    state.metrics.record_request("POST", route, refused.status().as_u16(), started.elapsed());
                    Ok(refused)
                }))
            }
            None => Either::Right(self.router.call(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_past_the_budget_wait_their_turn_up_to_the_longest_hold() {
        let pacer = RefusalPacer::new(10, 256);
        let now = pacer.epoch;
        assert_eq!(pacer.hold(now), Duration::ZERO, "the first goes at once");
        assert_eq!(pacer.hold(now), Duration::from_millis(100));
        assert_eq!(pacer.hold(now), Duration::from_millis(200));
        for _ in 0..20 {
            assert!(pacer.hold(now) <= MAX_HOLD);
        }
        assert_eq!(pacer.hold(now), MAX_HOLD, "a flood waits the longest hold");
        // After a quiet spell the budget is whole again.
        assert_eq!(pacer.hold(now + Duration::from_secs(3)), Duration::ZERO);
    }

    #[test]
    fn held_refusals_go_together_on_release_ticks() {
        // 500 a second: a slot every 2 ms, released five at a time.
        let pacer = RefusalPacer::new(500, 256);
        let now = pacer.epoch + Duration::from_millis(3);
        let releases: Vec<Instant> = (0..11).map(|_| now + pacer.hold(now)).collect();
        assert_eq!(releases[0], now, "the first goes at once");
        for release in &releases[1..] {
            let since = release.duration_since(pacer.epoch);
            assert_eq!(since.as_nanos() % RELEASE_TICK.as_nanos(), 0, "{since:?} is on a tick");
        }
        let distinct: std::collections::BTreeSet<_> = releases[1..].iter().collect();
        // Slots at 5, 7, ... 23 ms after the epoch: ticks 10, 20 and 30.
        assert_eq!(distinct.len(), 3, "ten held refusals, three wake-ups: {releases:?}");
        // Each waits at least its slot: the budget is kept.
        for (i, release) in releases.iter().enumerate() {
            assert!(*release >= now + Duration::from_millis(2 * i as u64), "{i}: {release:?}");
        }
    }

    #[test]
    fn inference_routes_are_named_as_the_router_names_them() {
        let route = |path: &str| route_of(path).map(|(route, ..)| route);
        for (known, ..) in INFERENCE_ROUTES {
            if !known.contains('{') {
                assert_eq!(route(known), Some(known));
            }
        }
        assert_eq!(route("/tei/heads/sentiment"), Some("/tei/heads/{name}"));
        assert_eq!(route("/tei/heads/sentiment/"), Some("/tei/heads/{name}/"));
        assert_eq!(route("/tei/heads/sentiment/predict"), Some("/tei/heads/{name}/predict"));
        assert_eq!(
            route_of("/classify").map(|(_, queue, family)| (queue, family)),
            Some((Queue::Heads, Family::Native))
        );
        assert_eq!(
            route_of("/tei/embed").map(|(_, queue, family)| (queue, family)),
            Some((Queue::Encoder, Family::Tei))
        );
        for other in
            ["/tei/heads/", "/tei/heads//predict", "/tei/heads/x/info", "/tei/heads/x/y", "/tokenize", "/embed/"]
        {
            assert_eq!(route(other), None, "{other}");
        }
    }

    #[tokio::test]
    async fn past_the_most_held_a_refusal_goes_at_once() {
        let pacer = RefusalPacer::new(10, 2);
        let mut sends: Vec<_> = (0..4).map(|_| Box::pin(pacer.send(Response::new(Body::empty())))).collect();
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let sent: Vec<bool> = sends.iter_mut().map(|send| send.as_mut().poll(&mut cx).is_ready()).collect();
        assert_eq!(sent, [true, false, false, true], "the first in budget, two held, the fourth past the most held");
        assert_eq!(pacer.held.load(Ordering::Acquire), 2);
        drop(sends);
        assert_eq!(pacer.held.load(Ordering::Acquire), 0, "a client gone is no longer held");
    }

    #[test]
    fn without_a_budget_every_refusal_goes_at_once() {
        let pacer = RefusalPacer::new(0, 256);
        let now = Instant::now();
        assert!((0..1000).all(|_| pacer.hold(now).is_zero()));
    }
}
