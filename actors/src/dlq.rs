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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::Ordering;

    use chrono::Utc;

    use super::*;
    use crate::fakes::{
        CountedDelivery, MemoryAdvisories, MemoryBroker, MemoryDlq, MemoryWorkers, letter,
    };
    use crate::model::{ErrorClass, NewDeadLetter};
    use crate::ports::Advisory;

    fn args(
        dlq: &Arc<MemoryDlq>,
        workers: &Arc<MemoryWorkers>,
        broker: &Arc<MemoryBroker>,
    ) -> DlqArgs {
        DlqArgs {
            store: dlq.clone(),
            workers: workers.clone(),
            broker: broker.clone(),
            advisories: None,
            interval: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn each_new_dead_letter_is_streamed_once_and_only_what_the_broker_took_is_marked() {
        let dlq = Arc::new(MemoryDlq::with(vec![
            letter(1, ErrorClass::Transient, "timed out"),
            letter(2, ErrorClass::Permanent, "550 no such user"),
        ]));
        let broker = Arc::new(MemoryBroker::default());
        broker.refuse.lock().unwrap().insert("dlq-2-v0".into());
        let workers = Arc::new(MemoryWorkers::default());
        let args = args(&dlq, &workers, &broker);

        let err = stream_copies(&args).await.unwrap_err();
        assert!(err.contains("dlq-2-v0 refused"), "{err}");
        assert_eq!(broker.sent_ids(), ["dlq-1-v0"]);
        let sent = broker.sent.lock().unwrap()[0].clone();
        assert_eq!(sent.subject, "dlq.emailsend");
        assert_eq!(sent.dlq_id, Some(1));
        let copy: serde_json::Value = serde_json::from_slice(&sent.payload).unwrap();
        assert_eq!(
            copy["error_message"], "timed out",
            "the stream copy is the row"
        );

        // Next round: only the one the broker refused, and then nothing.
        broker.refuse.lock().unwrap().clear();
        assert_eq!(stream_copies(&args).await.unwrap(), 1);
        assert_eq!(stream_copies(&args).await.unwrap(), 0);
        assert_eq!(broker.sent_ids(), ["dlq-1-v0", "dlq-2-v0"]);

        // A letter that failed again is a new version: streamed again.
        dlq.log().letters[0].1 = 1;
        assert_eq!(stream_copies(&args).await.unwrap(), 1);
        assert_eq!(broker.sent_ids().last().unwrap(), "dlq-1-v1");
    }

    fn advisory(
        subject: &str,
        event_id: Option<&str>,
    ) -> (Advisory, Arc<std::sync::atomic::AtomicU32>) {
        let (delivery, acks) = CountedDelivery::new("$JS.EVENT.ADVISORY");
        let letter = event_id.map(|id| NewDeadLetter {
            original_subject: subject.into(),
            original_message_id: Some(id.into()),
            payload: b"{}".to_vec(),
            error: "max deliveries reached".into(),
            error_type: ErrorClass::Transient,
            retry_count: 5,
            original_created_at: Utc::now(),
            request_id: None,
            dlq_id: None,
        });
        (
            Advisory {
                letter,
                summary: format!("{subject} {event_id:?}"),
                delivery: Box::new(delivery),
            },
            acks,
        )
    }

    #[tokio::test]
    async fn an_advisory_dead_letters_only_a_message_whose_effect_never_happened() {
        let workers = Arc::new(MemoryWorkers::default());
        workers
            .processed
            .lock()
            .unwrap()
            .insert(("done-check".into(), PRIMECHECK_CONSUMER.into()));
        workers.emailed.lock().unwrap().insert("sent-email".into());
        let (done_check, a1) = advisory(SUBJECT_PRIMECHECK_REQUESTED, Some("done-check"));
        let (sent_email, a2) = advisory(SUBJECT_EMAIL_SEND, Some("sent-email"));
        let (lost_email, a3) = advisory(SUBJECT_EMAIL_SEND, Some("lost-email"));
        let (gone, a4) = advisory(SUBJECT_EMAIL_SEND, None);
        let feed = MemoryAdvisories(std::sync::Mutex::new(vec![
            done_check, sent_email, lost_email, gone,
        ]));
        let dlq = Arc::new(MemoryDlq::default());
        let broker = Arc::new(MemoryBroker::default());

        let stored = advisories(&args(&dlq, &workers, &broker), &feed)
            .await
            .unwrap();
        assert_eq!(stored, 1, "only the email that was never sent");
        let letters = workers.dead_letters.lock().unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(
            letters[0].original_message_id.as_deref(),
            Some("lost-email")
        );
        for acks in [a1, a2, a3, a4] {
            assert_eq!(
                acks.load(Ordering::Relaxed),
                1,
                "every advisory is acknowledged once"
            );
        }
    }
}
