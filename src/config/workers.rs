//! The consumers, their retry policies, the SMTP limits and the DLQ rules.

use std::time::Duration;

use super::error::ConfigError;
use super::raw::Raw;

/// The default automatic reprocess rule (seed §3.3.1): network trouble and timeouts are
/// retried after 30 minutes, at most twice.
pub const DEFAULT_DLQ_RULES: &str =
    "network:30m:2::(?i)(timed? ?out|timeout|connection (refused|reset)|network)";

/// One automatic DLQ reprocess rule.
#[derive(Debug, Clone)]
pub struct DlqRule {
    /// Its name.
    pub name: String,
    /// Wait before a retry.
    pub wait: Duration,
    /// Automatic retries per dead letter.
    pub max_retries: u32,
    /// Original subjects (all when empty).
    pub subjects: Vec<String>,
    /// Matched against the error message.
    pub pattern: regex::Regex,
}

impl PartialEq for DlqRule {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.wait == other.wait
            && self.max_retries == other.max_retries
            && self.subjects == other.subjects
            && self.pattern.as_str() == other.pattern.as_str()
    }
}

/// Parses `name:wait:max:subjects:regex;...`.
pub fn parse_dlq_rules(spec: &str) -> Result<Vec<DlqRule>, String> {
    spec.split(';')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|rule| {
            let mut parts = rule.splitn(5, ':');
            let mut next = |what: &str| {
                parts
                    .next()
                    .map(str::trim)
                    .ok_or_else(|| format!("rule {rule:?} has no {what}"))
            };
            let name = next("name")?.to_string();
            let wait = humantime::parse_duration(next("wait")?)
                .map_err(|e| format!("rule {name:?}: the wait is not a duration like 30m ({e})"))?;
            let max_retries = next("max")?
                .parse::<u32>()
                .map_err(|_| format!("rule {name:?}: the max is not a whole number"))?;
            let subjects = next("subjects")?
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            let pattern = regex::Regex::new(next("regex")?)
                .map_err(|e| format!("rule {name:?}: the pattern is not a valid regex ({e})"))?;
            Ok(DlqRule {
                name,
                wait,
                max_retries,
                subjects,
                pattern,
            })
        })
        .collect()
}

/// The retry policy of one subject (seed §2.3).
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectRetry {
    /// Deliveries before a transient failure is dead-lettered.
    pub max_deliver: u32,
    /// Ack wait.
    pub ack_wait: Duration,
    /// NAK delays after the 1st, 2nd, … failed delivery.
    pub backoff: Vec<Duration>,
}

/// The consumers, their retries, SMTP limits and the DLQ rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Workers {
    /// Prime-check workers.
    pub primecheck_workers: u32,
    /// Email workers.
    pub email_workers: u32,
    /// Messages per pull.
    pub batch: u32,
    /// Primality test limit.
    pub prime_timeout: Duration,
    /// Deliveries before dead-lettering.
    pub max_deliver: u32,
    /// Ack wait.
    pub ack_wait: Duration,
    /// NAK delays.
    pub backoff: Vec<Duration>,
    /// `primecheck.requested`'s policy (the global one unless overridden).
    pub primecheck_retry: SubjectRetry,
    /// `email.send`'s policy (the global one unless overridden).
    pub email_retry: SubjectRetry,
    /// SMTP sends in flight.
    pub smtp_concurrency: u32,
    /// SMTP timeout.
    pub smtp_timeout: Duration,
    /// Breaker threshold.
    pub breaker_threshold: u32,
    /// Breaker cool-down.
    pub breaker_cool_down: Duration,
    /// Automatic reprocess rules.
    pub dlq_rules: Vec<DlqRule>,
    /// Rule interval.
    pub dlq_rule_interval: Duration,
    /// Time between reconciliations of the consumers' state with the DLQ.
    pub reconcile_every: Duration,
    /// How old a message must be before the reconciler takes it for fallen through.
    pub reconcile_after: Duration,
    /// Replay the dead letters an SMTP outage caused when the breaker closes again.
    pub replay_on_heal: bool,
    /// Letters a second such a replay sends at most.
    pub replay_on_heal_rate: u32,
    /// A test-only fault hook: a prime check of exactly this number panics its handler
    /// (`PRIMED_FAULT_PANIC_NUMBER`; refused unless `PRIMED_FAULT_INJECTION=true`).
    pub panic_number: Option<String>,
}

impl Workers {
    pub(super) fn read(raw: &Raw) -> Result<Workers, ConfigError> {
        let secs = |name: &'static str| -> Result<Duration, ConfigError> {
            Ok(Duration::from_secs(
                raw.positive(name, "a whole number of seconds, at least 1")?
                    .into(),
            ))
        };
        let durations = |name: &'static str, text: &str| -> Result<Vec<Duration>, ConfigError> {
            let list: Vec<Duration> = text
                .split(',')
                .map(|s| humantime::parse_duration(s.trim()))
                .collect::<Result<_, _>>()
                .map_err(|_| raw.invalid(name, "comma-separated durations, e.g. 1s,2s,4s"))?;
            if list.is_empty() || list.iter().any(Duration::is_zero) {
                return Err(raw.invalid(name, "comma-separated durations, e.g. 1s,2s,4s"));
            }
            Ok(list)
        };
        let backoff = durations(
            "PRIMED_RETRY_BACKOFF",
            raw.required("PRIMED_RETRY_BACKOFF")?,
        )?;
        let max_deliver = raw.positive("PRIMED_MAX_DELIVER", "a whole number, at least 1")?;
        let ack_wait = secs("PRIMED_ACK_WAIT_SECONDS")?;
        let subject = |deliver: &'static str,
                       wait: &'static str,
                       delays: &'static str|
         -> Result<SubjectRetry, ConfigError> {
            let set = |name| raw.get(name).is_some_and(|v| !v.trim().is_empty());
            Ok(SubjectRetry {
                max_deliver: if set(deliver) {
                    raw.positive(deliver, "a whole number, at least 1")?
                } else {
                    max_deliver
                },
                ack_wait: if set(wait) { secs(wait)? } else { ack_wait },
                backoff: match raw.get(delays).filter(|v| !v.trim().is_empty()) {
                    Some(text) => durations(delays, text)?,
                    None => backoff.clone(),
                },
            })
        };
        let primecheck_retry = subject(
            "PRIMED_PRIMECHECK_MAX_DELIVER",
            "PRIMED_PRIMECHECK_ACK_WAIT_SECONDS",
            "PRIMED_PRIMECHECK_RETRY_BACKOFF",
        )?;
        let email_retry = subject(
            "PRIMED_EMAIL_MAX_DELIVER",
            "PRIMED_EMAIL_ACK_WAIT_SECONDS",
            "PRIMED_EMAIL_RETRY_BACKOFF",
        )?;
        let dlq_rules = parse_dlq_rules(raw.get("PRIMED_DLQ_RULES").unwrap_or_default()).map_err(
            |_| {
                raw.invalid(
                    "PRIMED_DLQ_RULES",
                    "rules name:wait:max:subjects:regex separated by ';', e.g. network:30m:2::timed out",
                )
            },
        )?;
        Ok(Workers {
            primecheck_workers: raw
                .positive("PRIMED_PRIMECHECK_WORKERS", "a whole number, at least 1")?,
            email_workers: raw.positive("PRIMED_EMAIL_WORKERS", "a whole number, at least 1")?,
            batch: raw.positive("PRIMED_WORKER_BATCH", "a whole number, at least 1")?,
            prime_timeout: Duration::from_millis(
                raw.positive(
                    "PRIMED_PRIME_TIMEOUT_MS",
                    "a whole number of milliseconds, at least 1",
                )?
                .into(),
            ),
            max_deliver,
            ack_wait,
            backoff,
            primecheck_retry,
            email_retry,
            smtp_concurrency: raw
                .positive("PRIMED_SMTP_CONCURRENCY", "a whole number, at least 1")?,
            smtp_timeout: secs("PRIMED_SMTP_TIMEOUT_SECONDS")?,
            breaker_threshold: raw.positive(
                "PRIMED_SMTP_BREAKER_THRESHOLD",
                "a whole number, at least 1",
            )?,
            breaker_cool_down: secs("PRIMED_SMTP_BREAKER_COOLDOWN_SECONDS")?,
            dlq_rules,
            dlq_rule_interval: secs("PRIMED_DLQ_RULE_INTERVAL_SECONDS")?,
            reconcile_every: secs("PRIMED_DLQ_RECONCILE_INTERVAL_SECONDS")?,
            reconcile_after: secs("PRIMED_DLQ_RECONCILE_AFTER_SECONDS")?,
            replay_on_heal: raw.boolean("PRIMED_DLQ_REPLAY_ON_HEAL")?,
            replay_on_heal_rate: raw.positive(
                "PRIMED_DLQ_REPLAY_ON_HEAL_RATE",
                "a whole number of letters a second, at least 1",
            )?,
            panic_number: match raw.get("PRIMED_FAULT_PANIC_NUMBER").map(str::trim) {
                None | Some("") => None,
                Some(_) if !raw.boolean("PRIMED_FAULT_INJECTION")? => {
                    return Err(raw.invalid(
                        "PRIMED_FAULT_PANIC_NUMBER",
                        "unset unless PRIMED_FAULT_INJECTION=true (a fault hook for test systems)",
                    ));
                }
                Some(n) => Some(n.to_string()),
            },
        })
    }
}
