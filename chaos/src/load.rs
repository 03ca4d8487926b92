//! The chaos run's load: a steady stream of `POST /prime-check` with unique emails, a share
//! of bad inputs and of numbers that fail permanently; each request retried on the other
//! daemons with its idempotency key until its answer is definite.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How long a request may try (over every daemon) before it counts as unanswered.
pub(super) const REQUEST_BUDGET: Duration = Duration::from_secs(30);

/// What the load generator sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A small number: a result and an email.
    Valid,
    /// A 969-digit prime the daemons' 2 ms time limit cannot test (~18 ms here): a DLQ entry.
    Permanent,
    /// Bad input: a 4xx.
    Bad(&'static str),
    /// A probe of the recovery check.
    Probe,
}

/// How a request ended.
#[derive(Debug, Clone)]
pub(super) enum Outcome {
    Accepted(String),
    Rejected(u16),
    Unanswered(String),
}

#[derive(Debug, Clone)]
pub(super) struct Sent {
    /// What was sent.
    pub(super) kind: Kind,
    /// Its unique recipient.
    pub(super) email: String,
    /// The number it asked about.
    pub(super) number: String,
    /// How it ended.
    pub(super) outcome: Outcome,
}

/// Everything the run shares between its tasks.
pub(super) struct Shared {
    /// The client every request goes through.
    pub(super) http: reqwest::Client,
    /// The daemons' HTTP ports.
    pub(super) ports: Vec<u16>,
    /// Every request sent so far, with its outcome.
    pub(super) sent: Mutex<Vec<Sent>>,
    /// When attempts failed (5xx, 429, no answer), to count them per fault.
    pub(super) failed_attempts: Mutex<Vec<Instant>>,
    /// Numbers the requests (for unique emails and idempotency keys).
    pub(super) seq: AtomicU64,
    /// The number that fails permanently.
    pub(super) big_prime: String,
}

/// Sends requests at `rate` per second until `stop`, each in its own task.
pub(super) async fn load(shared: Arc<Shared>, rate: f64, seed: u64, stop: Arc<AtomicBool>) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_10ad);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = tokio::task::JoinSet::new();
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let roll: f64 = rng.random();
        let kind = if roll < 0.05 {
            Kind::Permanent
        } else if roll < 0.20 {
            Kind::Bad(BAD_INPUTS[rng.random_range(0..BAD_INPUTS.len())])
        } else {
            Kind::Valid
        };
        let shared = shared.clone();
        tasks.spawn(async move {
            submit(&shared, kind).await;
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// The bad inputs the load sends; each must get a 4xx.
const BAD_INPUTS: [&str; 6] = [
    "malformed_json",
    "missing_email",
    "negative_number",
    "not_a_number",
    "too_many_digits",
    "invalid_email",
];

/// Sends one request, retrying on other daemons with the same idempotency key while the
/// answers are not definite; records it.
pub(super) async fn submit(shared: &Shared, kind: Kind) -> Outcome {
    let seq = shared.seq.fetch_add(1, Ordering::Relaxed);
    let email = format!("c{seq}@chaos.test");
    let number = match kind {
        Kind::Permanent => shared.big_prime.clone(),
        _ => (1_000 + seq * 7_919 % 1_000_000_007).to_string(),
    };
    let body = match kind {
        Kind::Bad("malformed_json") => format!("{{\"number\": \"{number}\", "),
        Kind::Bad("missing_email") => format!("{{\"number\": \"{number}\"}}"),
        Kind::Bad("negative_number") => {
            format!("{{\"number\": \"-{number}\", \"email\": \"{email}\"}}")
        }
        Kind::Bad("not_a_number") => {
            format!("{{\"number\": \"{number}x\", \"email\": \"{email}\"}}")
        }
        Kind::Bad("too_many_digits") => {
            format!(
                "{{\"number\": \"{}\", \"email\": \"{email}\"}}",
                "7".repeat(5_000)
            )
        }
        Kind::Bad(_) => format!("{{\"number\": \"{number}\", \"email\": \"not-an-email\"}}"),
        _ => format!("{{\"number\": \"{number}\", \"email\": \"{email}\"}}"),
    };
    let deadline = Instant::now() + REQUEST_BUDGET;
    let mut attempt = 0usize;
    let outcome = loop {
        let port = shared.ports[(seq as usize + attempt) % shared.ports.len()];
        attempt += 1;
        let answer = shared
            .http
            .post(format!("http://127.0.0.1:{port}/prime-check"))
            .header("content-type", "application/json")
            .header("idempotency-key", format!("chaos-{seq}"))
            .body(body.clone())
            .send()
            .await;
        let why = match answer {
            Ok(r) if r.status().is_success() => {
                let json: serde_json::Value = r.json().await.unwrap_or_default();
                match json["id"].as_str() {
                    Some(id) => break Outcome::Accepted(id.to_string()),
                    None => "a 2xx without an id".to_string(),
                }
            }
            Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
                break Outcome::Rejected(r.status().as_u16());
            }
            Ok(r) => format!("HTTP {}", r.status()),
            Err(e) => e.to_string(),
        };
        if let Ok(mut f) = shared.failed_attempts.lock() {
            f.push(Instant::now());
        }
        if Instant::now() > deadline {
            break Outcome::Unanswered(why);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if let Ok(mut sent) = shared.sent.lock() {
        sent.push(Sent {
            kind,
            email,
            number,
            outcome: outcome.clone(),
        });
    }
    outcome
}

/// 2^3217 − 1, a Mersenne prime of 969 digits: within the API's 1,000-digit limit, but far
/// beyond what the daemons' 2 ms time limit can test (it takes ~18 ms on this machine), so
/// it fails permanently.
pub(super) fn big_prime() -> String {
    let n = (actors::primality::UBig::ONE << 3217) - actors::primality::UBig::ONE;
    n.to_string()
}
