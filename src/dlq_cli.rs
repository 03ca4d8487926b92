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
        /// At most this many (1-500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
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
    /// Mark dead letters discarded.
    Discard {
        /// Ids to discard.
        #[arg(required = true)]
        ids: Vec<i64>,
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
}

impl DlqCliError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            DlqCliError::NoToken(_) | DlqCliError::Usage(_) => 64,
            DlqCliError::Unreachable { .. } => 69,
            DlqCliError::Refused { .. } => 1,
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
            limit,
        } => {
            let mut q = vec![("limit", limit.to_string())];
            for (k, v) in [
                ("status", status),
                ("subject", subject),
                ("error_type", error_type),
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
        DlqAction::Discard {
            ids,
            operator: who,
            reason,
        } => {
            let body = client
                .send(
                    client
                        .http
                        .delete(format!("{}/api/dlq/discard", client.base))
                        .json(&json!({"message_ids": ids, "operator": operator(who), "reason": reason})),
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
                    .send(client.http.post(format!("{}/api/dlq/reprocess", client.base)).json(
                        &json!({"message_ids": chunk, "override_delay": delay, "force": force,
                                "operator": operator(who), "reason": reason}),
                    ))
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
