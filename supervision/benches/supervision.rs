//! Supervision benchmarks (a bench binary: `cargo bench -p supervision`).
//!
//! - restart latency: from sending a message that makes a supervised child panic to its
//!   replacement answering its first message, over many restarts (median, p99, max);
//! - throughput of one supervised actor: casts/s and calls/s.
//!
//! Set `RESTARTS` or `MESSAGES` to change the counts.
// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use supervision::{ChildSpec, Strategy, Supervisor, SupervisorSpec};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

enum Msg {
    Panic,
    Count,
    Ping(RpcReplyPort<u64>),
}

#[derive(Clone)]
struct Child {
    started: UnboundedSender<ActorRef<Msg>>,
}

impl Actor for Child {
    type Msg = Msg;
    type State = u64;
    type Arguments = ();

    async fn pre_start(&self, me: ActorRef<Msg>, _: ()) -> Result<u64, ActorProcessingErr> {
        let _ = self.started.send(me);
        Ok(0)
    }

    async fn handle(
        &self,
        _: ActorRef<Msg>,
        msg: Msg,
        n: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            Msg::Panic => panic!("benchmark panic"),
            Msg::Count => *n += 1,
            Msg::Ping(reply) => {
                let _ = reply.send(*n);
            }
        }
        Ok(())
    }
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn main() {
    // Panics are the point here; keep them off the terminal.
    std::panic::set_hook(Box::new(|_| {}));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let restarts = env_count("RESTARTS", 10_000);
    let messages = env_count("MESSAGES", 1_000_000);
    let (tx, mut rx) = unbounded_channel();
    let spec = SupervisorSpec::new("bench", Strategy::OneForOne)
        .unregistered()
        .intensity(u32::MAX, Duration::from_secs(1))
        .child(ChildSpec::worker("child", move |sup| {
            let child = Child {
                started: tx.clone(),
            };
            async move {
                let (actor, _) = Actor::spawn_linked(None, child, (), sup).await?;
                Ok(actor.get_cell())
            }
        }));
    let (sup, _) = Supervisor::start(spec).await.expect("supervisor starts");
    let mut current = rx.recv().await.expect("first child");

    // Restart latency.
    let warmup = 500;
    let mut samples = Vec::with_capacity(restarts);
    for i in 0..warmup + restarts {
        let t0 = Instant::now();
        current.cast(Msg::Panic).expect("cast");
        current = rx.recv().await.expect("replacement");
        ractor::call!(current, Msg::Ping).expect("first message");
        if i >= warmup {
            samples.push(t0.elapsed());
        }
    }
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!("restart latency (panic -> replacement answers), {restarts} restarts:");
    println!(
        "  median {:?}  p99 {:?}  p99.9 {:?}  max {:?}  mean {:?}",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        percentile(&samples, 0.999),
        samples[samples.len() - 1],
        mean
    );

    // Throughput through one supervised actor.
    let t0 = Instant::now();
    for _ in 0..messages {
        current.cast(Msg::Count).expect("cast");
    }
    let counted = ractor::call!(current, Msg::Ping).expect("ping");
    let elapsed = t0.elapsed();
    assert_eq!(counted, messages as u64);
    println!(
        "casts through one supervised actor: {messages} in {elapsed:?} = {:.0} msg/s",
        messages as f64 / elapsed.as_secs_f64()
    );

    let calls = messages / 10;
    let t0 = Instant::now();
    for _ in 0..calls {
        ractor::call!(current, Msg::Ping).expect("ping");
    }
    let elapsed = t0.elapsed();
    println!(
        "calls (request/reply) to one supervised actor: {calls} in {elapsed:?} = {:.0} calls/s",
        calls as f64 / elapsed.as_secs_f64()
    );
    sup.stop_and_wait(None, Some(Duration::from_secs(5)))
        .await
        .expect("stop");
}
