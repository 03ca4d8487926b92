//! The pipeline's instruments (seed §5.2.1), made through the OpenTelemetry metrics API
//! ([`crate::instruments`]) and read into the process-wide Prometheus [`registry`] that
//! `GET /metrics` serves, together with the daemon's own (HTTP, rate limiting, gauges).

use std::sync::LazyLock;

pub use crate::instruments::registry;
use crate::instruments::{Counter, CounterVec, Histogram, HistogramVec};

/// The pipeline's instruments.
pub struct PipelineMetrics {
    /// `prime_check_requests_total{status,result}`: status `success` or `failed`; result
    /// `prime`, `composite`, `timeout` or `invalid`.
    pub prime_check_requests: CounterVec,
    /// `prime_check_duration_seconds{number_length}`: time of the primality test, by digit
    /// count bucket (`1-10`, `11-20`, `21-50`, `51-100`, `101-500`, `501+`).
    pub prime_check_duration: HistogramVec,
    /// `emails_sent_total{status}`: `sent`, `deferred` (transient, retried) or `rejected`.
    pub emails_sent: CounterVec,
    /// `messages_processed_total{subject,outcome}`: consumer outcomes (`success`, `retry`,
    /// `dead_letter`).
    pub messages_processed: CounterVec,
    /// `email_unrecorded_window_seconds`: from the SMTP server's acceptance of an email to
    /// the commit of its `sent_emails` row. The send journal covers it: a daemon killed
    /// inside it records the email when it starts again; only one that does not start
    /// again before the redelivery sends that email twice.
    pub email_unrecorded_window: Histogram,
    /// `outbox_direct_events_total{result}`: events published right after their commit
    /// (`published`), refused by the broker (`failed`) or not taken (`not_taken`); the last
    /// two are published by the relay when their grace ends.
    pub outbox_direct: CounterVec,
    /// `dlq_rule_rounds_total`: rounds of the automatic reprocess rules (each timer tick
    /// that applied them, whether or not anything matched).
    pub dlq_rule_rounds: Counter,
    /// `worker_crashes_total{subject}`: handlings that crashed (a panic in the handler, or
    /// the worker killed while holding the message), apart from handler errors.
    pub worker_crashes: CounterVec,
    /// `messages_quarantined_total{subject}`: messages dead-lettered as `poison` because
    /// they crashed their workers too often.
    pub messages_quarantined: CounterVec,
    /// `dlq_replay_jobs_ended_total{state}`: replay jobs that ended `done`, `aborted` (by
    /// themselves, too many failures) or `cancelled`.
    pub replay_jobs_ended: CounterVec,
    /// `dlq_replay_messages_total{outcome}`: letters replay jobs `sent` or `skipped`.
    pub replay_messages: CounterVec,
    /// `dlq_reconciled_total`: messages the reconciler dead-lettered because they fell
    /// through without their max-deliveries advisory.
    pub dlq_reconciled: Counter,
    /// `retention_pruned_rows_total{table}`: rows the retention actor deleted because they
    /// outlived their retention setting.
    pub retention_pruned: CounterVec,
}

fn build() -> PipelineMetrics {
    PipelineMetrics {
        prime_check_requests: CounterVec::new(
            "prime_check_requests_total",
            "Total prime check requests",
            &["status", "result"],
        ),
        prime_check_duration: HistogramVec::new(
            "prime_check_duration_seconds",
            "Prime check processing duration",
            &["number_length"],
            &[0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0],
        ),
        emails_sent: CounterVec::new("emails_sent_total", "Total emails sent", &["status"]),
        messages_processed: CounterVec::new(
            "messages_processed_total",
            "Consumed messages by subject and outcome",
            &["subject", "outcome"],
        ),
        email_unrecorded_window: Histogram::new(
            "email_unrecorded_window_seconds",
            "Time from the SMTP server's acceptance of an email to the commit of its record",
            &[
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
            ],
        ),
        outbox_direct: CounterVec::new(
            "outbox_direct_events_total",
            "Outbox events published right after their commit, by result",
            &["result"],
        ),
        dlq_rule_rounds: Counter::new(
            "dlq_rule_rounds_total",
            "Rounds of the automatic DLQ reprocess rules",
        ),
        worker_crashes: CounterVec::new(
            "worker_crashes_total",
            "Handlings that crashed their worker (a panic, or the worker killed holding the message)",
            &["subject"],
        ),
        messages_quarantined: CounterVec::new(
            "messages_quarantined_total",
            "Messages dead-lettered as poison after crashing their workers too often",
            &["subject"],
        ),
        replay_jobs_ended: CounterVec::new(
            "dlq_replay_jobs_ended_total",
            "DLQ replay jobs ended, by how (done, aborted, cancelled)",
            &["state"],
        ),
        replay_messages: CounterVec::new(
            "dlq_replay_messages_total",
            "Dead letters replay jobs sent or skipped",
            &["outcome"],
        ),
        dlq_reconciled: Counter::new(
            "dlq_reconciled_total",
            "Messages dead-lettered by the reconciler (their max-deliveries advisory was missed)",
        ),
        retention_pruned: CounterVec::new(
            "retention_pruned_rows_total",
            "Rows deleted because they outlived their retention setting, by table",
            &["table"],
        ),
    }
}

static PIPELINE: LazyLock<PipelineMetrics> = LazyLock::new(build);

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
