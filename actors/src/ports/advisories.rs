//! Max-deliveries advisories: a message whose last delivery was never acknowledged.

use std::time::Duration;

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

/// Durable max-deliveries advisories.
pub trait AdvisoryFeed: Send + Sync + 'static {
    /// Up to `max` advisories, waiting at most `wait` for the first.
    fn poll(&self, max: usize, wait: Duration)
    -> BoxFuture<'_, Result<Vec<Advisory>, BrokerError>>;
}
