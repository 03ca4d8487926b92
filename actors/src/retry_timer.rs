//! The retry timer: applies the automatic reprocess rules (seed §3.3.1).
//!
//! [`RetryTimer`] (messages: [`TimerMsg::Tick`]): a pending dead letter whose error matches a
//! rule's pattern, that has waited the rule's time and has been retried fewer than the rule's
//! maximum, is republished (through the outbox, as an operator's reprocess would be).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::model::{ErrorClass, Reprocess};
use crate::ports::DlqStore;

/// An automatic reprocess rule (seed §3.3.1).
#[derive(Debug, Clone)]
pub struct ReprocessRule {
    /// Its name (the operator recorded for its reprocesses is `rule:<name>`).
    pub name: String,
    /// Matched against the dead letter's error message.
    pub pattern: regex::Regex,
    /// How long a dead letter waits before the rule retries it.
    pub wait: Duration,
    /// Automatic retries per dead letter.
    pub max_retries: u32,
    /// Original subjects it applies to (all when empty).
    pub subjects: Vec<String>,
}

/// The retry timer actor.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryTimer;

/// The retry timer's configuration.
#[derive(Clone)]
pub struct TimerArgs {
    /// Dead letters.
    pub store: Arc<dyn DlqStore>,
    /// The rules.
    pub rules: Vec<ReprocessRule>,
    /// Time between rounds.
    pub interval: Duration,
}

/// Messages the retry timer handles.
#[derive(Debug)]
pub enum TimerMsg {
    /// Apply the rules.
    Tick,
}

impl Actor for RetryTimer {
    type Msg = TimerMsg;
    type State = TimerArgs;
    type Arguments = TimerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TimerMsg>,
        args: TimerArgs,
    ) -> Result<TimerArgs, ActorProcessingErr> {
        myself.send_interval(args.interval, || TimerMsg::Tick);
        Ok(args)
    }

    async fn handle(
        &self,
        _: ActorRef<TimerMsg>,
        TimerMsg::Tick: TimerMsg,
        args: &mut TimerArgs,
    ) -> Result<(), ActorProcessingErr> {
        if let Err(err) = apply_rules(args).await {
            tracing::warn!(error = %err, "could not apply the DLQ reprocess rules; trying again next round");
        }
        crate::metrics::pipeline().dlq_rule_rounds.inc();
        Ok(())
    }
}

/// One round of the rules; returns how many dead letters were republished.
pub async fn apply_rules(args: &TimerArgs) -> Result<usize, String> {
    let mut total = 0;
    for rule in &args.rules {
        let before = Utc::now() - chrono::Duration::from_std(rule.wait).unwrap_or_default();
        let candidates = args
            .store
            .rule_candidates(before, rule.max_retries, &rule.subjects, 100)
            .await
            .map_err(|e| e.to_string())?;
        let ids: Vec<i64> = candidates
            .iter()
            .filter(|l| {
                l.error_type != ErrorClass::Poison && rule.pattern.is_match(&l.error_message)
            })
            .map(|l| l.id)
            .collect();
        if ids.is_empty() {
            continue;
        }
        let results = args
            .store
            .reprocess(Reprocess {
                ids,
                delay: Duration::ZERO,
                force: false,
                operator: format!("rule:{}", rule.name),
                reason: Some(format!("automatic: error matches /{}/", rule.pattern)),
                automatic: true,
            })
            .await
            .map_err(|e| e.to_string())?;
        let n = results.iter().filter(|r| r.ok).count();
        tracing::info!(rule = %rule.name, republished = n, "DLQ rule republished dead letters");
        total += n;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::fakes::{MemoryDlq, letter};

    #[tokio::test]
    async fn a_rule_republishes_the_letters_it_matches_but_never_poison() {
        let dlq = Arc::new(MemoryDlq::with(vec![
            letter(1, ErrorClass::Transient, "connection timed out"),
            letter(2, ErrorClass::Permanent, "550 no such user"),
            letter(3, ErrorClass::Poison, "timed out decoding"),
            letter(4, ErrorClass::Transient, "read TIMED OUT"),
        ]));
        let args = TimerArgs {
            store: dlq.clone(),
            rules: vec![ReprocessRule {
                name: "network".into(),
                pattern: regex::Regex::new("(?i)timed out").unwrap(),
                wait: Duration::from_secs(1800),
                max_retries: 2,
                subjects: Vec::new(),
            }],
            interval: Duration::from_secs(60),
        };
        assert_eq!(apply_rules(&args).await.unwrap(), 2);
        let log = dlq.log();
        assert_eq!(log.reprocessed.len(), 1);
        let asked = &log.reprocessed[0];
        assert_eq!(asked.ids, [1, 4]);
        assert_eq!(asked.operator, "rule:network");
        assert!(asked.automatic && !asked.force);
        assert_eq!(asked.delay, Duration::ZERO);
    }

    #[tokio::test]
    async fn a_rule_that_matches_nothing_asks_for_nothing() {
        let dlq = Arc::new(MemoryDlq::with(vec![letter(
            1,
            ErrorClass::Permanent,
            "550",
        )]));
        let args = TimerArgs {
            store: dlq.clone(),
            rules: vec![ReprocessRule {
                name: "network".into(),
                pattern: regex::Regex::new("timed out").unwrap(),
                wait: Duration::ZERO,
                max_retries: 2,
                subjects: Vec::new(),
            }],
            interval: Duration::from_secs(60),
        };
        assert_eq!(apply_rules(&args).await.unwrap(), 0);
        assert!(dlq.log().reprocessed.is_empty());
    }
}
