//! The outbox relay: moves committed outbox rows to the broker.
//!
//! Messages: [`RelayMsg::Tick`] (every `poll_interval`), [`RelayMsg::Wake`] (right after a
//! local insert, through [`RelayWake`]), [`RelayMsg::Prune`] (retention).
//!
//! Each round claims a batch of due rows by state (never an id cursor, which would skip rows
//! whose transactions commit late), publishes them with their event id as the broker's
//! dedupe key, waits for the acknowledgements pipelined, then settles the claim. Up to
//! `parallel_rounds` rounds run at once while batches come back full. A failed
//! publish gets `retry_count + 1` and a `next_retry_at` from the [`RetryPolicy`]; past the
//! event's `max_retries` it moves to the dead-letter table. A full batch is followed at once
//! by the next round; an empty one waits for the next tick or wake.
//!
//! Failure behaviour: store and broker errors are expected (the database or NATS may be
//! down); they are logged and the next tick tries again, so the actor does not fail on
//! them. Several relays (in several daemons) may share a table: a [`crate::Claim`] keeps
//! other relays off its rows until the round settles it. A restart loses nothing: an
//! unsettled claim is released (rolled back, or its lease runs out), its rows are claimed
//! again, and the broker drops the duplicate publish.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::model::PublishFailure;
use crate::ports::OutboxStore;
use crate::ports::{Broker, OutgoingMessage};
use crate::retry::RetryPolicy;

/// Lets the API wake the relay right after it commits a request. Wakes coalesce: while one
/// is pending, further ones send nothing. The flag is a signal, not shared state: the relay
/// clears it before it claims, so a row committed after a claim always causes a new wake.
///
/// A store that publishes its new events itself ([`crate::direct`]) turns
/// [`RelayWake::new_event`] off and wakes the relay only for the events it leaves to it.
#[derive(Clone, Debug)]
pub struct RelayWake {
    name: Arc<str>,
    pending: Arc<AtomicBool>,
    direct: Arc<AtomicBool>,
}

impl RelayWake {
    /// A waker for the relay registered as `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            pending: Arc::new(AtomicBool::new(false)),
            direct: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A new event was committed: wakes the relay, unless the store publishes new events
    /// itself (then it wakes the relay for those it does not).
    pub fn new_event(&self) {
        if !self.direct.load(Ordering::Relaxed) {
            self.wake();
        }
    }

    /// Whether the store publishes new events itself (see [`RelayWake::new_event`]).
    pub fn set_direct(&self, direct: bool) {
        self.direct.store(direct, Ordering::Relaxed);
    }

    /// Asks the relay to run a round soon.
    pub fn wake(&self) {
        if self.pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let sent = ractor::registry::where_is(&*self.name)
            .map(ActorRef::<RelayMsg>::from)
            .is_some_and(|relay| relay.cast(RelayMsg::Wake).is_ok());
        if !sent {
            // The relay is restarting; it runs a round when it starts anyway.
            self.pending.store(false, Ordering::Release);
        }
    }

    /// The broker changed (JetStream elected a new leader): see [`RelayMsg::BrokerChanged`].
    pub fn broker_changed(&self) {
        if let Some(relay) = ractor::registry::where_is(&*self.name).map(ActorRef::<RelayMsg>::from)
        {
            let _ = relay.cast(RelayMsg::BrokerChanged);
        }
    }

    fn clear(&self) {
        self.pending.store(false, Ordering::Release);
    }
}

/// When a row whose publish failed while the broker was down is due again: soon, since the
/// retry is not counted and the broker may be back any moment (a cluster that elected a
/// new leader takes publishes at once).
pub const BROKER_DOWN_RETRY: Duration = Duration::from_millis(250);

/// The relay actor.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutboxRelay;

/// The relay's configuration.
#[derive(Clone)]
pub struct RelayArgs {
    /// Where the outbox lives.
    pub store: Arc<dyn OutboxStore>,
    /// Where events go.
    pub broker: Arc<dyn Broker>,
    /// Rows per round.
    pub batch_size: u32,
    /// Rounds run at once (each claims its own rows), so that one round's database work
    /// overlaps another's publishing.
    pub parallel_rounds: u32,
    /// How long a claim keeps other relays off its rows.
    pub lease: Duration,
    /// Time between rounds when nothing wakes the relay.
    pub poll_interval: Duration,
    /// Retries of failed publishes.
    pub retry: RetryPolicy,
    /// How long published rows are kept (for `outbox replay`).
    pub retention: Duration,
    /// Time between prunes.
    pub prune_interval: Duration,
    /// The waker the API uses.
    pub wake: RelayWake,
    /// Its progress and counts, read by the heartbeat (`worker_health_checks`).
    pub stats: Arc<crate::liveness::WorkerStats>,
    /// When set, a round's marks and commit run in the background ([`SettleSlots`]), so the
    /// next round claims while they commit; `None`: a round settles before it returns (tests
    /// and tools that read the outbox right after a round).
    pub background_settle: Option<SettleSlots>,
}

/// Claims settling in the background, at most `n` at once.
///
/// A round's critical path is claim → publish → acks; marking the rows published and
/// committing (a durable commit) only has to happen before the rows are claimed again, and
/// they cannot be: the claim keeps them locked (or leased) until it settles, so later claims
/// skip them. Taking the mark and commit off the path lets an event that arrives during a
/// round be claimed a commit sooner.
#[derive(Clone, Debug)]
pub struct SettleSlots {
    slots: Arc<tokio::sync::Semaphore>,
    n: u32,
}

impl SettleSlots {
    /// At most `n` claims (each holding its rows and a database connection) unsettled.
    pub fn new(n: u32) -> Self {
        let n = n.max(1);
        Self {
            slots: Arc::new(tokio::sync::Semaphore::new(n as usize)),
            n,
        }
    }

    /// Waits until every background settle has finished, at most `timeout`; false if some
    /// had not.
    pub async fn drain(&self, timeout: Duration) -> bool {
        match tokio::time::timeout(timeout, self.slots.acquire_many(self.n)).await {
            Ok(Ok(all)) => {
                drop(all);
                true
            }
            _ => false,
        }
    }
}

/// The relay's state.
pub struct RelayState {
    args: RelayArgs,
    failing_since: Option<std::time::Instant>,
}

/// Messages the relay handles.
#[derive(Debug)]
pub enum RelayMsg {
    /// Periodic round.
    Tick,
    /// A local insert happened.
    Wake,
    /// The last round was a full batch: run the next one now.
    Continue,
    /// The broker changed (JetStream elected a new leader): run a round now, so that what
    /// waited for the leader goes out at once.
    BrokerChanged,
    /// Delete published rows past their retention.
    Prune,
}

/// What one round did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RoundOutcome {
    /// Rows claimed.
    pub claimed: usize,
    /// Rows published.
    pub published: usize,
    /// Rows scheduled for another try.
    pub retried: usize,
    /// Rows moved to the dead-letter table.
    pub dead: usize,
    /// A round claimed a full batch: more rows are probably due.
    pub saturated: bool,
    /// The failures were the broker's (down, or its stream without a settled leader): not
    /// counted against the events' retries, and retried after [`BROKER_DOWN_RETRY`].
    pub broker_down: bool,
    /// What the first failed publish of the round answered, for the log.
    pub first_error: Option<String>,
}

impl Actor for OutboxRelay {
    type Msg = RelayMsg;
    type State = RelayState;
    type Arguments = RelayArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RelayMsg>,
        args: RelayArgs,
    ) -> Result<RelayState, ActorProcessingErr> {
        myself.send_interval(args.poll_interval, || RelayMsg::Tick);
        myself.send_interval(args.prune_interval, || RelayMsg::Prune);
        args.wake.clear();
        Ok(RelayState {
            args,
            failing_since: None,
        })
    }

    async fn post_stop(
        &self,
        _: ActorRef<RelayMsg>,
        state: &mut RelayState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(settle) = &state.args.background_settle
            && !settle.drain(Duration::from_secs(5)).await
        {
            tracing::warn!(
                "outbox marks still running at stop; their events will be published again"
            );
        }
        Ok(())
    }

    async fn post_start(
        &self,
        myself: ActorRef<RelayMsg>,
        _: &mut RelayState,
    ) -> Result<(), ActorProcessingErr> {
        // Rows may have waited while no relay ran.
        myself.cast(RelayMsg::Tick)?;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<RelayMsg>,
        msg: RelayMsg,
        state: &mut RelayState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RelayMsg::Tick | RelayMsg::Wake | RelayMsg::Continue | RelayMsg::BrokerChanged => {
                state.args.wake.clear();
                state.args.stats.touch();
                match rounds(&state.args).await {
                    Ok(outcome) => {
                        state.args.stats.add(
                            outcome.published as u64,
                            outcome.dead as u64,
                            outcome.retried as u64,
                        );
                        if let Some(since) = state.failing_since.take() {
                            tracing::info!(
                                after_ms = since.elapsed().as_millis() as u64,
                                "outbox relay recovered"
                            );
                        }
                        if outcome.retried > 0 || outcome.dead > 0 {
                            tracing::warn!(?outcome, "some outbox events were not published");
                        }
                        // A full batch of successes means more rows are probably due.
                        if outcome.saturated && outcome.published > 0 {
                            myself.cast(RelayMsg::Continue)?;
                        }
                    }
                    Err(err) => {
                        if state.failing_since.is_none() {
                            state.failing_since = Some(std::time::Instant::now());
                            tracing::warn!(error = %err, "outbox relay cannot reach the store; retrying every poll interval");
                        }
                    }
                }
            }
            RelayMsg::Prune => {
                let cutoff = Utc::now() - state.args.retention;
                match state.args.store.prune_published(cutoff).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        pruned = n,
                        "pruned published outbox rows past their retention"
                    ),
                    Err(err) => tracing::warn!(error = %err, "could not prune the outbox"),
                }
            }
        }
        Ok(())
    }
}

/// Rounds one call runs at most, per round in flight, before it hands control back to the
/// actor (which continues at once while rows are waiting, and can handle a stop between).
const ROUNDS_PER_CALL: usize = 8;

/// One round; when it comes back full (more rows are waiting), `parallel_rounds` more kept
/// in flight: each one that ends full is replaced by a new one at once, so claims, publishes
/// and marks of different rounds overlap instead of moving in step. Starts no more rounds
/// once one is not full, could not publish everything it claimed, or fails, or after
/// `ROUNDS_PER_CALL` per round in flight; adds up the outcomes. (With the broker down, a
/// call therefore gives each row at most one failed attempt, and hands control back to the
/// actor after one wave of publish timeouts.) Claims never overlap (rows are locked with
/// SKIP LOCKED), so parallel rounds only change how much work is in flight; an idle relay
/// still runs a single claim per tick.
pub async fn rounds(args: &RelayArgs) -> Result<RoundOutcome, crate::ports::store::StoreError> {
    let mut total = round(args).await?;
    let n = args.parallel_rounds.max(1) as usize;
    if n == 1 || !total.saturated {
        return Ok(total);
    }
    let budget = n * ROUNDS_PER_CALL;
    let mut healthy = total.published == total.claimed;
    let mut in_flight: FuturesUnordered<_> = (0..n).map(|_| round(args)).collect();
    let mut started = n;
    let mut error = None;
    while let Some(result) = in_flight.next().await {
        match result {
            Ok(o) => {
                total.claimed += o.claimed;
                total.published += o.published;
                total.retried += o.retried;
                total.dead += o.dead;
                total.saturated &= o.saturated;
                healthy &= o.published == o.claimed;
            }
            Err(e) => {
                error.get_or_insert(e);
            }
        }
        if total.saturated && healthy && error.is_none() && started < budget {
            in_flight.push(round(args));
            started += 1;
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// One claim → publish → mark round (the mark in the background with
/// [`RelayArgs::background_settle`]).
pub async fn round(args: &RelayArgs) -> Result<RoundOutcome, crate::ports::store::StoreError> {
    let slot = match &args.background_settle {
        Some(settle) => Some(settle.slots.clone().acquire_owned().await.map_err(|_| {
            crate::ports::store::StoreError::Unavailable("the relay is shutting down".into())
        })?),
        None => None,
    };
    let mut claim = args.store.claim(args.batch_size, args.lease).await?;
    if claim.events.is_empty() {
        return Ok(RoundOutcome::default());
    }
    // The strings move into the messages (a round is thousands of them); what the round
    // still needs of an event afterwards is its id and retry counts.
    let messages: Vec<OutgoingMessage> = claim
        .events
        .iter_mut()
        .map(|e| OutgoingMessage {
            event_id: std::mem::take(&mut e.event_id),
            subject: std::mem::take(&mut e.subject),
            payload: std::mem::take(&mut e.payload),
            attempt: e.retry_count + 1,
            request_id: e.request_id.take(),
            traceparent: e.traceparent.take(),
            dlq_id: e.dlq_id,
        })
        .collect();
    let events = &claim.events;
    let results = args.broker.publish_batch(&messages).await;
    let mut outcome = RoundOutcome {
        claimed: events.len(),
        saturated: events.len() == args.batch_size as usize,
        ..RoundOutcome::default()
    };
    let mut published = Vec::with_capacity(events.len());
    let mut failures = Vec::new();
    // A failure while the broker itself is down (or its stream has no leader) is not the
    // event's: it is retried on the event's backoff but spends none of its retries.
    let broker_down = results.iter().any(Result::is_err) && !args.broker.available().await;
    for ((event, message), result) in events.iter().zip(&messages).zip(results) {
        match result {
            Ok(()) => published.push(event.id),
            Err(err) => {
                let failures_so_far = if broker_down {
                    (event.retry_count + 1).min(event.max_retries.max(1))
                } else {
                    event.retry_count + 1
                };
                // With the broker down the row is due again soon (BROKER_DOWN_RETRY), not
                // at its next backoff step: the retry is not counted, and the broker may be
                // back any moment.
                let delay = if broker_down {
                    Some(BROKER_DOWN_RETRY)
                } else {
                    args.retry
                        .next_delay(failures_so_far, event.max_retries, rand::random::<f64>())
                };
                let next_retry_at = delay.map(|d| {
                    Utc::now() + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
                });
                if next_retry_at.is_some() {
                    outcome.retried += 1;
                } else {
                    outcome.dead += 1;
                }
                tracing::debug!(event_id = %message.event_id, attempt = failures_so_far, error = %err, "publish failed");
                failures.push(PublishFailure {
                    id: event.id,
                    error: err.to_string(),
                    next_retry_at,
                    counted: !broker_down,
                });
            }
        }
    }
    outcome.published = published.len();
    outcome.broker_down = broker_down;
    outcome.first_error = failures.first().map(|f: &PublishFailure| f.error.clone());
    match slot {
        Some(slot) => {
            tokio::spawn(async move {
                let _slot = slot;
                if let Err(err) = claim.settle(&published, &failures).await {
                    // The rows are released unmarked: a later round publishes them again,
                    // and the broker drops the duplicates (Nats-Msg-Id).
                    tracing::warn!(error = %err, events = published.len() + failures.len(), "could not mark outbox events published; they will be published again");
                }
            });
        }
        None => claim.settle(&published, &failures).await?,
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::fakes::{MemoryBroker, MemoryOutbox, event};

    fn args(
        outbox: &MemoryOutbox,
        broker: &Arc<MemoryBroker>,
        batch: u32,
        parallel: u32,
    ) -> RelayArgs {
        RelayArgs {
            store: Arc::new(outbox.clone()),
            broker: broker.clone(),
            batch_size: batch,
            parallel_rounds: parallel,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            retry: RetryPolicy::default(),
            retention: Duration::from_secs(3600),
            prune_interval: Duration::from_secs(3600),
            wake: RelayWake::new("relay-under-test"),
            stats: Arc::new(crate::liveness::WorkerStats::default()),
            background_settle: None,
        }
    }

    #[tokio::test]
    async fn a_round_publishes_what_it_claims_in_order_and_marks_it() {
        let outbox = MemoryOutbox::with(vec![event(1, 0, 3), event(2, 1, 3), event(3, 0, 3)]);
        let broker = Arc::new(MemoryBroker::default());
        let outcome = round(&args(&outbox, &broker, 10, 1)).await.unwrap();
        assert_eq!((outcome.claimed, outcome.published), (3, 3));
        assert!(!outcome.saturated, "3 of 10 is not a full batch");
        assert_eq!(broker.sent_ids(), ["e1", "e2", "e3"]);
        let attempts: Vec<u32> = broker
            .sent
            .lock()
            .unwrap()
            .iter()
            .map(|m| m.attempt)
            .collect();
        assert_eq!(
            attempts,
            [1, 2, 1],
            "the attempt is the failures so far plus one"
        );
        let log = outbox.log();
        assert_eq!(log.published, [1, 2, 3]);
        assert!(log.pending.is_empty() && log.claimed.is_empty());
    }

    #[tokio::test]
    async fn a_refused_event_is_retried_later_and_dead_lettered_past_its_retries() {
        let outbox = MemoryOutbox::with(vec![event(1, 0, 3), event(2, 3, 3), event(3, 0, 3)]);
        let broker = Arc::new(MemoryBroker::default());
        broker
            .refuse
            .lock()
            .unwrap()
            .extend(["e1".to_string(), "e2".to_string()]);
        let outcome = round(&args(&outbox, &broker, 10, 1)).await.unwrap();
        assert_eq!(
            (outcome.published, outcome.retried, outcome.dead),
            (1, 1, 1),
            "{outcome:?}"
        );
        let log = outbox.log();
        let e1 = log.failures.iter().find(|f| f.id == 1).unwrap();
        assert!(e1.counted, "the broker was up: the failure is the event's");
        let wait = e1.next_retry_at.unwrap() - Utc::now();
        assert!(
            wait > chrono::Duration::milliseconds(500) && wait <= chrono::Duration::seconds(2),
            "the first retry waits about the policy's first delay (1 s ± 20 %): {wait}"
        );
        let e2 = log.failures.iter().find(|f| f.id == 2).unwrap();
        assert_eq!(
            e2.next_retry_at, None,
            "its fourth failure of 3 allowed: dead-lettered"
        );
        assert_eq!(log.published, [3]);
        assert!(log.pending.contains_key(&1) && !log.pending.contains_key(&2));
    }

    #[tokio::test]
    async fn a_broker_outage_spends_no_retries_and_dead_letters_nothing() {
        let outbox = MemoryOutbox::with(vec![event(1, 3, 3), event(2, 0, 3)]);
        let broker = Arc::new(MemoryBroker::default());
        broker.down.store(true, Ordering::Relaxed);
        let outcome = round(&args(&outbox, &broker, 10, 1)).await.unwrap();
        assert_eq!(
            (outcome.published, outcome.retried, outcome.dead),
            (0, 2, 0)
        );
        let log = outbox.log();
        // Due again soon, not on the backoff (1 s first here).
        let soon = Utc::now() + chrono::Duration::from_std(BROKER_DOWN_RETRY).unwrap();
        assert!(
            log.failures
                .iter()
                .all(|f| !f.counted && f.next_retry_at.is_some_and(|t| t <= soon))
        );
        assert_eq!(
            log.pending[&1].retry_count, 3,
            "an outage spends none of its retries"
        );
    }

    #[tokio::test]
    async fn rounds_go_on_while_batches_come_back_full_and_stop_at_a_short_one() {
        let outbox = MemoryOutbox::with((1..=7).map(|n| event(n, 0, 3)).collect());
        let broker = Arc::new(MemoryBroker::default());
        let outcome = rounds(&args(&outbox, &broker, 2, 2)).await.unwrap();
        assert_eq!((outcome.claimed, outcome.published), (7, 7), "{outcome:?}");
        let mut sent = broker.sent_ids();
        sent.sort();
        assert_eq!(
            sent,
            ["e1", "e2", "e3", "e4", "e5", "e6", "e7"],
            "each once"
        );
        assert!(outbox.log().pending.is_empty());

        // One round only when the first is short.
        let outbox = MemoryOutbox::with((1..=7).map(|n| event(n, 0, 3)).collect());
        let outcome = rounds(&args(&outbox, &broker, 10, 2)).await.unwrap();
        assert_eq!(outcome.claimed, 7);
        assert!(!outcome.saturated);
    }
}
