//! The process-wide Prometheus registry and the pipeline's instruments (seed §5.2.1).
//!
//! The daemon registers its own instruments (HTTP, rate limiting, gauges) into the same
//! [`registry`] and serves it at `GET /metrics`.

use std::sync::LazyLock;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// The pipeline's instruments.
pub struct PipelineMetrics {
    /// `prime_check_requests_total{status,result}`: status `success` or `failed`; result
    /// `prime`, `composite`, `timeout` or `invalid`.
    pub prime_check_requests: IntCounterVec,
    /// `prime_check_duration_seconds{number_length}`: time of the primality test, by digit
    /// count bucket (`1-10`, `11-20`, `21-50`, `51-100`, `101-500`, `501+`).
    pub prime_check_duration: HistogramVec,
    /// `emails_sent_total{status}`: `sent`, `deferred` (transient, retried) or `rejected`.
    pub emails_sent: IntCounterVec,
    /// `messages_processed_total{subject,outcome}`: consumer outcomes (`success`, `retry`,
    /// `dead_letter`).
    pub messages_processed: IntCounterVec,
    /// `email_unrecorded_window_seconds`: from the SMTP server's acceptance of an email to
    /// the commit of its `sent_emails` row. The send journal covers it: a daemon killed
    /// inside it records the email when it starts again; only one that does not start
    /// again before the redelivery sends that email twice.
    pub email_unrecorded_window: prometheus::Histogram,
    /// `outbox_direct_events_total{result}`: events published right after their commit
    /// (`published`), refused by the broker (`failed`) or not taken (`not_taken`); the last
    /// two are published by the relay when their grace ends.
    pub outbox_direct: IntCounterVec,
    /// `dlq_rule_rounds_total`: rounds of the automatic reprocess rules (each timer tick
    /// that applied them, whether or not anything matched).
    pub dlq_rule_rounds: prometheus::IntCounter,
    /// `worker_crashes_total{subject}`: handlings that crashed (a panic in the handler, or
    /// the worker killed while holding the message), apart from handler errors.
    pub worker_crashes: IntCounterVec,
    /// `messages_quarantined_total{subject}`: messages dead-lettered as `poison` because
    /// they crashed their workers too often.
    pub messages_quarantined: IntCounterVec,
    /// `dlq_replay_jobs_ended_total{state}`: replay jobs that ended `done`, `aborted` (by
    /// themselves, too many failures) or `cancelled`.
    pub replay_jobs_ended: IntCounterVec,
    /// `dlq_replay_messages_total{outcome}`: letters replay jobs `sent` or `skipped`.
    pub replay_messages: IntCounterVec,
    /// `dlq_reconciled_total`: messages the reconciler dead-lettered because they fell
    /// through without their max-deliveries advisory.
    pub dlq_reconciled: prometheus::IntCounter,
    /// `retention_pruned_rows_total{table}`: rows the retention actor deleted because they
    /// outlived their retention setting.
    pub retention_pruned: IntCounterVec,
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

/// The registry every instrument of the process is registered in.
pub fn registry() -> &'static Registry {
    &REGISTRY
}

fn build() -> Result<PipelineMetrics, prometheus::Error> {
    let prime_check_requests = IntCounterVec::new(
        Opts::new("prime_check_requests_total", "Total prime check requests"),
        &["status", "result"],
    )?;
    let prime_check_duration = HistogramVec::new(
        HistogramOpts::new(
            "prime_check_duration_seconds",
            "Prime check processing duration",
        )
        .buckets(vec![0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]),
        &["number_length"],
    )?;
    let emails_sent = IntCounterVec::new(
        Opts::new("emails_sent_total", "Total emails sent"),
        &["status"],
    )?;
    let messages_processed = IntCounterVec::new(
        Opts::new(
            "messages_processed_total",
            "Consumed messages by subject and outcome",
        ),
        &["subject", "outcome"],
    )?;
    let email_unrecorded_window = prometheus::Histogram::with_opts(
        HistogramOpts::new(
            "email_unrecorded_window_seconds",
            "Time from the SMTP server's acceptance of an email to the commit of its record",
        )
        .buckets(vec![
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
        ]),
    )?;
    let outbox_direct = IntCounterVec::new(
        Opts::new(
            "outbox_direct_events_total",
            "Outbox events published right after their commit, by result",
        ),
        &["result"],
    )?;
    let dlq_rule_rounds = prometheus::IntCounter::new(
        "dlq_rule_rounds_total",
        "Rounds of the automatic DLQ reprocess rules",
    )?;
    let worker_crashes = IntCounterVec::new(
        Opts::new(
            "worker_crashes_total",
            "Handlings that crashed their worker (a panic, or the worker killed holding the message)",
        ),
        &["subject"],
    )?;
    let messages_quarantined = IntCounterVec::new(
        Opts::new(
            "messages_quarantined_total",
            "Messages dead-lettered as poison after crashing their workers too often",
        ),
        &["subject"],
    )?;
    let replay_jobs_ended = IntCounterVec::new(
        Opts::new(
            "dlq_replay_jobs_ended_total",
            "DLQ replay jobs ended, by how (done, aborted, cancelled)",
        ),
        &["state"],
    )?;
    let replay_messages = IntCounterVec::new(
        Opts::new(
            "dlq_replay_messages_total",
            "Dead letters replay jobs sent or skipped",
        ),
        &["outcome"],
    )?;
    let dlq_reconciled = prometheus::IntCounter::new(
        "dlq_reconciled_total",
        "Messages dead-lettered by the reconciler (their max-deliveries advisory was missed)",
    )?;
    let retention_pruned = IntCounterVec::new(
        Opts::new(
            "retention_pruned_rows_total",
            "Rows deleted because they outlived their retention setting, by table",
        ),
        &["table"],
    )?;
    let r = registry();
    r.register(Box::new(prime_check_requests.clone()))?;
    r.register(Box::new(prime_check_duration.clone()))?;
    r.register(Box::new(emails_sent.clone()))?;
    r.register(Box::new(messages_processed.clone()))?;
    r.register(Box::new(email_unrecorded_window.clone()))?;
    r.register(Box::new(outbox_direct.clone()))?;
    r.register(Box::new(dlq_rule_rounds.clone()))?;
    r.register(Box::new(worker_crashes.clone()))?;
    r.register(Box::new(messages_quarantined.clone()))?;
    r.register(Box::new(replay_jobs_ended.clone()))?;
    r.register(Box::new(replay_messages.clone()))?;
    r.register(Box::new(dlq_reconciled.clone()))?;
    r.register(Box::new(retention_pruned.clone()))?;
    Ok(PipelineMetrics {
        prime_check_requests,
        prime_check_duration,
        emails_sent,
        messages_processed,
        email_unrecorded_window,
        outbox_direct,
        dlq_rule_rounds,
        worker_crashes,
        messages_quarantined,
        replay_jobs_ended,
        replay_messages,
        dlq_reconciled,
        retention_pruned,
    })
}

static PIPELINE: LazyLock<PipelineMetrics> = LazyLock::new(|| match build() {
    Ok(m) => m,
    // Constant names and labels: a failure is a programming error every test run shows.
    Err(e) => panic!("pipeline metric definitions are invalid: {e}"),
});

/// The pipeline's instruments.
pub fn pipeline() -> &'static PipelineMetrics {
    &PIPELINE
}

/// The `number_length` label of a number with `digits` digits (bounded).
pub fn length_bucket(digits: usize) -> &'static str {
    match digits {
        0..=10 => "1-10",
        11..=20 => "11-20",
        21..=50 => "21-50",
        51..=100 => "51-100",
        101..=500 => "101-500",
        _ => "501+",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_buckets_are_bounded() {
        assert_eq!(length_bucket(1), "1-10");
        assert_eq!(length_bucket(19), "11-20");
        assert_eq!(length_bucket(100), "51-100");
        assert_eq!(length_bucket(100_000), "501+");
    }
}
