//! Past capacity, HTTP threads that do not preempt the model's. With ONNX
//! Runtime's threads on every core, an HTTP thread that wakes for a request
//! preempts one of them and stalls the parallel operator it was part of.
//! Past capacity, where a backlog keeps the model busy whatever the HTTP
//! side's delay, the HTTP threads therefore yield (BENCHMARKS.md, "Overload:
//! HTTP threads that yield to the model past capacity"); below it the delay
//! would be the requests' own. Yielding is two things:
//! - Linux's `SCHED_BATCH`: a waking thread does not preempt a running one;
//!   it runs when a core frees or at the scheduler's next tick, with the same
//!   share of the CPU;
//! - where one thread serves HTTP (`server.http_threads`; the default on 2
//!   vCPUs), wake-ups a [`WAKE_TICK`] apart: the thread, once woken, waits
//!   that long before it runs what woke it, so that the requests (mostly
//!   refusals) and answers of the next tick are read and written in the same
//!   wake-up, not one each (as a network card moderates its interrupts): a
//!   lone refusal's wake-up cost more than the refusal (BENCHMARKS.md,
//!   "Overload: one HTTP thread, woken once a tick").
//!
//! So the HTTP threads (tokio's, which register here when
//! `server.http_threads_yield_to_model` is on: [`HttpThreads::hook`]) yield
//! from a queue's refusal until [`CALM`] has passed without one and a request
//! is admitted ([`HttpThreads`]). The model's threads stay `SCHED_OTHER`
//! ([`AsModelThread`]): ONNX Runtime's pool threads take the policy of the
//! thread that creates their session. The policy is Linux only; elsewhere
//! only the tick applies.
//!
//! The crate's one module with unsafe code: `sched_setscheduler`,
//! `sched_getscheduler` and `gettid`, which take no pointer but a parameter
//! on the stack.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The cores this process may run on (its affinity mask and cgroup quota, as
/// the standard library reads them), at least one: what thread counts of 0
/// (`model.intra_threads`, `server.http_threads`) are derived from.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How long after the last refusal the HTTP threads go on yielding.
pub const CALM: Duration = Duration::from_secs(1);

/// While yielding, how long a lone HTTP thread that has woken waits before
/// it runs what woke it. Against a queue bound of seconds, 10 ms more is
/// nothing.
pub const WAKE_TICK: Duration = Duration::from_millis(10);

/// The process's HTTP threads: `server::runtime` registers tokio's threads,
/// the queues report refusals and admissions. Process-wide, as scheduling is.
pub static HTTP_THREADS: HttpThreads = HttpThreads::new();

/// Threads that yield while their process is past capacity: see the module's comment.
pub struct HttpThreads {
    /// Registered threads' kernel ids.
    threads: Mutex<Vec<i32>>,
    yielding: AtomicBool,
    /// Milliseconds after `epoch` of the last refusal.
    last_refusal_ms: AtomicU64,
    epoch: OnceLock<Instant>,
}

impl HttpThreads {
    pub const fn new() -> HttpThreads {
        HttpThreads {
            threads: Mutex::new(Vec::new()),
            yielding: AtomicBool::new(false),
            last_refusal_ms: AtomicU64::new(0),
            epoch: OnceLock::new(),
        }
    }

    /// The calling thread yields with the others from now on (until it ends:
    /// [`HttpThreads::unregister`]).
    pub fn register(&self) {
        let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        threads.push(current_id());
        if self.yielding.load(Ordering::Relaxed) {
            warn_once(set(0, Policy::Yielding));
        }
    }

    pub fn unregister(&self) {
        let id = current_id();
        self.threads.lock().unwrap_or_else(|p| p.into_inner()).retain(|&t| t != id);
    }

    /// Makes `runtime`'s threads these: they register as they start and,
    /// with `tick` (a runtime of one thread), while yielding wait a
    /// [`WAKE_TICK`] each time they wake. With several, what one thread's wait
    /// leaves is taken by another, which then waits in turn: on 2 vCPUs two
    /// threads refused for no less CPU with the tick than without.
    pub fn hook(&'static self, runtime: &mut tokio::runtime::Builder, tick: bool) {
        runtime.on_thread_start(move || self.register()).on_thread_stop(move || self.unregister());
        if tick {
            runtime.on_thread_unpark(move || self.woke());
        }
    }

    /// A thread woke to run tasks (tokio's unpark hook: after it has left its
    /// park, so that a task woken meanwhile is still found). While yielding,
    /// it waits a tick first: what arrives meanwhile is taken in this wake-up.
    fn woke(&self) {
        if self.yielding.load(Ordering::Relaxed) {
            std::thread::sleep(WAKE_TICK);
        }
    }

    /// A queue refused a request: past capacity, the threads yield.
    pub fn refused(&self) {
        self.last_refusal_ms.store(self.millis(Instant::now()), Ordering::Relaxed);
        if !self.yielding.load(Ordering::Relaxed) {
            self.switch(true);
        }
    }

    /// A queue admitted a request: a [`CALM`] after the last refusal, the threads stop yielding.
    pub fn admitted(&self) {
        self.admitted_at(Instant::now())
    }

    fn admitted_at(&self, now: Instant) {
        if self.yielding.load(Ordering::Relaxed)
            && self.millis(now).saturating_sub(self.last_refusal_ms.load(Ordering::Relaxed)) >= CALM.as_millis() as u64
        {
            self.switch(false);
        }
    }

    fn switch(&self, yielding: bool) {
        let threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        if self.yielding.load(Ordering::Relaxed) == yielding {
            return; // another thread switched first
        }
        let policy = if yielding { Policy::Yielding } else { Policy::Any };
        for &id in threads.iter() {
            warn_once(set(id, policy));
        }
        self.yielding.store(yielding, Ordering::Relaxed);
    }

    fn millis(&self, now: Instant) -> u64 {
        now.saturating_duration_since(*self.epoch.get_or_init(Instant::now)).as_millis() as u64 + 1
    }
}

impl Default for HttpThreads {
    fn default() -> Self {
        Self::new()
    }
}

/// Says once that the threads cannot be switched (a seccomp profile that
/// refuses `sched_setscheduler`, say): they then run as any.
fn warn_once(result: Result<(), String>) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if let Err(error) = result {
        WARNED.call_once(|| tracing::warn!(%error, "HTTP threads cannot yield to the model's (SCHED_BATCH)"));
    }
}

/// While it lives, the calling thread and the threads it starts are
/// scheduled as any (`SCHED_OTHER`); its policy is restored after.
pub struct AsModelThread {
    previous: Option<Policy>,
}

impl AsModelThread {
    pub fn new() -> AsModelThread {
        let previous =
            (policy_of(0) == Some(Policy::Yielding) && set(0, Policy::Any).is_ok()).then_some(Policy::Yielding);
        AsModelThread { previous }
    }
}

impl Default for AsModelThread {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for AsModelThread {
    fn drop(&mut self) {
        if let Some(previous) = self.previous {
            let _ = set(0, previous);
        }
    }
}

/// The two policies used here.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Policy {
    /// `SCHED_OTHER`: the default.
    Any,
    /// `SCHED_BATCH`: does not preempt on waking.
    Yielding,
}

/// The policy of thread `id` (0: the calling thread), if one of the two.
#[cfg(target_os = "linux")]
fn policy_of(id: i32) -> Option<Policy> {
    // SAFETY: no argument but a thread id.
    match unsafe { libc::sched_getscheduler(id) } {
        libc::SCHED_OTHER => Some(Policy::Any),
        libc::SCHED_BATCH => Some(Policy::Yielding),
        _ => None,
    }
}

#[cfg(not(target_os = "linux"))]
fn policy_of(_id: i32) -> Option<Policy> {
    None
}

/// The calling thread's kernel id.
#[cfg(target_os = "linux")]
fn current_id() -> i32 {
    // SAFETY: no argument.
    unsafe { libc::gettid() }
}

#[cfg(not(target_os = "linux"))]
fn current_id() -> i32 {
    0
}

#[cfg(target_os = "linux")]
fn set(id: i32, policy: Policy) -> Result<(), String> {
    let policy = match policy {
        Policy::Any => libc::SCHED_OTHER,
        Policy::Yielding => libc::SCHED_BATCH,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` lives across the call, which only reads it.
    match unsafe { libc::sched_setscheduler(id, policy, &param) } {
        0 => Ok(()),
        _ => match std::io::Error::last_os_error() {
            // A thread that has ended, just before it would have unregistered.
            e if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            e => Err(e.to_string()),
        },
    }
}

#[cfg(not(target_os = "linux"))]
fn set(_id: i32, _policy: Policy) -> Result<(), String> {
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn registered_threads_yield_from_a_refusal_until_a_calm_then_an_admission() {
        let http = HttpThreads::new();
        // A registered thread that reports its id and policy on demand.
        let (ask, asked) = mpsc::channel::<()>();
        let (tell, told) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            tell.send((current_id(), policy_of(0))).unwrap();
            while asked.recv().is_ok() {
                tell.send((current_id(), policy_of(0))).unwrap();
            }
        });
        let (id, policy) = told.recv().unwrap();
        assert_eq!(policy, Some(Policy::Any), "threads start as any");
        http.threads.lock().unwrap().push(id);
        let policy = || policy_of(id);

        http.admitted();
        assert_eq!(policy(), Some(Policy::Any), "admitted below capacity: nothing changes");
        http.refused();
        assert!(http.yielding.load(Ordering::Relaxed));
        assert_eq!(policy(), Some(Policy::Yielding));
        http.admitted();
        assert_eq!(policy(), Some(Policy::Yielding), "within the calm, it goes on yielding");
        http.refused();
        http.admitted_at(Instant::now() + CALM);
        assert!(!http.yielding.load(Ordering::Relaxed));
        assert_eq!(policy(), Some(Policy::Any), "a calm after the last refusal, it stops");
        ask.send(()).unwrap();
        assert_eq!(told.recv().unwrap().1, Some(Policy::Any), "as the thread itself sees it");
        drop(ask);
        thread.join().unwrap();
    }

    #[test]
    fn while_yielding_a_runtime_wakes_at_most_once_a_tick_and_runs_every_task() {
        static HTTP: HttpThreads = HttpThreads::new();
        static WAKES: AtomicU64 = AtomicU64::new(0);
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(1).enable_all();
        HTTP.hook(&mut builder, true);
        builder.on_thread_unpark(|| {
            WAKES.fetch_add(1, Ordering::Relaxed);
            HTTP.woke();
        });
        let runtime = builder.build().unwrap();
        // Wakes the runtime from this thread every half millisecond, as
        // requests arriving one by one do; returns how many tasks ran.
        let wake_one_by_one = |n: u64| {
            let ran = std::sync::Arc::new(AtomicU64::new(0));
            let started = Instant::now();
            for _ in 0..n {
                let ran = ran.clone();
                runtime.spawn(async move { ran.fetch_add(1, Ordering::Relaxed) });
                std::thread::sleep(Duration::from_micros(500));
            }
            let drained = Instant::now() + Duration::from_secs(10);
            while ran.load(Ordering::Relaxed) < n && Instant::now() < drained {
                std::thread::sleep(Duration::from_millis(1));
            }
            (ran.load(Ordering::Relaxed), started.elapsed())
        };
        HTTP.refused();
        WAKES.store(0, Ordering::Relaxed);
        let (ran, took) = wake_one_by_one(100);
        assert_eq!(ran, 100, "every task ran");
        let wakes = WAKES.load(Ordering::Relaxed);
        let most = took.as_millis() as u64 / WAKE_TICK.as_millis() as u64 + 2;
        // Without the tick each task would wake it (about 100 in 50 ms).
        assert!(wakes <= most, "{wakes} wake-ups in {took:?}: at most one a tick ({most})");
    }

    #[test]
    fn a_thread_registering_while_they_yield_yields_and_the_models_threads_do_not() {
        let http = HttpThreads::new();
        http.refused();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                http.register();
                assert_eq!(policy_of(0), Some(Policy::Yielding));
                assert_eq!(std::thread::spawn(|| policy_of(0)).join().unwrap(), Some(Policy::Yielding));
                {
                    let _model = AsModelThread::new();
                    assert_eq!(policy_of(0), Some(Policy::Any));
                    let pool = std::thread::spawn(|| policy_of(0)).join().unwrap();
                    assert_eq!(pool, Some(Policy::Any), "a pool started by the model's thread");
                }
                assert_eq!(policy_of(0), Some(Policy::Yielding), "restored");
                http.unregister();
                assert!(http.threads.lock().unwrap().is_empty());
            });
        });
        assert_eq!(policy_of(0), Some(Policy::Any), "threads not registered are left as they were");
    }
}
