//! Retention on both stores: one short `DELETE` of the oldest rows past their cut-off,
//! at most `limit` of them (MySQL: `ORDER BY … LIMIT`; SQLite, which has no `LIMIT` on
//! `DELETE` in its default build: the rowids of those rows).

use actors::{Retained, RetentionStore, StoreError};
use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;

use super::store::Shared;
use super::{Backend, Dialect, Sql};

/// The table, the condition a row past `?` meets, and the instant it is ordered by.
fn target(what: Retained) -> (&'static str, &'static str, &'static str) {
    match what {
        Retained::ProcessingLogs => ("message_processing_logs", "created_at < ", "created_at"),
        Retained::ProcessedEvents => ("processed_events", "processed_at < ", "processed_at"),
        Retained::MessageCrashes => ("message_crashes", "updated_at < ", "updated_at"),
        Retained::SentEmails => ("sent_emails", "sent_at < ", "sent_at"),
        // Pending and reprocessing letters are work still to do: never pruned.
        Retained::DeadLetters => (
            "dead_letter_messages",
            "status IN ('resolved', 'discarded') AND resolved_at < ",
            "resolved_at",
        ),
        Retained::DlqStatistics => ("dlq_statistics", "date_hour < ", "date_hour"),
        Retained::HealthRows => (
            "worker_health_checks",
            "last_heartbeat < ",
            "last_heartbeat",
        ),
    }
}

/// Deletes at most `limit` rows of `what` older than `before`, oldest first.
pub(crate) fn prune(d: Dialect, what: Retained, before: DateTime<Utc>, limit: u32) -> Sql {
    let (table, past, order) = target(what);
    match d {
        Dialect::Mysql => {
            let mut q = Sql::new(d, &format!("DELETE FROM {table} WHERE {past}"));
            q.bind(before);
            q.push(&format!(" ORDER BY {order} LIMIT ")).bind(limit);
            q
        }
        Dialect::Sqlite => {
            let mut q = Sql::new(
                d,
                &format!(
                    "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {past}"
                ),
            );
            q.bind(before);
            q.push(&format!(" ORDER BY {order} LIMIT "))
                .bind(limit)
                .push(")");
            q
        }
    }
}

impl<DB> RetentionStore for Shared<DB>
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    Option<String>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    fn prune(
        &self,
        what: Retained,
        before: DateTime<Utc>,
        limit: u32,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        async move {
            Ok(self
                .run(&prune(DB::DIALECT, what, before, limit))
                .await?
                .rows)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_store_deletes_a_bounded_batch_of_the_oldest_rows() {
        let at = Utc::now();
        let my = prune(Dialect::Mysql, Retained::DeadLetters, at, 500);
        assert_eq!(
            my.text(),
            "DELETE FROM dead_letter_messages WHERE status IN ('resolved', 'discarded') AND resolved_at < ? ORDER BY resolved_at LIMIT ?"
        );
        let lite = prune(Dialect::Sqlite, Retained::SentEmails, at, 500);
        assert_eq!(
            lite.text(),
            "DELETE FROM sent_emails WHERE rowid IN (SELECT rowid FROM sent_emails WHERE sent_at < ? ORDER BY sent_at LIMIT ?)"
        );
        assert_eq!(lite.args().len(), 2);
    }
}
