//! The real supervision tree, in process: peers reach restarted actors by name, and a
//! restarted HTTP actor keeps serving on the same socket.
// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use actors::HeartbeatMsg;
use primed::http::AppState;
use primed::tree::{self, TreeDeps};
use ractor::{ActorRef, registry};
use supervision::{Supervisor, status};

fn by_name<M: Send + 'static>(name: &str) -> Option<ActorRef<M>> {
    registry::where_is(name).map(Into::into)
}

#[tokio::test]
async fn peers_reach_restarted_actors_by_name_and_http_keeps_its_socket() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let app = AppState::new(tree::ROOT, Vec::new());
    app.set_ready(true);
    let deps = TreeDeps {
        listener: Arc::new(listener),
        app,
        heartbeat_interval: Duration::from_millis(50),
        health_sinks: Vec::new(),
        relay: None,
        pipeline: None,
        collector: None,
        retention: None,
    };
    let (root, handle) = Supervisor::start(tree::root(&deps)).await.unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let ready = format!("http://{addr}/ready");

    // Each actor, killed, comes back under its name and answers there.
    for name in [tree::HEARTBEAT, tree::HTTP] {
        let old = registry::where_is(name).expect("registered").get_id();
        registry::where_is(name).unwrap().kill();
        assert_eventually!(
            registry::where_is(name).is_some_and(|c| c.get_id() != old),
            "{name} was not restarted under its name"
        );
    }
    let heartbeat: ActorRef<HeartbeatMsg> = by_name(tree::HEARTBEAT).unwrap();
    // The new heartbeat reaches the root by name too: its reports read the tree.
    assert_eventually!(
        ractor::call!(heartbeat, HeartbeatMsg::Latest)
            .ok()
            .flatten()
            .is_some_and(|r| r.healthy),
        "the restarted heartbeat did not report a healthy tree"
    );
    assert_eventually!(
        http.get(&ready)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200),
        "the restarted HTTP actor does not serve on the same socket"
    );

    let t = status(&root, Duration::from_secs(2)).await.unwrap();
    for name in [tree::HEARTBEAT, tree::HTTP] {
        let c = t.find(name).unwrap();
        assert_eq!(c.restart_count, 1, "{name}");
        assert_eq!(
            c.last_failure.as_ref().map(|f| f.reason.as_str()),
            Some("killed")
        );
    }

    root.stop_and_wait(None, Some(Duration::from_secs(20)))
        .await
        .unwrap();
    tokio::time::timeout(support::WAIT, handle)
        .await
        .unwrap()
        .unwrap();
    assert!(registry::where_is(tree::ROOT).is_none());
    // The last handle on the socket is ours; once it is gone, nobody listens.
    drop(deps);
    assert!(
        http.get(&ready).send().await.is_err(),
        "HTTP must stop with the tree"
    );
}
