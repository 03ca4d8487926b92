//! The supervision tree that runs, declared in one place.
//!
//! ```text
//! primed (one_for_one, 10 restarts / 60 s, backoff 10 ms → 5 s)
//! ├── heartbeat      permanent  tree liveness → systemd watchdog (→ worker_health_checks, metrics)
//! ├── outbox-relay   permanent  outbox rows → broker (JetStream, or the embedded queue)
//! └── http           permanent  public API, /health /ready /admin/* /openapi.json
//! ```
//!
//! Children start top to bottom and stop bottom to top, so on shutdown HTTP intake stops
//! first, then the relay (which finishes its round), and the heartbeat last. Consumers,
//! the retry timer and the DLQ join between heartbeat and HTTP as they arrive.

use std::sync::Arc;
use std::time::Duration;

use actors::{HealthSink, Heartbeat, HeartbeatArgs, OutboxRelay, RelayArgs};
use supervision::{Backoff, ChildSpec, Strategy, SupervisorSpec};

use crate::http::AppState;
use crate::http::server::{HttpArgs, HttpServer};

/// Registered name of the root supervisor.
pub const ROOT: &str = "primed";
/// Registered name of the heartbeat actor.
pub const HEARTBEAT: &str = "heartbeat";
/// Registered name of the outbox relay.
pub const OUTBOX_RELAY: &str = "outbox-relay";
/// Registered name of the HTTP server actor.
pub const HTTP: &str = "http";

/// What the tree's actors need from the daemon.
#[derive(Clone)]
pub struct TreeDeps {
    /// The bound HTTP socket.
    pub listener: Arc<std::net::TcpListener>,
    /// HTTP handler state.
    pub app: AppState,
    /// Time between heartbeats.
    pub heartbeat_interval: Duration,
    /// Where heartbeats go.
    pub health_sinks: Vec<Arc<dyn HealthSink>>,
    /// The outbox relay's configuration, when a store and a broker are configured.
    pub relay: Option<RelayArgs>,
}

/// The root of the tree.
pub fn root(deps: &TreeDeps) -> SupervisorSpec {
    let relay = deps.relay.clone().map(|args| {
        // Its round (claim, publish, mark) finishes within the publish timeout.
        ChildSpec::actor(OUTBOX_RELAY, OutboxRelay, args).shutdown(Duration::from_secs(15))
    });
    SupervisorSpec::new(ROOT, Strategy::OneForOne)
        .intensity(10, Duration::from_secs(60))
        .backoff(Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: 0.2,
            reset_after: Duration::from_secs(30),
        })
        .child(
            ChildSpec::actor(
                HEARTBEAT,
                Heartbeat,
                HeartbeatArgs {
                    root: ROOT.into(),
                    interval: deps.heartbeat_interval,
                    status_timeout: Duration::from_millis(500),
                    sinks: deps.health_sinks.clone(),
                },
            )
            .shutdown(Duration::from_secs(2)),
        )
        .children(relay)
        .child(
            ChildSpec::actor(
                HTTP,
                HttpServer,
                HttpArgs {
                    listener: deps.listener.clone(),
                    app: deps.app.clone(),
                    drain_timeout: Duration::from_secs(10),
                },
            )
            .shutdown(Duration::from_secs(12)),
        )
}
