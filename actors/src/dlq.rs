//! The dead-letter queue's actor (the automatic reprocess rules are the retry timer's,
//! in `retry_timer.rs`).
//!
//! [`Dlq`] (messages: [`DlqMsg::Tick`]) copies new dead letters to the `DEAD_LETTER_QUEUE`
//! stream (`dlq.<kind>`), and turns max-deliveries advisories (a worker died or hung on a
//! message's last delivery, so nobody dead-lettered it) into dead letters. Every path that
//! gives up on a message first writes its `dead_letter_messages` row (with its
//! `dlq_statistics` count) in the database; the stream copy follows from the row, like the
//! outbox, so a crash between the two loses nothing.
//!
//! A max-deliveries advisory is fire-and-forget (nats-server #7148): one that never
//! reached the capture stream leaves its message in the stream, neither done nor
//! dead-lettered. So every `reconcile_every` the actor also compares what the consumers
//! report — the messages past their acknowledgement floor, and how many they still wait
//! on — with the store: when more messages are neither done nor dead-lettered than the
//! consumer has in flight, the oldest of them (older than `reconcile_after`) fell through,
//! and become dead letters `advisory missed …` ([`reconcile`]).

use std::collections::HashMap;
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
    /// Time between reconciliations of the consumers' state with the store.
    pub reconcile_every: Duration,
    /// A message is taken for fallen through only when published at least this long ago.
    pub reconcile_after: Duration,
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
    /// Per consumer, the stream sequence up to which every message is settled.
    settled: HashMap<String, u64>,
    last_reconcile: Option<Instant>,
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
            settled: HashMap::new(),
            last_reconcile: None,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<DlqMsg>,
        DlqMsg::Tick: DlqMsg,
        state: &mut DlqState,
    ) -> Result<(), ActorProcessingErr> {
        let streamed = stream_copies(&state.args).await;
        let mut advised = match &state.args.advisories {
            Some(feed) => advisories(&state.args, feed.as_ref()).await,
            None => Ok(0),
        };
        let due = state
            .last_reconcile
            .is_none_or(|at| at.elapsed() >= state.args.reconcile_every);
        if let (Some(feed), true, Ok(_)) = (&state.args.advisories, due, &advised) {
            state.last_reconcile = Some(Instant::now());
            let feed = feed.clone();
            if let Err(err) = reconcile(&state.args, feed.as_ref(), &mut state.settled).await {
                advised = Err(err);
            }
        }
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

/// Whether the message `letter` is about is settled: its effect happened (the ack was
/// lost), or it has a dead letter already.
async fn settled(args: &DlqArgs, letter: &crate::model::NewDeadLetter) -> Result<bool, String> {
    let Some(id) = &letter.original_message_id else {
        // Without an event id nothing can be matched: a poison message, dead-lettered by
        // its worker.
        return Ok(true);
    };
    let done = match letter.original_subject.as_str() {
        SUBJECT_PRIMECHECK_REQUESTED => args.workers.processed(id, PRIMECHECK_CONSUMER).await,
        SUBJECT_EMAIL_SEND => args.workers.email_sent(id).await,
        _ => Ok(false),
    }
    .map_err(|e| e.to_string())?;
    if done {
        return Ok(true);
    }
    args.store
        .has_dead_letter(id)
        .await
        .map_err(|e| e.to_string())
}

/// Compares the consumers' state with the store and dead-letters what fell through (see
/// the module's documentation); returns how many. `settled` keeps, per consumer, the
/// stream sequence up to which everything was found settled, so each round reads only
/// what is new or still open.
pub async fn reconcile(
    args: &DlqArgs,
    feed: &dyn AdvisoryFeed,
    settled_upto: &mut HashMap<String, u64>,
) -> Result<usize, String> {
    let consumers = feed
        .unsettled(settled_upto, 2000)
        .await
        .map_err(|e| e.to_string())?;
    let mut stored = 0;
    for consumer in consumers {
        // At or below the acknowledgement floor JetStream holds nothing any more: a
        // message there that is neither done nor dead-lettered fell through. Above it, the
        // consumer still waits on `in_flight` messages; any more that are open fell through
        // too, but which ones is not told: the oldest are taken.
        let mut fallen = Vec::new();
        let mut above = Vec::new();
        let mut prefix_settled = true;
        for (seq, published, letter) in consumer.messages {
            if settled(args, &letter).await? {
                if prefix_settled {
                    settled_upto.insert(consumer.consumer.clone(), seq);
                }
                continue;
            }
            prefix_settled = false;
            if seq <= consumer.acked_upto {
                fallen.push((seq, published, letter));
            } else {
                above.push((seq, published, letter));
            }
        }
        let extra = above.len().saturating_sub(consumer.in_flight as usize);
        fallen.extend(above.into_iter().take(extra));
        let old_enough = chrono::Utc::now()
            - chrono::Duration::from_std(args.reconcile_after).unwrap_or(chrono::Duration::MAX);
        for (seq, published, mut letter) in fallen {
            // Only past `reconcile_after`: the consumer's state and the store are read at
            // different moments.
            if published > old_enough {
                continue;
            }
            letter.error = format!(
                "advisory missed: {} stopped delivering it (stream sequence {seq}) without an acknowledgement, and its max-deliveries advisory never arrived",
                consumer.consumer
            );
            let id = args
                .workers
                .dead_letter(letter)
                .await
                .map_err(|e| e.to_string())?;
            tracing::warn!(consumer = %consumer.consumer, stream_seq = seq, dlq_id = ?id, "reconciler: a message fell through without its max-deliveries advisory; dead-lettered");
            crate::metrics::pipeline().dlq_reconciled.inc();
            stored += 1;
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
            reconcile_every: Duration::from_secs(60),
            reconcile_after: Duration::from_secs(600),
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

    /// A feed whose consumer reports these messages, in flight count and floor.
    struct Reported(u64, u64, Vec<(u64, chrono::DateTime<Utc>, NewDeadLetter)>);

    impl AdvisoryFeed for Reported {
        fn poll(
            &self,
            _: usize,
            _: Duration,
        ) -> futures::future::BoxFuture<'_, Result<Vec<Advisory>, crate::ports::BrokerError>>
        {
            Box::pin(async { Ok(Vec::new()) })
        }

        fn unsettled<'a>(
            &'a self,
            _: &'a HashMap<String, u64>,
            _: usize,
        ) -> futures::future::BoxFuture<
            'a,
            Result<Vec<crate::ports::Unsettled>, crate::ports::BrokerError>,
        > {
            let u = crate::ports::Unsettled {
                consumer: "primecheck-worker".into(),
                in_flight: self.0,
                acked_upto: self.1,
                messages: self.2.clone(),
            };
            Box::pin(async move { Ok(vec![u]) })
        }
    }

    fn check(event_id: &str) -> NewDeadLetter {
        NewDeadLetter {
            original_subject: SUBJECT_PRIMECHECK_REQUESTED.into(),
            original_message_id: Some(event_id.into()),
            payload: b"{}".to_vec(),
            error: String::new(),
            error_type: ErrorClass::Transient,
            retry_count: 3,
            original_created_at: Utc::now(),
            request_id: None,
            dlq_id: None,
        }
    }

    #[tokio::test]
    async fn the_reconciler_dead_letters_what_fell_through_and_nothing_done_or_in_flight() {
        let dlq = Arc::new(MemoryDlq::default());
        let workers = Arc::new(MemoryWorkers::default());
        let broker = Arc::new(MemoryBroker::default());
        let args = args(&dlq, &workers, &broker);
        workers
            .processed
            .lock()
            .unwrap()
            .insert(("done".into(), PRIMECHECK_CONSUMER.into()));
        let old = Utc::now() - chrono::Duration::hours(1);
        let feed = Reported(
            1,
            3,
            vec![
                (1, old, check("done")),
                // Below the floor, open: given up on.
                (2, old, check("below-floor")),
                // Given up on too, but too recent to judge.
                (3, Utc::now(), check("young")),
                // Above the floor, the consumer waits on one of two: the older is taken.
                (4, old, check("above-older")),
                (5, old, check("in-flight")),
            ],
        );
        let mut settled = HashMap::new();
        let n = reconcile(&args, &feed, &mut settled).await.unwrap();
        assert_eq!(n, 2);
        let letters = workers.dead_letters.lock().unwrap();
        let ids: Vec<&str> = letters
            .iter()
            .map(|l| l.original_message_id.as_deref().unwrap())
            .collect();
        assert_eq!(ids, ["below-floor", "above-older"]);
        assert!(
            letters[0].error.starts_with("advisory missed"),
            "{}",
            letters[0].error
        );
        assert_eq!(
            settled.get("primecheck-worker"),
            Some(&1),
            "settled up to the first open"
        );
    }
}
