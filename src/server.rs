//! Transport: the accept loop over hyper, apart from the application it
//! serves. Limits per connection (header read timeout, write deadline, a cap
//! on open connections), one shutdown signal for every listener, and a
//! graceful drain; the runtime whose threads serve it. `startup` assembles
//! the application and hands it here.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpListener;

use crate::config::{ExecutionProvider, ServerSettings, Settings};
use crate::error_code::ErrorCode;

/// What a listener serves: the HTTP application (`http::service_for`, or a
/// bare `axum::Router`).
pub trait Application:
    tower::Service<
        axum::http::Request<axum::body::Body>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future: Send,
    > + Clone
    + Send
    + 'static
{
}

impl<S> Application for S where
    S: tower::Service<
            axum::http::Request<axum::body::Body>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
            Future: Send,
        > + Clone
        + Send
        + 'static
{
}

/// What one client connection may cost: see `serve_connections`.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// From accepting a connection (or finishing a response on it) to the end
    /// of the next request's headers; a silent or idle connection is closed.
    pub header_timeout: Duration,
    /// Longest wait for a client to take a response's bytes.
    pub write_timeout: Duration,
    /// Connections served at once; beyond, each new one is answered 503.
    pub max_connections: usize,
    /// Connections answered 503 because `max_connections` were open.
    pub refused: Counter,
}

impl ConnectionLimits {
    pub fn of(server: &ServerSettings, refused: Counter) -> Self {
        ConnectionLimits {
            header_timeout: Duration::from_millis(server.header_read_timeout_ms),
            write_timeout: Duration::from_millis(server.write_timeout_ms),
            max_connections: server.max_connections,
            refused,
        }
    }
}

/// Connections being refused at once, at most: past `max_connections` and
/// this, a new connection is closed as soon as it is accepted.
const MAX_REFUSING: usize = 256;

/// The most of a refused request's body read before answering (so that the
/// answer is not lost to a reset for unread bytes), and how long that may take.
const REFUSED_BODY_BYTES: usize = 64 * 1024;
const REFUSED_BODY_WAIT: Duration = Duration::from_secs(1);

/// The answer to a request on a connection past `max_connections`: 503 with
/// `Retry-After` and our error body (TEI's, 429, under `/tei`, as TEI
/// answers when its concurrency limit is reached). A load balancer retries it
/// on another replica; a client backs off. Nothing of the application runs.
async fn refuse_over_capacity(
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<axum::body::Body>, std::convert::Infallible> {
    let tei = request.uri().path().starts_with("/tei/") || request.uri().path() == "/tei";
    let body = axum::body::Body::new(request.into_body());
    let _ = tokio::time::timeout(REFUSED_BODY_WAIT, axum::body::to_bytes(body, REFUSED_BODY_BYTES)).await;
    let message = "the server has server.max_connections connections open: retry later";
    let code = ErrorCode::Overloaded;
    let (status, json) = if tei {
        let (error_type, status) = code.tei();
        (status, serde_json::json!({"error": message, "error_type": error_type, "code": code.as_str()}))
    } else {
        (code.status(), serde_json::json!({"error": {"code": code.as_str(), "message": message}}))
    };
    let retry_after = code.retry_after_seconds().unwrap_or(1);
    Ok(hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("retry-after", retry_after)
        .body(axum::body::Body::from(json.to_string()))
        .expect("a valid response"))
}

/// Accepts connections until `shutdown` completes, then stops accepting and
/// gives open connections `drain` to finish their requests (idle keep-alive
/// connections close at once). HTTP/1.1 only: a connection that does not
/// send a request's headers within the header timeout is closed (hyper starts
/// that timer at once; its HTTP/1-or-2 detection had none), a client that
/// stops reading its response is cut off after the write timeout, and at most
/// `max_connections` are served: beyond, each new connection's request is
/// answered 503 at once (`refuse_over_capacity`) and the connection closed,
/// counted and logged (at most every 10 s). Waiting in the kernel's backlog
/// instead would hide the overload from the queue's admission and from the
/// load balancer, and let clients wait past any bound.
pub async fn serve_connections<App: Application>(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()>,
    limits: ConnectionLimits,
    drain: Duration,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};

    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(true);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut refusing_builder = hyper::server::conn::http1::Builder::new();
    refusing_builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(false);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let refusing = Arc::new(tokio::sync::Semaphore::new(MAX_REFUSING));
    let mut last_limit_warning: Option<Instant> = None;
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
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    limits.refused.inc();
                    if last_limit_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!(
                            max_connections = limits.max_connections,
                            refused_total = limits.refused.get(),
                            "connection limit reached (server.max_connections): answering new connections 503"
                        );
                        last_limit_warning = Some(Instant::now());
                    }
                    // Past the refusals' own bound the connection is dropped as it is.
                    if let Ok(permit) = refusing.clone().try_acquire_owned() {
                        let io = TokioIo::new(WriteDeadline::new(stream, limits.write_timeout));
                        let connection = refusing_builder
                            .serve_connection(io, hyper::service::service_fn(refuse_over_capacity));
                        tokio::spawn(async move {
                            let _permit = permit;
                            let _ = connection.await;
                        });
                    }
                    continue;
                };
                let app = app.clone();
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    tower::Service::call(&mut app.clone(), request.map(axum::body::Body::new))
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

/// The runtime that serves HTTP, on [`http_threads`] threads. With
/// `server.http_threads_yield_to_model` they register in
/// [`crate::threads::HTTP_THREADS`]: past capacity they do not preempt the
/// model's when they wake (and one alone wakes at most once a tick).
pub fn runtime(settings: &Settings) -> std::io::Result<tokio::runtime::Runtime> {
    let threads = http_threads(settings);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().worker_threads(threads);
    if settings.server.http_threads_yield_to_model {
        crate::threads::HTTP_THREADS.hook(&mut builder, threads == 1);
    }
    builder.build()
}

/// `server.http_threads`; 0: on the CPU provider half the available cores,
/// at least one, on CUDA every core. On a CPU replica the model's threads take
/// every core, and HTTP work (a few percent of the CPU) on as many threads
/// again only preempts them: on 2 vCPUs one thread answered one sentence
/// sooner and refused for less CPU past capacity than two (BENCHMARKS.md,
/// "Overload: one HTTP thread"). On a GPU the cores are the HTTP side's.
pub fn http_threads(settings: &Settings) -> usize {
    let cores = crate::threads::cores();
    match (settings.server.http_threads, settings.model.execution_provider) {
        (0, ExecutionProvider::Cpu) => (cores / 2).max(1),
        (0, ExecutionProvider::Cuda) => cores,
        (n, _) => n,
    }
}

/// Serves every (listener, application) pair until `shutdown` completes, then
/// stops accepting on all of them and gives their open connections `drain`
/// to finish (see [`serve_connections`]).
pub async fn serve<App: Application>(
    listeners: Vec<(TcpListener, App)>,
    shutdown: impl Future<Output = ()>,
    limits: ConnectionLimits,
    drain: Duration,
) {
    // One shutdown signal for every listener.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut serving = tokio::task::JoinSet::new();
    for (listener, app) in listeners {
        let mut stopping = stopping.clone();
        let stopped = async move {
            let _ = stopping.wait_for(|&s| s).await;
        };
        serving.spawn(serve_connections(listener, app, stopped, limits.clone(), drain));
    }
    let signal = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    let all_done = async move { while serving.join_next().await.is_some() {} };
    tokio::join!(all_done, signal);
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn http_threads_is_the_runtimes_worker_count_and_0_half_the_cores_on_the_cpu() {
        let mut settings = Settings::load(None, &Default::default()).unwrap();
        settings.server.http_threads_yield_to_model = false;
        let workers = |settings: &Settings| runtime(settings).unwrap().metrics().num_workers();
        settings.server.http_threads = 1;
        assert_eq!(workers(&settings), 1);
        settings.server.http_threads = 3;
        assert_eq!(workers(&settings), 3);
        settings.server.http_threads = 0;
        let cores = crate::threads::cores();
        settings.model.execution_provider = ExecutionProvider::Cpu;
        assert_eq!(workers(&settings), (cores / 2).max(1));
        settings.model.execution_provider = ExecutionProvider::Cuda;
        assert_eq!(workers(&settings), cores, "on a GPU the cores are the HTTP side's");
    }

    #[tokio::test]
    async fn a_peer_that_takes_no_bytes_fails_the_write_after_the_deadline() {
        // A pipe of 64 bytes whose reader never reads.
        let (writer, _reader) = tokio::io::duplex(64);
        let mut stream = WriteDeadline::new(writer, Duration::from_millis(300));
        let started = Instant::now();
        let err = stream.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_slow_but_moving_peer_is_not_cut_off() {
        let (writer, mut reader) = tokio::io::duplex(64);
        let mut stream = WriteDeadline::new(writer, Duration::from_millis(300));
        let reading = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let mut total = 0;
            while total < 1024 {
                // Each read comes 100 ms after the last: under the deadline, far past it in all.
                tokio::time::sleep(Duration::from_millis(100)).await;
                total += tokio::io::AsyncReadExt::read(&mut reader, &mut buf).await.unwrap();
            }
            total
        });
        stream.write_all(&[0u8; 1024]).await.unwrap();
        assert_eq!(reading.await.unwrap(), 1024);
    }

    #[tokio::test]
    async fn every_listener_stops_on_one_signal_and_connections_past_the_cap_are_refused_at_once() {
        let app = || axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let (a, b) = (TcpListener::bind("127.0.0.1:0").await.unwrap(), TcpListener::bind("127.0.0.1:0").await.unwrap());
        let (addr_a, addr_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let limits = ConnectionLimits {
            header_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            max_connections: 1,
            refused: Counter::default(),
        };
        let counted = limits.refused.clone();
        let server = tokio::spawn(serve(
            vec![(a, app()), (b, app())],
            async { stopped.await.unwrap() },
            limits,
            Duration::from_secs(1),
        ));
        let get = |addr: std::net::SocketAddr| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
            let mut out = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut s, &mut out).await.unwrap();
            String::from_utf8_lossy(&out).to_string()
        };
        assert!(get(addr_a).await.ends_with("ok"));
        assert!(get(addr_b).await.ends_with("ok"));
        // One connection held open on a: a second one there is answered 503 at once.
        let held = tokio::net::TcpStream::connect(addr_a).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let refused = tokio::time::timeout(Duration::from_secs(2), get(addr_a)).await.expect("answered at once");
        assert!(started.elapsed() < Duration::from_millis(500), "refused after {:?}", started.elapsed());
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
        assert!(refused.to_lowercase().contains("retry-after: 1") && refused.contains(r#""code":"overloaded""#));
        assert_eq!(counted.get(), 1);
        // Under /tei, TEI's answer: 429.
        let mut s = tokio::net::TcpStream::connect(addr_a).await.unwrap();
        s.write_all(b"POST /tei/embed HTTP/1.1\r\nhost: x\r\ncontent-length: 17\r\n\r\n{\"inputs\": \"hi\"}")
            .await
            .unwrap();
        let mut out = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut out).await.unwrap();
        let tei = String::from_utf8_lossy(&out);
        assert!(tei.starts_with("HTTP/1.1 429") && tei.contains(r#""error_type":"Overloaded""#), "{tei}");
        // Once the held connection closes, connections are served again.
        drop(held);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(get(addr_a).await.ends_with("ok"));
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server).await.expect("both listeners stopped").unwrap();
        assert!(
            tokio::net::TcpStream::connect(addr_a).await.is_err()
                && tokio::net::TcpStream::connect(addr_b).await.is_err()
        );
    }
}
