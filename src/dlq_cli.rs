//! `primed dlq …`: the DLQ admin API from a shell (seed §3.2), with the admin token.
//!
//! The daemon's address and token come from the same configuration as the daemon's own
//! (`PRIMED_HTTP_ADDR`, `ADMIN_API_KEYS` or the generated `admin-token` file), or from
//! `--url` / `--token`.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::config::Config;

/// `primed dlq …`
#[derive(Debug, Args)]
pub struct DlqArgs {
    /// The daemon's base URL (default: http://PRIMED_HTTP_ADDR).
    #[arg(long, global = true, env = "PRIMED_URL")]
    pub url: Option<String>,
    /// An admin token (default: the first of ADMIN_API_KEYS, else the admin-token file).
    #[arg(
        long,
        global = true,
        env = "PRIMED_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub action: DlqAction,
}

/// The DLQ commands.
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// List dead letters, newest first.
    List {
        /// pending, reprocessing, resolved or discarded.
        #[arg(long)]
        status: Option<String>,
        /// Original subject (email.send, primecheck.requested) or DLQ subject (dlq.*).
        #[arg(long)]
        subject: Option<String>,
        /// transient, permanent or poison.
        #[arg(long)]
        error_type: Option<String>,
        /// Only this group (its fingerprint, from `primed dlq groups`).
        #[arg(long)]
        group: Option<String>,
        /// At most this many (1-500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Dead letters grouped by error fingerprint (subject + error type + the message with
    /// its values replaced), the largest group first.
    Groups {
        /// Count letters of this status: pending (default), reprocessing, resolved,
        /// discarded or all.
        #[arg(long)]
        status: Option<String>,
        /// count (the largest first) or recent (the most recently dead-lettered first).
        #[arg(long, default_value = "count")]
        sort: String,
        /// At most this many groups (1-500).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Who did what to which dead letters, when and why (newest first).
    Audit {
        /// Only actions on this dead letter.
        #[arg(long)]
        id: Option<i64>,
        /// At most this many (1-500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Fix a pending dead letter's payload and replay it as one message, e.g.
    /// `primed dlq edit 42 --set email=bob@example.com`.
    Edit {
        /// Its id.
        id: i64,
        /// FIELD=VALUE to change (repeat for several): number or email of a prime check,
        /// email of a result email.
        #[arg(long = "set", value_name = "FIELD=VALUE", required = true)]
        set: Vec<String>,
        /// Show the change without storing or sending it.
        #[arg(long)]
        dry_run: bool,
        /// Who edits (default: $USER).
        #[arg(long)]
        operator: Option<String>,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Replay dead letters safely: a server-side job sends a canary first, waits for its
    /// outcomes, then ramps up under a rate cap, and stops by itself when too many fail
    /// again. Prints its progress until it ends (exit 0 when done, 1 when it stopped).
    Replay {
        /// These dead letters (the filters are then ignored).
        ids: Vec<i64>,
        /// Only this original subject.
        #[arg(long)]
        subject: Option<String>,
        /// Only this error type.
        #[arg(long)]
        error_type: Option<String>,
        /// Only this group (its fingerprint).
        #[arg(long)]
        group: Option<String>,
        /// Dead-lettered at or after (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Dead-lettered before (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Letters sent first.
        #[arg(long, default_value_t = 5)]
        canary: u32,
        /// Each later step sends this many times the previous one.
        #[arg(long, default_value_t = 5)]
        ramp: u32,
        /// At most this many letters a second.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// Stop when more than this share of the outcomes are failures.
        #[arg(long, default_value_t = 0.5)]
        max_failure_ratio: f64,
        /// Also replay poison letters.
        #[arg(long)]
        force: bool,
        /// Only say what would be replayed.
        #[arg(long)]
        dry_run: bool,
        /// Start the job and return at once (follow it with `primed dlq job ID --follow`).
        #[arg(long)]
        no_follow: bool,
        /// Who asks (default: $USER).
        #[arg(long)]
        operator: Option<String>,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Replay jobs, newest first.
    Jobs {
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One replay job: show it, follow it, or pause, resume or cancel it.
    Job {
        /// Its id.
        id: i64,
        /// Pause it.
        #[arg(long, conflicts_with_all = ["resume", "cancel"])]
        pause: bool,
        /// Resume it.
        #[arg(long, conflicts_with = "cancel")]
        resume: bool,
        /// Cancel it.
        #[arg(long)]
        cancel: bool,
        /// Print its progress until it ends.
        #[arg(long)]
        follow: bool,
        /// Who asks (default: $USER).
        #[arg(long)]
        operator: Option<String>,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Show one dead letter in full.
    Show {
        /// Its id.
        id: i64,
    },
    /// Republish dead letters to their original subjects.
    Reprocess {
        /// Ids to reprocess; with none, every pending dead letter matching the filters.
        ids: Vec<i64>,
        /// Only dead letters on this subject (when no ids are given).
        #[arg(long)]
        subject: Option<String>,
        /// Only this error type (when no ids are given).
        #[arg(long)]
        error_type: Option<String>,
        /// Ids per API call.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Publish after this delay (e.g. 1s, 5m).
        #[arg(long, default_value = "0s")]
        delay: String,
        /// Also reprocess rows that are not pending, and poison ones.
        #[arg(long)]
        force: bool,
        /// Who asks (default: $USER).
        #[arg(long)]
        operator: Option<String>,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Mark dead letters discarded: by id, or a whole group at once.
    Discard {
        /// Ids to discard.
        #[arg(required_unless_present = "group", conflicts_with = "group")]
        ids: Vec<i64>,
        /// Discard every open letter of this group (its fingerprint) instead.
        #[arg(long)]
        group: Option<String>,
        /// Who decides (default: $USER).
        #[arg(long)]
        operator: Option<String>,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Counts by status, error type, subject and hour.
    Stats {
        /// Hours of history.
        #[arg(long, default_value_t = 24)]
        hours: u32,
    },
}

/// A DLQ command failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqCliError {
    /// No token could be found.
    #[error(
        "no admin token: pass --token, set PRIMED_ADMIN_TOKEN or ADMIN_API_KEYS, or run where the daemon's data directory ({0}) holds admin-token"
    )]
    NoToken(String),
    /// The daemon did not answer.
    #[error(
        "cannot reach the daemon at {url}: {reason}; is it running? (--url or PRIMED_HTTP_ADDR)"
    )]
    Unreachable {
        /// where
        url: String,
        /// why
        reason: String,
    },
    /// The daemon answered with an error.
    #[error("the daemon refused: {status} {code}: {message}")]
    Refused {
        /// HTTP status
        status: u16,
        /// stable code
        code: String,
        /// its message
        message: String,
    },
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// A replay job stopped before its end (aborted by itself, or cancelled).
    #[error("{0}")]
    Stopped(String),
}

impl DlqCliError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            DlqCliError::NoToken(_) | DlqCliError::Usage(_) => 64,
            DlqCliError::Unreachable { .. } => 69,
            DlqCliError::Refused { .. } | DlqCliError::Stopped(_) => 1,
        }
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Value, DlqCliError> {
        let resp =
            req.bearer_auth(&self.token)
                .send()
                .await
                .map_err(|e| DlqCliError::Unreachable {
                    url: self.base.clone(),
                    reason: e.to_string(),
                })?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(body)
        } else {
            Err(DlqCliError::Refused {
                status: status.as_u16(),
                code: body["error"].as_str().unwrap_or("unknown").to_string(),
                message: body["message"].as_str().unwrap_or("").to_string(),
            })
        }
    }

    async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value, DlqCliError> {
        self.send(self.http.get(format!("{}{path}", self.base)).query(query))
            .await
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, DlqCliError> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    async fn delete(&self, path: &str, body: &Value) -> Result<Value, DlqCliError> {
        self.send(self.http.delete(format!("{}{path}", self.base)).json(body))
            .await
    }
}

fn token(args: &DlqArgs, config: &Config) -> Result<String, DlqCliError> {
    if let Some(t) = &args.token {
        return Ok(t.clone());
    }
    if let Some(key) = config.admin_api_keys.first() {
        return Ok(key.expose().to_string());
    }
    let path = config.data_dir.join("admin-token");
    std::fs::read_to_string(&path)
        .map(|t| t.trim().to_string())
        .map_err(|_| DlqCliError::NoToken(config.data_dir.display().to_string()))
}

fn operator(given: &Option<String>) -> String {
    given
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "cli".into())
}

fn print_table(items: &[Value]) {
    println!(
        "{:>8}  {:<13} {:<22} {:<10} {:>5}  {:<20}  error",
        "id", "status", "subject", "type", "tries", "dead-lettered at"
    );
    for l in items {
        let at = l["dlq_created_at"].as_str().unwrap_or("");
        let error: String = l["error_message"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(70)
            .collect();
        println!(
            "{:>8}  {:<13} {:<22} {:<10} {:>5}  {:<20}  {}",
            l["id"],
            l["status"].as_str().unwrap_or(""),
            l["original_subject"].as_str().unwrap_or(""),
            l["error_type"].as_str().unwrap_or(""),
            l["retry_count"],
            at.get(..19).unwrap_or(at),
            error
        );
    }
}

fn print_json(body: &Value) {
    println!("{}", serde_json::to_string_pretty(body).unwrap_or_default());
}

fn print_groups(groups: &[Value]) {
    println!(
        "{:>6}  {:<10} {:<22} {:<20}  {:<16}  signature",
        "count", "type", "subject", "last seen", "group"
    );
    for g in groups {
        let at = g["last_seen"].as_str().unwrap_or("");
        let signature: String = g["signature"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(70)
            .collect();
        println!(
            "{:>6}  {:<10} {:<22} {:<20}  {:<16}  {}",
            g["count"],
            g["error_type"].as_str().unwrap_or(""),
            g["original_subject"].as_str().unwrap_or(""),
            at.get(..19).unwrap_or(at),
            g["fingerprint"].as_str().unwrap_or(""),
            signature
        );
    }
    if groups.is_empty() {
        println!("(no dead letters)");
    }
}

fn print_audit(items: &[Value]) {
    println!(
        "{:<20}  {:<16} {:<14} {:>8}  reason / what changed",
        "at", "operator", "action", "letter"
    );
    for a in items {
        let at = a["at"].as_str().unwrap_or("");
        let target = match (a["dlq_id"].as_i64(), a["fingerprint"].as_str()) {
            (Some(id), _) => id.to_string(),
            (None, Some(fp)) => fp.to_string(),
            _ => String::new(),
        };
        println!(
            "{:<20}  {:<16} {:<14} {:>8}  {} {}",
            at.get(..19).unwrap_or(at),
            a["operator"].as_str().unwrap_or(""),
            a["action"].as_str().unwrap_or(""),
            target,
            a["reason"].as_str().unwrap_or("-"),
            a["detail"]
        );
    }
}

fn summary_line(verb: &str, body: &Value) -> (u64, u64) {
    let ok = body["succeeded"].as_u64().unwrap_or(0);
    let failed = body["failed"].as_u64().unwrap_or(0);
    for r in body["results"].as_array().into_iter().flatten() {
        if r["ok"] == false {
            eprintln!(
                "  {} {}: {}",
                verb,
                r["id"],
                r["error"].as_str().unwrap_or("")
            );
        }
    }
    (ok, failed)
}

/// Runs a DLQ command against the daemon.
pub async fn run(args: DlqArgs, config: &Config) -> Result<(), DlqCliError> {
    let base = args
        .url
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.http_addr))
        .trim_end_matches('/')
        .to_string();
    let client = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| DlqCliError::Usage(e.to_string()))?,
        token: token(&args, config)?,
        base,
    };
    match &args.action {
        DlqAction::List {
            status,
            subject,
            error_type,
            group,
            limit,
        } => {
            let mut q = vec![("limit", limit.to_string())];
            for (k, v) in [
                ("status", status),
                ("subject", subject),
                ("error_type", error_type),
                ("fingerprint", group),
            ] {
                if let Some(v) = v {
                    q.push((k, v.clone()));
                }
            }
            let body = client.get("/api/dlq/messages", &q).await?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&body).unwrap_or_default()
                );
            } else {
                let items = body["items"].as_array().cloned().unwrap_or_default();
                print_table(&items);
                if body["next_cursor"].is_string() {
                    println!("(more: raise --limit or filter)");
                }
            }
        }
        DlqAction::Show { id } => {
            let body = client.get(&format!("/api/dlq/messages/{id}"), &[]).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&body).unwrap_or_default()
            );
        }
        DlqAction::Stats { hours } => {
            let body = client
                .get("/api/dlq/stats", &[("hours", hours.to_string())])
                .await?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&body).unwrap_or_default()
                );
            } else {
                for key in ["by_status", "by_error_type", "by_subject"] {
                    println!("{key}:");
                    for (k, v) in body[key].as_object().into_iter().flatten() {
                        println!("  {k:<20} {v}");
                    }
                }
                println!("hourly (last {hours} h):");
                for b in body["hourly"].as_array().into_iter().flatten() {
                    println!(
                        "  {}  {:<16} {:<10} {}",
                        b["hour"].as_str().unwrap_or(""),
                        b["subject"].as_str().unwrap_or(""),
                        b["error_type"].as_str().unwrap_or(""),
                        b["count"]
                    );
                }
            }
        }
        DlqAction::Replay {
            ids,
            subject,
            error_type,
            group,
            since,
            until,
            canary,
            ramp,
            rate,
            max_failure_ratio,
            force,
            dry_run,
            no_follow,
            operator: who,
            reason,
        } => {
            let body = client
                .post(
                    "/api/dlq/replays",
                    &json!({
                            "ids": ids, "subject": subject, "error_type": error_type,
                            "fingerprint": group, "since": since, "until": until,
                            "canary": canary, "ramp": ramp, "rate_per_second": rate,
                            "max_failure_ratio": max_failure_ratio, "force": force,
                            "dry_run": dry_run, "operator": operator(who), "reason": reason,
                    }),
                )
                .await?;
            if *dry_run {
                if args.json {
                    print_json(&body);
                } else {
                    println!(
                        "dry run: would replay {} pending dead letters (first ids: {})",
                        body["letters"],
                        body["ids"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .take(20)
                            .map(|v| v.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                return Ok(());
            }
            let id = body["id"].as_i64().unwrap_or_default();
            println!(
                "replay job {id} started: {} letters, canary {canary}, ramp ×{ramp}, at most {rate}/s",
                body["total"]
            );
            if !*no_follow {
                return follow(&client, id).await;
            }
        }
        DlqAction::Jobs { limit } => {
            let body = client
                .get("/api/dlq/replays", &[("limit", limit.to_string())])
                .await?;
            if args.json {
                print_json(&body);
            } else {
                for job in body["jobs"].as_array().into_iter().flatten() {
                    println!("{}", progress_line(job));
                }
            }
        }
        DlqAction::Job {
            id,
            pause,
            resume,
            cancel,
            follow: keep_following,
            operator: who,
            reason,
        } => {
            let action = [(pause, "pause"), (resume, "resume"), (cancel, "cancel")]
                .into_iter()
                .find_map(|(on, what)| on.then_some(what));
            let body = match action {
                Some(what) => {
                    client
                        .post(
                            &format!("/api/dlq/replays/{id}/{what}"),
                            &json!({"operator": operator(who), "reason": reason}),
                        )
                        .await?
                }
                None => client.get(&format!("/api/dlq/replays/{id}"), &[]).await?,
            };
            if args.json {
                print_json(&body);
            } else {
                println!("{}", progress_line(&body));
            }
            if *keep_following {
                return follow(&client, *id).await;
            }
        }
        DlqAction::Groups {
            status,
            sort,
            limit,
        } => {
            let mut q = vec![("sort", sort.clone()), ("limit", limit.to_string())];
            if let Some(s) = status {
                q.push(("status", s.clone()));
            }
            let body = client.get("/api/dlq/groups", &q).await?;
            if args.json {
                print_json(&body);
            } else {
                print_groups(body["groups"].as_array().map(Vec::as_slice).unwrap_or(&[]));
            }
        }
        DlqAction::Audit { id, limit } => {
            let mut q = vec![("limit", limit.to_string())];
            if let Some(id) = id {
                q.push(("dlq_id", id.to_string()));
            }
            let body = client.get("/api/dlq/audit", &q).await?;
            if args.json {
                print_json(&body);
            } else {
                print_audit(body["items"].as_array().map(Vec::as_slice).unwrap_or(&[]));
            }
        }
        DlqAction::Edit {
            id,
            set,
            dry_run,
            operator: who,
            reason,
        } => {
            let mut fields = serde_json::Map::new();
            for pair in set {
                let Some((field, value)) = pair.split_once('=') else {
                    return Err(DlqCliError::Usage(format!(
                        "--set takes FIELD=VALUE, e.g. --set email=bob@example.com (got {pair:?})"
                    )));
                };
                fields.insert(field.trim().to_string(), Value::String(value.to_string()));
            }
            let body = client
                .post(
                    &format!("/api/dlq/messages/{id}/edit"),
                    &json!({"set": fields, "dry_run": dry_run,
                            "operator": operator(who), "reason": reason}),
                )
                .await?;
            if args.json {
                print_json(&body);
            } else {
                for c in body["diff"].as_array().into_iter().flatten() {
                    println!(
                        "  {}: {} -> {}",
                        c["field"].as_str().unwrap_or(""),
                        c["before"],
                        c["after"]
                    );
                }
                match body["event_id"].as_str() {
                    Some(event) if !dry_run => {
                        println!("dead letter {id} edited and replayed as event {event}")
                    }
                    _ => println!(
                        "dry run: dead letter {id} would be edited as above; nothing was sent"
                    ),
                }
            }
        }
        DlqAction::Discard {
            group: Some(group),
            operator: who,
            reason,
            ..
        } => {
            let body = client
                .post(
                    &format!("/api/dlq/groups/{group}/discard"),
                    &json!({"operator": operator(who), "reason": reason}),
                )
                .await?;
            println!("discarded {} of group {group}", body["discarded"]);
        }
        DlqAction::Discard {
            ids,
            group: None,
            operator: who,
            reason,
        } => {
            let body = client
                .delete(
                    "/api/dlq/discard",
                    &json!({"message_ids": ids, "operator": operator(who), "reason": reason}),
                )
                .await?;
            let (ok, failed) = summary_line("not discarded", &body);
            println!("discarded {ok}, refused {failed}");
        }
        DlqAction::Reprocess {
            ids,
            subject,
            error_type,
            batch,
            delay,
            force,
            operator: who,
            reason,
        } => {
            if *batch == 0 || *batch > 1000 {
                return Err(DlqCliError::Usage(
                    "--batch must be between 1 and 1000".into(),
                ));
            }
            let ids = if ids.is_empty() {
                pending_ids(&client, subject, error_type).await?
            } else {
                ids.clone()
            };
            if ids.is_empty() {
                println!("nothing to reprocess");
                return Ok(());
            }
            let total = ids.len();
            let (mut done, mut refused) = (0u64, 0u64);
            for chunk in ids.chunks(*batch) {
                let body = client
                    .post(
                        "/api/dlq/reprocess",
                        &json!({"message_ids": chunk, "override_delay": delay, "force": force,
                                "operator": operator(who), "reason": reason}),
                    )
                    .await?;
                let (ok, failed) = summary_line("not reprocessed", &body);
                done += ok;
                refused += failed;
                eprintln!(
                    "reprocess: {}/{total} ({done} republished, {refused} refused)",
                    done + refused
                );
            }
            println!("republished {done} of {total}; refused {refused}");
        }
    }
    Ok(())
}

/// One line of a replay job's progress.
fn progress_line(job: &Value) -> String {
    let eta = job["eta_seconds"]
        .as_f64()
        .map(|s| format!(", ETA {}s", s.ceil()))
        .unwrap_or_default();
    let stop = job["stop_reason"]
        .as_str()
        .map(|r| format!(" — {r}"))
        .unwrap_or_default();
    format!(
        "replay {}: {} {}/{} done ({} ok, {} failed, {} skipped), {} in flight, {:.1}/s{eta}{stop}",
        job["id"],
        job["state"].as_str().unwrap_or("?"),
        job["done"],
        job["total"],
        job["succeeded"],
        job["failed"],
        job["skipped"],
        job["in_flight"],
        job["rate"].as_f64().unwrap_or(0.0),
    )
}

/// Prints job `id`'s progress every second until it ends; an error unless it is done.
async fn follow(client: &Client, id: i64) -> Result<(), DlqCliError> {
    loop {
        let job = client.get(&format!("/api/dlq/replays/{id}"), &[]).await?;
        let line = progress_line(&job);
        match job["state"].as_str() {
            Some("done") => {
                println!("{line}");
                return Ok(());
            }
            Some("aborted") | Some("cancelled") => {
                println!("{line}");
                return Err(DlqCliError::Stopped(format!(
                    "replay job {id} {}: {}",
                    job["state"].as_str().unwrap_or(""),
                    job["stop_reason"].as_str().unwrap_or("")
                )));
            }
            _ => eprintln!("{line}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Every pending dead letter's id matching the filters, oldest page last.
async fn pending_ids(
    client: &Client,
    subject: &Option<String>,
    error_type: &Option<String>,
) -> Result<Vec<i64>, DlqCliError> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = vec![
            ("status", "pending".to_string()),
            ("limit", "500".to_string()),
        ];
        if let Some(s) = subject {
            q.push(("subject", s.clone()));
        }
        if let Some(t) = error_type {
            q.push(("error_type", t.clone()));
        }
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let body = client.get("/api/dlq/messages", &q).await?;
        ids.extend(
            body["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l["id"].as_i64()),
        );
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    ids.reverse();
    Ok(ids)
}
