//! The chaos run's report: what was sent and what became of it, the promises checked, and
//! each fault class's time to heal (min/median/max), as a table and as JSON.

use super::schedule::Fault;
use std::fmt::Write as _;

/// What the load generator's requests got.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RequestCounts {
    /// Requests sent (load and recovery probes).
    pub sent: usize,
    /// Answered 2xx with an id.
    pub accepted: usize,
    /// Answered 4xx (bad input).
    pub rejected: usize,
    /// No definite answer from any daemon within the request budget.
    pub unanswered: usize,
    /// Bad inputs that did not get a 4xx.
    pub bad_input_not_rejected: usize,
}

/// One injected fault.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FaultRecord {
    /// 1-based position in the schedule.
    pub index: usize,
    /// Its class.
    pub class: &'static str,
    /// The fault itself.
    pub fault: Fault,
    /// As printed in the schedule.
    pub description: String,
    /// When it was injected, from the start of the load.
    pub at_ms: u64,
    /// How long it was held.
    pub held_ms: u64,
    /// Time to heal from the end of the fault (the injection, for an instantaneous one)
    /// until every daemon's health was ok and a new request had been emailed; for an actor
    /// crash, until its supervisor had it running again. None: not healed in time.
    pub recovered_ms: Option<f64>,
    /// Time to heal from the injection — what a user feels: the hold plus
    /// [`FaultRecord::recovered_ms`] (the same for an instantaneous fault). None: not healed.
    pub recovered_from_injection_ms: Option<f64>,
    /// Request attempts that failed (5xx, 429 or no answer; each retried) while it lasted.
    pub failed_attempts: usize,
    /// For a node of a NATS cluster killed: the elections it caused and the heal without it.
    pub node_loss: Option<NodeLoss>,
}

/// A NATS cluster node killed: what it led, when the servers reported new leaders, and when
/// the pipeline healed with the node still down.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NodeLoss {
    /// The node's server name.
    pub node: String,
    /// What it led when it was killed (`stream PRIME`, `consumer email-worker`).
    pub led: Vec<String>,
    /// The elections the servers reported after the kill: `what → leader at +ms`.
    pub elections: Vec<String>,
    /// From the kill until the last group it led had a new leader, by the servers' own
    /// timestamps; None when it led nothing (or a group was not re-elected).
    pub election_ms: Option<f64>,
    /// From the kill until every daemon was healthy and a new request had been emailed,
    /// with the node still down; None when that did not happen within the recovery timeout.
    pub healed_ms: Option<f64>,
    /// Where that time went: health, the probe's acceptance, its email.
    pub phases: String,
    /// When it was killed (Unix ms).
    pub killed_at_ms: i64,
    /// The requests accepted between the kill and the end of the election (they waited for
    /// it), and from the kill until the last of them was emailed, in ms (after the drain).
    pub waited: usize,
    /// See [`NodeLoss::waited`]; None when none was accepted then.
    pub waited_emailed_ms: Option<f64>,
    /// Outbox events written between the kill and the election (or the heal, when that came
    /// later) that spent retries: a failed publish counted as the event's own failure. The
    /// outage is the broker's, so none may (see [`NodeLoss::violation`]). None: the outbox
    /// could not be read.
    pub retries_spent: Option<u64>,
}

impl NodeLoss {
    /// How long the heal took past the election (or past the kill, when nothing it led
    /// needed one).
    pub fn past_election_ms(&self) -> Option<f64> {
        Some(self.healed_ms? - self.election_ms.unwrap_or(0.0))
    }

    /// How long after the election the last request that waited for it was emailed.
    pub fn waited_past_election_ms(&self) -> Option<f64> {
        Some(self.waited_emailed_ms? - self.election_ms.unwrap_or(0.0))
    }

    /// What this loss broke of the promises, if anything: a broker outage must spend none of
    /// the events' retries (spent, they put the events on their backoff and, repeated, in
    /// the dead-letter queue).
    pub fn violation(&self, fault: usize) -> Option<String> {
        match self.retries_spent {
            Some(0) => None,
            Some(n) => Some(format!(
                "fault {fault}: losing NATS node {} spent the retries of {n} outbox events written during it (their publishes failed on the broker, and were counted as the events' own failures)",
                self.node
            )),
            None => Some(format!(
                "fault {fault}: the outbox could not be read to check that losing NATS node {} spent no event's retries",
                self.node
            )),
        }
    }
}

/// Time to heal of one fault class.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Mttr {
    /// The class.
    pub class: &'static str,
    /// Faults of the class.
    pub count: usize,
    /// Fastest, in ms, from the end of the fault.
    pub min_ms: f64,
    /// Median, in ms, from the end of the fault.
    pub median_ms: f64,
    /// Slowest, in ms, from the end of the fault.
    pub max_ms: f64,
    /// Min, median and max in ms from the injection.
    pub from_injection: Spread,
    /// Failed request attempts while faults of this class lasted.
    pub failed_attempts: usize,
}

/// Min, median and max of some times, in ms.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Spread {
    /// Fastest.
    pub min_ms: f64,
    /// Median.
    pub median_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl Spread {
    /// Of `times`; None when there are none.
    pub fn of(mut times: Vec<f64>) -> Option<Self> {
        times.sort_by(f64::total_cmp);
        let n = times.len();
        let median = match n {
            0 => return None,
            n if n % 2 == 1 => times[n / 2],
            n => (times[n / 2 - 1] + times[n / 2]) / 2.0,
        };
        Some(Self {
            min_ms: times[0],
            median_ms: median,
            max_ms: times[n - 1],
        })
    }
}

/// The whole report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// The profile's name.
    pub profile: &'static str,
    /// The schedule's seed (run again with it to replay the schedule).
    pub seed: u64,
    /// Daemons.
    pub daemons: usize,
    /// Whether NATS ran as a three-node cluster.
    pub cluster: bool,
    /// From the start of the load to the end of the drain.
    pub duration_s: f64,
    /// Requests.
    pub requests: RequestCounts,
    /// Accepted requests whose one email arrived.
    pub emailed: usize,
    /// Accepted requests that ended in the DLQ with a reason.
    pub dlq_entries: usize,
    /// Accepted requests that did not end as they must: a valid one without its email, a
    /// permanent failure without its dead letter.
    pub lost: usize,
    /// Real duplicates: extra emails with a Message-ID of their own, and repeats of one that
    /// no fault explains (a copy sent after its send was recorded, or with no fault near).
    pub duplicates: usize,
    /// Repeats of a Message-ID that a fault explains: the documented window between the
    /// SMTP server's acceptance and its record (DESIGN §12.2), at most the sends in flight
    /// in the daemons the fault hit.
    pub duplicates_smtp_window: usize,
    /// Emails or result rows with the wrong answer.
    pub wrong_answers: usize,
    /// Requests that ended the wrong way: a valid one dead-lettered, a permanent failure
    /// emailed or dead-lettered for another reason, or both an email and a dead letter.
    pub misrouted: usize,
    /// Outbox rows left unpublished.
    pub unpublished_outbox: i64,
    /// Workers not healthy in `worker_health_checks` after the run.
    pub unhealthy_workers: Vec<String>,
    /// Every fault.
    pub faults: Vec<FaultRecord>,
    /// Time to heal per fault class.
    pub mttr: Vec<Mttr>,
    /// What broke a promise; empty when the run passed.
    pub violations: Vec<String>,
    /// No violations.
    pub ok: bool,
}

impl Report {
    /// Adds a broken promise found after the report was assembled.
    pub fn violation(&mut self, what: String) {
        self.violations.push(what);
        self.ok = false;
    }

    /// The report as text tables.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let r = &self.requests;
        let _ = writeln!(
            out,
            "chaos run: profile {} seed {} daemons {} cluster {} — {:.0} s, {} faults",
            self.profile,
            self.seed,
            self.daemons,
            self.cluster,
            self.duration_s,
            self.faults.len()
        );
        let _ = writeln!(out);
        for (name, value) in [
            ("requests sent", r.sent.to_string()),
            ("accepted (2xx)", r.accepted.to_string()),
            ("rejected (4xx, bad input)", r.rejected.to_string()),
            ("unanswered", r.unanswered.to_string()),
            (
                "bad input not rejected",
                r.bad_input_not_rejected.to_string(),
            ),
            ("emailed once", self.emailed.to_string()),
            ("DLQ entries", self.dlq_entries.to_string()),
            ("lost", self.lost.to_string()),
            ("duplicates", self.duplicates.to_string()),
            (
                "duplicates (SMTP window)",
                self.duplicates_smtp_window.to_string(),
            ),
            ("wrong answers", self.wrong_answers.to_string()),
            ("ended the wrong way", self.misrouted.to_string()),
            (
                "unpublished outbox rows",
                self.unpublished_outbox.to_string(),
            ),
            (
                "unhealthy workers",
                self.unhealthy_workers.len().to_string(),
            ),
        ] {
            let _ = writeln!(out, "  {name:<28} {value:>8}");
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "  {:<26} {:>5}  {:^26}  {:^26} {:>7}",
            "time to heal (ms)", "", "from the injection", "from the end", ""
        );
        let _ = writeln!(
            out,
            "  {:<26} {:>5}  {:>8} {:>8} {:>8}  {:>8} {:>8} {:>8} {:>7}",
            "class", "count", "min", "median", "max", "min", "median", "max", "failed"
        );
        for m in &self.mttr {
            let i = &m.from_injection;
            let _ = writeln!(
                out,
                "  {:<26} {:>5}  {:>8.1} {:>8.1} {:>8.1}  {:>8.1} {:>8.1} {:>8.1} {:>7}",
                m.class,
                m.count,
                i.min_ms,
                i.median_ms,
                i.max_ms,
                m.min_ms,
                m.median_ms,
                m.max_ms,
                m.failed_attempts
            );
        }
        let losses: Vec<(&FaultRecord, &NodeLoss)> = self
            .faults
            .iter()
            .filter_map(|f| f.node_loss.as_ref().map(|l| (f, l)))
            .collect();
        if !losses.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "  {:<5} {:<66} {:>8} {:>8} {:>8} {:>7} {:>8} {:>7}  phases",
                "fault",
                "NATS node killed (what it led)",
                "election",
                "healed",
                "past it",
                "waited",
                "last +",
                "retries"
            );
            let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
            for (f, l) in losses {
                let led = if l.led.is_empty() {
                    "nothing".to_string()
                } else {
                    l.led.join(", ")
                };
                let _ = writeln!(
                    out,
                    "  {:<5} {:<66} {:>8} {:>8} {:>8} {:>7} {:>8} {:>7}  {}",
                    f.index,
                    led,
                    ms(l.election_ms),
                    ms(l.healed_ms),
                    ms(l.past_election_ms()),
                    l.waited,
                    ms(l.waited_past_election_ms()),
                    l.retries_spent.map_or("?".to_string(), |n| n.to_string()),
                    l.phases
                );
            }
        }
        let _ = writeln!(out);
        if self.ok {
            let _ = writeln!(out, "PASS: every promise held");
        } else {
            let _ = writeln!(out, "FAIL: {} violations", self.violations.len());
            for v in self.violations.iter().take(50) {
                let _ = writeln!(out, "  - {v}");
            }
        }
        out
    }
}

/// Min/median/max time to heal per class, in the order classes first appear; faults that
/// did not heal are left out of the numbers (and are violations of their own).
pub fn mttr(faults: &[FaultRecord]) -> Vec<Mttr> {
    let mut classes: Vec<&'static str> = Vec::new();
    for f in faults {
        if !classes.contains(&f.class) {
            classes.push(f.class);
        }
    }
    classes
        .into_iter()
        .filter_map(|class| {
            let of_class: Vec<&FaultRecord> = faults.iter().filter(|f| f.class == class).collect();
            let from_end = Spread::of(of_class.iter().filter_map(|f| f.recovered_ms).collect())?;
            let from_injection = Spread::of(
                of_class
                    .iter()
                    .filter_map(|f| f.recovered_from_injection_ms)
                    .collect(),
            )?;
            Some(Mttr {
                class,
                count: of_class.len(),
                min_ms: from_end.min_ms,
                median_ms: from_end.median_ms,
                max_ms: from_end.max_ms,
                from_injection,
                failed_attempts: of_class.iter().map(|f| f.failed_attempts).sum(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(class: &'static str, recovered_ms: Option<f64>, failed: usize) -> FaultRecord {
        held(class, 0, recovered_ms, failed)
    }

    fn held(
        class: &'static str,
        held_ms: u64,
        recovered_ms: Option<f64>,
        failed: usize,
    ) -> FaultRecord {
        FaultRecord {
            index: 1,
            class,
            fault: Fault::RestartMariadb,
            description: String::new(),
            at_ms: 0,
            held_ms,
            recovered_ms,
            recovered_from_injection_ms: recovered_ms.map(|ms| ms + held_ms as f64),
            failed_attempts: failed,
            node_loss: None,
        }
    }

    #[test]
    fn a_node_loss_that_spent_an_events_retries_breaks_a_promise() {
        let loss = |spent: Option<u64>| NodeLoss {
            node: "n-1".into(),
            led: vec!["stream PRIME".into()],
            elections: vec![],
            election_ms: Some(5_000.0),
            healed_ms: Some(5_200.0),
            phases: String::new(),
            killed_at_ms: 0,
            waited: 120,
            waited_emailed_ms: Some(6_200.0),
            retries_spent: spent,
        };
        assert_eq!(loss(Some(0)).violation(7), None, "none spent: kept");
        let spent = loss(Some(41))
            .violation(7)
            .expect("41 spent is a violation");
        assert!(
            spent.contains("fault 7")
                && spent.contains("n-1")
                && spent.contains("41 outbox events"),
            "{spent}"
        );
        let unread = loss(None).violation(7).expect("unread is not a pass");
        assert!(unread.contains("could not be read"), "{unread}");
        assert_eq!(loss(Some(0)).waited_past_election_ms(), Some(1_200.0));
    }

    #[test]
    fn mttr_is_min_median_max_per_class_in_order_of_appearance() {
        let faults = [
            record("b", Some(30.0), 1),
            record("a", Some(5.0), 0),
            record("b", Some(10.0), 2),
            record("b", Some(20.0), 0),
            record("a", Some(7.0), 0),
            record("c", None, 4),
        ];
        let m = mttr(&faults);
        assert_eq!(
            m.len(),
            2,
            "a class that never healed has no numbers: {m:?}"
        );
        assert_eq!(
            (
                m[0].class,
                m[0].count,
                m[0].min_ms,
                m[0].median_ms,
                m[0].max_ms
            ),
            ("b", 3, 10.0, 20.0, 30.0)
        );
        assert_eq!(m[0].failed_attempts, 3);
        assert_eq!((m[1].class, m[1].median_ms), ("a", 6.0));
    }

    #[test]
    fn the_time_from_the_injection_has_its_own_spread_and_counts_the_hold() {
        // Held 3 s and quick to heal after, or instantaneous and slow to heal: ordered one
        // way from the end, the other way from the injection.
        let faults = [
            held("nats_restart", 3000, Some(100.0), 0),
            held("nats_restart", 0, Some(900.0), 0),
            held("nats_restart", 1000, Some(500.0), 0),
        ];
        let m = &mttr(&faults)[0];
        assert_eq!((m.min_ms, m.median_ms, m.max_ms), (100.0, 500.0, 900.0));
        assert_eq!(
            m.from_injection,
            Spread {
                min_ms: 900.0,
                median_ms: 1500.0,
                max_ms: 3100.0
            }
        );
        let table = Report {
            profile: "short",
            seed: 1,
            daemons: 2,
            cluster: false,
            duration_s: 1.0,
            requests: RequestCounts::default(),
            emailed: 0,
            dlq_entries: 0,
            lost: 0,
            duplicates: 0,
            duplicates_smtp_window: 0,
            wrong_answers: 0,
            misrouted: 0,
            unpublished_outbox: 0,
            unhealthy_workers: vec![],
            faults: faults.to_vec(),
            mttr: mttr(&faults),
            violations: vec![],
            ok: true,
        }
        .table();
        let row = table
            .lines()
            .find(|l| l.trim_start().starts_with("nats_restart"))
            .unwrap();
        let numbers: Vec<&str> = row.split_whitespace().skip(1).collect();
        assert_eq!(
            numbers,
            [
                "3", "900.0", "1500.0", "3100.0", "100.0", "500.0", "900.0", "0"
            ],
            "{table}"
        );
        assert!(table.contains("from the injection"), "{table}");
    }
}
