//! The chaos run (DESIGN §11): starts the services and K daemons behind fault-injecting
//! proxies, drives a steady load, injects the scheduled faults one after another and measures
//! how long each takes to heal, then drains and checks the promises of DESIGN §12.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::mysql::{MySqlPool, MySqlPoolOptions};

use super::daemons::{Daemon, daemon_env, spawn_daemon, wait_ready};
pub use super::daemons::{default_work_dir, sibling_primed};
use super::election::{self, Elections};
use super::invariants::{RunFacts, check, unsettled};
use super::load::{Outcome, Shared, big_prime, load};
use super::options::{
    ACK_WAIT, ADMIN_TOKEN, DATABASE, RECOVERY_TIMEOUT, SHUTDOWN_WAIT, SMTP_SENDS_IN_FLIGHT, setup,
};
pub use super::options::{ChaosError, LONG, Options, Profile, SHORT};
use super::proxy::{Fault as ProxyFault, FaultProxy};
use super::report::{FaultRecord, NodeLoss, Report};
use super::schedule::{self, Fault, Link, Step, Topology};
use super::services::{MailDev, Mariadb, NatsNode, Redis};
use super::settle::{all_healthy, quiet, recover};

/// Prints a progress line with the time since the start.
#[derive(Clone)]
struct Progress(Instant);

impl Progress {
    fn say(&self, line: impl AsRef<str>) {
        eprintln!(
            "[{:>7.2}s] {}",
            self.0.elapsed().as_secs_f64(),
            line.as_ref()
        );
    }
}

/// Runs the whole thing and returns the report (whose `ok` says whether the promises held).
pub async fn run(options: Options) -> Result<Report, ChaosError> {
    let progress = Progress(Instant::now());
    let dir = &options.work_dir;
    std::fs::create_dir_all(dir).map_err(|e| setup("work directory")(e.to_string()))?;
    let nodes = if options.cluster { 3 } else { 1 };
    let topology = Topology {
        daemons: options.daemons,
        nats_nodes: nodes,
        ack_wait: ACK_WAIT,
    };
    let steps = schedule::generate(options.seed, options.profile.faults, topology);
    progress.say(format!(
        "chaos profile {} seed {} with {} daemons, {} NATS node(s); the schedule:",
        options.profile.name, options.seed, options.daemons, nodes
    ));
    for (i, step) in steps.iter().enumerate() {
        progress.say(format!("  {:>3}. {}", i + 1, step.fault));
    }

    // Services, each behind its proxy.
    let mut db = Mariadb::start(dir).await?;
    let admin_db = {
        let mut conn = connect_db(&db.url("mysql")).await?;
        sqlx::query(&format!("CREATE DATABASE IF NOT EXISTS {DATABASE}"))
            .execute(&mut conn)
            .await
            .map_err(|e| setup("create the database")(e.to_string()))?;
        MySqlPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy(&db.url(DATABASE))
            .map_err(|e| setup("database pool")(e.to_string()))?
    };
    let mut nats = NatsNode::start_all(dir, nodes).await?;
    wait_for_jetstream(&nats).await?;
    // A cluster's own reports of its leader elections, to compare node losses with.
    let elections = if options.cluster {
        Some(Elections::watch(&nats).await.map_err(ChaosError::Setup)?)
    } else {
        None
    };
    let mut redis = Redis::start(dir).await?;
    let mail = MailDev::start(dir).await?;
    let proxy = |port: u16| FaultProxy::start(([127, 0, 0, 1], port).into());
    let io = |e: std::io::Error| ChaosError::Setup(format!("proxy: {e}"));
    let db_proxy = proxy(db.port).await.map_err(io)?;
    let mut nats_proxies = Vec::new();
    for node in &nats {
        nats_proxies.push(proxy(node.port).await.map_err(io)?);
    }
    let redis_proxy = proxy(redis.port).await.map_err(io)?;
    let smtp_proxy = proxy(mail.smtp_port).await.map_err(io)?;
    progress.say(format!(
        "services up in {}: MariaDB :{}, NATS {:?}, Redis :{}, maildev :{} (API :{})",
        dir.display(),
        db.port,
        nats.iter().map(|n| n.port).collect::<Vec<_>>(),
        redis.port,
        mail.smtp_port,
        mail.web_port
    ));

    // Daemons.
    let env = daemon_env(
        db_proxy.addr(),
        &nats_proxies
            .iter()
            .map(FaultProxy::addr)
            .collect::<Vec<_>>(),
        redis_proxy.addr(),
        smtp_proxy.addr(),
    );
    let mut daemons = Vec::new();
    for index in 0..options.daemons {
        daemons.push(spawn_daemon(&options, index, &env)?);
    }
    let shared = Arc::new(Shared {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| setup("HTTP client")(e.to_string()))?,
        ports: daemons.iter().map(|d| d.port).collect(),
        sent: Mutex::new(Vec::new()),
        failed_attempts: Mutex::new(Vec::new()),
        seq: AtomicU64::new(0),
        big_prime: big_prime(),
    });
    for d in &mut daemons {
        wait_ready(&shared, d).await?;
    }
    progress.say(format!(
        "{} daemons ready; first request end to end…",
        daemons.len()
    ));
    if let Err(why) = recover(&shared, &admin_db).await {
        return Err(ChaosError::Setup(format!(
            "the pipeline did not complete a first request ({why}); see the daemon logs in the work directory"
        )));
    }

    // Load.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load(
        shared.clone(),
        options.profile.rate,
        options.seed,
        stop.clone(),
    ));

    // Faults.
    let started = Instant::now();
    let load_started_ms = chrono::Utc::now().timestamp_millis();
    let mut records = Vec::new();
    let mut links = Links {
        database: &db_proxy,
        nats: &nats_proxies,
        redis: &redis_proxy,
        smtp: &smtp_proxy,
    };
    for (i, Step { fault, gap }) in steps.iter().enumerate() {
        progress.say(format!("fault {}/{}: {fault}", i + 1, steps.len()));
        let injected = Instant::now();
        let healed_from = inject(
            fault,
            &shared,
            &mut daemons,
            &mut db,
            &admin_db,
            &mut nats,
            elections.as_ref(),
            &mut redis,
            &mut links,
        )
        .await?;
        let mut node_loss = None;
        // Time to heal, from the end of the fault and from its injection.
        let recovered = match healed_from {
            Healed::Actor(ms) => {
                // The end-to-end check follows an actor crash too, so the next fault
                // starts clean.
                let pipeline = recover(&shared, &admin_db).await;
                match (ms, pipeline) {
                    (Some(ms), Ok(_)) => {
                        let d = Duration::from_secs_f64(ms / 1000.0);
                        Ok((d, d, "measured by the daemon".to_string()))
                    }
                    (None, _) => Err("the actor was not running again within 2 s".to_string()),
                    (_, Err(why)) => Err(why),
                }
            }
            Healed::NotInjected(why) => Err(why),
            Healed::NodeLoss { end, loss, healed } => {
                let after = recover(&shared, &admin_db).await;
                node_loss = Some(loss);
                after.map(|(t, phases)| {
                    // From the injection: the heal with the node still down, when it came.
                    (t - end, healed.unwrap_or(t - injected), phases)
                })
            }
            Healed::From(t0) => recover(&shared, &admin_db)
                .await
                .map(|(t, phases)| (t - t0, t - injected, phases)),
        };
        let done = Instant::now();
        match &recovered {
            Ok((d, from_injection, phases)) => progress.say(format!(
                "  healed in {:.1} ms from the end, {:.1} ms from the injection ({phases})",
                d.as_secs_f64() * 1000.0,
                from_injection.as_secs_f64() * 1000.0
            )),
            Err(why) => progress.say(format!(
                "  NOT healed within {} s: {why}",
                RECOVERY_TIMEOUT.as_secs()
            )),
        }
        if let Some(l) = &node_loss {
            let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} ms"));
            progress.say(format!(
                "  {} led {:?}; new leaders after {}; healed without it after {} ({}); elections: {:?}",
                l.node,
                l.led,
                ms(l.election_ms),
                ms(l.healed_ms),
                l.phases,
                l.elections
            ));
        }
        let recovered = recovered
            .ok()
            .map(|(d, from_injection, _)| (d, from_injection));
        let failed = shared
            .failed_attempts
            .lock()
            .map(|f| f.iter().filter(|t| **t >= injected && **t <= done).count())
            .unwrap_or(0);
        records.push(FaultRecord {
            index: i + 1,
            class: fault.class(),
            fault: fault.clone(),
            description: fault.to_string(),
            at_ms: millis(injected - started),
            held_ms: millis(fault.hold()),
            recovered_ms: recovered.map(|(d, _)| d.as_secs_f64() * 1000.0),
            recovered_from_injection_ms: recovered.map(|(_, d)| d.as_secs_f64() * 1000.0),
            failed_attempts: failed,
            node_loss,
        });
        tokio::time::sleep(*gap).await;
    }

    // Drain.
    stop.store(true, Ordering::Relaxed);
    let _ = load.await;
    progress.say(format!(
        "load stopped after {} requests; draining (up to {} s)…",
        shared.sent.lock().map(|s| s.len()).unwrap_or(0),
        options.profile.drain.as_secs()
    ));
    let sent = shared.sent.lock().map(|s| s.clone()).unwrap_or_default();
    let accepted: Vec<(String, String)> = sent
        .iter()
        .filter_map(|s| match &s.outcome {
            Outcome::Accepted(id) => Some((id.clone(), s.email.clone())),
            _ => None,
        })
        .collect();
    let drain_deadline = Instant::now() + options.profile.drain;
    loop {
        let open = unsettled(&admin_db, &accepted).await;
        if open == Ok(0) || Instant::now() > drain_deadline {
            match open {
                Ok(n) => progress.say(format!("drained; {n} accepted requests still open")),
                Err(e) => progress.say(format!("cannot tell what is settled: {e}")),
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A late repeat arrives after a redelivery: read the mail only once no message waits
    // for a consumer or for its acknowledgement. Then every worker heartbeats once more.
    let idle = quiet(&nats, options.profile.drain).await;
    match &idle {
        Ok(()) => progress.say("every consumer is idle"),
        Err(why) => progress.say(format!("consumers not idle: {why}")),
    }
    // Every worker heartbeats healthy again (the check reads it): wait for that, bounded.
    let healthy_by = Instant::now() + Duration::from_secs(20);
    while Instant::now() < healthy_by && !all_healthy(&admin_db).await {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The requests that waited for each node loss's election, now that all is emailed.
    for record in &mut records {
        if let Some(loss) = record.node_loss.as_mut() {
            waited_for_election(&admin_db, loss).await;
        }
    }
    let facts = RunFacts {
        load_started_ms,
        sends_per_daemon: SMTP_SENDS_IN_FLIGHT,
        recovery_timeout: RECOVERY_TIMEOUT,
    };
    let mut report = check(
        &options,
        &facts,
        &sent,
        &admin_db,
        &mail,
        records,
        started.elapsed(),
    )
    .await?;
    // Without quiet consumers a repeat could still come after the mail was read: the run
    // cannot vouch for "none doubled".
    if let Err(why) = idle {
        report.violation(format!(
            "the consumers were not idle {} s after the drain ({why}): messages are still waiting or unacknowledged, so a late duplicate cannot be ruled out",
            options.profile.drain.as_secs()
        ));
    }
    // Last, every daemon must still stop cleanly: SIGTERM, exit 0 within its deadline.
    for d in &mut daemons {
        match d.process.stop_gracefully(SHUTDOWN_WAIT).await? {
            Some(0) => {}
            code => report.violation(format!(
                "daemon {} did not stop cleanly on SIGTERM (exit {code:?}); see {}",
                d.index,
                d.process.log().display()
            )),
        }
    }
    progress.say(format!("{} daemons stopped", daemons.len()));
    Ok(report)
}

/// The proxies by link.
struct Links<'a> {
    database: &'a FaultProxy,
    nats: &'a [FaultProxy],
    redis: &'a FaultProxy,
    smtp: &'a FaultProxy,
}

impl Links<'_> {
    fn of(&self, link: Link) -> Vec<&FaultProxy> {
        match link {
            Link::Database => vec![self.database],
            Link::Nats => self.nats.iter().collect(),
            Link::Redis => vec![self.redis],
            Link::Smtp => vec![self.smtp],
        }
    }

    /// Puts `fault` on every proxy of `link` for `hold`, then lifts it; healing is timed
    /// from the lift. New connections see the fault at once; `Refuse` and `Answer` also
    /// reset the open ones, so that the clients' next connection meets it.
    async fn hold(&self, link: Link, fault: ProxyFault, hold: Duration, lift: Lift) -> Healed {
        let proxies = self.of(link);
        for p in &proxies {
            p.set(fault);
            if matches!(fault, ProxyFault::Refuse | ProxyFault::Answer(_)) {
                p.reset_all();
            }
        }
        tokio::time::sleep(hold).await;
        for p in &proxies {
            if lift == Lift::ResetThenClear {
                p.reset_all();
            }
            p.set(ProxyFault::None);
        }
        Healed::From(Instant::now())
    }
}

/// How a held proxy fault ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lift {
    /// Traffic passes again on the same connections.
    Clear,
    /// The connections open across it are reset first (a partition TCP gave up on).
    ResetThenClear,
}

/// Where the time to heal is counted from.
enum Healed {
    /// This moment: the end of the fault (or the injection of an instantaneous one).
    From(Instant),
    /// The daemon measured the actor's restart itself (ms; None: not restarted in time).
    Actor(Option<f64>),
    /// The fault could not be injected (why).
    NotInjected(String),
    /// A cluster node was killed, the heal measured while it was down (`healed`, from the
    /// kill), then it was started again at `end`.
    NodeLoss {
        end: Instant,
        loss: NodeLoss,
        healed: Option<Duration>,
    },
}

#[allow(clippy::too_many_arguments)]
async fn inject(
    fault: &Fault,
    shared: &Shared,
    daemons: &mut [Daemon],
    db: &mut Mariadb,
    admin_db: &MySqlPool,
    nats: &mut [NatsNode],
    elections: Option<&Elections>,
    redis: &mut Redis,
    links: &mut Links<'_>,
) -> Result<Healed, ChaosError> {
    let hold = fault.hold();
    Ok(match fault {
        Fault::KillDaemon { daemon } => {
            let d = &mut daemons[*daemon];
            let t0 = Instant::now();
            d.process.kill();
            d.process.start()?;
            wait_ready(shared, d).await?;
            Healed::From(t0)
        }
        Fault::PauseDaemon { daemon, .. } => {
            let d = &daemons[*daemon];
            d.process.signal("STOP")?;
            tokio::time::sleep(hold).await;
            d.process.signal("CONT")?;
            Healed::From(Instant::now())
        }
        Fault::RestartNats { node, leader, .. } if nats.len() > 1 => {
            // A cluster node: the pipeline must heal without it, so the heal is measured
            // while it is down (it stays down at least its hold), beside the elections the
            // servers report; then it comes back and the heal is measured again.
            let leaders = election::leaders(nats).await.unwrap_or_default();
            let node = match leaders.iter().find(|(what, _)| what.starts_with("stream ")) {
                Some((_, name)) if *leader => {
                    nats.iter().position(|n| n.name() == name).unwrap_or(*node)
                }
                _ => *node,
            };
            let name = nats[node].name().to_string();
            let led: Vec<String> = leaders
                .into_iter()
                .filter(|(_, leader)| *leader == name)
                .map(|(what, _)| what)
                .collect();
            let killed_at = chrono::Utc::now();
            let t0 = Instant::now();
            nats[node].kill();
            let healed = recover(shared, admin_db).await;
            let healed_ms = healed
                .as_ref()
                .ok()
                .map(|(t, _)| (*t - t0).as_secs_f64() * 1000.0);
            tokio::time::sleep((t0 + hold).saturating_duration_since(Instant::now())).await;
            let reported = elections.map(|e| e.since(killed_at)).unwrap_or_default();
            let loss = NodeLoss {
                killed_at_ms: killed_at.timestamp_millis(),
                waited: 0,
                waited_emailed_ms: None,
                retries_spent: Some(0),
                node: name,
                election_ms: election::election_ms(&led, killed_at, &reported),
                elections: reported
                    .iter()
                    .map(|e| {
                        let ms = (e.at - killed_at).num_milliseconds();
                        format!("{} → {} at +{ms} ms", e.what, e.leader)
                    })
                    .collect(),
                led,
                healed_ms,
                phases: match &healed {
                    Ok((_, phases)) => phases.clone(),
                    Err(why) => format!("not healed with the node down: {why}"),
                },
            };
            let end = Instant::now();
            nats[node].start_again().await?;
            Healed::NodeLoss {
                end,
                loss,
                healed: healed.ok().map(|(t, _)| t - t0),
            }
        }
        Fault::RestartNats { node, .. } => {
            let n = &mut nats[*node];
            let t0 = Instant::now();
            n.kill();
            tokio::time::sleep(hold).await;
            let t0 = if hold.is_zero() { t0 } else { Instant::now() };
            n.start_again().await?;
            Healed::From(t0)
        }
        Fault::RestartMariadb => {
            let t0 = Instant::now();
            db.kill();
            db.start_again().await?;
            Healed::From(t0)
        }
        Fault::KillDbConnections => {
            let t0 = Instant::now();
            // `ID` is a signed BIGINT: read as u64 it failed to decode, and an ignored
            // error here made this fault kill nothing in every run before (issue 22).
            let ids: Vec<i64> = match sqlx::query_scalar(
                "SELECT CAST(id AS SIGNED) FROM information_schema.processlist WHERE db = ? AND id <> CONNECTION_ID()",
            )
            .bind(DATABASE)
            .fetch_all(admin_db)
            .await
            {
                Ok(ids) => ids,
                Err(e) => {
                    return Ok(Healed::NotInjected(format!(
                        "cannot list the daemons' connections: {e}"
                    )));
                }
            };
            let mut killed = 0;
            for id in ids {
                if sqlx::query(&format!("KILL {id}"))
                    .execute(admin_db)
                    .await
                    .is_ok()
                {
                    killed += 1;
                }
            }
            if killed == 0 {
                Healed::NotInjected("no daemon connection to MariaDB was there to kill".to_string())
            } else {
                Healed::From(t0)
            }
        }
        Fault::StopRedis { .. } => {
            redis.kill();
            tokio::time::sleep(hold).await;
            let t0 = Instant::now();
            redis.start_again().await?;
            Healed::From(t0)
        }
        Fault::StopSmtp { .. } => {
            links
                .hold(Link::Smtp, ProxyFault::Refuse, hold, Lift::Clear)
                .await
        }
        Fault::SmtpTempFail { .. } => {
            let answer = ProxyFault::Answer("421 4.3.2 chaos: try again later\r\n");
            links.hold(Link::Smtp, answer, hold, Lift::Clear).await
        }
        Fault::LinkLatency { link, delay, .. } => {
            let fault = ProxyFault::Latency(*delay);
            links.hold(*link, fault, hold, Lift::Clear).await
        }
        Fault::LinkBandwidth {
            link,
            bytes_per_second,
            ..
        } => {
            let fault = ProxyFault::Bandwidth(*bytes_per_second);
            links.hold(*link, fault, hold, Lift::Clear).await
        }
        Fault::LinkPartition { link, .. } => {
            links
                .hold(*link, ProxyFault::Blackhole, hold, Lift::ResetThenClear)
                .await
        }
        Fault::LinkReset { link } => {
            let t0 = Instant::now();
            for p in links.of(*link) {
                p.reset_all();
            }
            Healed::From(t0)
        }
        Fault::CrashActor { daemon, actor } => {
            let url = daemons[*daemon].url(&format!("/admin/actors/{actor}/kill"));
            let answer = shared
                .http
                .post(url)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .map_err(|e| setup("the kill endpoint")(e.to_string()))?;
            let status = answer.status();
            let body: serde_json::Value = answer.json().await.unwrap_or_default();
            if !status.is_success() {
                return Ok(Healed::NotInjected(format!(
                    "the kill endpoint of daemon {daemon} answered {status}: {body}"
                )));
            }
            Healed::Actor(body["restarted_in_ms"].as_f64())
        }
    })
}

async fn connect_db(url: &str) -> Result<sqlx::MySqlConnection, ChaosError> {
    use sqlx::Connection;
    sqlx::MySqlConnection::connect(url)
        .await
        .map_err(|e| setup("connect to MariaDB")(e.to_string()))
}

/// Waits until JetStream answers on every node (a new cluster first elects its leader).
/// Fills in [`NodeLoss::waited`] (the requests accepted between the kill and the end of
/// the election, and when the last of them was emailed) and [`NodeLoss::retries_spent`].
async fn waited_for_election(db: &MySqlPool, loss: &mut NodeLoss) {
    let outage = loss
        .election_ms
        .unwrap_or(0.0)
        .max(loss.healed_ms.unwrap_or(0.0));
    let spent: Result<i64, _> = sqlx::query_scalar(
        "SELECT COUNT(*) FROM outbox \
         WHERE UNIX_TIMESTAMP(created_at) * 1000 BETWEEN ? AND ? AND retry_count > 0",
    )
    .bind(loss.killed_at_ms)
    .bind(loss.killed_at_ms + outage.ceil() as i64)
    .fetch_one(db)
    .await;
    // Unreadable, it is None: the check must not pass on what it could not see.
    loss.retries_spent = spent.ok().map(|n| u64::try_from(n).unwrap_or(0));
    let Some(election) = loss.election_ms else {
        return;
    };
    let until = loss.killed_at_ms + election.ceil() as i64;
    let row: Result<(i64, Option<f64>), _> = sqlx::query_as(
        "SELECT COUNT(*), CAST(MAX(UNIX_TIMESTAMP(s.sent_at)) * 1000 - ? AS DOUBLE) \
         FROM prime_check_requests r JOIN sent_emails s ON s.request_id = r.id \
         WHERE UNIX_TIMESTAMP(r.created_at) * 1000 BETWEEN ? AND ?",
    )
    .bind(loss.killed_at_ms)
    .bind(loss.killed_at_ms)
    .bind(until)
    .fetch_one(db)
    .await;
    if let Ok((n, last)) = row {
        loss.waited = usize::try_from(n).unwrap_or(0);
        loss.waited_emailed_ms = last;
    }
}

async fn wait_for_jetstream(nodes: &[NatsNode]) -> Result<(), ChaosError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for node in nodes {
        let url = format!("nats://127.0.0.1:{}", node.port);
        loop {
            let ready = match async_nats::connect(&url).await {
                Ok(client) => client
                    .request("$JS.API.INFO", bytes::Bytes::new())
                    .await
                    .is_ok_and(|m| {
                        String::from_utf8_lossy(&m.payload).contains("account_info_response")
                    }),
                Err(_) => false,
            };
            if ready {
                break;
            }
            if Instant::now() > deadline {
                return Err(ChaosError::Setup(format!(
                    "JetStream on {url} did not become ready within 60 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
