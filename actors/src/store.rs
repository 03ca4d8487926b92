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

/// The outbox, as the relay sees it.
pub trait OutboxStore: Send + Sync + 'static {
    /// Claims up to `limit` due events (unpublished, not dead, retry time reached, not
    /// leased by another relay) in id order, leasing them for `lease`.
    fn claim(
        &self,
        limit: u32,
        lease: Duration,
    ) -> BoxFuture<'_, Result<Vec<OutboxEvent>, StoreError>>;

    /// Marks events published.
    fn mark_published<'a>(&'a self, ids: &'a [i64]) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Records failed publishes: a retry time, or a move to the dead-letter table.
    fn mark_failed<'a>(
        &'a self,
        failures: &'a [PublishFailure],
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Deletes published events older than `before`; returns how many.
    fn prune_published(&self, before: DateTime<Utc>) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Makes published events created since `since` due again (after a broker lost
    /// acknowledged messages); returns how many.
    fn replay_since(&self, since: DateTime<Utc>) -> BoxFuture<'_, Result<u64, StoreError>>;
}
