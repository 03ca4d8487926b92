//! The dead-letter queue's actors.
//!
//! [`Dlq`] (messages: [`DlqMsg::Tick`]) copies new dead letters to the `DEAD_LETTER_QUEUE`
//! stream (`dlq.<kind>`), and turns max-deliveries advisories (a worker died or hung on a
//! message's last delivery, so nobody dead-lettered it) into dead letters. Every path that
//! gives up on a message first writes its `dead_letter_messages` row (with its
//! `dlq_statistics` count) in the database; the stream copy follows from the row, like the
//! outbox, so a crash between the two loses nothing.
//!
//! [`RetryTimer`] (messages: [`TimerMsg::Tick`]) applies the automatic reprocess rules: a
//! pending dead letter whose error matches a rule's pattern, that has waited the rule's
//! time and has been retried fewer than the rule's maximum, is republished.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::future::BoxFuture;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::broker::{Broker, BrokerError, OutgoingMessage};
use crate::consumer::Delivery;
use crate::model::{
    ErrorClass, NewDeadLetter, Reprocess, SUBJECT_EMAIL_SEND, SUBJECT_PRIMECHECK_REQUESTED,
};
use crate::store::{DlqStore, WorkerStore};
use crate::workers::PRIMECHECK_CONSUMER;

/// A max-deliveries advisory, with the message it is about when the stream still has it.
pub struct Advisory {
    /// The dead letter to store, or `None` when the original message is gone.
    pub letter: Option<NewDeadLetter>,
    /// What the advisory says, for the logs.
    pub summary: String,
    /// Acknowledges the advisory.
    pub delivery: Box<dyn Delivery>,
}

/// Durable max-deliveries advisories.
pub trait AdvisoryFeed: Send + Sync + 'static {
    /// Up to `max` advisories, waiting at most `wait` for the first.
    fn poll(&self, max: usize, wait: Duration)
    -> BoxFuture<'_, Result<Vec<Advisory>, BrokerError>>;
}

/// The DLQ actor.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dlq;

/// The DLQ actor's configuration.
#[derive(Clone)]
pub struct DlqArgs {
    /// Dead letters.
    pub store: Arc<dyn DlqStore>,
    /// For advisories: dead letters and idempotency checks.
    pub workers: Arc<dyn WorkerStore>,
    /// Where the stream copies go.
    pub broker: Arc<dyn Broker>,
    /// Max-deliveries advisories, when the broker has them.
    pub advisories: Option<Arc<dyn AdvisoryFeed>>,
    /// Time between rounds.
    pub interval: Duration,
}

/// Messages the DLQ actor handles.
#[derive(Debug)]
pub enum DlqMsg {
    /// Copy new dead letters to the stream and read advisories.
    Tick,
}

/// The DLQ actor's state.
pub struct DlqState {
    args: DlqArgs,
    failing_since: Option<Instant>,
}

impl Actor for Dlq {
    type Msg = DlqMsg;
    type State = DlqState;
    type Arguments = DlqArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<DlqMsg>,
        args: DlqArgs,
    ) -> Result<DlqState, ActorProcessingErr> {
        myself.send_interval(args.interval, || DlqMsg::Tick);
        Ok(DlqState {
            args,
            failing_since: None,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<DlqMsg>,
        DlqMsg::Tick: DlqMsg,
        state: &mut DlqState,
    ) -> Result<(), ActorProcessingErr> {
        let streamed = stream_copies(&state.args).await;
        let advised = match &state.args.advisories {
            Some(feed) => advisories(&state.args, feed.as_ref()).await,
            None => Ok(0),
        };
        match (streamed, advised) {
            (Ok(_), Ok(_)) => {
                if let Some(since) = state.failing_since.take() {
                    tracing::info!(
                        after_ms = since.elapsed().as_millis() as u64,
                        "DLQ actor recovered"
                    );
                }
            }
            (Err(err), _) | (_, Err(err)) => {
                if state.failing_since.is_none() {
                    state.failing_since = Some(Instant::now());
                    tracing::warn!(error = %err, "DLQ actor cannot reach the store or the broker; retrying");
                }
            }
        }
        Ok(())
    }
}

/// Copies new dead letters to the DLQ stream; returns how many.
pub async fn stream_copies(args: &DlqArgs) -> Result<usize, String> {
    let rows = args
        .store
        .unstreamed(100)
        .await
        .map_err(|e| e.to_string())?;
    if rows.is_empty() {
        return Ok(0);
    }
    let messages: Vec<OutgoingMessage> = rows
        .iter()
        .map(|(letter, version)| OutgoingMessage {
            event_id: format!("dlq-{}-v{}", letter.id, version),
            subject: letter.dlq_subject.clone(),
            payload: serde_json::to_vec(letter).unwrap_or_default(),
            attempt: 1,
            request_id: letter.request_id.clone(),
            traceparent: None,
            dlq_id: Some(letter.id),
        })
        .collect();
    let results = args.broker.publish_batch(&messages).await;
    let done: Vec<(i64, u32)> = rows
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.is_ok())
        .map(|((letter, version), _)| (letter.id, *version))
        .collect();
    if !done.is_empty() {
        args.store
            .mark_streamed(&done)
            .await
            .map_err(|e| e.to_string())?;
    }
    match results.into_iter().find_map(Result::err) {
        Some(err) => Err(err.to_string()),
        None => Ok(done.len()),
    }
}

/// Turns pending max-deliveries advisories into dead letters; returns how many.
pub async fn advisories(args: &DlqArgs, feed: &dyn AdvisoryFeed) -> Result<usize, String> {
    let batch = feed
        .poll(50, Duration::from_millis(10))
        .await
        .map_err(|e| e.to_string())?;
    let mut stored = 0;
    for advisory in batch {
        let Some(letter) = advisory.letter else {
            tracing::warn!(advisory = %advisory.summary, "max-deliveries advisory for a message the stream no longer has");
            let _ = advisory.delivery.ack().await;
            continue;
        };
        // The effect may have happened with only the ack lost.
        let done = match (
            letter.original_subject.as_str(),
            &letter.original_message_id,
        ) {
            (SUBJECT_PRIMECHECK_REQUESTED, Some(id)) => args
                .workers
                .processed(id, PRIMECHECK_CONSUMER)
                .await
                .map_err(|e| e.to_string())?,
            (SUBJECT_EMAIL_SEND, Some(id)) => args
                .workers
                .email_sent(id)
                .await
                .map_err(|e| e.to_string())?,
            _ => false,
        };
        if !done {
            let id = args
                .workers
                .dead_letter(letter)
                .await
                .map_err(|e| e.to_string())?;
            tracing::warn!(advisory = %advisory.summary, dlq_id = ?id, "message dead-lettered after its last delivery was never acknowledged");
            stored += 1;
        }
        if let Err(err) = advisory.delivery.ack().await {
            tracing::warn!(error = %err, "could not acknowledge an advisory; it will come again (dead letters are not stored twice)");
        }
    }
    Ok(stored)
}

/// An automatic reprocess rule (seed §3.3.1).
#[derive(Debug, Clone)]
pub struct ReprocessRule {
    /// Its name (the operator recorded for its reprocesses is `rule:<name>`).
    pub name: String,
    /// Matched against the dead letter's error message.
    pub pattern: regex::Regex,
    /// How long a dead letter waits before the rule retries it.
    pub wait: Duration,
    /// Automatic retries per dead letter.
    pub max_retries: u32,
    /// Original subjects it applies to (all when empty).
    pub subjects: Vec<String>,
}

/// The retry timer actor.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryTimer;

/// The retry timer's configuration.
#[derive(Clone)]
pub struct TimerArgs {
    /// Dead letters.
    pub store: Arc<dyn DlqStore>,
    /// The rules.
    pub rules: Vec<ReprocessRule>,
    /// Time between rounds.
    pub interval: Duration,
}

/// Messages the retry timer handles.
#[derive(Debug)]
pub enum TimerMsg {
    /// Apply the rules.
    Tick,
}

impl Actor for RetryTimer {
    type Msg = TimerMsg;
    type State = TimerArgs;
    type Arguments = TimerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TimerMsg>,
        args: TimerArgs,
    ) -> Result<TimerArgs, ActorProcessingErr> {
        myself.send_interval(args.interval, || TimerMsg::Tick);
        Ok(args)
    }

    async fn handle(
        &self,
        _: ActorRef<TimerMsg>,
        TimerMsg::Tick: TimerMsg,
        args: &mut TimerArgs,
    ) -> Result<(), ActorProcessingErr> {
        if let Err(err) = apply_rules(args).await {
            tracing::warn!(error = %err, "could not apply the DLQ reprocess rules; trying again next round");
        }
        crate::metrics::pipeline().dlq_rule_rounds.inc();
        Ok(())
    }
}

/// One round of the rules; returns how many dead letters were republished.
pub async fn apply_rules(args: &TimerArgs) -> Result<usize, String> {
    let mut total = 0;
    for rule in &args.rules {
        let before = Utc::now() - chrono::Duration::from_std(rule.wait).unwrap_or_default();
        let candidates = args
            .store
            .rule_candidates(before, rule.max_retries, &rule.subjects, 100)
            .await
            .map_err(|e| e.to_string())?;
        let ids: Vec<i64> = candidates
            .iter()
            .filter(|l| {
                l.error_type != ErrorClass::Poison && rule.pattern.is_match(&l.error_message)
            })
            .map(|l| l.id)
            .collect();
        if ids.is_empty() {
            continue;
        }
        let results = args
            .store
            .reprocess(Reprocess {
                ids,
                delay: Duration::ZERO,
                force: false,
                operator: format!("rule:{}", rule.name),
                reason: Some(format!("automatic: error matches /{}/", rule.pattern)),
                automatic: true,
            })
            .await
            .map_err(|e| e.to_string())?;
        let n = results.iter().filter(|r| r.ok).count();
        tracing::info!(rule = %rule.name, republished = n, "DLQ rule republished dead letters");
        total += n;
    }
    Ok(total)
}
