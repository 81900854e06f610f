//! Refusing past capacity at the least cost. Under overload most requests
//! are refused, and clients that retry at once (scripts, `wrk`, a load
//! balancer's retries) send them again straight away: if each refusal costs
//! reading, parsing, tokenizing and pricing the request, the refusals take
//! the CPU the model needs, and a replica past its capacity answers less
//! than one at it (BENCHMARKS.md, "Overload"). So:
//! - [`refuse_when_full`] asks the route's queue, before the body is read,
//!   whether it could admit any request now ([`Inference::refusal_for_any`]);
//!   if not, 503 `overloaded` at once (TEI's routes: 429), with a
//!   `Retry-After` of the queue's estimated work;
//! - [`RefusalPacer`]: refusals past `limits.immediate_refusals_per_second`
//!   each wait their turn (at most [`MAX_HOLD`], at most [`MAX_HELD`] waiting)
//!   before they are sent, so that a client retrying at once loops no faster
//!   than the budget allows; below it, and when it is 0, a refusal goes at once.
//!
//! A request that passes is still admitted or refused by its own price when
//! it queues; this only spares the work of requests that could not be admitted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::tei::TeiError;
use super::AppState;
use crate::inference::Inference;

/// Longest a refusal is held back.
pub const MAX_HOLD: Duration = Duration::from_secs(1);

/// Most refusals held back at once; past it they go at once (an open-loop
/// flood would otherwise hold a connection per refusal for a second).
pub const MAX_HELD: usize = 256;

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
    /// What release ticks count from.
    epoch: Instant,
}

impl RefusalPacer {
    pub fn new(per_second: u32) -> RefusalPacer {
        let interval = if per_second == 0 { Duration::ZERO } else { Duration::from_secs(1) / per_second };
        let now = Instant::now();
        RefusalPacer { interval, next_slot: Mutex::new(now), held: AtomicUsize::new(0), epoch: now }
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
        if self.held.fetch_add(1, Ordering::AcqRel) >= MAX_HELD {
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
#[derive(Clone, Copy)]
enum Family {
    Native,
    Tei,
}

/// Which queue a route's requests go to, and its error form. By path, as the
/// router names them: a layer on each route would run after the body is read
/// (route layers wrap it), which is the work this check spares. A new
/// inference route is added here too.
fn queue_of<'a>(state: &'a AppState, path: &str) -> Option<(&'a Inference, Family)> {
    // Classifying routes are checked against the graph new heads are trained
    // on, which serves the heads (where every head's comparison chose the
    // exact graph it is closed, and this is the encoder's). Which head a request names is
    // in its body, not read yet: a head on another graph, or an ONNX head with
    // its own queue, meets that queue when it is admitted.
    let (encoder, heads) = (state.encoder_runtime(), state.training_graph());
    match path {
        "/embed" | "/v1/embeddings" | "/embeddings" | "/tei/embeddings" | "/tei/v1/embeddings" => {
            Some((encoder, Family::Native))
        }
        "/classify" => Some((heads, Family::Native)),
        "/tei" | "/tei/" | "/tei/embed" | "/tei/embed_all" => Some((encoder, Family::Tei)),
        "/tei/predict" => Some((heads, Family::Tei)),
        _ if path.starts_with("/tei/heads/") => Some((heads, Family::Tei)),
        _ => None,
    }
}

/// Refuses a POST that its queue could not admit, before its body is read.
pub async fn refuse_when_full(State(state): State<AppState>, request: Request<Body>, next: Next) -> Response {
    if request.method() == axum::http::Method::POST {
        if let Some((queue, family)) = queue_of(&state, request.uri().path()) {
            if let Err(refused) = queue.refusal_for_any(state.deadline()) {
                let mut refusal = match family {
                    Family::Native => ApiError::from(refused).into_response(),
                    Family::Tei => TeiError(ApiError::from(refused)).into_response(),
                };
                refusal.extensions_mut().insert(Refusal);
                return state.refusals.send(refusal).await;
            }
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_past_the_budget_wait_their_turn_up_to_the_longest_hold() {
        let pacer = RefusalPacer::new(10);
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
        let pacer = RefusalPacer::new(500);
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
    fn without_a_budget_every_refusal_goes_at_once() {
        let pacer = RefusalPacer::new(0);
        let now = Instant::now();
        assert!((0..1000).all(|_| pacer.hold(now).is_zero()));
    }
}
