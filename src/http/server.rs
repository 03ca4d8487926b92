//! The HTTP server actor: serves [`super::router`] on the daemon's listener.
//!
//! The listening socket is bound once by the daemon before the tree starts (so a port
//! conflict is a clear start-up error) and shared; each incarnation serves a clone of it, so
//! a restart never drops the port: connections that arrive in between wait in the kernel's
//! backlog for the next incarnation. Stopping the actor stops intake, closes the connections
//! that carry no request at once, and lets requests in flight finish within the drain
//! deadline. If serving fails, the actor fails and its supervisor restarts it.
//!
//! What one client may hold ([`HttpLimits`]): a connection that started a request has
//! `header_timeout` to finish its headers, its body has `body_timeout` ([`bounded_body`]), a
//! kept-alive connection may wait `idle_timeout` for its next request, and at most
//! `max_connections` are open at once (the next are answered 503 and closed). A declared
//! body over the limit is refused (413) before a byte of it is read.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tower::ServiceExt;

use super::error::ApiError;
use super::{AppState, MAX_BODY_BYTES, router};
use crate::config::HttpLimits;
use crate::metrics::metrics;

/// The HTTP server actor.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpServer;

/// What the server serves and where.
#[derive(Clone)]
pub struct HttpArgs {
    /// The bound listening socket.
    pub listener: Arc<std::net::TcpListener>,
    /// Handler state.
    pub app: AppState,
    /// How long requests in flight may take to finish on stop.
    pub drain_timeout: Duration,
}

/// The running server.
pub struct HttpState {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    drain_timeout: Duration,
}

/// Messages the server handles.
pub enum HttpMsg {
    /// The serving task ended on its own, with this error.
    ServeFailed(String),
}

impl Actor for HttpServer {
    type Msg = HttpMsg;
    type State = HttpState;
    type Arguments = HttpArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<HttpMsg>,
        args: HttpArgs,
    ) -> Result<HttpState, ActorProcessingErr> {
        let std_listener = args.listener.try_clone()?;
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let limits = args.app.limits;
        let app = router(args.app);
        // The server runs on its own task so that the actor keeps answering; its end is
        // reported back as a message, which fails the actor.
        let task = tokio::spawn(async move {
            if let Err(err) = serve(listener, app, limits, stopped).await {
                let _ = myself.cast(HttpMsg::ServeFailed(err.to_string()));
            }
        });
        Ok(HttpState {
            stop: Some(stop),
            task: Some(task),
            drain_timeout: args.drain_timeout,
        })
    }

    async fn post_stop(
        &self,
        _: ActorRef<HttpMsg>,
        state: &mut HttpState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(stop) = state.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = state.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(state.drain_timeout, task)
                .await
                .is_err()
            {
                tracing::warn!(
                    timeout_ms = state.drain_timeout.as_millis() as u64,
                    "HTTP requests still in flight at the drain deadline were cut"
                );
                abort.abort();
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<HttpMsg>,
        msg: HttpMsg,
        _: &mut HttpState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HttpMsg::ServeFailed(reason) => Err(format!("HTTP server stopped: {reason}").into()),
        }
    }
}

impl Drop for HttpState {
    /// An incarnation that failed or was killed skips `post_stop`; its server must not keep
    /// accepting on the shared socket next to its replacement.
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Accepts connections until `stop`, then closes those without a request in flight and
/// waits for the others (the actor's `post_stop` bounds the wait).
async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: HttpLimits,
    mut stop: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (draining, drain) = watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors, or a connection reset before it was
                        // accepted: none of it ends the server.
                        tracing::warn!(error = %err, "cannot accept an HTTP connection; trying again");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        connections.spawn(connection(
                            stream,
                            peer,
                            app.clone(),
                            limits,
                            drain.clone(),
                            permit,
                        ));
                    }
                    Err(_) => {
                        metrics()
                            .http_connections_closed
                            .with_label_values(&["refused"])
                            .inc();
                        tokio::spawn(refuse(stream, limits.max_connections));
                    }
                }
            }
        }
    }
    drop(listener);
    let _ = draining.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Answers a connection over the cap with a 503 and closes it.
async fn refuse(mut stream: TcpStream, max: usize) {
    let body = format!(
        r#"{{"error":"too_many_connections","message":"the server holds its maximum of {max} connections (PRIMED_HTTP_MAX_CONNECTIONS); try again shortly"}}"#
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent before closing: closing a socket with unread data
        // resets the connection, and the client could lose the answer with it.
        let mut sink = [0u8; 4096];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            match tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// How often a connection's watchdog looks at it.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// Serves one connection, closing it when a request's headers take longer than
/// `header_timeout`, when it idles longer than `idle_timeout`, or at shutdown when no request
/// is in flight on it.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: axum::Router,
    limits: HttpLimits,
    mut drain: watch::Receiver<bool>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let _open = OpenConnection::new();
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        io: stream,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            let guard = InFlight::enter(&activity);
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let app = app.clone();
            async move {
                let response = app.oneshot(request.map(Body::new)).await;
                // The request is in flight until its answer's body has been written.
                response.map(|r| {
                    r.map(|inner| {
                        Body::new(Guarded {
                            inner,
                            _guard: guard,
                        })
                    })
                })
            }
        })
    };
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let header_ms = millis(limits.header_timeout);
    let idle_ms = millis(limits.idle_timeout);
    let mut watch = tokio::time::interval(WATCH_EVERY);
    let mut draining = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = watch.tick() => {
                if activity.in_flight.load(Ordering::SeqCst) > 0 {
                    continue;
                }
                let now = activity.now();
                let head = activity.head_started.load(Ordering::SeqCst);
                let reason = if head != 0 && now.saturating_sub(head) > header_ms {
                    "header_timeout"
                } else if head == 0
                    && now.saturating_sub(activity.idle_since.load(Ordering::SeqCst)) > idle_ms
                {
                    "idle_timeout"
                } else {
                    continue;
                };
                metrics()
                    .http_connections_closed
                    .with_label_values(&[reason])
                    .inc();
                tracing::debug!(ip = %peer.ip(), reason, "HTTP connection closed");
                return;
            }
            _ = drain.changed(), if !draining => {
                draining = true;
                if activity.in_flight.load(Ordering::SeqCst) == 0 {
                    return;
                }
                // Finish the answer in flight, then close.
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Counts the connection in `http_connections_open` while it lives.
struct OpenConnection;

impl OpenConnection {
    fn new() -> Self {
        metrics().http_connections_open.inc();
        Self
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics().http_connections_open.dec();
    }
}

/// What a connection's watchdog knows of it. Times are milliseconds since `epoch`, plus one
/// (0 means "none").
struct Activity {
    epoch: Instant,
    /// Requests whose answer has not been written yet.
    in_flight: AtomicUsize,
    /// When bytes of a request began to arrive while none was in flight; 0: none since.
    head_started: AtomicU64,
    /// When the last answer was written (or the connection opened).
    idle_since: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            head_started: AtomicU64::new(0),
            idle_since: AtomicU64::new(1),
        }
    }

    fn now(&self) -> u64 {
        millis(self.epoch.elapsed()).saturating_add(1)
    }
}

/// A request in flight on its connection, until dropped (with its answer's body).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        activity.head_started.store(0, Ordering::SeqCst);
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.idle_since.store(self.0.now(), Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An answer's body that keeps its request in flight until it is written (or dropped).
struct Guarded {
    inner: Body,
    _guard: InFlight,
}

impl HttpBody for Guarded {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's socket, noting when the bytes of a new request start to arrive.
struct Watched<T> {
    io: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before && self.activity.in_flight.load(Ordering::SeqCst) == 0 {
            let now = self.activity.now();
            let _ = self.activity.head_started.compare_exchange(
                0,
                now,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Reads a request's whole body within `body_timeout` before the handler sees it (a layer
/// on the router): a declared length over the limit is a 413 before any of it is read, a
/// body that does not arrive in time a 408, and either closes the connection.
pub async fn bounded_body(
    State(timeout): State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return closing(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the body is larger than 1 MiB",
        ));
    }
    let has_body = declared.is_some_and(|n| n > 0)
        || request.headers().contains_key(header::TRANSFER_ENCODING);
    if !has_body {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(_)) if declared.is_none() => closing(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the body is larger than 1 MiB",
        )),
        Ok(Err(err)) => closing(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("the body could not be read: {err}"),
        )),
        Err(_) => closing(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the body did not arrive within {} s (PRIMED_HTTP_BODY_TIMEOUT_SECONDS); send it at once",
                timeout.as_secs()
            ),
        )),
    }
}

/// An error answer after which the connection is closed (its body was not read).
fn closing(error: ApiError) -> Response {
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
