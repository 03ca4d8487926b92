//! The dead-letter queue's actor (the automatic reprocess rules are the retry timer's,
//! in `retry_timer.rs`).
//!
//! [`Dlq`] (messages: [`DlqMsg::Tick`]) copies new dead letters to the `DEAD_LETTER_QUEUE`
//! stream (`dlq.<kind>`), and turns max-deliveries advisories (a worker died or hung on a
//! message's last delivery, so nobody dead-lettered it) into dead letters. Every path that
//! gives up on a message first writes its `dead_letter_messages` row (with its
//! `dlq_statistics` count) in the database; the stream copy follows from the row, like the
//! outbox, so a crash between the two loses nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::handlers::PRIMECHECK_CONSUMER;
use crate::model::{SUBJECT_EMAIL_SEND, SUBJECT_PRIMECHECK_REQUESTED};
use crate::ports::{AdvisoryFeed, Broker, DlqStore, OutgoingMessage, WorkerStore};

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
