//! Consumers: a worker actor that pulls messages from a durable consumer and hands them to a
//! [`Handler`], with the retry policy of DESIGN §5 around it.
//!
//! Messages: [`WorkerMsg::Pull`] (the loop: one pull request per message, re-sent by the
//! worker itself). Each pull asks the broker for up to `batch` messages and handles them as
//! they arrive, at most `batch` at a time; the pull ends when the batch is full or `expires`
//! passes, so a stop request waits at most that long plus the work in flight.
//!
//! Outcomes, per delivery:
//! - success: ack; a reprocessed dead letter is resolved.
//! - transient failure with deliveries left: NAK with the backoff step for this delivery
//!   (JetStream applies a consumer's BackOff only to ack timeouts, so the delay travels with
//!   the NAK).
//! - transient failure on the last delivery, permanent failure, poison: dead-lettered, then
//!   terminated (no further delivery).
//! - the handler panicked (a crash, counted per message apart from failures; so is a worker
//!   killed while its handler held the message): NAK with the backoff; after
//!   [`QUARANTINE_AFTER`] crashes the message is quarantined — a `poison` dead letter,
//!   never delivered again until an operator replays it. The worker goes on serving.
//! - the dependency is down (SMTP breaker open, database unreachable): the message is held,
//!   its ack deadline extended with progress acks, and retried once the handler is ready
//!   again, so an outage burns no deliveries and sends nothing to the DLQ. New pulls wait
//!   for the handler to be ready. On shutdown held messages are released with a NAK.
//!
//! Every attempt becomes a `message_processing_logs` row, written once per pull.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::watch;
use tracing::Instrument;

use crate::model::{AttemptLog, AttemptStatus, ErrorClass, NewDeadLetter};
use crate::ports::WorkerStore;
use crate::ports::{BrokerError, Delivery, Message, Source};

/// Why a message could not be handled.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// How to treat it.
    pub class: ErrorClass,
    /// What went wrong, for the logs and the DLQ.
    pub message: String,
    /// A dependency is down (not this message's fault): hold it and try again later
    /// without spending a delivery.
    pub dependency_down: bool,
}

impl Failure {
    /// A transient failure of this message.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Transient,
            message: message.into(),
            dependency_down: false,
        }
    }

    /// A dependency is down.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Transient,
            message: message.into(),
            dependency_down: true,
        }
    }

    /// The message can never succeed.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Permanent,
            message: message.into(),
            dependency_down: false,
        }
    }

    /// The message cannot be decoded (or it crashed its workers: quarantined).
    pub fn poison(message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Poison,
            message: message.into(),
            dependency_down: false,
        }
    }
}

/// What a worker does with a message.
pub trait Handler: Send + Sync + 'static {
    /// `None` when the handler can take work; otherwise how long to wait before asking
    /// again (a circuit breaker is open).
    fn not_ready_for(&self) -> Option<Duration> {
        None
    }

    /// Handles one message; the effect must be idempotent on the event id.
    fn handle<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), Failure>>;

    /// For the request this message belongs to, when known (for dead letters).
    fn request_id(&self, message: &Message) -> Option<String>;
}

/// Retry settings of one subject.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerPolicy {
    /// Deliveries before a transient failure is dead-lettered (JetStream MaxDeliver).
    pub max_deliver: u32,
    /// NAK delay after the n-th failed delivery (the last step repeats).
    pub backoff: Vec<Duration>,
    /// The consumer's ack wait: held messages send a progress ack well within it.
    pub ack_wait: Duration,
    /// The consumer's BackOff (JetStream's redelivery delays after ack timeouts). When set,
    /// JetStream uses its n-th step instead of the ack wait as the n-th delivery's deadline,
    /// so progress acks must come more often than its shortest step.
    pub ack_backoff: Vec<Duration>,
}

impl ConsumerPolicy {
    /// How often a message still being worked on (or held) tells the broker so: a third
    /// of the shortest ack deadline, at least 50 ms.
    pub fn progress_interval(&self) -> Duration {
        let shortest = self
            .ack_backoff
            .iter()
            .copied()
            .chain([self.ack_wait])
            .min()
            .unwrap_or(self.ack_wait);
        (shortest / 3).max(Duration::from_millis(50))
    }

    /// The NAK delay after failed delivery number `delivery` (from 1).
    pub fn delay(&self, delivery: u32) -> Duration {
        let i = (delivery.max(1) - 1) as usize;
        self.backoff
            .get(i)
            .or(self.backoff.last())
            .copied()
            .unwrap_or(Duration::from_secs(1))
    }
}

/// The worker actor.
#[derive(Debug, Clone, Copy, Default)]
pub struct Worker;

/// A worker's configuration.
#[derive(Clone)]
pub struct WorkerArgs {
    /// Its name (for logs).
    pub name: String,
    /// Where it pulls from.
    pub source: Arc<dyn Source>,
    /// What it does.
    pub handler: Arc<dyn Handler>,
    /// Logs, dead letters.
    pub store: Arc<dyn WorkerStore>,
    /// Retry settings.
    pub policy: ConsumerPolicy,
    /// Messages per pull, also the worker's concurrency.
    pub batch: usize,
    /// How long a pull waits for messages.
    pub expires: Duration,
    /// Set when the daemon shuts down: held messages are released.
    pub shutdown: watch::Receiver<bool>,
    /// Its progress and counts, read by the heartbeat (`worker_health_checks`).
    pub stats: Arc<crate::liveness::WorkerStats>,
    /// Set by an operator to stop pulling (shared by the consumer's workers); messages in
    /// hand are finished.
    pub paused: Arc<Pause>,
}

/// An operator's pause of one consumer, shared by its workers: asked for at once, in effect
/// for each worker once its open pull has ended ([`Pause::resting`] counts those).
#[derive(Debug, Default)]
pub struct Pause {
    requested: std::sync::atomic::AtomicBool,
    resting: std::sync::atomic::AtomicUsize,
}

impl Pause {
    /// Asks the workers to stop pulling (`true`) or to pull again.
    pub fn set(&self, paused: bool) {
        self.requested
            .store(paused, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether a pause is asked for.
    pub fn requested(&self) -> bool {
        self.requested.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Workers that have stopped pulling for the pause (their pulls ended, nothing in hand).
    pub fn resting(&self) -> usize {
        self.resting.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn rest(&self, resting: &mut bool, now: bool) {
        if *resting != now {
            *resting = now;
            if now {
                self.resting
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            } else {
                self.resting
                    .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }
}

/// Messages the worker handles.
#[derive(Debug)]
pub enum WorkerMsg {
    /// Pull and handle one batch.
    Pull,
}

/// The worker's state.
pub struct WorkerState {
    args: WorkerArgs,
    failing_since: Option<Instant>,
    /// Counted in the pause's resting workers.
    resting: bool,
}

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<WorkerMsg>,
        args: WorkerArgs,
    ) -> Result<WorkerState, ActorProcessingErr> {
        myself.cast(WorkerMsg::Pull)?;
        Ok(WorkerState {
            args,
            failing_since: None,
            resting: false,
        })
    }

    async fn post_stop(
        &self,
        _: ActorRef<WorkerMsg>,
        state: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        state.args.paused.rest(&mut state.resting, false);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerMsg>,
        WorkerMsg::Pull: WorkerMsg,
        state: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        let args = &state.args;
        args.stats.touch();
        if *args.shutdown.borrow() {
            return Ok(());
        }
        // Each Pull runs after the previous pull has ended and its messages are handled.
        let paused = args.paused.requested();
        args.paused.rest(&mut state.resting, paused);
        if paused {
            // Paused by an operator: idle, but alive.
            myself.send_after(Duration::from_millis(250), || WorkerMsg::Pull);
            return Ok(());
        }
        if let Some(wait) = args.handler.not_ready_for() {
            // The dependency is down: do not take work we cannot do.
            let wait = wait.min(args.expires);
            myself.send_after(wait, || WorkerMsg::Pull);
            return Ok(());
        }
        match pull_once(args).await {
            Ok(_) => {
                if let Some(since) = state.failing_since.take() {
                    tracing::info!(worker = %args.name, after_ms = since.elapsed().as_millis() as u64, "worker can pull again");
                }
                myself.cast(WorkerMsg::Pull)?;
            }
            Err(err) => {
                if state.failing_since.is_none() {
                    state.failing_since = Some(Instant::now());
                    tracing::warn!(worker = %args.name, error = %err, "worker cannot pull; retrying every second");
                }
                myself.send_after(Duration::from_secs(1), || WorkerMsg::Pull);
            }
        }
        Ok(())
    }
}

/// One pull: handles the messages as they arrive, at most `batch` at once; returns how many.
pub async fn pull_once(args: &WorkerArgs) -> Result<usize, BrokerError> {
    let mut pull = args.source.pull(args.batch, args.expires);
    let mut in_flight = FuturesUnordered::new();
    let mut logs = Vec::new();
    let mut handled = 0;
    let mut pull_error = None;
    let mut pulling = true;
    while pulling || !in_flight.is_empty() {
        tokio::select! {
            next = pull.next(), if pulling => match next {
                Some(Ok(delivery)) => {
                    let span = message_span(delivery.message());
                    in_flight.push(process(args, delivery).instrument(span));
                }
                Some(Err(err)) => {
                    pull_error = Some(err);
                    pulling = false;
                }
                None => pulling = false,
            },
            Some(mut attempt_logs) = in_flight.next() => {
                handled += 1;
                logs.append(&mut attempt_logs);
            }
        }
    }
    if !logs.is_empty()
        && let Err(err) = args.store.log_attempts(&logs).await
    {
        tracing::warn!(worker = %args.name, error = %err, rows = logs.len(), "could not write message_processing_logs");
    }
    match pull_error {
        Some(err) if handled == 0 => Err(err),
        Some(err) => {
            tracing::debug!(worker = %args.name, error = %err, "pull ended early");
            Ok(handled)
        }
        None => Ok(handled),
    }
}

/// The span of one message's handling: it continues the trace of the message's
/// `traceparent`, and its log lines carry the event and request ids.
fn message_span(message: &Message) -> tracing::Span {
    let span = tracing::info_span!(
        "process",
        otel.name = %format!("process {}", message.subject),
        subject = %message.subject,
        event_id = %message.event_id,
        request_id = message.request_id.as_deref().unwrap_or(""),
        delivery = message.delivery,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    crate::trace::attach(&span, message.traceparent.as_deref());
    span
}

/// A subject as a metric label: the pipeline's few fixed ones; anything else is one value.
fn label(subject: &str) -> &str {
    match subject {
        "primecheck.requested" | "email.send" => subject,
        _ => "other",
    }
}

fn processed(subject: &str, outcome: &str) {
    crate::metrics::pipeline()
        .messages_processed
        .with_label_values(&[label(subject), outcome])
        .inc();
}

/// Crashes after which a message is quarantined (a `poison` dead letter) instead of being
/// delivered again.
pub const QUARANTINE_AFTER: u32 = 2;

/// Handles one delivery to its end; returns the attempt's log rows. A message that crashed
/// its workers [`QUARANTINE_AFTER`] times is quarantined before it is handled again; a
/// panic in the handler is caught and counted as a crash; if this future is dropped while
/// the handler holds the message (the worker was killed), that is counted as a crash too.
async fn process(args: &WorkerArgs, delivery: Box<dyn Delivery>) -> Vec<AttemptLog> {
    let message = delivery.message();
    if message.delivery > 1 && !message.event_id.is_empty() {
        match args.store.crashes(&message.event_id).await {
            Ok(Some((crashes, last))) if crashes >= QUARANTINE_AFTER => {
                let started = Instant::now();
                quarantine(args, &*delivery, crashes, &last).await;
                return vec![attempt_log(
                    message,
                    AttemptStatus::Failed,
                    Some(&last),
                    started.elapsed(),
                )];
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(worker = %args.name, event_id = %message.event_id, error = %err, "could not read the message's crashes; handling it");
            }
        }
    }
    let mut guard = CrashGuard {
        store: &args.store,
        message,
        shutdown: &args.shutdown,
        armed: false,
    };
    let logs = handle_delivery(args, &*delivery, &mut guard).await;
    guard.armed = false;
    logs
}

/// Counts a crash if dropped while armed: the worker was killed (or its task aborted)
/// while the handler held the message. Not armed while a message is only held for a
/// dependency that is down, nor once the daemon is shutting down.
struct CrashGuard<'a> {
    store: &'a Arc<dyn WorkerStore>,
    message: &'a Message,
    shutdown: &'a watch::Receiver<bool>,
    armed: bool,
}

impl Drop for CrashGuard<'_> {
    fn drop(&mut self) {
        if !self.armed || self.message.event_id.is_empty() || *self.shutdown.borrow() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (event_id, subject) = (&self.message.event_id, &self.message.subject);
        crashed(subject);
        tracing::warn!(event_id = %event_id, subject = %subject, "a worker stopped while handling this message (killed?); counted as a crash");
        let store = self.store.clone();
        let event_id = event_id.clone();
        runtime.spawn(async move {
            if let Err(err) = store
                .record_crash(&event_id, "the worker was killed while handling it")
                .await
            {
                tracing::warn!(event_id = %event_id, error = %err, "could not count the crash");
            }
        });
    }
}

fn crashed(subject: &str) {
    crate::metrics::pipeline()
        .worker_crashes
        .with_label_values(&[label(subject)])
        .inc();
}

/// The text of a caught panic.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

fn attempt_log(
    message: &Message,
    status: AttemptStatus,
    error: Option<&str>,
    took: Duration,
) -> AttemptLog {
    AttemptLog {
        message_id: message.event_id.clone(),
        subject: message.subject.clone(),
        status,
        error: error.map(str::to_string),
        processing_time: took,
    }
}

/// The dead letter of `message` failing as `class` with `error`.
fn dead_letter_of(
    args: &WorkerArgs,
    message: &Message,
    class: ErrorClass,
    error: String,
) -> NewDeadLetter {
    NewDeadLetter {
        original_subject: message.subject.clone(),
        original_message_id: (!message.event_id.is_empty()).then(|| message.event_id.clone()),
        payload: message.payload.clone(),
        error,
        error_type: class,
        retry_count: message.delivery,
        original_created_at: message.published_at,
        request_id: args.handler.request_id(message),
        dlq_id: message.dlq_id,
    }
}

/// Dead-letters a message that crashed its workers `crashes` times as `poison` (never
/// delivered again until an operator replays it), or leaves it to a later delivery if
/// that cannot be written.
async fn quarantine(args: &WorkerArgs, delivery: &dyn Delivery, crashes: u32, last: &str) {
    let message = delivery.message();
    let error = format!("crashed the worker {crashes} times; the last time: {last}");
    let letter = dead_letter_of(args, message, ErrorClass::Poison, error.clone());
    match args.store.dead_letter(letter).await {
        Ok(id) => {
            tracing::error!(worker = %args.name, event_id = %message.event_id, dlq_id = ?id, crashes, error = %last, "message quarantined: it crashed its workers");
            settle(&args.name, "term", delivery.term().await);
            args.stats.failed();
            processed(&message.subject, "quarantined");
            crate::metrics::pipeline()
                .messages_quarantined
                .with_label_values(&[label(&message.subject)])
                .inc();
        }
        Err(err) => {
            tracing::warn!(worker = %args.name, event_id = %message.event_id, error = %err, "could not quarantine the message; it will be delivered again");
            let delay = args.policy.delay(message.delivery);
            settle(&args.name, "nak", delivery.nak(delay).await);
        }
    }
}

/// [`process`] without its crash bookkeeping.
async fn handle_delivery(
    args: &WorkerArgs,
    delivery: &dyn Delivery,
    guard: &mut CrashGuard<'_>,
) -> Vec<AttemptLog> {
    let mut logs = Vec::new();
    let mut shutdown = args.shutdown.clone();
    loop {
        let started = Instant::now();
        let message = delivery.message();
        guard.armed = true;
        let outcome = {
            // A long test (a big number) keeps its ack deadline fresh while it runs. The
            // progress ack runs beside the work, never instead of it: the work may hold a
            // pooled connection that the ack needs (the embedded queue shares the store's
            // pool), and a work future not polled while the ack waits for a connection
            // would hold it until the ack gave up.
            let work = std::panic::AssertUnwindSafe(args.handler.handle(message)).catch_unwind();
            tokio::pin!(work);
            let mut ticker = tokio::time::interval(args.policy.progress_interval());
            ticker.tick().await;
            let mut progress = None;
            loop {
                tokio::select! {
                    outcome = &mut work => break outcome,
                    _ = ticker.tick(), if progress.is_none() => {
                        args.stats.touch();
                        progress = Some(delivery.progress());
                    }
                    done = async {
                        match progress.as_mut() {
                            Some(ack) => ack.await,
                            None => std::future::pending().await,
                        }
                    }, if progress.is_some() => {
                        progress = None;
                        settle(&args.name, "progress", done);
                    }
                }
            }
        };
        guard.armed = false;
        let took = started.elapsed();
        let log = |status, error: Option<&str>| attempt_log(message, status, error, took);
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(panic) => {
                // A crash, not a handler error: counted apart, and after QUARANTINE_AFTER
                // of them (or on the last delivery) the message is quarantined.
                let what = format!("the handler panicked: {}", panic_text(panic.as_ref()));
                crashed(&message.subject);
                tracing::error!(worker = %args.name, event_id = %message.event_id, delivery = message.delivery, error = %what, "a handler crashed; the worker goes on");
                let crashes = if message.event_id.is_empty() {
                    QUARANTINE_AFTER
                } else {
                    match args.store.record_crash(&message.event_id, &what).await {
                        Ok(n) => n,
                        Err(err) => {
                            tracing::warn!(worker = %args.name, event_id = %message.event_id, error = %err, "could not count the crash");
                            1
                        }
                    }
                };
                if crashes >= QUARANTINE_AFTER || message.delivery >= args.policy.max_deliver {
                    quarantine(args, delivery, crashes, &what).await;
                    logs.push(log(AttemptStatus::Failed, Some(&what)));
                } else {
                    let delay = args.policy.delay(message.delivery);
                    settle(&args.name, "nak", delivery.nak(delay).await);
                    args.stats.retried();
                    processed(&message.subject, "crashed");
                    logs.push(log(AttemptStatus::Retry, Some(&what)));
                }
                return logs;
            }
        };
        match outcome {
            Ok(()) => {
                if let Some(dlq_id) = message.dlq_id
                    && let Err(err) = args.store.resolve_dead_letter(dlq_id).await
                {
                    tracing::warn!(dlq_id, error = %err, "could not mark the dead letter resolved");
                }
                settle(&args.name, "ack", delivery.ack().await);
                args.stats.succeeded();
                processed(&message.subject, "success");
                logs.push(log(AttemptStatus::Success, None));
                return logs;
            }
            Err(failure) if failure.dependency_down => {
                // Hold: not this message's fault. Keep the ack deadline fresh and wait for
                // the handler (or the dependency) to come back.
                if logs.is_empty() {
                    tracing::warn!(worker = %args.name, event_id = %message.event_id, error = %failure.message, "dependency down; holding the message until it is back");
                    logs.push(log(AttemptStatus::Processing, Some(&failure.message)));
                }
                let wait = args
                    .handler
                    .not_ready_for()
                    .unwrap_or(Duration::from_millis(500))
                    .clamp(Duration::from_millis(50), args.policy.progress_interval());
                settle(&args.name, "progress", delivery.progress().await);
                // Waiting for a dependency is not being stuck.
                args.stats.touch();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stopped(&mut shutdown) => {
                        settle(&args.name, "nak", delivery.nak(Duration::ZERO).await);
                        return logs;
                    }
                }
            }
            Err(failure) => {
                let last = message.delivery >= args.policy.max_deliver;
                if failure.class == ErrorClass::Transient && !last {
                    let delay = args.policy.delay(message.delivery);
                    tracing::info!(worker = %args.name, event_id = %message.event_id, delivery = message.delivery, delay_ms = delay.as_millis() as u64, error = %failure.message, "transient failure; retrying");
                    settle(&args.name, "nak", delivery.nak(delay).await);
                    args.stats.retried();
                    processed(&message.subject, "retry");
                    logs.push(log(AttemptStatus::Retry, Some(&failure.message)));
                    return logs;
                }
                let letter = dead_letter_of(args, message, failure.class, failure.message.clone());
                match args.store.dead_letter(letter).await {
                    Ok(id) => {
                        tracing::warn!(worker = %args.name, event_id = %message.event_id, dlq_id = ?id, class = failure.class.as_str(), error = %failure.message, "message dead-lettered");
                        settle(&args.name, "term", delivery.term().await);
                        args.stats.failed();
                        processed(&message.subject, "dead_letter");
                        logs.push(log(AttemptStatus::Failed, Some(&failure.message)));
                    }
                    Err(err) => {
                        // Cannot record it: leave it to a later delivery (or, after the
                        // last one, to the max-deliveries advisory).
                        tracing::warn!(worker = %args.name, event_id = %message.event_id, error = %err, "could not dead-letter the message; it will be delivered again");
                        let delay = args.policy.delay(message.delivery);
                        settle(&args.name, "nak", delivery.nak(delay).await);
                        logs.push(log(AttemptStatus::Retry, Some(&failure.message)));
                    }
                }
                return logs;
            }
        }
    }
}

/// Resolves once the daemon is shutting down.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        // The sender is gone: nobody will ask us to stop; never resolve.
        std::future::pending::<()>().await;
    }
}

fn settle(worker: &str, what: &str, result: Result<(), BrokerError>) {
    if let Err(err) = result {
        // The broker redelivers after the ack wait; effects are idempotent.
        tracing::warn!(worker, what, error = %err, "could not acknowledge a message");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use futures::FutureExt;
    use futures::stream::BoxStream;
    use tokio::sync::Semaphore;

    /// A pool of one connection, shared by the handler and the progress ack (as the
    /// embedded queue shares the store's pool).
    struct OneConnection(Arc<Semaphore>);

    /// Holds the connection across a long query.
    struct SlowHandler(Arc<Semaphore>);

    impl Handler for SlowHandler {
        fn handle<'a>(&'a self, _: &'a Message) -> BoxFuture<'a, Result<(), Failure>> {
            async move {
                let _connection = self
                    .0
                    .acquire()
                    .await
                    .map_err(|_| Failure::transient("closed"))?;
                tokio::time::sleep(Duration::from_secs(2)).await;
                Ok(())
            }
            .boxed()
        }

        fn request_id(&self, _: &Message) -> Option<String> {
            None
        }
    }

    struct Held {
        message: Message,
        pool: OneConnection,
        acked: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Delivery for Held {
        fn message(&self) -> &Message {
            &self.message
        }
        fn ack(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
            self.acked.store(true, std::sync::atomic::Ordering::Relaxed);
            async { Ok(()) }.boxed()
        }
        fn nak(&self, _: Duration) -> BoxFuture<'_, Result<(), BrokerError>> {
            async { Ok(()) }.boxed()
        }
        fn term(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
            async { Ok(()) }.boxed()
        }
        fn progress(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
            // Waits for the pool's only connection, as an UPDATE of the queue row does.
            async move {
                let _connection = self
                    .pool
                    .0
                    .acquire()
                    .await
                    .map_err(|_| BrokerError("closed".into()))?;
                Ok(())
            }
            .boxed()
        }
    }

    /// The test's messages never reach the store.
    struct NoStore;

    fn never<'a, T: Send + 'a>() -> BoxFuture<'a, Result<T, crate::StoreError>> {
        async { Err(crate::StoreError::Rejected("not in this test".into())) }.boxed()
    }

    impl WorkerStore for NoStore {
        fn record_result(
            &self,
            _: crate::model::PrimeResult,
        ) -> BoxFuture<'_, Result<bool, crate::StoreError>> {
            never()
        }
        fn processed<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
        ) -> BoxFuture<'a, Result<bool, crate::StoreError>> {
            never()
        }
        fn email_sent<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<bool, crate::StoreError>> {
            never()
        }
        fn record_email(
            &self,
            _: crate::model::SentEmail,
        ) -> BoxFuture<'_, Result<bool, crate::StoreError>> {
            never()
        }
        fn log_attempts<'a>(
            &'a self,
            _: &'a [AttemptLog],
        ) -> BoxFuture<'a, Result<(), crate::StoreError>> {
            never()
        }
        fn dead_letter(
            &self,
            _: NewDeadLetter,
        ) -> BoxFuture<'_, Result<Option<i64>, crate::StoreError>> {
            never()
        }
        fn resolve_dead_letter(&self, _: i64) -> BoxFuture<'_, Result<(), crate::StoreError>> {
            never()
        }
        fn record_crash<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
        ) -> BoxFuture<'a, Result<u32, crate::StoreError>> {
            never()
        }
        fn crashes<'a>(
            &'a self,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Option<(u32, String)>, crate::StoreError>> {
            never()
        }
    }

    struct NoSource;

    impl Source for NoSource {
        fn pull(
            &self,
            _: usize,
            _: Duration,
        ) -> BoxStream<'static, Result<Box<dyn Delivery>, BrokerError>> {
            futures::stream::empty().boxed()
        }
    }

    /// The old loop awaited the progress ack instead of the work: the ack waited for the
    /// connection the work held, and the work, no longer polled, never gave it back (the
    /// embedded mode stood still under an overload). Here the work must finish and the
    /// message be acknowledged although an ack fell due while the work held the
    /// connection.
    #[tokio::test(start_paused = true)]
    async fn a_progress_ack_never_starves_the_work_it_is_for() {
        let connection = Arc::new(Semaphore::new(1));
        let (_stop, shutdown) = watch::channel(false);
        let args = WorkerArgs {
            name: "w".into(),
            source: Arc::new(NoSource),
            handler: Arc::new(SlowHandler(connection.clone())),
            store: Arc::new(NoStore),
            policy: ConsumerPolicy {
                max_deliver: 3,
                backoff: vec![Duration::from_secs(1)],
                ack_wait: Duration::from_millis(600),
                ack_backoff: vec![],
            },
            batch: 1,
            expires: Duration::from_secs(1),
            shutdown,
            stats: Default::default(),
            paused: Default::default(),
        };
        let acked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let delivery = Box::new(Held {
            message: Message {
                event_id: "e".into(),
                subject: "s".into(),
                payload: vec![],
                delivery: 1,
                stream_seq: 1,
                published_at: Utc::now(),
                request_id: None,
                traceparent: None,
                dlq_id: None,
            },
            pool: OneConnection(connection),
            acked: acked.clone(),
        });
        let logs = tokio::time::timeout(Duration::from_secs(60), process(&args, delivery))
            .await
            .expect("the work finished although a progress ack waited for its connection");
        assert_eq!(logs.len(), 1);
        assert!(acked.load(std::sync::atomic::Ordering::Relaxed));
    }

    /// A pull that waits its whole `expires` and brings nothing, as an idle stream's does.
    struct IdleSource;

    impl Source for IdleSource {
        fn pull(
            &self,
            _: usize,
            expires: Duration,
        ) -> BoxStream<'static, Result<Box<dyn Delivery>, BrokerError>> {
            futures::stream::once(tokio::time::sleep(expires))
                .filter_map(|()| async { None })
                .boxed()
        }
    }

    /// Waits (on the paused clock, bounded) until `pause` counts `n` resting workers.
    async fn resting(pause: &Pause, n: usize) {
        for _ in 0..100 {
            if pause.resting() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{} workers rest, not {n}", pause.resting());
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_worker_counts_as_resting_once_its_pull_ended_until_resumed_or_stopped() {
        let (_stop, shutdown) = watch::channel(false);
        let pause = Arc::new(Pause::default());
        let args = WorkerArgs {
            name: "w".into(),
            source: Arc::new(IdleSource),
            handler: Arc::new(SlowHandler(Arc::new(Semaphore::new(1)))),
            store: Arc::new(NoStore),
            policy: ConsumerPolicy {
                max_deliver: 3,
                backoff: vec![Duration::from_secs(1)],
                ack_wait: Duration::from_secs(30),
                ack_backoff: vec![],
            },
            batch: 1,
            expires: Duration::from_secs(1),
            shutdown,
            stats: Default::default(),
            paused: pause.clone(),
        };
        let (worker, handle) = ractor::Actor::spawn(None, Worker, args).await.unwrap();
        // The worker is 300 ms into its first pull (1 s) when the pause comes.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let asked = tokio::time::Instant::now();
        pause.set(true);
        resting(&pause, 1).await;
        // Not before its open pull ended.
        assert!(
            asked.elapsed() >= Duration::from_millis(700),
            "{:?}",
            asked.elapsed()
        );
        pause.set(false);
        resting(&pause, 0).await;
        pause.set(true);
        resting(&pause, 1).await;
        // A worker that stops while resting no longer counts.
        worker.stop(None);
        handle.await.unwrap();
        assert_eq!(pause.resting(), 0);
    }

    #[test]
    fn delays_follow_the_steps_and_repeat_the_last() {
        let p = ConsumerPolicy {
            max_deliver: 5,
            backoff: vec![Duration::from_secs(1), Duration::from_secs(2)],
            ack_wait: Duration::from_secs(30),
            ack_backoff: vec![Duration::from_millis(600), Duration::from_secs(2)],
        };
        assert_eq!(p.progress_interval(), Duration::from_millis(200));
        assert_eq!(
            (1..=4).map(|n| p.delay(n).as_secs()).collect::<Vec<_>>(),
            vec![1, 2, 2, 2]
        );
    }

    /// Panics on a payload of `boom`, waits forever on `hang`, holds (its dependency is
    /// down) on `held`; succeeds on anything else. Counts the handlings it started.
    #[derive(Default)]
    struct Crashy {
        started: std::sync::atomic::AtomicU32,
        running: tokio::sync::Notify,
    }

    impl Handler for Crashy {
        fn handle<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), Failure>> {
            async move {
                self.started
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                self.running.notify_one();
                match message.payload.as_slice() {
                    b"boom" => panic!("boom: index out of range"),
                    b"hang" => std::future::pending().await,
                    b"held" => Err(Failure::unavailable("SMTP is down")),
                    _ => Ok(()),
                }
            }
            .boxed()
        }

        fn request_id(&self, _: &Message) -> Option<String> {
            None
        }
    }

    /// A delivery that records what the worker answered.
    struct Answered {
        message: Message,
        answers: Arc<std::sync::Mutex<Vec<&'static str>>>,
    }

    impl Answered {
        fn new(
            event_id: &str,
            payload: &[u8],
            delivery: u32,
        ) -> (Box<Self>, Arc<std::sync::Mutex<Vec<&'static str>>>) {
            let answers = Arc::new(std::sync::Mutex::new(Vec::new()));
            let message = Message {
                event_id: event_id.into(),
                subject: "primecheck.requested".into(),
                payload: payload.to_vec(),
                delivery,
                stream_seq: 1,
                published_at: Utc::now(),
                request_id: None,
                traceparent: None,
                dlq_id: None,
            };
            (
                Box::new(Self {
                    message,
                    answers: answers.clone(),
                }),
                answers,
            )
        }

        fn answer(&self, what: &'static str) -> BoxFuture<'_, Result<(), BrokerError>> {
            self.answers.lock().unwrap().push(what);
            async { Ok(()) }.boxed()
        }
    }

    impl Delivery for Answered {
        fn message(&self) -> &Message {
            &self.message
        }
        fn ack(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
            self.answer("ack")
        }
        fn nak(&self, _: Duration) -> BoxFuture<'_, Result<(), BrokerError>> {
            self.answer("nak")
        }
        fn term(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
            self.answer("term")
        }
        fn progress(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
            async { Ok(()) }.boxed()
        }
    }

    fn crash_args(
        handler: Arc<Crashy>,
        store: Arc<crate::fakes::MemoryWorkers>,
        shutdown: watch::Receiver<bool>,
    ) -> WorkerArgs {
        WorkerArgs {
            name: "w".into(),
            source: Arc::new(NoSource),
            handler,
            store,
            policy: ConsumerPolicy {
                max_deliver: 5,
                backoff: vec![Duration::from_millis(10)],
                ack_wait: Duration::from_secs(30),
                ack_backoff: vec![],
            },
            batch: 1,
            expires: Duration::from_secs(1),
            shutdown,
            stats: Default::default(),
            paused: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_panic_is_a_crash_and_the_second_quarantines_the_message_while_others_go_on() {
        let store = Arc::new(crate::fakes::MemoryWorkers::default());
        let handler = Arc::new(Crashy::default());
        let (_stop, shutdown) = watch::channel(false);
        let args = crash_args(handler.clone(), store.clone(), shutdown);

        let (first, answers) = Answered::new("poison-pill", b"boom", 1);
        let logs = process(&args, first).await;
        assert_eq!(*answers.lock().unwrap(), ["nak"], "retried after one crash");
        assert_eq!(logs[0].status, AttemptStatus::Retry);
        assert!(
            logs[0]
                .error
                .as_deref()
                .unwrap()
                .contains("boom: index out of range")
        );
        assert!(store.dead_letters.lock().unwrap().is_empty());

        // Another message is served by the same worker meanwhile.
        let (other, answers) = Answered::new("fine", b"7", 1);
        process(&args, other).await;
        assert_eq!(*answers.lock().unwrap(), ["ack"]);

        let (second, answers) = Answered::new("poison-pill", b"boom", 2);
        let logs = process(&args, second).await;
        assert_eq!(*answers.lock().unwrap(), ["term"], "never delivered again");
        assert_eq!(logs[0].status, AttemptStatus::Failed);
        let letters = store.dead_letters.lock().unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].error_type, ErrorClass::Poison);
        assert!(
            letters[0].error.starts_with("crashed the worker 2 times")
                && letters[0].error.contains("boom: index out of range"),
            "{}",
            letters[0].error
        );
    }

    #[tokio::test]
    async fn a_message_that_crashed_its_workers_twice_is_quarantined_before_it_runs_again() {
        let store = Arc::new(crate::fakes::MemoryWorkers::default());
        for _ in 0..QUARANTINE_AFTER {
            store
                .record_crash("pill", "the worker was killed while handling it")
                .await
                .unwrap();
        }
        let handler = Arc::new(Crashy::default());
        let (_stop, shutdown) = watch::channel(false);
        let args = crash_args(handler.clone(), store.clone(), shutdown);
        let (delivery, answers) = Answered::new("pill", b"7", 3);
        process(&args, delivery).await;
        assert_eq!(*answers.lock().unwrap(), ["term"]);
        assert_eq!(
            handler.started.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "not handled again"
        );
        let letters = store.dead_letters.lock().unwrap();
        assert_eq!(letters[0].error_type, ErrorClass::Poison);
        assert!(
            letters[0].error.contains("killed while handling it"),
            "{}",
            letters[0].error
        );
    }

    /// Bounded wait for the crash count of `event_id` (written by a task the guard spawns).
    async fn crashes_of(store: &crate::fakes::MemoryWorkers, event_id: &str, want: u32) -> bool {
        for _ in 0..1000 {
            if store.crashes(event_id).await.unwrap().map(|c| c.0) == Some(want) {
                return true;
            }
            tokio::task::yield_now().await;
        }
        false
    }

    #[tokio::test]
    async fn a_worker_killed_while_handling_a_message_counts_a_crash_but_not_while_holding_it() {
        let store = Arc::new(crate::fakes::MemoryWorkers::default());
        let handler = Arc::new(Crashy::default());
        let (_stop, shutdown) = watch::channel(false);
        let args = crash_args(handler.clone(), store.clone(), shutdown);

        // Killed in the handler: its task is aborted, as a killed actor's is.
        let running = {
            let args = args.clone();
            let (delivery, _) = Answered::new("stuck", b"hang", 1);
            tokio::spawn(async move { process(&args, delivery).await })
        };
        handler.running.notified().await;
        running.abort();
        assert!(running.await.unwrap_err().is_cancelled());
        assert!(crashes_of(&store, "stuck", 1).await, "the kill is counted");

        // Killed while only holding the message for a dependency that is down: not its fault.
        let before = handler.started.load(std::sync::atomic::Ordering::SeqCst);
        let holding = {
            let args = args.clone();
            let (delivery, _) = Answered::new("waiting", b"held", 1);
            tokio::spawn(async move { process(&args, delivery).await })
        };
        // Its second try means it has been held (and the handler left) once already.
        while handler.started.load(std::sync::atomic::Ordering::SeqCst) < before + 2 {
            handler.running.notified().await;
        }
        holding.abort();
        let _ = holding.await;
        assert!(
            !crashes_of(&store, "waiting", 1).await,
            "a held message is not counted"
        );
    }
}
