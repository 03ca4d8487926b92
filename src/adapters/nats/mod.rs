//! NATS JetStream: the broker, and the streams and durable consumers of DESIGN §5.
//!
//! Publishing sends every message of a batch first and then awaits their acknowledgements,
//! so a batch costs about one round trip. `Nats-Msg-Id` is the event id: JetStream drops a
//! second publish of the same event within the stream's duplicate window.

mod headers;
pub mod source;

pub use headers::{
    HEADER_ATTEMPT, HEADER_DLQ_ID, HEADER_EVENT_ID, HEADER_REQUEST_ID, HEADER_TRACEPARENT,
};

use std::time::Duration;

use actors::{Broker, BrokerError, OutgoingMessage};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use futures::FutureExt;
use futures::StreamExt;
use futures::future::BoxFuture;

/// The dead-letter stream (seed §3.1.1).
pub const DLQ_STREAM: &str = "DEAD_LETTER_QUEUE";
/// Durable consumer of `primecheck.requested`.
pub const CONSUMER_PRIMECHECK: &str = "primecheck-worker";
/// Durable consumer of `email.send`.
pub const CONSUMER_EMAIL: &str = "email-worker";

/// Publishes of one batch whose acknowledgements are awaited at once; well under the
/// JetStream context's 5,000 ack permits, so rounds in flight share them without waiting on
/// each other.
const PUBLISH_WINDOW: usize = 1000;

/// How long the broker is taken to be settling after the connection dropped or JetStream
/// reported a new leader for the stream or a consumer. A new leader may not serve for a
/// while after its announcement: nats-server 2.9 announces it before the leader subscribes
/// to the stream's subjects or the consumer's pull requests (a publish then fails, a pull
/// request goes unheard), and the chaos harness's cluster runs saw takeovers of 0.1–1.3 s
/// (BENCHMARKS.md). While it settles a failed publish is the broker's (see
/// [`Broker::available`]) — as is one cut by a dropped connection even when the client is
/// back by the time the relay asks — and pulls are short (see [`Interruptions::settling`]).
pub const SETTLE: Duration = Duration::from_secs(3);

/// The subjects of one deployment on the wire: the pipeline's own (`primecheck.requested`,
/// `email.send`, `dlq.*`) under an optional prefix (`NATS_SUBJECT_PREFIX`), so that several
/// deployments (staging and production) can share one NATS account. Everything past the
/// adapter sees the subjects without it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    /// Subjects under `prefix` (none when empty).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_matches('.').to_string(),
        }
    }

    /// The subject on the wire.
    pub fn outer(&self, subject: &str) -> String {
        if self.prefix.is_empty() {
            subject.to_string()
        } else {
            format!("{}.{subject}", self.prefix)
        }
    }

    /// The pipeline's subject of one on the wire.
    pub fn inner<'a>(&self, subject: &'a str) -> &'a str {
        if self.prefix.is_empty() {
            return subject;
        }
        subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .unwrap_or(subject)
    }

    /// The dead-letter stream's name: the seed's `DEAD_LETTER_QUEUE`, with the prefix
    /// (upper case, dots as `_`) in front when there is one.
    pub fn dlq_stream(&self) -> String {
        if self.prefix.is_empty() {
            DLQ_STREAM.to_string()
        } else {
            format!(
                "{}_{DLQ_STREAM}",
                self.prefix.to_ascii_uppercase().replace(['.', '-'], "_")
            )
        }
    }
}

/// Whether two subject patterns (with `*` and `>` wildcards) can match one subject.
pub fn subjects_overlap(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == y || x == "*" || y == "*" => {}
            _ => return false,
        }
    }
}

/// Stream and consumer settings (seed §2.1.1, §3.1.1).
#[derive(Debug, Clone)]
pub struct JetStreamSettings {
    /// Main stream name (`NATS_STREAM`).
    pub stream: String,
    /// The subjects on the wire (`NATS_SUBJECT_PREFIX`).
    pub subjects: Subjects,
    /// Deliveries before a message is given up (then dead-lettered).
    pub max_deliver: i64,
    /// How long a worker may hold a message before it is redelivered.
    pub ack_wait: Duration,
    /// Redelivery delays after ack timeouts.
    pub backoff: Vec<Duration>,
    /// How long a publish waits for its acknowledgement.
    pub publish_timeout: Duration,
    /// Per durable consumer: (max deliver, ack wait, backoff) instead of the ones above.
    pub overrides: Vec<(String, i64, Duration, Vec<Duration>)>,
    /// Replicas of each stream (1 on a single server).
    pub replicas: usize,
}

impl JetStreamSettings {
    /// The seed's settings for a stream name.
    pub fn new(stream: &str) -> Self {
        Self {
            stream: stream.to_string(),
            max_deliver: 3,
            ack_wait: Duration::from_secs(30),
            backoff: vec![
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(4),
            ],
            publish_timeout: Duration::from_secs(5),
            overrides: Vec::new(),
            replicas: 1,
            subjects: Subjects::default(),
        }
    }

    /// The main stream.
    pub fn main_stream(&self) -> stream::Config {
        stream::Config {
            name: self.stream.clone(),
            subjects: vec![
                self.subjects.outer("primecheck.*"),
                self.subjects.outer("email.*"),
            ],
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            max_age: Duration::from_secs(24 * 3600),
            max_messages: 1_000_000,
            max_bytes: 1024 * 1024 * 1024,
            max_message_size: 1024 * 1024,
            discard: stream::DiscardPolicy::Old,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        }
    }

    /// The dead-letter stream.
    pub fn dlq_stream(&self) -> stream::Config {
        stream::Config {
            name: self.subjects.dlq_stream(),
            subjects: vec![self.subjects.outer("dlq.*")],
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_messages: 10_000,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        }
    }

    /// Captures the main stream's max-deliveries advisories (plain NATS messages, lost when
    /// nobody listens) so the DLQ actor can read them durably.
    pub fn advisory_stream(&self) -> stream::Config {
        stream::Config {
            name: source::advisory_stream(&self.stream),
            subjects: vec![format!(
                "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.*",
                self.stream
            )],
            storage: stream::StorageType::File,
            num_replicas: self.replicas,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_messages: 100_000,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        }
    }

    /// A durable pull consumer of one subject.
    pub fn consumer(&self, durable: &str, subject: &str) -> consumer::pull::Config {
        let (max_deliver, ack_wait, backoff) = self
            .overrides
            .iter()
            .find(|(name, ..)| name == durable)
            .map(|(_, m, a, b)| (*m, *a, b.as_slice()))
            .unwrap_or((self.max_deliver, self.ack_wait, &self.backoff));
        consumer::pull::Config {
            durable_name: Some(durable.into()),
            filter_subject: self.subjects.outer(subject),
            ack_policy: consumer::AckPolicy::Explicit,
            max_deliver,
            ack_wait,
            // NATS requires MaxDeliver > len(BackOff): the n-th redelivery waits backoff[n-1].
            backoff: backoff
                .iter()
                .copied()
                .take(usize::try_from(max_deliver.saturating_sub(1)).unwrap_or(0))
                .collect(),
            ..Default::default()
        }
    }
}

/// Could not connect or set up the streams.
#[derive(Debug, thiserror::Error)]
pub enum NatsSetupError {
    /// Cannot reach the server.
    #[error(
        "cannot connect to NATS at {url}: {reason}; is it running with JetStream (-js)? Check NATS_URL / NATS_HOST"
    )]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The stream's subjects are another stream's (another deployment on this account).
    #[error(
        "JetStream stream {stream} cannot take the subjects {subjects}: stream {holder} already holds {held}. Another deployment shares this NATS account: give this one its own NATS_SUBJECT_PREFIX (e.g. staging), or set NATS_STREAM={holder} if that stream is this deployment's"
    )]
    Overlap {
        /// The stream being created.
        stream: String,
        /// Its subjects.
        subjects: String,
        /// The stream that holds them.
        holder: String,
        /// The subjects it holds.
        held: String,
    },
    /// A stream or consumer could not be created or updated.
    #[error("cannot create or update JetStream {what}: {reason}")]
    Setup {
        /// Which stream or consumer.
        what: String,
        /// Why.
        reason: String,
    },
}

/// The wait before reconnect attempt `attempts` (1-based): none for the first, then
/// 100 ms more per attempt up to 1 s.
pub fn reconnect_delay(attempts: usize) -> Duration {
    let steps = u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX);
    (Duration::from_millis(100) * steps).min(Duration::from_secs(1))
}

/// The broker on JetStream.
#[derive(Clone, Debug)]
pub struct JetStreamBroker {
    js: jetstream::Context,
    /// Bumped each time the connection drops: acknowledgements still awaited then will
    /// never come, so a publish stops waiting for them at once instead of timing out.
    disconnects: tokio::sync::watch::Receiver<u64>,
    /// Bumped at every leader election JetStream reports for the main stream or one of its
    /// consumers (see [`Interruptions`]).
    elections: tokio::sync::watch::Receiver<Elected>,
    /// When the connection last dropped or JetStream last reported a new leader (see
    /// [`SETTLE`]).
    unsettled_since: tokio::sync::watch::Receiver<Option<tokio::time::Instant>>,
    /// The main stream, whose info answers [`Broker::available`].
    stream: String,
    /// The subjects on the wire.
    subjects: Subjects,
}

impl JetStreamBroker {
    /// Connects; the client reconnects by itself after the server comes back.
    pub async fn connect(
        url: &str,
        settings: &JetStreamSettings,
    ) -> Result<(Self, async_nats::Client), NatsSetupError> {
        // One URL, or a cluster's as a comma-separated list.
        let servers = url
            .split(',')
            .map(|u| u.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| NatsSetupError::Connect {
                url: crate::config::redact_url_credentials(url),
                reason: e.to_string(),
            })?;
        let (tx, disconnects) = tokio::sync::watch::channel(0u64);
        let tx = std::sync::Arc::new(tx);
        let (unsettled, unsettled_since) = tokio::sync::watch::channel(None);
        let unsettled = std::sync::Arc::new(unsettled);
        let unsettled_on_drop = unsettled.clone();
        let client = async_nats::ConnectOptions::new()
            .name("primed")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            // The client's default backoff grows to 4 s between attempts, which makes a
            // broker restart of a second cost several; reconnect attempts are cheap.
            .reconnect_delay_callback(reconnect_delay)
            .event_callback(move |event| {
                let (tx, unsettled) = (tx.clone(), unsettled_on_drop.clone());
                async move {
                    if matches!(event, async_nats::Event::Disconnected) {
                        unsettled.send_replace(Some(tokio::time::Instant::now()));
                        tx.send_modify(|n| *n += 1);
                    }
                }
            })
            .connect(servers)
            .await
            .map_err(|e| NatsSetupError::Connect {
                url: crate::config::redact_url_credentials(url),
                reason: e.to_string(),
            })?;
        let elections = watch_elections(&client, &settings.stream, unsettled).await;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(settings.publish_timeout);
        Ok((
            Self {
                js,
                disconnects,
                elections,
                unsettled_since,
                stream: settings.stream.clone(),
                subjects: settings.subjects.clone(),
            },
            client,
        ))
    }

    /// Creates the streams and durable consumers, or updates them to these settings.
    /// Running it again (or from a second daemon) changes nothing.
    pub async fn ensure_topology(
        &self,
        settings: &JetStreamSettings,
    ) -> Result<(), NatsSetupError> {
        for config in [
            settings.main_stream(),
            settings.dlq_stream(),
            settings.advisory_stream(),
        ] {
            let name = config.name.clone();
            let subjects = config.subjects.clone();
            if let Err(e) = self.js.create_or_update_stream(config).await {
                let reason = e.to_string();
                if reason.contains("overlap")
                    && let Some((holder, held)) = self.holder_of(&name, &subjects).await
                {
                    return Err(NatsSetupError::Overlap {
                        stream: name,
                        subjects: subjects.join(", "),
                        holder,
                        held: held.join(", "),
                    });
                }
                return Err(NatsSetupError::Setup {
                    what: format!("stream {name}"),
                    reason,
                });
            }
        }
        let stream =
            self.js
                .get_stream(&settings.stream)
                .await
                .map_err(|e| NatsSetupError::Setup {
                    what: format!("stream {}", settings.stream),
                    reason: e.to_string(),
                })?;
        for (durable, subject) in [
            (
                CONSUMER_PRIMECHECK,
                actors::model::SUBJECT_PRIMECHECK_REQUESTED,
            ),
            (CONSUMER_EMAIL, actors::model::SUBJECT_EMAIL_SEND),
        ] {
            // The create API updates an existing durable consumer's editable settings.
            stream
                .create_consumer(settings.consumer(durable, subject))
                .await
                .map_err(|e| NatsSetupError::Setup {
                    what: format!("consumer {durable}"),
                    reason: e.to_string(),
                })?;
        }
        let advisories = settings.advisory_stream().name;
        self.js
            .get_stream(&advisories)
            .await
            .map_err(|e| NatsSetupError::Setup {
                what: format!("stream {advisories}"),
                reason: e.to_string(),
            })?
            .create_consumer(consumer::pull::Config {
                durable_name: Some(source::CONSUMER_ADVISORIES.into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(|e| NatsSetupError::Setup {
                what: format!("consumer {}", source::CONSUMER_ADVISORIES),
                reason: e.to_string(),
            })?;
        Ok(())
    }

    /// Another stream than `name` whose subjects overlap `subjects`, with its subjects.
    async fn holder_of(&self, name: &str, subjects: &[String]) -> Option<(String, Vec<String>)> {
        let mut streams = self.js.streams();
        while let Some(Ok(info)) = streams.next().await {
            let theirs = &info.config.subjects;
            if info.config.name != name
                && theirs
                    .iter()
                    .any(|t| subjects.iter().any(|s| subjects_overlap(s, t)))
            {
                return Some((info.config.name.clone(), theirs.clone()));
            }
        }
        None
    }

    /// The JetStream context, for tests and tools.
    pub fn context(&self) -> &jetstream::Context {
        &self.js
    }

    /// What ends a pull early or wakes a relay: the connection dropping, and a new leader
    /// for the stream or a consumer.
    pub fn interruptions(&self) -> Interruptions {
        Interruptions {
            unsettled_since: self.unsettled_since.clone(),
            elections: self.elections.clone(),
            disconnects: self.disconnects.clone(),
            consumer: None,
        }
    }
}

/// The last leader election JetStream reported: how many so far, and of what (`None`: the
/// stream; `Some(name)`: that consumer).
pub type Elected = (u64, Option<std::sync::Arc<str>>);

/// The moments a request to JetStream may have gone to a server that will never answer it:
/// the connection dropped, or the stream or a consumer got a new leader (the old one is
/// gone, or no longer serves). A pull waiting then is ended and sent again, and a relay
/// that found the broker down tries again, instead of waiting out their timeouts.
#[derive(Clone, Debug)]
pub struct Interruptions {
    unsettled_since: tokio::sync::watch::Receiver<Option<tokio::time::Instant>>,
    elections: tokio::sync::watch::Receiver<Elected>,
    disconnects: tokio::sync::watch::Receiver<u64>,
    /// Only elections of the stream and of this consumer count (see
    /// [`Interruptions::for_consumer`]).
    consumer: Option<std::sync::Arc<str>>,
}

impl Interruptions {
    /// Whether the broker is settling: the connection dropped or JetStream reported a new
    /// leader less than [`SETTLE`] ago. A pull request sent then may go unheard (a new
    /// leader announces itself before it listens for them), so pulls are kept short.
    pub fn settling(&self) -> bool {
        self.unsettled_since
            .borrow()
            .is_some_and(|at| at.elapsed() < SETTLE)
    }

    /// The interruptions of a pull from `consumer`: another consumer's election leaves it.
    pub fn for_consumer(mut self, consumer: &str) -> Self {
        self.consumer = Some(consumer.into());
        self
    }

    /// The interruptions of a publish: only the stream's elections (no consumer is named
    /// with the empty name).
    pub fn for_stream(self) -> Self {
        self.for_consumer("")
    }

    /// Whether an election of `what` concerns these interruptions.
    fn concerns(&self, what: Option<&str>) -> bool {
        match (what, &self.consumer) {
            (None, _) | (_, None) => true,
            (Some(elected), Some(mine)) => elected == &**mine,
        }
    }

    /// Resolves at the first election (of the stream, or of its consumer) or disconnection
    /// after it is first polled; never, once the client is gone.
    pub async fn next(mut self) {
        self.disconnects.mark_unchanged();
        let mut disconnects = self.disconnects.clone();
        tokio::select! {
            Ok(()) = disconnects.changed() => {}
            () = self.next_election() => {}
        }
    }

    /// Resolves at the first leader election that concerns it after it is first polled;
    /// never, once the client is gone.
    pub async fn next_election(&mut self) {
        self.elections.mark_unchanged();
        loop {
            if self.elections.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            let what = self.elections.borrow_and_update().1.clone();
            if self.concerns(what.as_deref()) {
                return;
            }
        }
    }
}

/// Listens to JetStream's leader-elected advisories for `stream` and its consumers; the
/// receiver is bumped at each, and `unsettled` set to its time.
/// Without permission to subscribe it stays quiet (pulls and publishes then wait for their
/// own timeouts after an election, as before).
async fn watch_elections(
    client: &async_nats::Client,
    stream: &str,
    unsettled: std::sync::Arc<tokio::sync::watch::Sender<Option<tokio::time::Instant>>>,
) -> tokio::sync::watch::Receiver<Elected> {
    let (tx, rx) = tokio::sync::watch::channel((0u64, None));
    let tx = std::sync::Arc::new(tx);
    let consumers = format!("$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.{stream}.");
    for subject in [
        format!("$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{stream}"),
        format!("{consumers}*"),
    ] {
        match client.subscribe(subject.clone()).await {
            Ok(mut elected) => {
                let (tx, unsettled, consumers) = (tx.clone(), unsettled.clone(), consumers.clone());
                tokio::spawn(async move {
                    while let Some(advisory) = elected.next().await {
                        tracing::info!(subject = %advisory.subject, "JetStream elected a new leader");
                        let consumer = advisory
                            .subject
                            .strip_prefix(consumers.as_str())
                            .map(std::sync::Arc::<str>::from);
                        unsettled.send_replace(Some(tokio::time::Instant::now()));
                        tx.send_modify(|(n, what)| {
                            *n += 1;
                            *what = consumer;
                        });
                    }
                });
            }
            Err(err) => tracing::warn!(
                %subject,
                error = %err,
                "cannot listen to JetStream's leader elections; after one, workers and the relay find the new leader when their requests time out"
            ),
        }
    }
    rx
}

fn headers(message: &OutgoingMessage) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", message.event_id.as_str());
    headers.insert(HEADER_EVENT_ID, message.event_id.as_str());
    headers.insert(HEADER_ATTEMPT, message.attempt.to_string().as_str());
    if let Some(request_id) = &message.request_id {
        headers.insert(HEADER_REQUEST_ID, request_id.as_str());
    }
    if let Some(traceparent) = &message.traceparent {
        headers.insert(HEADER_TRACEPARENT, traceparent.as_str());
    }
    if let Some(dlq_id) = message.dlq_id {
        headers.insert(HEADER_DLQ_ID, dlq_id.to_string().as_str());
    }
    headers
}

impl Broker for JetStreamBroker {
    fn publish_batch<'a>(
        &'a self,
        messages: &'a [OutgoingMessage],
    ) -> BoxFuture<'a, Vec<Result<(), BrokerError>>> {
        async move {
            let mut disconnected = self.disconnects.clone();
            disconnected.mark_unchanged();
            // Publish and await the acknowledgements pipelined, at most PUBLISH_WINDOW in
            // flight. The window is also what keeps concurrent rounds from deadlocking: the
            // JetStream context lends one of its 5,000 ack permits to every publish until
            // its acknowledgement is awaited, so a round that sent everything before awaiting
            // anything could wait for a permit held by its own (or another round's) unawaited
            // acknowledgements, forever.
            let attempt = || {
                let publishes: Vec<_> = messages
                    .iter()
                    .map(|m| publish_one(&self.js, &self.subjects, m))
                    .collect();
                futures::stream::iter(publishes)
                    .buffered(PUBLISH_WINDOW)
                    .collect::<Vec<_>>()
            };
            let dropped = || {
                messages
                    .iter()
                    .map(|_| Err(BrokerError(
                        "the NATS connection dropped before the acknowledgement came; the relay publishes again and JetStream drops any duplicate".into(),
                    )))
                    .collect()
            };
            let mut elected = self.interruptions().for_stream();
            tokio::select! {
                acks = attempt() => acks,
                _ = disconnected.changed() => dropped(),
                // A stream without a leader leaves publishes unanswered until they time
                // out; once it has one, publish again to it at once (JetStream drops what
                // the old leader had already stored, by Nats-Msg-Id).
                () = elected.next_election() => tokio::select! {
                    acks = attempt() => acks,
                    _ = disconnected.changed() => dropped(),
                },
            }
        }
        .boxed()
    }

    /// The stream answers its info request (a leader serves it) within 500 ms, and the
    /// connection's last drop and JetStream's last leader election are over [`SETTLE`] old. A stream without a leader leaves the
    /// request unanswered; when JetStream elects one meanwhile, the request is sent again at
    /// once (to the new leader) instead of waiting out the timeout. A slow answer errs on
    /// the safe side: the failures are retried soon and not counted against the events'
    /// retries, so the timeout is short enough that a relay failing through an election
    /// tries again within a second. A new leader answers info requests before it takes
    /// every publish, and a client back from a dropped connection answers before the
    /// relay's failures are judged: failures in those first seconds are the takeover's or
    /// the connection's, not the events' (counted, they would put the events on their
    /// backoff, a second or more).
    fn available(&self) -> BoxFuture<'_, bool> {
        async move {
            let settling = || self.interruptions().settling();
            if settling() {
                return false;
            }
            let ask = || async {
                matches!(
                    tokio::time::timeout(
                        Duration::from_millis(500),
                        self.js.get_stream(&self.stream)
                    )
                    .await,
                    Ok(Ok(_))
                )
            };
            let mut interruptions = self.interruptions();
            let up = tokio::select! {
                up = ask() => up,
                () = interruptions.next_election() => ask().await,
            };
            // A probe that waited through the stream's election (or a reconnection) is
            // answered by the new leader: the failure it was asked about was the election's.
            up && !settling()
        }
        .boxed()
    }
}

/// Publishes one message and awaits its acknowledgement.
async fn publish_one(
    js: &jetstream::Context,
    subjects: &Subjects,
    message: &OutgoingMessage,
) -> Result<(), BrokerError> {
    let ack = js
        .publish_with_headers(
            subjects.outer(&message.subject),
            headers(message),
            bytes::Bytes::copy_from_slice(&message.payload),
        )
        .await
        .map_err(|e| BrokerError(e.to_string()))?;
    ack.await
        .map(|_| ())
        .map_err(|e| BrokerError(e.to_string()))
}

/// Reads the pending counts of the pipeline's durable consumers, for the metrics gauges.
#[derive(Clone)]
pub struct ConsumerGauges {
    js: jetstream::Context,
    stream: String,
}

impl ConsumerGauges {
    /// Gauges of the consumers on `stream`, through `client`.
    pub fn new(client: async_nats::Client, stream: &str) -> Self {
        Self {
            js: jetstream::new(client),
            stream: stream.to_string(),
        }
    }

    /// The stream's name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// `(consumer, messages not yet delivered, delivered but not acknowledged)` of the
    /// prime-check and email consumers.
    pub async fn pending(&self) -> Result<Vec<(&'static str, u64, u64)>, String> {
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for name in [CONSUMER_PRIMECHECK, CONSUMER_EMAIL] {
            let mut consumer: jetstream::consumer::PullConsumer =
                stream.get_consumer(name).await.map_err(|e| e.to_string())?;
            let info = consumer.info().await.map_err(|e| e.to_string())?;
            out.push((name, info.num_pending, info.num_ack_pending as u64));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pull from a consumer is interrupted by its own consumer's election, the stream's,
    /// or a disconnection; never by another consumer's.
    #[tokio::test(start_paused = true)]
    async fn a_pull_is_interrupted_by_its_own_elections_and_a_disconnection_only() {
        let (elected, elections) = tokio::sync::watch::channel((0u64, None));
        let (dropped, disconnects) = tokio::sync::watch::channel(0u64);
        let (_settled, unsettled_since) = tokio::sync::watch::channel(None);
        let pull = Interruptions {
            unsettled_since,
            elections,
            disconnects,
            consumer: None,
        }
        .for_consumer("email-worker");
        let interrupted = |cause: Box<dyn FnOnce()>| {
            let pull = pull.clone();
            async move {
                let next = tokio::spawn(pull.next());
                // One thread: the task runs until it waits on the channels.
                tokio::task::yield_now().await;
                cause();
                tokio::time::timeout(Duration::from_millis(200), next)
                    .await
                    .is_ok()
            }
        };
        let elect = |what: Option<&str>| {
            let elected = elected.clone();
            let what = what.map(std::sync::Arc::<str>::from);
            Box::new(move || elected.send_modify(|e| *e = (e.0 + 1, what))) as Box<dyn FnOnce()>
        };
        assert!(!interrupted(elect(Some("primecheck-worker"))).await);
        assert!(interrupted(elect(Some("email-worker"))).await);
        assert!(interrupted(elect(None)).await, "the stream's election");
        assert!(
            interrupted(Box::new(move || dropped.send_modify(|n| *n += 1))).await,
            "a disconnection"
        );
        // A publish waits on the stream's elections only.
        let mut publish = pull.clone().for_stream();
        let next = tokio::spawn(async move { publish.next_election().await });
        tokio::task::yield_now().await;
        elect(Some("email-worker"))();
        tokio::task::yield_now().await;
        assert!(!next.is_finished(), "a consumer's election");
        elect(None)();
        tokio::time::timeout(Duration::from_millis(200), next)
            .await
            .expect("the stream's election")
            .unwrap();
    }

    #[test]
    fn a_prefix_is_put_on_the_wire_and_taken_off_on_the_way_in() {
        let none = Subjects::new("");
        assert_eq!(none.outer("email.send"), "email.send");
        assert_eq!(none.dlq_stream(), "DEAD_LETTER_QUEUE");
        let staging = Subjects::new("staging.eu-1");
        assert_eq!(
            staging.outer("primecheck.requested"),
            "staging.eu-1.primecheck.requested"
        );
        assert_eq!(
            staging.inner("staging.eu-1.primecheck.requested"),
            "primecheck.requested"
        );
        assert_eq!(staging.inner("email.send"), "email.send");
        assert_eq!(staging.inner("staging.eu-10.x"), "staging.eu-10.x");
        assert_eq!(staging.dlq_stream(), "STAGING_EU_1_DEAD_LETTER_QUEUE");
        let mut settings = JetStreamSettings::new("STAGING");
        settings.subjects = staging;
        assert_eq!(
            settings.main_stream().subjects,
            ["staging.eu-1.primecheck.*", "staging.eu-1.email.*"]
        );
        assert_eq!(settings.dlq_stream().subjects, ["staging.eu-1.dlq.*"]);
        assert_eq!(
            settings
                .consumer(CONSUMER_EMAIL, "email.send")
                .filter_subject,
            "staging.eu-1.email.send"
        );
    }

    #[test]
    fn overlapping_subject_patterns_are_found() {
        for (a, b) in [
            ("primecheck.*", "primecheck.*"),
            ("primecheck.*", "primecheck.requested"),
            ("primecheck.*", ">"),
            ("staging.>", "staging.email.*"),
            ("*.email.*", "staging.email.send"),
        ] {
            assert!(subjects_overlap(a, b), "{a} {b}");
            assert!(subjects_overlap(b, a), "{b} {a}");
        }
        for (a, b) in [
            ("primecheck.*", "staging.primecheck.*"),
            ("primecheck.*", "primecheck.a.b"),
            ("email.*", "primecheck.*"),
            ("staging.>", "staging"),
        ] {
            assert!(!subjects_overlap(a, b), "{a} {b}");
            assert!(!subjects_overlap(b, a), "{b} {a}");
        }
    }
}
