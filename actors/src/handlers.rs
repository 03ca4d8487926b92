//! The two handlers: prime checks and result emails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::breaker::CircuitBreaker;
use crate::model::{EmailSend, PrimeCheckRequested, PrimeResult, SentEmail};
use crate::outbox_relay::RelayWake;
use crate::ports::{Email, Mailer, Message, OnAccepted, SendJournal};
use crate::ports::{StoreError, WorkerStore};
use crate::primality::{self, PrimalityError};
use crate::worker::{Failure, Handler};

/// Numbers of at most this many digits (below 2^64) are tested on the worker's own task:
/// deterministic Miller–Rabin and Lucas on 64-bit words take microseconds. Longer ones go to
/// the blocking pool.
pub const INLINE_DIGITS: usize = 19;

/// Consumer name recorded in `processed_events` for prime checks.
pub const PRIMECHECK_CONSUMER: &str = "primecheck";

/// Tests the number of a `primecheck.requested` event and stores the result with its
/// `email.send` event.
pub struct PrimeCheckHandler {
    /// Where results go.
    pub store: Arc<dyn WorkerStore>,
    /// Longest a single test may run.
    pub time_limit: Duration,
    /// Tests running at once in this daemon (CPU-bound, on the blocking pool).
    pub cpu: Arc<Semaphore>,
    /// Wakes the outbox relay after a result is stored.
    pub wake: Option<RelayWake>,
    /// A test-only fault hook (`PRIMED_FAULT_PANIC_NUMBER`, refused unless
    /// `PRIMED_FAULT_INJECTION=true`): a check of exactly this number panics, as a bug in
    /// the handler would.
    pub panic_on: Option<String>,
}

impl PrimeCheckHandler {
    async fn run(&self, message: &Message) -> Result<(), Failure> {
        let request: PrimeCheckRequested = decode(message)?;
        if self.panic_on.as_deref() == Some(request.number.as_str()) {
            // The fault hook: a crash the worker must survive and count.
            std::panic::panic_any(format!(
                "fault injection: PRIMED_FAULT_PANIC_NUMBER is {}",
                request.number
            ));
        }
        // Big numbers are expensive: skip the work when this event was already done.
        if request.number.len() > 19
            && self
                .store
                .processed(&message.event_id, PRIMECHECK_CONSUMER)
                .await
                .map_err(store_failure)?
        {
            return Ok(());
        }
        let limit = self.time_limit;
        let started = Instant::now();
        let verdict = if request.number.len() <= INLINE_DIGITS {
            // A 64-bit test takes microseconds: a trip to the blocking pool would cost more.
            primality::check(&request.number, Some(started + limit))
        } else {
            let permit = self
                .cpu
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Failure::unavailable("the CPU pool is closed (shutting down)"))?;
            let number = request.number.clone();
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                primality::check(&number, Some(Instant::now() + limit))
            })
            .await
            .map_err(|e| match e.try_into_panic() {
                // A panic in the test is the handler's crash: the worker counts it.
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => Failure::unavailable(format!("the primality test was cancelled: {e}")),
            })?
        };
        let duration = started.elapsed();
        let m = crate::metrics::pipeline();
        m.prime_check_duration
            .with_label_values(&[crate::metrics::length_bucket(request.number.len())])
            .observe(duration.as_secs_f64());
        let verdict = verdict.map_err(|e| match e {
            PrimalityError::NotANumber(_) => {
                m.prime_check_requests
                    .with_label_values(&["failed", "invalid"])
                    .inc();
                Failure::permanent(e.to_string())
            }
            PrimalityError::TimedOut { .. } => {
                m.prime_check_requests
                    .with_label_values(&["failed", "timeout"])
                    .inc();
                Failure::permanent(format!("{e} (limit {})", humantime::format_duration(limit)))
            }
        })?;
        let is_prime = verdict.is_prime;
        tracing::info!(
            is_prime,
            digits = verdict.digits,
            duration_ms = duration.as_secs_f64() * 1000.0,
            "prime check done"
        );
        let result = PrimeResult {
            event_id: message.event_id.clone(),
            email_event_id: uuid_v7(),
            email: EmailSend {
                request_id: request.request_id,
                number: request.number,
                email: request.email,
                is_prime: verdict.is_prime,
                factor: verdict.factor,
                digits: verdict.digits,
            },
            duration,
            request_id: message.request_id.clone(),
            // The email continues the trace under this check's span.
            traceparent: crate::trace::traceparent(&tracing::Span::current())
                .or_else(|| message.traceparent.clone()),
        };
        let fresh = self
            .store
            .record_result(result)
            .await
            .map_err(store_failure)?;
        if fresh {
            m.prime_check_requests
                .with_label_values(&["success", if is_prime { "prime" } else { "composite" }])
                .inc();
            if let Some(wake) = &self.wake {
                wake.new_event();
            }
        }
        Ok(())
    }
}

impl Handler for PrimeCheckHandler {
    fn handle<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), Failure>> {
        self.run(message).boxed()
    }

    fn request_id(&self, message: &Message) -> Option<String> {
        serde_json::from_slice::<PrimeCheckRequested>(&message.payload)
            .ok()
            .map(|r| r.request_id)
    }
}

fn decode<T: serde::de::DeserializeOwned>(message: &Message) -> Result<T, Failure> {
    if message.event_id.is_empty() {
        return Err(Failure::poison(
            "the message has no event id (Nats-Msg-Id header)",
        ));
    }
    serde_json::from_slice(&message.payload)
        .map_err(|e| Failure::poison(format!("cannot decode the payload: {e}")))
}

fn store_failure(err: StoreError) -> Failure {
    match err {
        StoreError::Unavailable(e) => {
            Failure::unavailable(format!("the database is unavailable: {e}"))
        }
        StoreError::Rejected(e) => {
            Failure::transient(format!("the database refused the write: {e}"))
        }
    }
}

/// A time-ordered id for new events.
fn uuid_v7() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The `Message-ID` of an event's email.
pub fn message_id(event_id: &str, domain: &str) -> String {
    format!("<{event_id}@{domain}>")
}

/// Sends the result email of an `email.send` event through a circuit breaker, with bounded
/// concurrency, and records it once per event.
pub struct EmailHandler {
    /// Where sends are recorded.
    pub store: Arc<dyn WorkerStore>,
    /// How mail goes out.
    pub mailer: Arc<dyn Mailer>,
    /// Around the mailer.
    pub breaker: Arc<CircuitBreaker>,
    /// Sends in flight in this daemon.
    pub concurrency: Arc<Semaphore>,
    /// Domain of the `Message-ID`.
    pub message_id_domain: String,
    /// Where each accepted email is noted until its record commits.
    pub journal: Option<Arc<dyn SendJournal>>,
    /// The events being handled by this daemon's email workers.
    pub in_flight: InFlight,
}

/// The events this daemon's email workers are handling, each behind a lock of its own.
/// JetStream delivers an event again when its acknowledgement is late — after the first
/// backoff step, 1 s by default — and on a slow link the first copy can still arrive then,
/// so two workers may hold the same event at once: the second waits for the first to end
/// and then finds the email sent, instead of both finding it unsent and sending it twice.
/// (Two daemons holding one event at once are not covered: that needs the link to one of
/// them to lose a whole backoff step.)
#[derive(Debug, Default)]
pub struct InFlight(std::sync::Mutex<Holders>);

/// Per event held: how many workers hold it or wait for it, and its lock.
type Holders = std::collections::HashMap<String, (usize, Arc<tokio::sync::Mutex<()>>)>;

/// A worker's hold on an event (see [`InFlight`]); the event is free again when it drops.
pub struct Held<'a> {
    in_flight: &'a InFlight,
    event_id: String,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl InFlight {
    fn map(&self) -> std::sync::MutexGuard<'_, Holders> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until no other worker of this daemon handles `event_id`, then holds it.
    pub async fn hold(&self, event_id: &str) -> Held<'_> {
        let lock = {
            let mut map = self.map();
            let entry = map.entry(event_id.to_string()).or_default();
            entry.0 += 1;
            entry.1.clone()
        };
        Held {
            in_flight: self,
            event_id: event_id.to_string(),
            _guard: lock.lock_owned().await,
        }
    }

    /// Events held or waited for.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether no event is held.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut map = self.in_flight.map();
        if let Some(entry) = map.get_mut(&self.event_id) {
            entry.0 -= 1;
            if entry.0 == 0 {
                map.remove(&self.event_id);
            }
        }
    }
}

/// Renders the result email.
pub fn render(send: &EmailSend, message_id: String) -> Email {
    let shown = if send.number.len() > 60 {
        format!(
            "{}…{} ({} digits)",
            &send.number[..20],
            &send.number[send.number.len() - 20..],
            send.digits
        )
    } else {
        send.number.clone()
    };
    let answer = if send.is_prime {
        "is prime"
    } else {
        "is not prime"
    };
    let mut body = format!("Hello,\n\nThe number {shown} {answer}.\n");
    if let Some(factor) = &send.factor {
        body.push_str(&format!("It is divisible by {factor}.\n"));
    }
    body.push_str(&format!(
        "\nRequest id: {}\n\n-- \nprimed, the prime-checking service\n",
        send.request_id
    ));
    Email {
        to: send.email.clone(),
        subject: format!("Prime check result: {shown} {answer}"),
        body,
        message_id,
    }
}

impl EmailHandler {
    async fn run(&self, message: &Message) -> Result<(), Failure> {
        let send: EmailSend = decode(message)?;
        let _held = self.in_flight.hold(&message.event_id).await;
        if self
            .store
            .email_sent(&message.event_id)
            .await
            .map_err(store_failure)?
        {
            return Ok(());
        }
        let email = render(
            &send,
            message_id(&message.event_id, &self.message_id_domain),
        );
        let sent = SentEmail {
            event_id: message.event_id.clone(),
            request_id: send.request_id.clone(),
            recipient: send.email.clone(),
            message_id: email.message_id.clone(),
        };
        let _permit = self
            .concurrency
            .acquire()
            .await
            .map_err(|_| Failure::unavailable("the mailer is closed (shutting down)"))?;
        // Sent already, but its record failed: record it, do not send it again.
        let noted = self
            .journal
            .as_ref()
            .is_some_and(|j| j.noted(&message.event_id));
        if !noted {
            let accepted: OnAccepted = match &self.journal {
                Some(journal) => {
                    let (journal, sent) = (journal.clone(), sent.clone());
                    Box::new(move || journal.note(&sent))
                }
                None => Box::new(|| {}),
            };
            self.send(message, &email, accepted).await?;
        }
        self.record(sent).await
    }

    /// Sends `email` through the breaker; `accepted` runs the moment the server took it.
    async fn send(
        &self,
        message: &Message,
        email: &Email,
        accepted: OnAccepted,
    ) -> Result<(), Failure> {
        if !self.breaker.try_acquire() {
            return Err(Failure::unavailable(
                "the SMTP circuit breaker is open: the mail server failed repeatedly",
            ));
        }
        let sent_total = &crate::metrics::pipeline().emails_sent;
        let span = tracing::info_span!(
            "smtp.send",
            request_id = message.request_id.as_deref().unwrap_or(""),
            message_id = %email.message_id,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        crate::trace::attach(&span, None);
        match self
            .mailer
            .send_noting(email, accepted)
            .instrument(span.clone())
            .await
        {
            Ok(()) => {
                self.breaker.success();
                sent_total.with_label_values(&["sent"]).inc();
                span.in_scope(|| tracing::info!(message_id = %email.message_id, "email sent"));
                Ok(())
            }
            Err(err) => {
                sent_total
                    .with_label_values(&[if err.class == crate::model::ErrorClass::Transient {
                        "deferred"
                    } else {
                        "rejected"
                    }])
                    .inc();
                if err.class == crate::model::ErrorClass::Transient {
                    if self.breaker.failure(&err.message) {
                        tracing::warn!(error = %err.message, "SMTP circuit breaker opened");
                    }
                } else {
                    // The server answered: it is up.
                    self.breaker.success();
                }
                Err(Failure {
                    class: err.class,
                    message: err.message,
                    dependency_down: err.connection,
                })
            }
        }
    }

    /// Records a sent email. Retries the record a few times before giving up, because a
    /// later attempt would send the email again (the shared Message-ID lets mailboxes drop
    /// it) unless this daemon's journal still holds its note.
    async fn record(&self, sent: SentEmail) -> Result<(), Failure> {
        let accepted = Instant::now();
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match self.store.record_email(sent.clone()).await {
                Ok(_) => {
                    if let Some(journal) = &self.journal {
                        journal.recorded(&sent.event_id);
                    }
                    crate::metrics::pipeline()
                        .email_unrecorded_window
                        .observe(accepted.elapsed().as_secs_f64());
                    return Ok(());
                }
                Err(err) if attempt < 5 => {
                    tracing::warn!(event_id = %sent.event_id, error = %err, "sent an email but could not record it yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(err) => return Err(store_failure(err)),
            }
        }
    }
}

impl Handler for EmailHandler {
    fn not_ready_for(&self) -> Option<Duration> {
        self.breaker.blocked_for()
    }

    fn handle<'a>(&'a self, message: &'a Message) -> BoxFuture<'a, Result<(), Failure>> {
        self.run(message).boxed()
    }

    fn request_id(&self, message: &Message) -> Option<String> {
        serde_json::from_slice::<EmailSend>(&message.payload)
            .ok()
            .map(|r| r.request_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::BreakerSettings;
    use crate::fakes::MemoryWorkers;
    use crate::ports::MailError;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A mail server that takes every email once the test lets it answer.
    struct SlowServer {
        sent: AtomicU32,
        answer: tokio::sync::Semaphore,
    }

    impl Mailer for SlowServer {
        fn send<'a>(&'a self, _email: &'a Email) -> BoxFuture<'a, Result<(), MailError>> {
            async move {
                let _ = self.answer.acquire().await;
                self.sent.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
            .boxed()
        }
    }

    fn email(event_id: &str) -> Message {
        let payload = serde_json::to_vec(&EmailSend {
            request_id: "r-1".into(),
            number: "97".into(),
            email: "a@example.com".into(),
            is_prime: true,
            factor: None,
            digits: 2,
        })
        .unwrap();
        Message {
            event_id: event_id.into(),
            subject: "email.send".into(),
            payload,
            delivery: 1,
            stream_seq: 1,
            published_at: chrono::Utc::now(),
            request_id: Some("r-1".into()),
            traceparent: None,
            dlq_id: None,
        }
    }

    /// Two copies of one event held by two workers at once (a redelivery while the first copy
    /// was slow to arrive): one email, and both copies end well.
    #[tokio::test(flavor = "current_thread")]
    async fn two_copies_of_an_event_at_once_send_one_email() {
        let mailer = Arc::new(SlowServer {
            sent: AtomicU32::new(0),
            answer: tokio::sync::Semaphore::new(0),
        });
        let handler = Arc::new(EmailHandler {
            store: Arc::new(MemoryWorkers::default()),
            mailer: mailer.clone(),
            breaker: Arc::new(CircuitBreaker::new(BreakerSettings {
                threshold: 5,
                cool_down: Duration::from_secs(30),
            })),
            concurrency: Arc::new(Semaphore::new(10)),
            message_id_domain: "primed".into(),
            journal: None,
            in_flight: InFlight::default(),
        });
        let copies: Vec<_> = (0..2)
            .map(|_| {
                let handler = handler.clone();
                tokio::spawn(async move { handler.handle(&email("e-1")).await })
            })
            .collect();
        // One thread: both copies run until they wait (on the mail server, or on each other).
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        mailer.answer.add_permits(2);
        for copy in copies {
            assert!(copy.await.unwrap().is_ok(), "each copy ends well");
        }
        assert_eq!(mailer.sent.load(Ordering::SeqCst), 1, "one email");
        assert!(handler.in_flight.is_empty(), "nothing is left held");

        // Another event is not held up by it, and is sent.
        mailer.answer.add_permits(1);
        handler.handle(&email("e-2")).await.unwrap();
        assert_eq!(mailer.sent.load(Ordering::SeqCst), 2);
    }
}
