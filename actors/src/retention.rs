//! The retention actor: deletes what has outlived its retention (seed 000 §3.1.1: a week).
//!
//! [`Retention`] (messages: [`RetentionMsg`]): every `interval` a round starts that goes
//! through each [`Retained`] kind with a retention setting, deleting at most `batch` rows
//! per statement, oldest first. A full batch means more is left: the next one follows after
//! `pause`, so the pruning never holds locks or the pool for long and the hot path's
//! statements pass in between. Each statement is one message, so a stop is served between
//! two batches. Kinds without a setting are kept forever.
//!
//! Failure behaviour: a statement that fails is logged and that kind waits for the next
//! round; the others go on. Rows deleted are counted in
//! `retention_pruned_rows_total{table}`. Several daemons on one store prune the same tables;
//! deleting what another daemon has just deleted deletes nothing, so that is harmless.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::ports::{Retained, RetentionStore};

/// The retention actor.
#[derive(Debug, Clone, Copy, Default)]
pub struct Retention;

/// The retention actor's configuration.
#[derive(Clone)]
pub struct RetentionArgs {
    /// Where the rows are.
    pub store: Arc<dyn RetentionStore>,
    /// How long each kind is kept; kinds not named are kept forever.
    pub keep: Vec<(Retained, Duration)>,
    /// Time between rounds.
    pub interval: Duration,
    /// Rows per statement.
    pub batch: u32,
    /// Time between two statements on one kind, when the first deleted a full batch.
    pub pause: Duration,
}

/// Messages the retention actor handles.
#[derive(Debug)]
pub enum RetentionMsg {
    /// Start a round (unless one still runs).
    Tick,
    /// Run the round's next statement.
    Step,
}

/// The actor's state: its configuration and the round in progress.
pub struct RetentionState {
    args: RetentionArgs,
    /// The kinds this round has still to prune, with their cut-off.
    left: VecDeque<(Retained, DateTime<Utc>)>,
    /// Rows deleted this round, by kind.
    pruned: Vec<(Retained, u64)>,
}

impl RetentionState {
    /// A state with no round in progress.
    pub fn new(args: RetentionArgs) -> Self {
        Self {
            args,
            left: VecDeque::new(),
            pruned: Vec::new(),
        }
    }

    /// Starts a round at `now`: false when one still runs (the tick is skipped).
    pub fn start(&mut self, now: DateTime<Utc>) -> bool {
        if !self.left.is_empty() {
            return false;
        }
        self.pruned.clear();
        self.left = self
            .args
            .keep
            .iter()
            .filter_map(|(what, keep)| {
                let keep = chrono::Duration::from_std(*keep).ok()?;
                Some((*what, now.checked_sub_signed(keep)?))
            })
            .collect();
        !self.left.is_empty()
    }

    /// Runs the next statement of the round. Returns when the one after it is due: after
    /// the pause (this kind has more), at once (the next kind), or None (the round is over).
    pub async fn step(&mut self) -> Option<Duration> {
        let (what, before) = self.left.pop_front()?;
        let deleted = match self.args.store.prune(what, before, self.args.batch).await {
            Ok(n) => n,
            Err(err) => {
                tracing::warn!(table = what.table(), error = %err, "could not prune past retention; trying again next round");
                return self.next_kind();
            }
        };
        if deleted > 0 {
            crate::metrics::pipeline()
                .retention_pruned
                .with_label_values(&[what.table()])
                .inc_by(deleted);
            match self.pruned.iter_mut().find(|(w, _)| *w == what) {
                Some((_, n)) => *n += deleted,
                None => self.pruned.push((what, deleted)),
            }
        }
        if deleted >= u64::from(self.args.batch) {
            self.left.push_front((what, before));
            return Some(self.args.pause);
        }
        self.next_kind()
    }

    fn next_kind(&mut self) -> Option<Duration> {
        if !self.left.is_empty() {
            return Some(Duration::ZERO);
        }
        if !self.pruned.is_empty() {
            let summary = self
                .pruned
                .iter()
                .map(|(what, n)| format!("{}={n}", what.table()))
                .collect::<Vec<_>>()
                .join(" ");
            tracing::info!(pruned = %summary, "deleted rows past their retention");
        }
        None
    }

    /// Rows deleted by the current (or last) round, by kind.
    pub fn pruned(&self) -> &[(Retained, u64)] {
        &self.pruned
    }
}

impl Actor for Retention {
    type Msg = RetentionMsg;
    type State = RetentionState;
    type Arguments = RetentionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RetentionMsg>,
        args: RetentionArgs,
    ) -> Result<RetentionState, ActorProcessingErr> {
        // Every table's series exists from the start at 0, so that a rate over it reads 0
        // (not "no data") until something is old enough to prune.
        for what in Retained::ALL {
            crate::metrics::pipeline()
                .retention_pruned
                .with_label_values(&[what.table()])
                .inc_by(0);
        }
        myself.send_interval(args.interval, || RetentionMsg::Tick);
        Ok(RetentionState::new(args))
    }

    async fn handle(
        &self,
        myself: ActorRef<RetentionMsg>,
        msg: RetentionMsg,
        state: &mut RetentionState,
    ) -> Result<(), ActorProcessingErr> {
        let next = match msg {
            RetentionMsg::Tick => state.start(Utc::now()).then_some(Duration::ZERO),
            RetentionMsg::Step => state.step().await,
        };
        match next {
            Some(d) if d.is_zero() => myself.send_message(RetentionMsg::Step)?,
            Some(d) => {
                myself.send_after(d, || RetentionMsg::Step);
            }
            None => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Mutex;

    use futures::FutureExt;
    use futures::future::BoxFuture;

    use super::*;
    use crate::StoreError;

    /// Rows per kind, each an instant; deletes the oldest first, like the stores.
    #[derive(Default)]
    struct Rows {
        rows: Mutex<Vec<(Retained, DateTime<Utc>)>>,
        calls: Mutex<Vec<(Retained, u32)>>,
        failing: Option<Retained>,
    }

    impl RetentionStore for Rows {
        fn prune(
            &self,
            what: Retained,
            before: DateTime<Utc>,
            limit: u32,
        ) -> BoxFuture<'_, Result<u64, StoreError>> {
            async move {
                self.calls.lock().unwrap().push((what, limit));
                if self.failing == Some(what) {
                    return Err(StoreError::Unavailable("down".into()));
                }
                let mut rows = self.rows.lock().unwrap();
                let mut deleted = 0;
                rows.retain(|(w, at)| {
                    let go = *w == what && *at < before && deleted < limit;
                    if go {
                        deleted += 1;
                    }
                    !go
                });
                Ok(u64::from(deleted))
            }
            .boxed()
        }
    }

    fn rows(store: &mut Rows, what: Retained, n: usize, age: chrono::Duration) {
        let at = Utc::now() - age;
        store
            .rows
            .get_mut()
            .unwrap()
            .extend((0..n).map(|_| (what, at)));
    }

    fn args(store: Arc<Rows>, keep: Vec<(Retained, Duration)>) -> RetentionArgs {
        RetentionArgs {
            store,
            keep,
            interval: Duration::from_secs(600),
            batch: 100,
            pause: Duration::from_millis(50),
        }
    }

    const WEEK: Duration = Duration::from_secs(7 * 86_400);

    async fn round(state: &mut RetentionState) -> Vec<Duration> {
        let mut waits = Vec::new();
        while let Some(d) = state.step().await {
            waits.push(d);
        }
        waits
    }

    #[tokio::test]
    async fn a_round_deletes_only_what_is_older_than_its_retention_in_batches() {
        let mut store = Rows::default();
        rows(
            &mut store,
            Retained::ProcessingLogs,
            250,
            chrono::Duration::days(8),
        );
        rows(
            &mut store,
            Retained::ProcessingLogs,
            30,
            chrono::Duration::days(6),
        );
        rows(
            &mut store,
            Retained::SentEmails,
            5,
            chrono::Duration::days(30),
        );
        let store = Arc::new(store);
        let mut state = RetentionState::new(args(
            store.clone(),
            vec![
                (Retained::ProcessingLogs, WEEK),
                (Retained::SentEmails, WEEK),
            ],
        ));
        assert!(state.start(Utc::now()));
        let waits = round(&mut state).await;
        // Two full batches of logs are each followed by the pause, the short third by the
        // next kind at once.
        assert_eq!(
            waits,
            [
                Duration::from_millis(50),
                Duration::from_millis(50),
                Duration::ZERO
            ]
        );
        assert_eq!(
            *store.calls.lock().unwrap(),
            [
                (Retained::ProcessingLogs, 100),
                (Retained::ProcessingLogs, 100),
                (Retained::ProcessingLogs, 100),
                (Retained::SentEmails, 100),
            ]
        );
        assert_eq!(
            state.pruned(),
            [(Retained::ProcessingLogs, 250), (Retained::SentEmails, 5)]
        );
        // The six-day-old logs stay.
        assert_eq!(store.rows.lock().unwrap().len(), 30);
    }

    #[tokio::test]
    async fn a_kind_without_a_retention_is_never_pruned() {
        let mut store = Rows::default();
        rows(
            &mut store,
            Retained::DeadLetters,
            10,
            chrono::Duration::days(365),
        );
        let store = Arc::new(store);
        let mut state = RetentionState::new(args(store.clone(), vec![]));
        assert!(!state.start(Utc::now()), "nothing to prune: no round");
        assert!(state.step().await.is_none());
        assert!(store.calls.lock().unwrap().is_empty());
        assert_eq!(store.rows.lock().unwrap().len(), 10);
    }

    #[tokio::test]
    async fn a_failing_kind_waits_for_the_next_round_and_the_others_go_on() {
        let mut store = Rows {
            failing: Some(Retained::ProcessedEvents),
            ..Rows::default()
        };
        rows(
            &mut store,
            Retained::ProcessedEvents,
            10,
            chrono::Duration::days(8),
        );
        rows(
            &mut store,
            Retained::HealthRows,
            2,
            chrono::Duration::days(2),
        );
        let store = Arc::new(store);
        let mut state = RetentionState::new(args(
            store.clone(),
            vec![
                (Retained::ProcessedEvents, WEEK),
                (Retained::HealthRows, Duration::from_secs(86_400)),
            ],
        ));
        assert!(state.start(Utc::now()));
        round(&mut state).await;
        assert_eq!(state.pruned(), [(Retained::HealthRows, 2)]);
        assert_eq!(store.calls.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_tick_during_a_round_does_not_start_another() {
        let mut store = Rows::default();
        rows(
            &mut store,
            Retained::ProcessingLogs,
            150,
            chrono::Duration::days(8),
        );
        let store = Arc::new(store);
        let mut state =
            RetentionState::new(args(store.clone(), vec![(Retained::ProcessingLogs, WEEK)]));
        assert!(state.start(Utc::now()));
        assert_eq!(state.step().await, Some(Duration::from_millis(50)));
        assert!(!state.start(Utc::now()), "the round has a batch to go");
        assert_eq!(state.step().await, None);
        assert!(
            state.start(Utc::now()),
            "the round is over: a tick starts the next"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_actor_prunes_every_interval() {
        let mut store = Rows::default();
        rows(
            &mut store,
            Retained::ProcessingLogs,
            250,
            chrono::Duration::days(8),
        );
        let store = Arc::new(store);
        let (actor, handle) = Actor::spawn(
            None,
            Retention,
            args(store.clone(), vec![(Retained::ProcessingLogs, WEEK)]),
        )
        .await
        .unwrap();
        for _ in 0..100 {
            if store.rows.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        assert!(
            store.rows.lock().unwrap().is_empty(),
            "pruned within a round"
        );
        assert_eq!(store.calls.lock().unwrap().len(), 3);
        actor.stop(None);
        handle.await.unwrap();
    }
}
