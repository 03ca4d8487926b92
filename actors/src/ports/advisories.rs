//! Max-deliveries advisories: a message whose last delivery was never acknowledged.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use super::broker::BrokerError;
use super::source::Delivery;
use crate::model::NewDeadLetter;

/// A max-deliveries advisory, with the message it is about when the stream still has it.
pub struct Advisory {
    /// The dead letter to store, or `None` when the original message is gone.
    pub letter: Option<NewDeadLetter>,
    /// What the advisory says, for the logs.
    pub summary: String,
    /// Acknowledges the advisory.
    pub delivery: Box<dyn Delivery>,
}

/// A consumer's recent messages and its state: what the reconciler compares with the
/// store.
pub struct Unsettled {
    /// The consumer.
    pub consumer: String,
    /// Messages it has delivered and waits to hear about (in flight; those it gave up on
    /// are not counted).
    pub in_flight: u64,
    /// Its acknowledgement floor: every message up to this stream sequence was
    /// acknowledged or given up on.
    pub acked_upto: u64,
    /// Its messages from the caller's settled point (or `max` below the floor) to the last
    /// delivered, oldest first: stream sequence, when published, the dead letter it would
    /// be.
    pub messages: Vec<(u64, DateTime<Utc>, NewDeadLetter)>,
}

/// Durable max-deliveries advisories, and the consumers' state for when one was lost.
pub trait AdvisoryFeed: Send + Sync + 'static {
    /// Up to `max` advisories, waiting at most `wait` for the first.
    fn poll(&self, max: usize, wait: Duration)
    -> BoxFuture<'_, Result<Vec<Advisory>, BrokerError>>;

    /// For each consumer, up to `max` of its messages after `settled[consumer]` (a stream
    /// sequence the caller found everything settled up to), at most `max` below its
    /// acknowledgement floor, up to the last it delivered.
    fn unsettled<'a>(
        &'a self,
        settled: &'a HashMap<String, u64>,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<Unsettled>, BrokerError>>;
}
