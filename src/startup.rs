//! Building and running the server: load the model, bind, serve, drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::batching::BatcherConfig;
use crate::config::Settings;
use crate::features::FeatureCache;
use crate::heads::store::HeadStore;
use crate::heads::training::{save_head, train_head, Extraction};
use crate::heads::{load_configured, Head, Heads};
use crate::http::{router, router_for, AppState, Routes};
use crate::metrics::Metrics;
use crate::model::Model;
use crate::runtimes::Runtimes;

pub struct Application {
    listener: TcpListener,
    /// `server.private_address`: /metrics, /info and the admin routes.
    private: Option<TcpListener>,
    state: AppState,
    /// Heads missing on disk, to train before the service reports ready.
    to_train: Vec<String>,
}

impl Application {
    /// Loads the model and binds the listener (port 0 picks a free port).
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let started = Instant::now();
        let model_settings = settings.model.clone();
        let sessions = settings.batching.sessions;
        let model = tokio::task::spawn_blocking(move || Model::load(&model_settings, sessions))
            .await
            .context("model loading task failed")??;
        tracing::info!(
            model = %model.info.name,
            file = %model.info.dir.join(&model.info.file).display(),
            hidden_size = model.info.hidden_size,
            max_tokens = model.info.max_tokens,
            execution_provider = %model.info.execution_provider,
            sessions,
            load_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        if settings.limits.max_request_tokens < model.info.max_tokens {
            anyhow::bail!(
                "limits.max_request_tokens ({}) is less than one text's maximum ({} tokens, model.max_tokens): \
                 raise it, or lower model.max_tokens",
                settings.limits.max_request_tokens,
                model.info.max_tokens
            );
        }
        let metrics = Arc::new(Metrics::new());
        let runtimes =
            Arc::new(Runtimes::start(model, BatcherConfig::new(&settings.batching, &settings.limits), metrics.clone()));
        let startup_heads = {
            let (settings, shared) = (settings.clone(), runtimes.clone());
            match tokio::task::spawn_blocking(move || load_configured(&settings, &shared)).await {
                Ok(Ok(heads)) => heads,
                Ok(Err(e)) => {
                    stop_runtimes(runtimes).await;
                    return Err(e);
                }
                Err(e) => return Err(e).context("head loading task failed"),
            }
        };
        let heads = Heads::new(default_head(&settings), settings.classify.serve.clone());
        for head in startup_heads.loaded {
            heads.insert(head);
        }
        // Heads created over the API (by any replica sharing the folder) serve after a restart too.
        let heads = {
            let (store, info) = (HeadStore::of(&settings), runtimes.encoder.info.clone());
            tokio::task::spawn_blocking(move || {
                heads.sync_folder(&store, &info);
                heads
            })
            .await
            .context("heads folder scan failed")?
        };
        heads.set_pending(startup_heads.to_train.len());
        let address = format!("{}:{}", settings.server.host, settings.server.port);
        let listener = match TcpListener::bind(&address).await {
            Ok(listener) => listener,
            Err(e) => {
                stop_runtimes(runtimes).await;
                return Err(e).with_context(|| format!("cannot listen on {address} (server.host, server.port)"));
            }
        };
        let private = if settings.server.private_address.is_empty() {
            None
        } else {
            match TcpListener::bind(&settings.server.private_address).await {
                Ok(listener) => Some(listener),
                Err(e) => {
                    stop_runtimes(runtimes).await;
                    return Err(e).with_context(|| {
                        format!("cannot listen on {} (server.private_address)", settings.server.private_address)
                    });
                }
            }
        };
        let state = AppState::new(runtimes, heads, settings, metrics);
        Ok(Application { listener, private, state, to_train: startup_heads.to_train })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// The private listener's address, when `server.private_address` is set.
    pub fn private_addr(&self) -> Option<SocketAddr> {
        self.private.as_ref().map(|l| l.local_addr().expect("bound listener has an address"))
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves until `shutdown` completes, then marks the service draining, stops
    /// accepting, lets in-flight requests finish (bounded by
    /// `server.shutdown_timeout_ms`) and stops the inference workers.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let state = self.state;
        let drain = Duration::from_millis(state.settings.server.shutdown_timeout_ms);
        if state.settings.model.warm_up {
            state.warming.store(true, Ordering::Relaxed);
            let state = state.clone();
            tokio::task::spawn_blocking(move || {
                state.runtimes.warm_up();
                state.warming.store(false, Ordering::Relaxed);
            });
        }
        if !self.to_train.is_empty() {
            let (state, names) = (state.clone(), self.to_train);
            tokio::task::spawn_blocking(move || train_missing_heads(&state, &names));
        }
        let watcher = tokio::spawn(watch_heads_folder(state.clone()));
        let signal = {
            let state = state.clone();
            async move {
                shutdown.await;
                state.draining.store(true, Ordering::Relaxed);
                let grace = Duration::from_millis(state.settings.server.shutdown_grace_ms);
                if !grace.is_zero() {
                    tracing::info!(grace_ms = grace.as_millis() as u64, "shutting down: not ready, still serving");
                    tokio::time::sleep(grace).await;
                }
                tracing::info!("shutting down: no new connections, finishing in-flight requests");
            }
        };
        tracing::info!(address = %self.listener.local_addr()?, "listening");
        let limits = ConnectionLimits::of(&state.settings);
        match self.private {
            None => serve_connections(self.listener, router(state.clone()), signal, limits, drain).await,
            Some(private) => {
                tracing::info!(address = %private.local_addr()?, "listening for operators (/metrics, /info, admin routes)");
                // One shutdown signal for both listeners.
                let (stop, stopping) = tokio::sync::watch::channel(false);
                let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                    let _ = rx.wait_for(|&s| s).await;
                };
                let public = serve_connections(
                    self.listener,
                    router_for(state.clone(), Routes::Public),
                    stopped(stopping.clone()),
                    limits,
                    drain,
                );
                let private = serve_connections(
                    private,
                    router_for(state.clone(), Routes::Private),
                    stopped(stopping),
                    limits,
                    drain,
                );
                let signal = async move {
                    signal.await;
                    let _ = stop.send(true);
                };
                tokio::join!(public, private, signal);
            }
        }
        watcher.abort();
        let unfinished = state.jobs.close();
        if unfinished > 0 {
            tracing::warn!(
                trainings = unfinished,
                "stopping with head trainings unfinished: they are lost; send them again"
            );
        }
        stop_runtimes(state.runtimes.clone()).await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// What one client connection may cost: see `serve_connections`.
#[derive(Debug, Clone, Copy)]
struct ConnectionLimits {
    /// From accepting a connection (or finishing a response on it) to the end
    /// of the next request's headers; a silent or idle connection is closed.
    header_timeout: Duration,
    /// Longest wait for a client to take a response's bytes.
    write_timeout: Duration,
    /// Connections served at once; beyond, the service stops accepting.
    max_connections: usize,
}

impl ConnectionLimits {
    fn of(settings: &Settings) -> Self {
        let server = &settings.server;
        ConnectionLimits {
            header_timeout: Duration::from_millis(server.header_read_timeout_ms),
            write_timeout: Duration::from_millis(server.write_timeout_ms),
            max_connections: server.max_connections,
        }
    }
}

/// Accepts connections until `shutdown` completes, then stops accepting and
/// gives open connections `drain` to finish their requests (idle keep-alive
/// connections close at once). HTTP/1.1 only: a connection that does not
/// send a request's headers within the header timeout is closed (hyper starts
/// that timer at once; its HTTP/1-or-2 detection had none), a client that
/// stops reading its response is cut off after the write timeout, and at most
/// `max_connections` are open: beyond, the service waits before accepting more
/// (the kernel's backlog holds them) and says so in the log.
async fn serve_connections(
    listener: TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()>,
    limits: ConnectionLimits,
    drain: Duration,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::Service;

    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut last_limit_warning: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if last_limit_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection limit reached (server.max_connections): not accepting until one closes"
                    );
                    last_limit_warning = Some(Instant::now());
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                    _ = &mut shutdown => break,
                }
            }
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    app.clone().call(request.map(axum::body::Body::new))
                });
                let io = TokioIo::new(WriteDeadline::new(stream, limits.write_timeout));
                let connection = graceful.watch(builder.serve_connection(io, service));
                tokio::spawn(async move {
                    let _slot = slot;
                    // Client resets and header timeouts end up here; they are not server errors.
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "connection closed with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(timeout_ms = drain.as_millis() as u64, "drain timeout: closing remaining connections");
    }
}

/// A stream whose writes fail with `TimedOut` when the peer has taken no bytes
/// for `timeout`: a client that stops reading cannot hold a connection, its
/// handler and its response in memory for ever.
struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        WriteDeadline { inner, timeout, stalled: None }
    }

    /// Passes a finished write through (disarming the timer); a pending one
    /// arms the timer, or fails once it has run out.
    fn watch<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        poll: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.timeout;
        let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took no response bytes within server.write_timeout_ms",
            ))),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let poll = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let poll = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn default_head(settings: &Settings) -> String {
    if settings.classify.default_head.is_empty() {
        settings.classify.serve.first().cloned().unwrap_or_default()
    } else {
        settings.classify.default_head.clone()
    }
}

/// Trains the heads missing at startup through the service's own queue; each
/// joins the registry when done, and the service is ready after the last. A
/// head that fails is reported failed (`GET /heads`, 503 `head_failed` on
/// `/classify`) while everything else keeps serving: a restart would fail the
/// same way, so stopping would only make a crash loop.
fn train_missing_heads(state: &AppState, names: &[String]) {
    let settings = &state.settings;
    let cache = FeatureCache::new(&settings.classify.feature_cache_dir);
    let encoder = state.encoder();
    let mut source = encoder.queued_encoder();
    let mut extraction = Extraction {
        source: &mut source,
        info: &encoder.info,
        tokenizer: &encoder.tokenizer,
        cache: &cache,
        max_batch_size: settings.batching.max_batch_size,
        max_batch_tokens: settings.batching.max_batch_tokens,
    };
    for name in names {
        tracing::info!(head = %name, "head file missing: training it before reporting ready");
        let mut head = match train_head(name, &settings.heads[name], &mut extraction) {
            Ok(head) => head,
            Err(e) => {
                let reason = format!("{e:#}");
                tracing::error!(head = %name, error = %reason, "training head at startup failed; the head is not served");
                state.heads.fail_pending(name, reason);
                continue;
            }
        };
        // A head that cannot be written (read-only folder, full disk) still serves
        // from memory; it is trained again at the next start.
        if let Err(e) = save_head(&mut head, &HeadStore::of(settings)) {
            tracing::error!(head = %name, error = %format!("{e:#}"), "serving the trained head from memory only");
        }
        state.heads.finish_pending(Head::Logistic(head));
    }
    tracing::info!("startup training done");
}

/// Every `classify.watch_interval_ms`, brings the served heads in line with
/// the heads folder (heads created, replaced, rolled back or deleted through
/// another replica sharing it). Runs until aborted at shutdown.
async fn watch_heads_folder(state: AppState) {
    let interval = state.settings.classify.watch_interval_ms;
    if interval == 0 {
        return;
    }
    let mut ticks = tokio::time::interval(Duration::from_millis(interval));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let state = state.clone();
        let synced = tokio::task::spawn_blocking({
            let state = state.clone();
            move || state.heads.sync_folder(&state.store, &state.encoder().info)
        })
        .await;
        let Ok(report) = synced else { continue };
        if report.error.is_some() {
            state.metrics.heads_folder_errors.inc();
        }
        // A head deleted through another replica: its finished training here is history too.
        for name in &report.removed {
            state.jobs.forget(name);
        }
    }
}

/// Drains every model runtime (on a blocking thread: it joins worker threads).
async fn stop_runtimes(runtimes: Arc<Runtimes>) {
    tokio::task::spawn_blocking(move || runtimes.shutdown()).await.ok();
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
}
