//! Store ports: what the API and the outbox relay need from the database.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use crate::model::{
    CreateOutcome, ListQuery, NewRequest, OutboxEvent, PrimeRequest, PublishFailure,
};

/// A store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or timed out, or the transaction lost a deadlock:
    /// trying again later can succeed.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The database refused the operation (a bug, a schema mismatch, or an injected fault).
    #[error("the database refused the operation: {0}")]
    Rejected(String),
}

/// Requests and their outbox events.
pub trait RequestStore: Send + Sync + 'static {
    /// Stores a request and its `primecheck.requested` outbox event in one transaction,
    /// honouring the idempotency key.
    fn create(&self, request: NewRequest) -> BoxFuture<'_, Result<CreateOutcome, StoreError>>;

    /// One request.
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<PrimeRequest>, StoreError>>;

    /// A page of requests, newest first.
    fn list(&self, query: ListQuery) -> BoxFuture<'_, Result<Vec<PrimeRequest>, StoreError>>;
}

/// Settles one claim: records which events were published and which failed.
pub trait Settle: Send {
    /// Marks `published` as published and records `failures` (a retry time, or a move to the
    /// dead-letter table), releasing the claim.
    fn settle<'a>(
        self: Box<Self>,
        published: &'a [i64],
        failures: &'a [PublishFailure],
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// Events claimed for one relay round. Dropping it unsettled releases the events (a
/// database transaction rolls back, or a lease runs out) so that a later round publishes
/// them again; the broker drops the duplicate.
pub struct Claim {
    /// The claimed events, in id order.
    pub events: Vec<OutboxEvent>,
    settle: Option<Box<dyn Settle>>,
}

impl Claim {
    /// A claim of `events`, settled by `settle`.
    pub fn new(events: Vec<OutboxEvent>, settle: Box<dyn Settle>) -> Self {
        Self {
            events,
            settle: Some(settle),
        }
    }

    /// Nothing was due.
    pub fn empty() -> Self {
        Self {
            events: Vec::new(),
            settle: None,
        }
    }

    /// Records the round's outcome and releases the claim.
    pub async fn settle(
        mut self,
        published: &[i64],
        failures: &[PublishFailure],
    ) -> Result<(), StoreError> {
        match self.settle.take() {
            Some(settle) => settle.settle(published, failures).await,
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("events", &self.events.len())
            .finish()
    }
}

/// The outbox, as the relay sees it.
pub trait OutboxStore: Send + Sync + 'static {
    /// Claims up to `limit` due events (unpublished, not dead, retry time reached, not
    /// claimed by another relay) in id order. How the claim keeps other relays off is the
    /// adapter's business: a held `SKIP LOCKED` transaction, or a lease of `lease`.
    fn claim(&self, limit: u32, lease: Duration) -> BoxFuture<'_, Result<Claim, StoreError>>;

    /// Deletes published events older than `before`; returns how many.
    fn prune_published(&self, before: DateTime<Utc>) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Makes published events created since `since` due again (after a broker lost
    /// acknowledged messages); returns how many.
    fn replay_since(&self, since: DateTime<Utc>) -> BoxFuture<'_, Result<u64, StoreError>>;
}
