//! The HTTP server actor: serves [`super::router`] on the daemon's listener.
//!
//! The listening socket is bound once by the daemon before the tree starts (so a port
//! conflict is a clear start-up error) and shared; each incarnation serves a clone of it, so
//! a restart never drops the port. Stopping the actor stops intake and lets requests in
//! flight finish within the shutdown timeout. If serving fails, the actor fails and its
//! supervisor restarts it.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{AppState, router};

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
        let app = router(args.app);
        // The server runs on its own task so that the actor keeps answering; its end is
        // reported back as a message, which fails the actor.
        let task = tokio::spawn(async move {
            let served = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
            if let Err(err) = served {
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
