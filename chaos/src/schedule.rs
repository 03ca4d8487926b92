//! The chaos harness's fault schedule: a seeded, printable list of faults. The same seed,
//! profile and topology always give the same schedule, so a failed run can be replayed.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// A connection the fault-injecting proxies sit on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Link {
    /// Daemons to MariaDB.
    Database,
    /// Daemons to NATS.
    Nats,
    /// Daemons to Redis.
    Redis,
    /// Daemons to the SMTP server.
    Smtp,
}

impl Link {
    /// Every link.
    pub const ALL: [Link; 4] = [Link::Database, Link::Nats, Link::Redis, Link::Smtp];

    /// Its name in the schedule and the report.
    pub fn name(self) -> &'static str {
        match self {
            Link::Database => "database",
            Link::Nats => "nats",
            Link::Redis => "redis",
            Link::Smtp => "smtp",
        }
    }
}

/// Actors an [`Fault::CrashActor`] may pick; each daemon runs all of them.
pub const CRASHABLE_ACTORS: [&str; 6] = [
    "outbox-relay",
    "primecheck-worker-1",
    "email-worker-1",
    "heartbeat",
    "dlq",
    "retry-timer",
];

/// One fault. Faults with a `hold` last that long; the others are instantaneous.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// `kill -9` a daemon and start it again at once.
    KillDaemon {
        /// Which daemon (0-based).
        daemon: usize,
    },
    /// SIGSTOP a daemon for longer than the consumers' ack wait, then SIGCONT.
    PauseDaemon {
        /// Which daemon.
        daemon: usize,
        /// How long it stays stopped.
        #[serde(with = "millis")]
        hold: Duration,
    },
    /// Kill a NATS server (`kill -9`) and start it again on the same store after `hold`.
    RestartNats {
        /// Which node (0 without a cluster).
        node: usize,
        /// In a cluster: kill whichever node leads the pipeline's stream when the fault
        /// comes, instead of `node` (the case that needs an election).
        leader: bool,
        /// How long it stays down.
        #[serde(with = "millis")]
        hold: Duration,
    },
    /// Kill MariaDB (`kill -9`: crash recovery on start) and start it again at once.
    RestartMariadb,
    /// `KILL` every connection the daemons hold to MariaDB.
    KillDbConnections,
    /// Stop Redis for `hold` and start an empty one on the same port.
    StopRedis {
        /// How long it stays down.
        #[serde(with = "millis")]
        hold: Duration,
    },
    /// The SMTP server refuses connections for `hold`.
    StopSmtp {
        /// How long.
        #[serde(with = "millis")]
        hold: Duration,
    },
    /// The SMTP server answers `421` (try again later) for `hold`.
    SmtpTempFail {
        /// How long.
        #[serde(with = "millis")]
        hold: Duration,
    },
    /// Every packet on a link is delayed for `hold`.
    LinkLatency {
        /// Which link.
        link: Link,
        /// The added delay, each way.
        #[serde(with = "millis")]
        delay: Duration,
        /// How long.
        #[serde(with = "millis")]
        hold: Duration,
    },
    /// A link is throttled to a trickle for `hold`.
    LinkBandwidth {
        /// Which link.
        link: Link,
        /// Bytes per second in each direction.
        bytes_per_second: u32,
        /// How long.
        #[serde(with = "millis")]
        hold: Duration,
    },
    /// A network partition on a link: its traffic stalls for `hold` (connections look
    /// half-open), then every connection open across it is reset, as TCP gives up.
    LinkPartition {
        /// Which link.
        link: Link,
        /// How long.
        #[serde(with = "millis")]
        hold: Duration,
    },
    /// Every open connection on a link is reset.
    LinkReset {
        /// Which link.
        link: Link,
    },
    /// An actor dies abnormally (killed through the daemon's fault-injection endpoint) and
    /// its supervisor restarts it.
    CrashActor {
        /// Which daemon.
        daemon: usize,
        /// Which actor.
        actor: &'static str,
    },
}

impl Fault {
    /// The fault's class, the unit MTTR is reported by.
    pub fn class(&self) -> &'static str {
        match self {
            Fault::KillDaemon { .. } => "daemon_kill",
            Fault::PauseDaemon { .. } => "daemon_pause",
            Fault::RestartNats { .. } => "nats_restart",
            Fault::RestartMariadb => "mariadb_restart",
            Fault::KillDbConnections => "mariadb_kill_connections",
            Fault::StopRedis { .. } => "redis_stop",
            Fault::StopSmtp { .. } => "smtp_down",
            Fault::SmtpTempFail { .. } => "smtp_4xx",
            Fault::LinkLatency { .. } => "link_latency",
            Fault::LinkPartition { .. } => "link_partition",
            Fault::LinkBandwidth { .. } => "link_bandwidth",
            Fault::LinkReset { .. } => "link_reset",
            Fault::CrashActor { .. } => "actor_crash",
        }
    }

    /// How long the fault lasts before it is lifted (zero when instantaneous).
    pub fn hold(&self) -> Duration {
        match self {
            Fault::PauseDaemon { hold, .. }
            | Fault::RestartNats { hold, .. }
            | Fault::StopRedis { hold }
            | Fault::StopSmtp { hold }
            | Fault::SmtpTempFail { hold }
            | Fault::LinkLatency { hold, .. }
            | Fault::LinkPartition { hold, .. }
            | Fault::LinkBandwidth { hold, .. } => *hold,
            _ => Duration::ZERO,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: &Duration| d.as_millis();
        match self {
            Fault::KillDaemon { daemon } => write!(f, "kill -9 daemon {daemon}, restart it"),
            Fault::PauseDaemon { daemon, hold } => {
                write!(f, "SIGSTOP daemon {daemon} for {} ms, SIGCONT", ms(hold))
            }
            Fault::RestartNats {
                leader: true, hold, ..
            } => write!(
                f,
                "kill -9 the NATS node leading the stream, restart after {} ms",
                ms(hold)
            ),
            Fault::RestartNats { node, hold, .. } => {
                write!(f, "kill -9 NATS node {node}, restart after {} ms", ms(hold))
            }
            Fault::RestartMariadb => write!(f, "kill -9 MariaDB, restart it"),
            Fault::KillDbConnections => write!(f, "KILL every daemon connection in MariaDB"),
            Fault::StopRedis { hold } => write!(f, "stop Redis for {} ms", ms(hold)),
            Fault::StopSmtp { hold } => write!(f, "SMTP refuses connections for {} ms", ms(hold)),
            Fault::SmtpTempFail { hold } => write!(f, "SMTP answers 421 for {} ms", ms(hold)),
            Fault::LinkLatency { link, delay, hold } => write!(
                f,
                "{} ms latency on the {} link for {} ms",
                ms(delay),
                link.name(),
                ms(hold)
            ),
            Fault::LinkPartition { link, hold } => write!(
                f,
                "partition the {} link for {} ms, then reset its connections",
                link.name(),
                ms(hold)
            ),
            Fault::LinkReset { link } => write!(f, "reset every {} connection", link.name()),
            Fault::LinkBandwidth {
                link,
                bytes_per_second,
                hold,
            } => write!(
                f,
                "throttle the {} link to {bytes_per_second} bytes/s for {} ms",
                link.name(),
                ms(hold)
            ),
            Fault::CrashActor { daemon, actor } => {
                write!(f, "crash actor {actor} in daemon {daemon}")
            }
        }
    }
}

/// One step: a fault, then a quiet gap after it has healed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Step {
    /// The fault.
    pub fault: Fault,
    /// The pause after recovery before the next fault.
    #[serde(with = "millis")]
    pub gap: Duration,
}

/// What the schedule is generated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    /// Daemons running.
    pub daemons: usize,
    /// NATS nodes (1, or 3 in the cluster profile).
    pub nats_nodes: usize,
    /// The consumers' ack wait: a paused daemon stays stopped longer than this.
    pub ack_wait: Duration,
}

/// Generates `faults` steps from `seed`. Every fault class comes once before any repeats
/// (in a seeded order), so even a short schedule covers them all.
pub fn generate(seed: u64, faults: usize, topology: Topology) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut classes: Vec<usize> = (0..CLASSES).collect();
    classes.shuffle(&mut rng);
    let mut steps = Vec::with_capacity(faults);
    for i in 0..faults {
        let class = match classes.get(i) {
            Some(class) => *class,
            None => rng.random_range(0..CLASSES),
        };
        let fault = make(class, &mut rng, topology);
        let gap = Duration::from_millis(rng.random_range(500..=1_500));
        steps.push(Step { fault, gap });
    }
    steps
}

const CLASSES: usize = 13;

fn make(class: usize, rng: &mut StdRng, t: Topology) -> Fault {
    let daemon = rng.random_range(0..t.daemons.max(1));
    let hold = Duration::from_millis(rng.random_range(1_000..=3_000));
    let link = Link::ALL[rng.random_range(0..Link::ALL.len())];
    match class {
        0 => Fault::KillDaemon { daemon },
        1 => Fault::PauseDaemon {
            daemon,
            hold: t.ack_wait + Duration::from_millis(rng.random_range(1_000..=2_000)),
        },
        2 => Fault::RestartNats {
            node: rng.random_range(0..t.nats_nodes.max(1)),
            // Half a cluster's node kills hit the stream's leader.
            leader: t.nats_nodes > 1 && rng.random_bool(0.5),
            // A lone server comes back at once; a cluster node stays away a while.
            hold: if t.nats_nodes > 1 {
                hold
            } else {
                Duration::ZERO
            },
        },
        3 => Fault::RestartMariadb,
        4 => Fault::KillDbConnections,
        5 => Fault::StopRedis { hold },
        6 => Fault::StopSmtp { hold },
        7 => Fault::SmtpTempFail { hold },
        8 => Fault::LinkLatency {
            link,
            delay: Duration::from_millis(rng.random_range(50..=250)),
            hold,
        },
        9 => Fault::LinkPartition {
            link,
            hold: Duration::from_millis(rng.random_range(500..=1_500)),
        },
        10 => Fault::LinkReset { link },
        11 => Fault::LinkBandwidth {
            link,
            bytes_per_second: rng.random_range(2_000..=20_000),
            hold,
        },
        _ => Fault::CrashActor {
            daemon,
            actor: CRASHABLE_ACTORS[rng.random_range(0..CRASHABLE_ACTORS.len())],
        },
    }
}

/// Durations as whole milliseconds in the JSON report.
mod millis {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPOLOGY: Topology = Topology {
        daemons: 2,
        nats_nodes: 1,
        ack_wait: Duration::from_secs(4),
    };

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
        let a = generate(7, 40, TOPOLOGY);
        assert_eq!(a, generate(7, 40, TOPOLOGY));
        assert_ne!(a, generate(8, 40, TOPOLOGY));
        assert_eq!(a.len(), 40);
    }

    #[test]
    fn every_class_comes_before_any_repeats() {
        for seed in 0..20 {
            let steps = generate(seed, CLASSES, TOPOLOGY);
            let mut classes: Vec<_> = steps.iter().map(|s| s.fault.class()).collect();
            classes.sort_unstable();
            classes.dedup();
            assert_eq!(classes.len(), CLASSES, "seed {seed}: {classes:?}");
        }
    }

    #[test]
    fn faults_stay_within_the_topology_and_pauses_outlast_the_ack_wait() {
        let cluster = Topology {
            nats_nodes: 3,
            ..TOPOLOGY
        };
        for step in generate(3, 200, cluster) {
            match step.fault {
                Fault::KillDaemon { daemon } | Fault::CrashActor { daemon, .. } => {
                    assert!(daemon < 2)
                }
                Fault::PauseDaemon { daemon, hold } => {
                    assert!(daemon < 2);
                    assert!(hold > TOPOLOGY.ack_wait, "{hold:?}");
                }
                Fault::RestartNats { node, hold, .. } => {
                    assert!(node < 3);
                    assert!(hold >= Duration::from_secs(1));
                }
                _ => {}
            }
        }
        // Some of a cluster's node kills are aimed at the stream's leader, some not.
        let kills: Vec<bool> = generate(1, 200, cluster)
            .iter()
            .filter_map(|s| match s.fault {
                Fault::RestartNats { leader, .. } => Some(leader),
                _ => None,
            })
            .collect();
        assert!(kills.contains(&true) && kills.contains(&false), "{kills:?}");
        // A lone NATS server is restarted at once, and is the leader of everything.
        assert!(generate(3, 200, TOPOLOGY).iter().all(|s| match s.fault {
            Fault::RestartNats { node, hold, leader } => node == 0 && hold.is_zero() && !leader,
            _ => true,
        }));
    }

    #[test]
    fn a_schedule_prints_one_readable_line_per_fault() {
        let fault = Fault::LinkLatency {
            link: Link::Redis,
            delay: Duration::from_millis(120),
            hold: Duration::from_secs(2),
        };
        assert_eq!(
            fault.to_string(),
            "120 ms latency on the redis link for 2000 ms"
        );
        assert_eq!(fault.class(), "link_latency");
        assert_eq!(fault.hold(), Duration::from_secs(2));
        let json = serde_json::to_value(&fault).unwrap();
        assert_eq!(json["kind"], "link_latency");
        assert_eq!(json["delay"], 120);
    }
}
