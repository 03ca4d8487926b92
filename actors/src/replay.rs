//! Safe replay of dead letters: a job sends a canary first and waits for its outcomes,
//! then ramps up in steps (canary, then `ramp` times more, and so on) under a rate cap, and
//! stops by itself when too many of the letters it replayed fail again.
//!
//! The decision is [`next_step`], a pure function of the job's pace and its letters'
//! counts; the [`Replayer`] actor applies it to every running job this daemon holds the
//! lease of (one daemon runs a job), on each tick. A job's state is in the store, so a
//! restarted daemon (or another one, once the lease lapses) carries it on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::watch;

use crate::breaker::Outage;
use crate::model::{
    ErrorClass, NewReplay, ReplayCounts, ReplayJob, ReplayPace, ReplaySelection, ReplayState,
    SUBJECT_EMAIL_SEND,
};
use crate::outbox_relay::RelayWake;
use crate::ports::ReplayStore;

/// What a job does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Send this many more letters now.
    Send(u64),
    /// Wait: for outcomes before the next step, or for the rate cap.
    Wait,
    /// Every letter's outcome is in.
    Done,
    /// Too many failures: stop, saying why.
    Abort(String),
}

/// Letters a job may have dispatched by the end of step `k` (0: the canary), and that step's
/// size.
fn step_end(pace: &ReplayPace, dispatched: u64) -> (u64, u64) {
    let ramp = u64::from(pace.ramp.max(1));
    let mut size = u64::from(pace.canary.max(1));
    let mut end = size;
    while end < dispatched {
        size = size.saturating_mul(ramp);
        end = end.saturating_add(size);
    }
    (end, size)
}

/// The next step of a job with `counts`, allowed to send at most `tokens` letters now.
pub fn next_step(pace: &ReplayPace, counts: &ReplayCounts, tokens: u64) -> Step {
    let outcomes = counts.succeeded + counts.failed;
    let judge_after = u64::from(pace.canary.max(1)).min(counts.dispatched().max(1));
    if outcomes >= judge_after && outcomes > 0 {
        let ratio = counts.failed as f64 / outcomes as f64;
        if ratio > pace.max_failure_ratio {
            return Step::Abort(format!(
                "{} of {} replayed letters failed again ({:.0} %), more than the {:.0} % allowed; the cause may not be fixed yet",
                counts.failed,
                outcomes,
                ratio * 100.0,
                pace.max_failure_ratio * 100.0
            ));
        }
    }
    if counts.queued == 0 {
        return if counts.in_flight == 0 {
            Step::Done
        } else {
            Step::Wait
        };
    }
    let dispatched = counts.dispatched();
    let (mut end, size) = step_end(pace, dispatched);
    if dispatched == end {
        // This step is all sent: the next one starts once its outcomes are in.
        if counts.in_flight > 0 {
            return Step::Wait;
        }
        end += size.saturating_mul(u64::from(pace.ramp.max(1)));
    }
    let n = (end - dispatched).min(counts.queued).min(tokens);
    if n == 0 { Step::Wait } else { Step::Send(n) }
}

/// A token bucket: `rate` tokens a second, holding at most a second's worth (at least 1).
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: f64, now: Instant) -> Self {
        let rate = rate.max(0.001);
        Self {
            rate,
            tokens: rate.max(1.0),
            last: now,
        }
    }

    /// Whole tokens available at `now` (not taken).
    pub fn available(&mut self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate.max(1.0));
        self.last = now;
        self.tokens.floor() as u64
    }

    /// Takes `n` tokens (after [`Bucket::available`] said they are there).
    pub fn take(&mut self, n: u64) {
        self.tokens = (self.tokens - n as f64).max(0.0);
    }
}

/// The replay job runner.
#[derive(Debug, Clone, Copy, Default)]
pub struct Replayer;

/// Its configuration.
#[derive(Clone)]
pub struct ReplayerArgs {
    /// Jobs, their letters, and the reprocess that sends one.
    pub store: Arc<dyn ReplayStore>,
    /// This daemon's name, as the owner of the jobs it runs.
    pub owner: String,
    /// How often it looks at its jobs.
    pub tick: Duration,
    /// How long its hold on a job lasts without being renewed.
    pub lease: Duration,
    /// Wakes the outbox relay when letters were sent.
    pub wake: Option<RelayWake>,
    /// When set, each outage the SMTP breaker sees end starts a replay, at this pace, of
    /// the transient `email.send` dead letters it caused (by fingerprint and time).
    pub on_heal: Option<(watch::Receiver<Option<Outage>>, ReplayPace)>,
}

/// Messages of the [`Replayer`].
#[derive(Debug)]
pub enum ReplayerMsg {
    /// Look at the jobs.
    Tick,
}

/// The runner's state: a rate bucket per job it runs.
pub struct ReplayerState {
    args: ReplayerArgs,
    buckets: HashMap<i64, Bucket>,
}

impl Actor for Replayer {
    type Msg = ReplayerMsg;
    type State = ReplayerState;
    type Arguments = ReplayerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ReplayerMsg>,
        args: ReplayerArgs,
    ) -> Result<ReplayerState, ActorProcessingErr> {
        myself.cast(ReplayerMsg::Tick)?;
        Ok(ReplayerState {
            args,
            buckets: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ReplayerMsg>,
        ReplayerMsg::Tick: ReplayerMsg,
        state: &mut ReplayerState,
    ) -> Result<(), ActorProcessingErr> {
        if let Err(err) = run_jobs(state).await {
            tracing::warn!(error = %err, "replay jobs: the store is unavailable; trying again");
        }
        myself.send_after(state.args.tick, || ReplayerMsg::Tick);
        Ok(())
    }
}

fn ended(state: ReplayState) {
    crate::metrics::pipeline()
        .replay_jobs_ended
        .with_label_values(&[state.as_str()])
        .inc();
}

/// The operator of the jobs an outage's end starts.
pub const HEAL_OPERATOR: &str = "auto:smtp-healed";

/// Starts a replay of the dead letters `outage` caused: one job per error fingerprint seen
/// during it, over the pending transient `email.send` letters of that fingerprint
/// dead-lettered since the outage began — unless such a job runs already (another daemon's
/// breaker saw the same outage end).
pub async fn replay_outage(
    store: &dyn ReplayStore,
    outage: &Outage,
    pace: ReplayPace,
) -> Result<Vec<ReplayJob>, crate::StoreError> {
    let running = store.replays(100).await?;
    let mut started = Vec::new();
    for fingerprint in &outage.fingerprints {
        let busy = running.iter().any(|j| {
            !j.state.ended()
                && j.trigger == "smtp_healed"
                && j.selection["fingerprint"].as_str() == Some(fingerprint)
        });
        if busy {
            continue;
        }
        let selection = ReplaySelection {
            subject: Some(SUBJECT_EMAIL_SEND.into()),
            error_type: Some(ErrorClass::Transient),
            fingerprint: Some(fingerprint.clone()),
            since: Some(outage.since - chrono::Duration::seconds(1)),
            ..ReplaySelection::default()
        };
        let (n, _) = store.preview_replay(selection.clone(), false, 0).await?;
        if n == 0 {
            continue;
        }
        let job = store
            .start_replay(NewReplay {
                selection,
                pace,
                force: false,
                operator: HEAL_OPERATOR.into(),
                reason: Some(format!(
                    "the SMTP circuit breaker closed after an outage from {} to {}",
                    outage.since.format("%Y-%m-%d %H:%M:%S UTC"),
                    outage.until.format("%H:%M:%S UTC")
                )),
                trigger: "smtp_healed".into(),
            })
            .await?;
        tracing::info!(job = job.id, letters = job.total, fingerprint = %fingerprint, "SMTP healed: replaying the dead letters its outage caused");
        started.push(job);
    }
    Ok(started)
}

/// One tick: an outage that ended starts its replay; every running job this daemon holds
/// moves one step.
async fn run_jobs(state: &mut ReplayerState) -> Result<(), crate::StoreError> {
    if let Some((healed, pace)) = &mut state.args.on_heal
        && healed.has_changed().unwrap_or(false)
    {
        let outage = healed.borrow_and_update().clone();
        if let Some(outage) = outage {
            let pace = *pace;
            if let Err(err) = replay_outage(state.args.store.as_ref(), &outage, pace).await {
                // Seen again on the next tick.
                healed.mark_changed();
                return Err(err);
            }
        }
    }
    let args = state.args.clone();
    let jobs = args.store.claim_replays(&args.owner, args.lease).await?;
    state
        .buckets
        .retain(|id, _| jobs.iter().any(|j| j.id == *id));
    for job in jobs {
        let counts = args.store.settle_replay(job.id).await?;
        let now = Instant::now();
        let bucket = state
            .buckets
            .entry(job.id)
            .or_insert_with(|| Bucket::new(job.pace.rate_per_second, now));
        let tokens = bucket.available(now);
        match next_step(&job.pace, &counts, tokens) {
            Step::Wait => {}
            Step::Done => {
                args.store
                    .end_replay(job.id, ReplayState::Done, None)
                    .await?;
                ended(ReplayState::Done);
                tracing::info!(
                    job = job.id,
                    succeeded = counts.succeeded,
                    failed = counts.failed,
                    skipped = counts.skipped,
                    "replay job done"
                );
            }
            Step::Abort(reason) => {
                args.store
                    .end_replay(job.id, ReplayState::Aborted, Some(&reason))
                    .await?;
                ended(ReplayState::Aborted);
                tracing::warn!(job = job.id, reason = %reason, "replay job stopped by itself");
            }
            Step::Send(n) => {
                let sent = send(&args, &job, n).await?;
                bucket.take(sent);
                if sent > 0
                    && let Some(wake) = &args.wake
                {
                    wake.wake();
                }
            }
        }
    }
    Ok(())
}

/// Sends up to `n` queued letters of `job`; how many were taken (sent or skipped).
async fn send(args: &ReplayerArgs, job: &ReplayJob, n: u64) -> Result<u64, crate::StoreError> {
    let ids = args
        .store
        .queued_replay(job.id, u32::try_from(n).unwrap_or(u32::MAX))
        .await?;
    let mut taken = 0;
    for id in ids {
        let sent = args.store.send_replay(job, id).await?;
        let outcome = if sent { "sent" } else { "skipped" };
        crate::metrics::pipeline()
            .replay_messages
            .with_label_values(&[outcome])
            .inc();
        taken += 1;
    }
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACE: ReplayPace = ReplayPace {
        canary: 2,
        ramp: 5,
        rate_per_second: 100.0,
        max_failure_ratio: 0.5,
    };

    fn counts(queued: u64, in_flight: u64, succeeded: u64, failed: u64) -> ReplayCounts {
        ReplayCounts {
            queued,
            in_flight,
            succeeded,
            failed,
            skipped: 0,
        }
    }

    #[test]
    fn the_canary_goes_first_and_each_step_waits_for_the_previous_ones_outcomes() {
        // 100 letters: the canary of 2 …
        assert_eq!(next_step(&PACE, &counts(100, 0, 0, 0), 1000), Step::Send(2));
        // … whose outcomes are awaited …
        assert_eq!(next_step(&PACE, &counts(98, 2, 0, 0), 1000), Step::Wait);
        assert_eq!(next_step(&PACE, &counts(98, 1, 1, 0), 1000), Step::Wait);
        // … then 10 (2 × 5), then 50.
        assert_eq!(next_step(&PACE, &counts(98, 0, 2, 0), 1000), Step::Send(10));
        assert_eq!(next_step(&PACE, &counts(93, 5, 2, 0), 1000), Step::Send(5));
        assert_eq!(next_step(&PACE, &counts(88, 10, 2, 0), 1000), Step::Wait);
        assert_eq!(
            next_step(&PACE, &counts(88, 0, 12, 0), 1000),
            Step::Send(50)
        );
        // The last step takes what is left.
        assert_eq!(
            next_step(&PACE, &counts(38, 0, 62, 0), 1000),
            Step::Send(38)
        );
        assert_eq!(next_step(&PACE, &counts(0, 3, 97, 0), 1000), Step::Wait);
        assert_eq!(next_step(&PACE, &counts(0, 0, 100, 0), 1000), Step::Done);
    }

    #[test]
    fn the_rate_cap_limits_what_a_step_sends_at_once() {
        assert_eq!(next_step(&PACE, &counts(98, 0, 2, 0), 3), Step::Send(3));
        assert_eq!(next_step(&PACE, &counts(98, 0, 2, 0), 0), Step::Wait);
    }

    #[test]
    fn a_failing_canary_stops_the_job_before_anything_else_is_sent() {
        match next_step(&PACE, &counts(98, 0, 0, 2), 1000) {
            Step::Abort(reason) => assert!(
                reason.starts_with("2 of 2 replayed letters failed again (100 %)"),
                "{reason}"
            ),
            other => panic!("{other:?}"),
        }
        // One failure of the canary's two is not more than half.
        assert_eq!(next_step(&PACE, &counts(98, 0, 1, 1), 1000), Step::Send(10));
        // Later steps are judged on everything replayed so far.
        assert!(matches!(
            next_step(&PACE, &counts(88, 0, 5, 7), 1000),
            Step::Abort(_)
        ));
    }

    #[test]
    fn skipped_letters_count_as_dispatched_but_not_as_outcomes() {
        let c = ReplayCounts {
            queued: 0,
            in_flight: 0,
            succeeded: 0,
            failed: 0,
            skipped: 4,
        };
        assert_eq!(next_step(&PACE, &c, 1000), Step::Done);
    }

    #[test]
    fn the_bucket_refills_at_its_rate_and_holds_a_second_at_most() {
        let t0 = Instant::now();
        let mut b = Bucket::new(4.0, t0);
        assert_eq!(b.available(t0), 4);
        b.take(4);
        assert_eq!(b.available(t0), 0);
        assert_eq!(b.available(t0 + Duration::from_millis(500)), 2);
        assert_eq!(
            b.available(t0 + Duration::from_secs(10)),
            4,
            "a second's worth at most"
        );
        let mut slow = Bucket::new(0.5, t0);
        assert_eq!(slow.available(t0), 1);
        slow.take(1);
        assert_eq!(slow.available(t0 + Duration::from_secs(1)), 0);
        assert_eq!(slow.available(t0 + Duration::from_secs(2)), 1);
    }
}
