//! Building and running the server: load the model, bind, serve, drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::config::Settings;
use crate::http::{router, AppState};
use crate::inference::Inference;
use crate::model::Model;

pub struct Application {
    listener: TcpListener,
    state: AppState,
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
        let inference = Inference::start(model, (&settings.batching).into());
        let address = format!("{}:{}", settings.server.host, settings.server.port);
        let listener = TcpListener::bind(&address)
            .await
            .with_context(|| format!("cannot listen on {address} (server.host, server.port)"))?;
        Ok(Application {
            listener,
            state: AppState::new(inference, settings),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves until `shutdown` completes, then marks the service draining, stops
    /// accepting, lets in-flight requests finish (bounded by
    /// `server.shutdown_timeout_ms`) and stops the inference workers.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let state = self.state;
        let drain = Duration::from_millis(state.settings.server.shutdown_timeout_ms);
        let draining = Arc::new(Notify::new());
        let signal = {
            let state = state.clone();
            let draining = draining.clone();
            async move {
                shutdown.await;
                state.draining.store(true, Ordering::Relaxed);
                tracing::info!("shutting down: finishing in-flight requests");
                draining.notify_one();
            }
        };
        tracing::info!(address = %self.listener.local_addr()?, "listening");
        let serve =
            axum::serve(self.listener, router(state.clone())).with_graceful_shutdown(signal);
        let serve = std::future::IntoFuture::into_future(serve);
        tokio::pin!(serve);
        tokio::select! {
            result = &mut serve => result.context("server error")?,
            _ = draining.notified() => match tokio::time::timeout(drain, &mut serve).await {
                Ok(result) => result.context("server error")?,
                Err(_) => tracing::warn!(timeout_ms = drain.as_millis() as u64, "drain timeout: closing remaining connections"),
            },
        }
        let state_for_join = state.clone();
        tokio::task::spawn_blocking(move || state_for_join.inference.shutdown())
            .await
            .ok();
        tracing::info!("stopped");
        Ok(())
    }
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
