//! The behaviours Erlang/OTP's supervisor suite checks, on our supervisors.
//!
//! Every wait here is bounded: helpers poll or receive with a deadline and fail the test
//! when it passes. Children report their lives (start, graceful stop) on a channel, so tests
//! assert exact orders.
// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort};
use supervision::{
    Backoff, ChildKind, ChildSpec, ChildState, ChildStatus, EventHandler, Restart, Strategy,
    Supervisor, SupervisorError, SupervisorEvent, SupervisorMsg, SupervisorRef, SupervisorSpec,
    status,
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

const WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq)]
enum Life {
    Started(String),
    Stopped(String),
}

enum WMsg {
    Panic,
    Fail,
    Stop,
    Block,
    FailOnStop,
    Ping(RpcReplyPort<ActorId>),
}

#[derive(Clone)]
struct Worker {
    name: String,
    life: UnboundedSender<(Life, ActorRef<WMsg>)>,
    /// Starts left before pre_start fails; None = unlimited.
    start_budget: Option<Arc<AtomicI32>>,
}

impl Actor for Worker {
    type Msg = WMsg;
    type State = bool;
    type Arguments = ();

    async fn pre_start(&self, myself: ActorRef<WMsg>, _: ()) -> Result<bool, ActorProcessingErr> {
        if let Some(budget) = &self.start_budget
            && budget.fetch_sub(1, Ordering::SeqCst) <= 0
        {
            return Err(format!("{} cannot start", self.name).into());
        }
        let _ = self.life.send((Life::Started(self.name.clone()), myself));
        Ok(false)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<WMsg>,
        fail_on_stop: &mut bool,
    ) -> Result<(), ActorProcessingErr> {
        let _ = self.life.send((Life::Stopped(self.name.clone()), myself));
        if *fail_on_stop {
            return Err("failing while stopping".into());
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<WMsg>,
        msg: WMsg,
        fail_on_stop: &mut bool,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WMsg::Panic => panic!("{} was told to panic", self.name),
            WMsg::Fail => return Err(format!("{} was told to fail", self.name).into()),
            WMsg::Stop => myself.stop(Some("done".into())),
            WMsg::Block => tokio::time::sleep(Duration::from_secs(3600)).await,
            WMsg::FailOnStop => *fail_on_stop = true,
            WMsg::Ping(reply) => {
                let _ = reply.send(myself.get_id());
            }
        }
        Ok(())
    }
}

/// Test fixture: the channel children report on, and the events the supervisors emit.
struct Fx {
    life_tx: UnboundedSender<(Life, ActorRef<WMsg>)>,
    life: UnboundedReceiver<(Life, ActorRef<WMsg>)>,
    events_tx: UnboundedSender<SupervisorEvent>,
    events: UnboundedReceiver<SupervisorEvent>,
}

impl Fx {
    fn new() -> Self {
        let (life_tx, life) = unbounded_channel();
        let (events_tx, events) = unbounded_channel();
        Self {
            life_tx,
            life,
            events_tx,
            events,
        }
    }

    fn worker(&self, name: &str, restart: Restart) -> ChildSpec {
        self.worker_with(name, restart, None)
    }

    fn worker_with(
        &self,
        name: &str,
        restart: Restart,
        budget: Option<Arc<AtomicI32>>,
    ) -> ChildSpec {
        let worker = Worker {
            name: name.to_string(),
            life: self.life_tx.clone(),
            start_budget: budget,
        };
        ChildSpec::worker(name, move |sup: ActorCell| {
            let worker = worker.clone();
            async move {
                let (actor, _) = Actor::spawn_linked(None, worker, (), sup).await?;
                Ok(actor.get_cell())
            }
        })
        .restart(restart)
    }

    fn spec(&self, name: &str, strategy: Strategy) -> SupervisorSpec {
        let tx = self.events_tx.clone();
        SupervisorSpec::new(name, strategy)
            .unregistered()
            .intensity(100, Duration::from_secs(10))
            .on_event(EventHandler::new(move |e| {
                let _ = tx.send(e.clone());
            }))
    }

    /// The next life event, within the deadline.
    async fn next(&mut self) -> (Life, ActorRef<WMsg>) {
        match tokio::time::timeout(WAIT, self.life.recv()).await {
            Ok(Some(ev)) => ev,
            other => panic!(
                "no life event within {WAIT:?}: {:?}",
                other.map(|o| o.map(|e| e.0))
            ),
        }
    }

    /// The next `n` life events, as plain values.
    async fn lives(&mut self, n: usize) -> Vec<Life> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.next().await.0);
        }
        out
    }

    /// Waits for the start of `n` children and returns their refs by name.
    async fn started(&mut self, names: &[&str]) -> Vec<ActorRef<WMsg>> {
        let mut out = Vec::new();
        for name in names {
            let (life, actor) = self.next().await;
            assert_eq!(life, Life::Started(name.to_string()));
            out.push(actor);
        }
        out
    }

    fn no_more_lives(&mut self) {
        let mut extra = Vec::new();
        while let Ok((life, _)) = self.life.try_recv() {
            extra.push(life);
        }
        assert!(extra.is_empty(), "unexpected life events: {extra:?}");
    }

    /// An event already emitted that matches `pred`, without waiting.
    fn seen(&mut self, pred: impl Fn(&SupervisorEvent) -> bool) -> Option<SupervisorEvent> {
        while let Ok(e) = self.events.try_recv() {
            if pred(&e) {
                return Some(e);
            }
        }
        None
    }

    /// The next event that matches `pred`, within the deadline.
    async fn event(&mut self, pred: impl Fn(&SupervisorEvent) -> bool) -> SupervisorEvent {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Some(e)) if pred(&e) => return e,
                Ok(Some(_)) => continue,
                _ => panic!("expected event did not come within {WAIT:?}"),
            }
        }
    }
}

async fn tree(sup: &SupervisorRef) -> ChildStatus {
    status(sup, WAIT).await.expect("status")
}

fn child<'a>(tree: &'a ChildStatus, name: &str) -> &'a ChildStatus {
    tree.find(name)
        .unwrap_or_else(|| panic!("no child {name} in {tree:?}"))
}

/// Makes `actor` exit the given way and waits until it is gone, so that the supervisor has
/// its exit event queued before any later query.
async fn exit(actor: &ActorRef<WMsg>, how: Exit) {
    match how {
        Exit::Normal => actor.cast(WMsg::Stop).expect("cast"),
        Exit::Error => actor.cast(WMsg::Fail).expect("cast"),
        Exit::Panic => actor.cast(WMsg::Panic).expect("cast"),
        Exit::Kill => actor.kill(),
    }
    actor.wait(Some(WAIT)).await.expect("child did not exit");
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Exit {
    Normal,
    Error,
    Panic,
    Kill,
}

async fn ping(actor: &ActorRef<WMsg>) -> ActorId {
    ractor::call_t!(actor, WMsg::Ping, 5000).expect("ping")
}

#[tokio::test]
async fn each_restart_type_on_each_exit_under_each_strategy() {
    for strategy in [
        Strategy::OneForOne,
        Strategy::OneForAll,
        Strategy::RestForOne,
    ] {
        for restart in [Restart::Permanent, Restart::Transient, Restart::Temporary] {
            for how in [Exit::Normal, Exit::Error, Exit::Panic, Exit::Kill] {
                let case = format!("{strategy:?}/{restart:?}/{how:?}");
                let mut fx = Fx::new();
                let spec = fx
                    .spec("sup", strategy)
                    .child(fx.worker("first", Restart::Permanent))
                    .child(fx.worker("victim", restart))
                    .child(fx.worker("last", Restart::Permanent));
                let (sup, handle) = Supervisor::start(spec).await.expect(&case);
                let refs = fx.started(&["first", "victim", "last"]).await;

                exit(&refs[1], how).await;
                let t = tree(&sup).await;
                let victim = child(&t, "victim");

                let abnormal = how != Exit::Normal;
                let expect_restart = match restart {
                    Restart::Permanent => true,
                    Restart::Transient => abnormal,
                    Restart::Temporary => false,
                };
                if expect_restart {
                    assert_eq!(victim.state, ChildState::Running, "{case}");
                    assert_eq!(victim.restart_count, 1, "{case}");
                } else {
                    let want = if abnormal {
                        ChildState::Failed
                    } else {
                        ChildState::Stopped
                    };
                    assert_eq!(victim.state, want, "{case}");
                    assert_eq!(victim.restart_count, 0, "{case}");
                }
                assert_eq!(victim.last_failure.is_some(), abnormal, "{case}");
                if how == Exit::Panic {
                    let reason = &victim.last_failure.as_ref().unwrap().reason;
                    assert!(
                        reason.contains("victim was told to panic"),
                        "{case}: {reason}"
                    );
                }
                let siblings_restarted = |name: &str| match (expect_restart, strategy, name) {
                    (false, _, _) | (true, Strategy::OneForOne, _) => 0,
                    (true, Strategy::OneForAll, _) => 1,
                    (true, Strategy::RestForOne, "first") => 0,
                    (true, Strategy::RestForOne, _) => 1,
                };
                for name in ["first", "last"] {
                    let c = child(&t, name);
                    assert_eq!(c.state, ChildState::Running, "{case}: {name}");
                    assert_eq!(c.restart_count, siblings_restarted(name), "{case}: {name}");
                }
                sup.stop_and_wait(None, Some(WAIT)).await.expect(&case);
                handle.await.expect(&case);
            }
        }
    }
}

#[tokio::test]
async fn one_for_one_restarts_only_the_failed_child() {
    let mut fx = Fx::new();
    let spec = fx
        .spec("sup", Strategy::OneForOne)
        .children(["a", "b", "c"].map(|n| fx.worker(n, Restart::Permanent)));
    let (sup, _) = Supervisor::start(spec).await.unwrap();
    let refs = fx.started(&["a", "b", "c"]).await;

    exit(&refs[1], Exit::Panic).await;
    let new_b = fx.started(&["b"]).await.remove(0);
    assert_ne!(ping(&new_b).await, refs[1].get_id());
    assert_eq!(ping(&refs[0]).await, refs[0].get_id());
    assert_eq!(ping(&refs[2]).await, refs[2].get_id());
    fx.no_more_lives();
    sup.stop_and_wait(None, Some(WAIT)).await.unwrap();
}

#[tokio::test]
async fn one_for_all_stops_the_others_in_reverse_and_restarts_all_in_order() {
    let mut fx = Fx::new();
    let spec = fx
        .spec("sup", Strategy::OneForAll)
        .children(["a", "b", "c"].map(|n| fx.worker(n, Restart::Permanent)));
    let (sup, _) = Supervisor::start(spec).await.unwrap();
    let old = fx.started(&["a", "b", "c"]).await;

    exit(&old[1], Exit::Error).await;
    assert_eq!(
        fx.lives(2).await,
        vec![Life::Stopped("c".into()), Life::Stopped("a".into())]
    );
    let new = fx.started(&["a", "b", "c"]).await;
    for (o, n) in old.iter().zip(&new) {
        assert_ne!(o.get_id(), n.get_id());
    }
    fx.no_more_lives();
    sup.stop_and_wait(None, Some(WAIT)).await.unwrap();
}

#[tokio::test]
async fn rest_for_one_restarts_later_siblings_and_leaves_earlier_ones_alone() {
    let mut fx = Fx::new();
    let spec = fx
        .spec("sup", Strategy::RestForOne)
        .children(["a", "b", "c", "d"].map(|n| fx.worker(n, Restart::Permanent)));
    let (sup, _) = Supervisor::start(spec).await.unwrap();
    let old = fx.started(&["a", "b", "c", "d"]).await;

    exit(&old[1], Exit::Panic).await;
    assert_eq!(
        fx.lives(2).await,
        vec![Life::Stopped("d".into()), Life::Stopped("c".into())]
    );
    fx.started(&["b", "c", "d"]).await;
    assert_eq!(ping(&old[0]).await, old[0].get_id(), "a must be untouched");
    let t = tree(&sup).await;
    assert_eq!(child(&t, "a").restart_count, 0);
    fx.no_more_lives();
    sup.stop_and_wait(None, Some(WAIT)).await.unwrap();
}

#[tokio::test]
async fn exceeding_the_intensity_stops_children_and_fails_the_supervisor() {
    let mut fx = Fx::new();
    let spec = fx
        .spec("sup", Strategy::OneForOne)
        .intensity(2, Duration::from_secs(60))
        .children(["a", "b"].map(|n| fx.worker(n, Restart::Permanent)));
    let (_sup, handle) = Supervisor::start(spec).await.unwrap();
    let mut refs = fx.started(&["a", "b"]).await;

    for _ in 0..2 {
        exit(&refs[1], Exit::Panic).await;
        refs[1] = fx.started(&["b"]).await.remove(0);
    }
    exit(&refs[1], Exit::Panic).await;
    // The third restart is one too many: a is stopped gracefully and the supervisor fails.
    assert_eq!(fx.lives(1).await, vec![Life::Stopped("a".into())]);
    let gave_up = fx
        .event(|e| matches!(e, SupervisorEvent::GaveUp { .. }))
        .await;
    assert_eq!(
        gave_up,
        SupervisorEvent::GaveUp {
            supervisor: "sup".into(),
            child: "b".into(),
            restarts: 3,
            period: Duration::from_secs(60),
        }
    );
    tokio::time::timeout(WAIT, handle).await.unwrap().unwrap();
    fx.no_more_lives();
}

#[tokio::test]
async fn a_nested_supervisor_that_gives_up_is_restarted_by_its_parent() {
    let mut fx = Fx::new();
    let inner = fx
        .spec("inner", Strategy::OneForOne)
        .intensity(0, Duration::from_secs(60))
        .child(fx.worker("w", Restart::Permanent));
    let spec = fx
        .spec("outer", Strategy::OneForOne)
        .child(fx.worker("sibling", Restart::Permanent))
        .child(ChildSpec::supervisor(inner));
    let (outer, _) = Supervisor::start(spec).await.unwrap();
    let refs = fx.started(&["sibling", "w"]).await;

    exit(&refs[1], Exit::Panic).await;
    // inner gives up; outer sees inner fail and restarts it, which starts a fresh w.
    let failed = fx
        .event(|e| matches!(e, SupervisorEvent::ChildFailed { child, .. } if child == "inner"))
        .await;
    let SupervisorEvent::ChildFailed {
        supervisor, reason, ..
    } = failed
    else {
        unreachable!()
    };
    assert_eq!(supervisor, "outer");
    assert!(reason.contains("gave up"), "{reason}");
    let w2 = fx.started(&["w"]).await.remove(0);
    assert_ne!(w2.get_id(), refs[1].get_id());

    let t = tree(&outer).await;
    let inner = child(&t, "inner");
    assert_eq!(inner.kind, ChildKind::Supervisor);
    assert_eq!(inner.restart_count, 1);
    assert_eq!(inner.state, ChildState::Running);
    assert_eq!(
        child(&t, "w").restart_count,
        0,
        "a fresh inner starts a fresh w"
    );
    assert_eq!(child(&t, "sibling").restart_count, 0);
    outer.stop_and_wait(None, Some(WAIT)).await.unwrap();
}

#[tokio::test]
async fn escalation_climbs_every_level_and_the_top_terminates() {
    let mut fx = Fx::new();
    let bottom = fx
        .spec("bottom", Strategy::OneForOne)
        .intensity(0, Duration::from_secs(60))
        .child(fx.worker("w", Restart::Permanent));
    let middle = fx
        .spec("middle", Strategy::OneForOne)
        .intensity(0, Duration::from_secs(60))
        .child(fx.worker("m", Restart::Permanent))
        .child(ChildSpec::supervisor(bottom));
    let top = fx
        .spec("top", Strategy::OneForOne)
        .intensity(0, Duration::from_secs(60))
        .child(fx.worker("t", Restart::Permanent))
        .child(ChildSpec::supervisor(middle));
    let (_top, handle) = Supervisor::start(top).await.unwrap();
    let refs = fx.started(&["t", "m", "w"]).await;

    exit(&refs[2], Exit::Panic).await;
    tokio::time::timeout(WAIT, handle)
        .await
        .expect("top did not terminate")
        .unwrap();
    // Each level stopped what it still had, innermost first.
    assert_eq!(
        fx.lives(2).await,
        vec![Life::Stopped("m".into()), Life::Stopped("t".into())]
    );
    let mut gave_up = Vec::new();
    while let Ok(e) = fx.events.try_recv() {
        if let SupervisorEvent::GaveUp { supervisor, .. } = e {
            gave_up.push(supervisor);
        }
    }
    assert_eq!(gave_up, vec!["bottom", "middle", "top"]);
    fx.no_more_lives();
}

#[tokio::test]
async fn shutdown_stops_children_in_reverse_start_order() {
    let mut fx = Fx::new();
    let inner = fx
        .spec("inner", Strategy::OneForOne)
        .children(["i1", "i2"].map(|n| fx.worker(n, Restart::Permanent)));
    let spec = fx
        .spec("sup", Strategy::OneForOne)
        .child(fx.worker("a", Restart::Permanent))
        .child(ChildSpec::supervisor(inner))
        .child(fx.worker("c", Restart::Transient));
    let (sup, handle) = Supervisor::start(spec).await.unwrap();
    fx.started(&["a", "i1", "i2", "c"]).await;

    sup.stop_and_wait(Some("shutdown".into()), Some(WAIT))
        .await
        .unwrap();
    assert_eq!(
        fx.lives(4).await,
        ["c", "i2", "i1", "a"]
            .map(|n| Life::Stopped(n.into()))
            .to_vec()
    );
    handle.await.unwrap();
    fx.no_more_lives();
}

// On tokio's paused clock: the timeout is a timer, so "not before the timeout" is exact, not
// a wall-clock race.
#[tokio::test(start_paused = true)]
async fn a_child_that_ignores_stop_is_killed_after_its_shutdown_timeout() {
    let mut fx = Fx::new();
    let timeout = Duration::from_millis(200);
    let spec = fx
        .spec("sup", Strategy::OneForOne)
        .child(fx.worker("a", Restart::Permanent))
        .child(fx.worker("stubborn", Restart::Permanent).shutdown(timeout))
        .child(fx.worker("c", Restart::Permanent));
    let (sup, handle) = Supervisor::start(spec).await.unwrap();
    let refs = fx.started(&["a", "stubborn", "c"]).await;
    refs[1].cast(WMsg::Block).unwrap();

    let t0 = tokio::time::Instant::now();
    sup.stop_and_wait(None, Some(WAIT)).await.unwrap();
    assert!(
        t0.elapsed() >= timeout,
        "stop cannot finish before the timeout"
    );
    // A killed child does not run post_stop, so only c and a report a graceful stop.
    assert_eq!(
        fx.lives(2).await,
        vec![Life::Stopped("c".into()), Life::Stopped("a".into())]
    );
    let killed = fx
        .event(|e| matches!(e, SupervisorEvent::ChildKilled { .. }))
        .await;
    assert_eq!(
        killed,
        SupervisorEvent::ChildKilled {
            supervisor: "sup".into(),
            child: "stubborn".into(),
            timeout,
        }
    );
    assert!(
        refs[1].wait(Some(WAIT)).await.is_ok(),
        "stubborn must be dead"
    );
    handle.await.unwrap();
}

#[tokio::test]
async fn nothing_is_restarted_while_shutting_down() {
    let mut fx = Fx::new();
    let spec = fx
        .spec("sup", Strategy::OneForAll)
        .children(["a", "b", "c"].map(|n| fx.worker(n, Restart::Permanent)));
    let (sup, handle) = Supervisor::start(spec).await.unwrap();
    let refs = fx.started(&["a", "b", "c"]).await;
    // Every child fails while it stops: an abnormal exit of a permanent child.
    for r in &refs {
        r.cast(WMsg::FailOnStop).unwrap();
        ping(r).await;
    }
    sup.stop_and_wait(None, Some(WAIT)).await.unwrap();
    handle.await.unwrap();
    assert_eq!(
        fx.lives(3).await,
        ["c", "b", "a"].map(|n| Life::Stopped(n.into())).to_vec()
    );
    fx.no_more_lives();
    while let Ok(e) = fx.events.try_recv() {
        assert!(
            !matches!(
                e,
                SupervisorEvent::ChildStarted {
                    restart_count: 1..,
                    ..
                }
            ),
            "restarted during shutdown: {e:?}"
        );
    }
}

#[tokio::test]
async fn a_child_that_cannot_start_fails_the_supervisor_start_and_stops_earlier_ones() {
    let mut fx = Fx::new();
    let spec = fx
        .spec("sup", Strategy::OneForOne)
        .child(fx.worker("a", Restart::Permanent))
        .child(fx.worker_with("b", Restart::Permanent, Some(Arc::new(AtomicI32::new(0)))))
        .child(fx.worker("c", Restart::Permanent));
    let err = Supervisor::start(spec).await.expect_err("start must fail");
    assert!(err.to_string().contains("could not start child b"), "{err}");
    assert_eq!(
        fx.lives(2).await,
        vec![Life::Started("a".into()), Life::Stopped("a".into())]
    );
    fx.no_more_lives();
}

#[tokio::test]
async fn failed_restarts_count_against_the_intensity() {
    let mut fx = Fx::new();
    // b starts once, then every start fails.
    let budget = Arc::new(AtomicI32::new(1));
    let spec = fx
        .spec("sup", Strategy::OneForOne)
        .intensity(3, Duration::from_secs(60))
        .child(fx.worker("a", Restart::Permanent))
        .child(fx.worker_with("b", Restart::Permanent, Some(budget.clone())));
    let (_sup, handle) = Supervisor::start(spec).await.unwrap();
    let refs = fx.started(&["a", "b"]).await;
    exit(&refs[1], Exit::Panic).await;
    tokio::time::timeout(WAIT, handle).await.unwrap().unwrap();
    // One start succeeded; restarts 1..=3 were attempted and failed to start; the 4th
    // restart would exceed the intensity of 3, so it is never attempted.
    assert_eq!(budget.load(Ordering::SeqCst), -3);
    let mut start_failures = 0;
    while let Ok(e) = fx.events.try_recv() {
        if matches!(e, SupervisorEvent::ChildStartFailed { .. }) {
            start_failures += 1;
        }
    }
    assert_eq!(start_failures, 3);
}

#[tokio::test]
async fn duplicate_child_names_are_refused() {
    let fx = Fx::new();
    let spec = fx
        .spec("sup", Strategy::OneForOne)
        .child(fx.worker("a", Restart::Permanent))
        .child(fx.worker("a", Restart::Temporary));
    let err = Supervisor::start(spec).await.expect_err("must fail");
    assert!(
        err.to_string().contains("two children named \"a\""),
        "{err}"
    );
}

// On tokio's paused clock: the backoff is a timer, so "not before the delay" is exact.
#[tokio::test(start_paused = true)]
async fn backoff_delays_restarts_and_grows() {
    let mut fx = Fx::new();
    let backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
        multiplier: 2.0,
        jitter: 0.0,
        reset_after: Duration::from_secs(60),
    };
    let spec = fx
        .spec("sup", Strategy::OneForOne)
        .backoff(backoff)
        .child(fx.worker("w", Restart::Permanent));
    let (sup, _) = Supervisor::start(spec).await.unwrap();
    let mut w = fx.started(&["w"]).await.remove(0);

    // The first failure is restarted at once, as in OTP: nothing is scheduled.
    exit(&w, Exit::Panic).await;
    w = fx.started(&["w"]).await.remove(0);
    assert!(
        fx.seen(|e| matches!(e, SupervisorEvent::ChildRestartScheduled { .. }))
            .is_none(),
        "the first restart is immediate"
    );

    // Failing again before `reset_after` waits, growing.
    for expected in [100, 200] {
        let t0 = tokio::time::Instant::now();
        exit(&w, Exit::Panic).await;
        let t = tree(&sup).await;
        assert_eq!(child(&t, "w").state, ChildState::Restarting);
        assert!(!t.is_healthy());
        let scheduled = fx
            .event(|e| matches!(e, SupervisorEvent::ChildRestartScheduled { .. }))
            .await;
        assert!(
            matches!(scheduled, SupervisorEvent::ChildRestartScheduled { delay, .. } if delay == Duration::from_millis(expected))
        );
        w = fx.started(&["w"]).await.remove(0);
        assert!(t0.elapsed() >= Duration::from_millis(expected));
    }
    let t = tree(&sup).await;
    assert_eq!(child(&t, "w").restart_count, 3);
    assert!(t.is_healthy());
    sup.stop_and_wait(None, Some(WAIT)).await.unwrap();
}

// The paused clock: "stays up past reset_after" is a sleep of the paused clock, exact.
#[tokio::test(start_paused = true)]
async fn a_child_up_past_reset_after_is_restarted_at_once_with_its_restarts_forgiven() {
    let mut fx = Fx::new();
    let backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
        multiplier: 2.0,
        jitter: 0.0,
        reset_after: Duration::from_secs(5),
    };
    let spec = fx
        .spec("sup", Strategy::OneForOne)
        .intensity(2, Duration::from_secs(60))
        .backoff(backoff)
        .child(fx.worker("w", Restart::Permanent));
    let (sup, handle) = Supervisor::start(spec).await.unwrap();
    let mut w = fx.started(&["w"]).await.remove(0);

    // A crash loop: at once, then after 100 ms. Two restarts: the intensity is full.
    exit(&w, Exit::Panic).await;
    w = fx.started(&["w"]).await.remove(0);
    exit(&w, Exit::Panic).await;
    fx.event(|e| matches!(e, SupervisorEvent::ChildRestartScheduled { .. }))
        .await;
    w = fx.started(&["w"]).await.remove(0);

    // Up past reset_after, well inside the intensity's 60 s: a failure now is restarted at
    // once (nothing scheduled), and the supervisor does not give up on a third restart.
    tokio::time::sleep(Duration::from_secs(6)).await;
    exit(&w, Exit::Panic).await;
    w = fx.started(&["w"]).await.remove(0);
    assert!(
        fx.seen(|e| matches!(e, SupervisorEvent::ChildRestartScheduled { .. }))
            .is_none(),
        "restarted at once after a stable run"
    );
    assert!(
        fx.seen(|e| matches!(e, SupervisorEvent::GaveUp { .. }))
            .is_none()
    );
    assert_eq!(child(&tree(&sup).await, "w").restart_count, 3);

    // The window counts again from there: one more quick restart fits (after the first
    // backoff step), the one after it is one too many.
    exit(&w, Exit::Panic).await;
    let scheduled = fx
        .event(|e| matches!(e, SupervisorEvent::ChildRestartScheduled { .. }))
        .await;
    assert!(
        matches!(scheduled, SupervisorEvent::ChildRestartScheduled { delay, .. } if delay == Duration::from_millis(100))
    );
    w = fx.started(&["w"]).await.remove(0);
    exit(&w, Exit::Panic).await;
    fx.event(|e| matches!(e, SupervisorEvent::GaveUp { .. }))
        .await;
    tokio::time::timeout(WAIT, handle).await.unwrap().unwrap();
}

// The paused clock: the sleep below passes the backoff for certain (the restart timer, had
// it survived, would fire first), without waiting real time.
#[tokio::test(start_paused = true)]
async fn stopping_during_a_backoff_cancels_the_pending_restart() {
    let mut fx = Fx::new();
    let backoff = Backoff {
        initial: Duration::from_millis(300),
        jitter: 0.0,
        ..Backoff::default()
    };
    let spec = fx
        .spec("sup", Strategy::OneForOne)
        .backoff(backoff)
        .child(fx.worker("w", Restart::Permanent));
    let (sup, handle) = Supervisor::start(spec).await.unwrap();
    let w = fx.started(&["w"]).await.remove(0);
    // The first failure restarts at once; the second waits the backoff.
    exit(&w, Exit::Panic).await;
    let w = fx.started(&["w"]).await.remove(0);
    exit(&w, Exit::Panic).await;
    fx.event(|e| matches!(e, SupervisorEvent::ChildRestartScheduled { .. }))
        .await;
    sup.stop_and_wait(None, Some(WAIT)).await.unwrap();
    handle.await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await; // past the backoff: nothing may start
    fx.no_more_lives();
}

#[tokio::test]
async fn status_reports_the_whole_tree() {
    let mut fx = Fx::new();
    let inner = fx
        .spec("inner", Strategy::RestForOne)
        .child(fx.worker("x", Restart::Transient));
    let spec = fx
        .spec("root", Strategy::OneForAll)
        .child(fx.worker("a", Restart::Permanent))
        .child(ChildSpec::supervisor(inner));
    let (sup, _) = Supervisor::start(spec).await.unwrap();
    let refs = fx.started(&["a", "x"]).await;
    exit(&refs[1], Exit::Error).await;
    fx.started(&["x"]).await;

    let t = tree(&sup).await;
    let json = serde_json::to_value(&t).unwrap();
    assert_eq!(json["name"], "root");
    assert_eq!(json["strategy"], "one_for_all");
    assert_eq!(json["children"][0]["name"], "a");
    assert_eq!(json["children"][0]["kind"], "worker");
    assert_eq!(json["children"][0]["state"], "running");
    assert_eq!(json["children"][1]["kind"], "supervisor");
    assert_eq!(json["children"][1]["strategy"], "rest_for_one");
    let x = &json["children"][1]["children"][0];
    assert_eq!(x["name"], "x");
    assert_eq!(x["restart"], "transient");
    assert_eq!(x["restart_count"], 1);
    assert!(
        x["last_failure"]["reason"]
            .as_str()
            .unwrap()
            .contains("told to fail")
    );
    assert!(x["last_failure"]["at"].as_str().unwrap().ends_with('Z'));
    assert!(x["uptime_seconds"].as_f64().unwrap() >= 0.0);
    sup.stop_and_wait(None, Some(WAIT)).await.unwrap();
}

#[tokio::test]
async fn an_operator_restart_replaces_the_child_and_its_dependants() {
    let mut fx = Fx::new();
    let spec = fx
        .spec("sup", Strategy::RestForOne)
        .children(["a", "b", "c"].map(|n| fx.worker(n, Restart::Permanent)));
    let (sup, _) = Supervisor::start(spec).await.unwrap();
    let old = fx.started(&["a", "b", "c"]).await;

    let answer = ractor::call_t!(sup, SupervisorMsg::RestartChild, 5000, "b".to_string()).unwrap();
    assert!(answer.is_ok());
    assert_eq!(
        fx.lives(2).await,
        vec![Life::Stopped("c".into()), Life::Stopped("b".into())]
    );
    fx.started(&["b", "c"]).await;
    assert_eq!(ping(&old[0]).await, old[0].get_id());

    let unknown =
        ractor::call_t!(sup, SupervisorMsg::RestartChild, 5000, "zz".to_string()).unwrap();
    assert!(matches!(unknown, Err(SupervisorError::UnknownChild { .. })));
    sup.stop_and_wait(None, Some(WAIT)).await.unwrap();
}

/// A registered child, reached by name: the peer never holds a reference.
#[derive(Clone)]
struct Named;

impl Actor for Named {
    type Msg = WMsg;
    type State = ();
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<WMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
    async fn handle(
        &self,
        me: ActorRef<WMsg>,
        msg: WMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WMsg::Panic => panic!("told to panic"),
            WMsg::Ping(reply) => {
                let _ = reply.send(me.get_id());
            }
            _ => {}
        }
        Ok(())
    }
}

#[tokio::test]
async fn peers_reach_a_restarted_child_by_its_registered_name() {
    let name = "otp-suite-named-child";
    let spec = SupervisorSpec::new("named-sup", Strategy::OneForOne)
        .unregistered()
        .child(ChildSpec::actor(name, Named, ()));
    let (sup, _) = Supervisor::start(spec).await.unwrap();
    let by_name =
        || -> ActorRef<WMsg> { ractor::registry::where_is(name).expect("registered").into() };

    let first = ping(&by_name()).await;
    by_name().cast(WMsg::Panic).unwrap();
    let deadline = Instant::now() + WAIT;
    let second = loop {
        // Bounded polling: the name points at the new incarnation once it has started.
        if let Some(cell) = ractor::registry::where_is(name)
            && cell.get_id() != first
        {
            break ping(&cell.into()).await;
        }
        assert!(Instant::now() < deadline, "no new incarnation");
        tokio::task::yield_now().await;
    };
    assert_ne!(first, second);
    assert_eq!(child(&tree(&sup).await, name).restart_count, 1);
    sup.stop_and_wait(None, Some(WAIT)).await.unwrap();
}
