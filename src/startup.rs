//! Building and running the server: load the model, bind, serve, drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::features::FeatureCache;
use crate::heads::training::{save_head, train_head, Extraction};
use crate::heads::{load_configured, Head, Heads};
use crate::http::{router, AppState};
use crate::metrics::Metrics;
use crate::model::Model;
use crate::runtimes::Runtimes;

pub struct Application {
    listener: TcpListener,
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
        let metrics = Arc::new(Metrics::new());
        let runtimes = Arc::new(Runtimes::start(model, (&settings.batching).into(), metrics.clone()));
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
        heads.set_pending(startup_heads.to_train.len());
        let address = format!("{}:{}", settings.server.host, settings.server.port);
        let listener = match TcpListener::bind(&address).await {
            Ok(listener) => listener,
            Err(e) => {
                stop_runtimes(runtimes).await;
                return Err(e).with_context(|| format!("cannot listen on {address} (server.host, server.port)"));
            }
        };
        let state = AppState::new(runtimes, heads, settings, metrics);
        Ok(Application { listener, state, to_train: startup_heads.to_train })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
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
        // A head that fails to train at startup stops the service with its error.
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
        let failure = Arc::new(std::sync::Mutex::new(None::<anyhow::Error>));
        if !self.to_train.is_empty() {
            let (state, names) = (state.clone(), self.to_train);
            tokio::task::spawn_blocking(move || {
                if let Err(e) = train_missing_heads(&state, &names) {
                    let _ = failed_tx.send(e);
                }
            });
        }
        let signal = {
            let (state, failure) = (state.clone(), failure.clone());
            async move {
                tokio::select! {
                    _ = shutdown => {}
                    Ok(e) = failed_rx => {
                        tracing::error!(error = %format!("{e:#}"), "startup training failed");
                        *failure.lock().expect("failure lock") = Some(e);
                    }
                }
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
        let header_timeout = Duration::from_millis(state.settings.server.header_read_timeout_ms);
        serve_connections(self.listener, router(state.clone()), signal, header_timeout, drain).await;
        stop_runtimes(state.runtimes.clone()).await;
        tracing::info!("stopped");
        let failed = failure.lock().expect("failure lock").take();
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Accepts connections until `shutdown` completes, then stops accepting and
/// gives open connections `drain` to finish their requests (idle keep-alive
/// connections close at once). A client that does not send its request headers
/// within `header_timeout` is disconnected.
async fn serve_connections(
    listener: TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()>,
    header_timeout: Duration,
    drain: Duration,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::Service;

    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
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
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
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

fn default_head(settings: &Settings) -> String {
    if settings.classify.default_head.is_empty() {
        settings.classify.serve.first().cloned().unwrap_or_default()
    } else {
        settings.classify.default_head.clone()
    }
}

/// Trains the heads missing at startup through the service's own queue; each
/// joins the registry when done, and the service is ready after the last.
fn train_missing_heads(state: &AppState, names: &[String]) -> anyhow::Result<()> {
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
        let mut head = train_head(name, &settings.heads[name], &mut extraction)
            .with_context(|| format!("training head {name} at startup"))?;
        // A head that cannot be written (read-only folder, full disk) still serves
        // from memory; it is trained again at the next start.
        if let Err(e) = save_head(&mut head, &settings.classify.heads_dir) {
            tracing::error!(head = %name, error = %format!("{e:#}"), "serving the trained head from memory only");
        }
        state.heads.finish_pending(Head::Logistic(head));
    }
    tracing::info!("all heads ready");
    Ok(())
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
