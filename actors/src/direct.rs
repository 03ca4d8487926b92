//! Publishing right after the commit: the outbox relay's fast path.
//!
//! An event written through the outbox used to wait for the relay: a wake, a claim
//! transaction (`BEGIN`, `SELECT … FOR UPDATE SKIP LOCKED`), then the publish — two database
//! round trips and an actor hop between a commit and the broker, twice per request (the
//! request's event, then its result's email event). A store that enables this path writes
//! the event's outbox row as usual but not yet due (`next_retry_at` = now + [`GRACE`]), and
//! after the commit hands the event to the [`DirectPublisher`], which publishes it at once
//! (the event id is the broker's dedupe key, as with the relay) and then marks the row
//! published, in batches, in the background.
//!
//! The outbox stays the guarantee: whatever this path does not finish — the daemon dies
//! after the commit, the broker refuses, the mark fails — is a pending row that becomes
//! due when its grace ends, and any relay publishes it then (the broker drops a duplicate
//! of one already published). An event whose publish failed is made due at once and the
//! relay woken, so that it does not wait out its grace. While the broker is failing, or the queue is full, the
//! publisher takes no new events ([`DirectPublisher::accepting`]): stores then write rows
//! due at once and wake the relay, as without this path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;

use crate::liveness::WorkerStats;
use crate::outbox_relay::RelayWake;
use crate::ports::{Broker, OutboxMarks, OutgoingMessage};

/// How long an event handed to the publisher is invisible to the relays. Long enough for
/// the publish and the mark under load (milliseconds), short enough that an event this path
/// failed to publish is published by a relay soon after.
pub const GRACE: Duration = Duration::from_secs(1);

/// After a failed publish, how long the publisher takes no new events.
const BACK_OFF: Duration = Duration::from_secs(5);

/// Committed batches waiting to be published (a batch is one commit's events).
const QUEUE: usize = 1024;

/// Most events in one publish, and in one mark.
const BATCH: usize = 1000;

/// Publishes in flight at once.
const IN_FLIGHT: usize = 4;

/// What the publisher has done (also on `/metrics` as `outbox_direct_events_total`).
#[derive(Debug, Default)]
pub struct DirectStats {
    /// Events published.
    pub published: AtomicU64,
    /// Events the broker refused or did not acknowledge (left to the relay).
    pub failed: AtomicU64,
    /// Events whose row could not be marked (the relay publishes them again).
    pub unmarked: AtomicU64,
}

/// The fast path's handle, shared by the stores that write outbox events.
#[derive(Clone)]
pub struct DirectPublisher {
    inner: Arc<Inner>,
}

struct Inner {
    queue: mpsc::Sender<Vec<OutgoingMessage>>,
    started: Instant,
    /// Milliseconds since `started` before which no new events are taken.
    paused_until_ms: AtomicU64,
    wake: RelayWake,
    stats: Arc<DirectStats>,
}

impl std::fmt::Debug for DirectPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectPublisher")
            .field("accepting", &self.accepting())
            .finish()
    }
}

impl DirectPublisher {
    /// Starts the publisher's tasks: publishes go to `broker`, marks to `marks`; `wake` is
    /// the relay, woken for events written without the grace, and what is published counts
    /// in the relay's `relay_stats` (its heartbeat row: the outbox's output, whichever path
    /// took it). The tasks end when every handle is dropped.
    pub fn start(
        broker: Arc<dyn Broker>,
        marks: Arc<dyn OutboxMarks>,
        wake: RelayWake,
        relay_stats: Arc<WorkerStats>,
    ) -> Self {
        let (queue, events) = mpsc::channel(QUEUE);
        let (to_mark, marked) = mpsc::unbounded_channel();
        let (to_release, released) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            queue,
            started: Instant::now(),
            paused_until_ms: AtomicU64::new(0),
            wake: wake.clone(),
            stats: Arc::default(),
        });
        tokio::spawn(publish_loop(
            events,
            broker,
            Outcomes {
                to_mark,
                to_release,
            },
            Arc::downgrade(&inner),
            inner.stats.clone(),
            relay_stats,
        ));
        tokio::spawn(mark_loop(marked, marks.clone(), inner.stats.clone()));
        tokio::spawn(release_loop(released, marks, wake));
        Self { inner }
    }

    /// Whether new events should be left to this path (written with the grace). False for
    /// [`BACK_OFF`] after a failed publish, and while the queue is full.
    pub fn accepting(&self) -> bool {
        let now = self.inner.started.elapsed().as_millis() as u64;
        now >= self.inner.paused_until_ms.load(Ordering::Relaxed) && self.inner.queue.capacity() > 0
    }

    /// Hands over events committed with the grace. Ones it cannot take (the queue filled
    /// meanwhile, the tasks stopped) wait out the grace and go through a relay.
    pub fn publish(&self, events: Vec<OutgoingMessage>) {
        if events.is_empty() {
            return;
        }
        if let Err(err) = self.inner.queue.try_send(events) {
            let n = match err {
                mpsc::error::TrySendError::Full(e) | mpsc::error::TrySendError::Closed(e) => {
                    e.len()
                }
            };
            self.inner
                .stats
                .failed
                .fetch_add(n as u64, Ordering::Relaxed);
            crate::metrics::pipeline()
                .outbox_direct
                .with_label_values(&["not_taken"])
                .inc_by(n as u64);
        }
    }

    /// Wakes the relay: for events committed due at once (while this path was not accepting).
    pub fn wake_relay(&self) {
        self.inner.wake.wake();
    }

    /// What it has done so far.
    pub fn stats(&self) -> &DirectStats {
        &self.inner.stats
    }
}

/// Where the publish loop sends the event ids it is done with.
struct Outcomes {
    /// Published: to be marked.
    to_mark: mpsc::UnboundedSender<Vec<String>>,
    /// Not published: to be made due for the relay at once.
    to_release: mpsc::UnboundedSender<Vec<String>>,
}

async fn publish_loop(
    mut events: mpsc::Receiver<Vec<OutgoingMessage>>,
    broker: Arc<dyn Broker>,
    outcomes: Outcomes,
    inner: std::sync::Weak<Inner>,
    stats: Arc<DirectStats>,
    relay_stats: Arc<WorkerStats>,
) {
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            batch = events.recv(), if open && in_flight.len() < IN_FLIGHT => {
                let Some(mut batch) = batch else {
                    open = false;
                    continue;
                };
                while batch.len() < BATCH {
                    match events.try_recv() {
                        Ok(more) => batch.extend(more),
                        Err(_) => break,
                    }
                }
                let broker = broker.clone();
                in_flight.push(async move {
                    let results = broker.publish_batch(&batch).await;
                    (batch, results)
                });
            }
            Some((batch, results)) = in_flight.next() => {
                let m = &crate::metrics::pipeline().outbox_direct;
                let mut published = Vec::with_capacity(batch.len());
                let mut unpublished = Vec::new();
                let mut error = None;
                for (message, result) in batch.into_iter().zip(results) {
                    match result {
                        Ok(()) => published.push(message.event_id),
                        Err(err) => {
                            unpublished.push(message.event_id);
                            error.get_or_insert(err);
                        }
                    }
                }
                let failed = unpublished.len() as u64;
                stats.published.fetch_add(published.len() as u64, Ordering::Relaxed);
                relay_stats.add(published.len() as u64, 0, 0);
                m.with_label_values(&["published"]).inc_by(published.len() as u64);
                if let Some(err) = error {
                    if let Some(inner) = inner.upgrade() {
                        let until = inner.started.elapsed() + BACK_OFF;
                        inner
                            .paused_until_ms
                            .store(until.as_millis() as u64, Ordering::Relaxed);
                    }
                    stats.failed.fetch_add(failed, Ordering::Relaxed);
                    m.with_label_values(&["failed"]).inc_by(failed);
                    tracing::debug!(events = failed, error = %err, "direct publish failed; the relay publishes these events");
                    let _ = outcomes.to_release.send(unpublished);
                }
                if !published.is_empty() {
                    let _ = outcomes.to_mark.send(published);
                }
            }
        }
    }
}

async fn mark_loop(
    mut marked: mpsc::UnboundedReceiver<Vec<String>>,
    marks: Arc<dyn OutboxMarks>,
    stats: Arc<DirectStats>,
) {
    while let Some(mut ids) = marked.recv().await {
        while ids.len() < BATCH {
            match marked.try_recv() {
                Ok(more) => ids.extend(more),
                Err(_) => break,
            }
        }
        if let Err(err) = marks.mark_published(&ids).await {
            stats
                .unmarked
                .fetch_add(ids.len() as u64, Ordering::Relaxed);
            tracing::warn!(events = ids.len(), error = %err, "could not mark published outbox events; a relay publishes them again when their grace ends (the broker drops the duplicates)");
        }
    }
}

/// Makes the events the fast path failed to publish due at once and wakes the relay, so that
/// they do not wait out their grace (a publish that failed at a broker's election would
/// otherwise leave its request a second behind the others). When that fails, the grace
/// still ends and a relay publishes them then.
async fn release_loop(
    mut released: mpsc::UnboundedReceiver<Vec<String>>,
    marks: Arc<dyn OutboxMarks>,
    wake: RelayWake,
) {
    while let Some(mut ids) = released.recv().await {
        while ids.len() < BATCH {
            match released.try_recv() {
                Ok(more) => ids.extend(more),
                Err(_) => break,
            }
        }
        if let Err(err) = marks.due_now(&ids).await {
            tracing::warn!(events = ids.len(), error = %err, "could not hand unpublished outbox events to the relay at once; it publishes them when their grace ends");
        }
        wake.wake();
    }
}

#[cfg(test)]
mod tests {
    use crate::ports::StoreError;
    use futures::future::BoxFuture;
    use std::sync::Mutex;

    use futures::FutureExt;

    use super::*;
    use crate::ports::BrokerError;

    #[derive(Default)]
    struct FakeBroker {
        fail: std::sync::atomic::AtomicBool,
        published: Mutex<Vec<String>>,
    }

    impl Broker for FakeBroker {
        fn publish_batch<'a>(
            &'a self,
            messages: &'a [OutgoingMessage],
        ) -> BoxFuture<'a, Vec<Result<(), BrokerError>>> {
            async move {
                if self.fail.load(Ordering::Relaxed) {
                    return messages
                        .iter()
                        .map(|_| Err(BrokerError("down".into())))
                        .collect();
                }
                let mut p = self.published.lock().unwrap();
                p.extend(messages.iter().map(|m| m.event_id.clone()));
                messages.iter().map(|_| Ok(())).collect()
            }
            .boxed()
        }
    }

    #[derive(Default)]
    struct FakeMarks {
        marked: Mutex<Vec<String>>,
        due: Mutex<Vec<String>>,
        notify: tokio::sync::Notify,
    }

    impl OutboxMarks for FakeMarks {
        fn mark_published<'a>(
            &'a self,
            event_ids: &'a [String],
        ) -> BoxFuture<'a, Result<u64, StoreError>> {
            async move {
                self.marked.lock().unwrap().extend_from_slice(event_ids);
                self.notify.notify_one();
                Ok(event_ids.len() as u64)
            }
            .boxed()
        }

        fn due_now<'a>(
            &'a self,
            event_ids: &'a [String],
        ) -> BoxFuture<'a, Result<u64, StoreError>> {
            async move {
                self.due.lock().unwrap().extend_from_slice(event_ids);
                self.notify.notify_one();
                Ok(event_ids.len() as u64)
            }
            .boxed()
        }
    }

    fn message(id: &str) -> OutgoingMessage {
        OutgoingMessage {
            event_id: id.into(),
            subject: "s".into(),
            payload: b"{}".to_vec(),
            attempt: 1,
            request_id: None,
            traceparent: None,
            dlq_id: None,
        }
    }

    async fn marked(marks: &FakeMarks, n: usize) -> Vec<String> {
        loop {
            let notified = marks.notify.notified();
            {
                let m = marks.marked.lock().unwrap();
                if m.len() >= n {
                    return m.clone();
                }
            }
            notified.await;
        }
    }

    #[tokio::test]
    async fn published_events_are_marked_and_a_failure_stops_taking_new_ones() {
        let broker = Arc::new(FakeBroker::default());
        let marks = Arc::new(FakeMarks::default());
        let relay_stats = Arc::new(WorkerStats::default());
        let direct = DirectPublisher::start(
            broker.clone(),
            marks.clone(),
            RelayWake::new("none"),
            relay_stats.clone(),
        );
        assert!(direct.accepting());
        direct.publish(vec![message("a"), message("b")]);
        direct.publish(vec![message("c")]);
        let mut got = tokio::time::timeout(Duration::from_secs(10), marked(&marks, 3))
            .await
            .expect("the published events are marked");
        got.sort();
        assert_eq!(got, ["a", "b", "c"]);
        assert_eq!(broker.published.lock().unwrap().len(), 3);
        assert!(direct.accepting());

        broker.fail.store(true, Ordering::Relaxed);
        direct.publish(vec![message("d")]);
        tokio::time::timeout(Duration::from_secs(10), async {
            while direct.stats().failed.load(Ordering::Relaxed) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the failure is counted");
        assert!(
            !direct.accepting(),
            "after a failed publish new events go to the relay"
        );
        assert_eq!(
            marks.marked.lock().unwrap().len(),
            3,
            "an unpublished event is never marked"
        );
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let notified = marks.notify.notified();
                if marks.due.lock().unwrap().as_slice() == ["d"] {
                    return;
                }
                notified.await;
            }
        })
        .await
        .expect("an unpublished event is handed to the relay at once, not after its grace");
    }
}
