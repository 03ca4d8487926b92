//! Mail: SMTP through lettre's connections in primed's pool (`smtp.rs`), or `.eml` files in the embedded mode.
//!
//! SMTP failures are classified for the retry policy: the server cannot be reached
//! (refused, reset, timed out, TLS failure) → transient and `connection` (counts towards the
//! circuit breaker, the message is held); a 4xx reply → transient; a 5xx reply or an
//! address that cannot be parsed → permanent.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actors::model::ErrorClass;
use actors::ports::{Email, MailError, Mailer, OnAccepted};
use futures::FutureExt;
use futures::future::BoxFuture;
use lettre::Message;
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::TlsParameters;
use tracing::Instrument;

use super::smtp::{Security, SendError, Server, SmtpPool};

use crate::config::{SmtpConfig, SmtpTls};

/// The mail transport could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MailSetupError {
    /// SMTP_FROM is not a mailbox.
    #[error("SMTP_FROM {0:?} is not an email address")]
    From(String),
    /// TLS parameters.
    #[error("cannot set up TLS for SMTP host {host}: {reason}")]
    Tls {
        /// host
        host: String,
        /// why
        reason: String,
    },
    /// The SMTP thread could not be started.
    #[error("cannot start the SMTP thread: {0} (the system may be out of threads or memory)")]
    Thread(#[source] std::io::Error),
}

fn permanent(message: String) -> MailError {
    MailError {
        class: ErrorClass::Permanent,
        connection: false,
        message,
    }
}

fn build(from: &Mailbox, email: &Email) -> Result<Message, MailError> {
    let to: Mailbox = email.to.parse().map_err(|e| {
        permanent(format!(
            "the recipient {:?} is not a valid address: {e}",
            email.to
        ))
    })?;
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(email.subject.clone())
        .message_id(Some(email.message_id.clone()))
        .header(ContentType::TEXT_PLAIN)
        .body(email.body.clone())
        .map_err(|e| permanent(format!("cannot build the email: {e}")))
}

/// Sends through an SMTP server ([`SmtpPool`]: pooled, pipelined, one write per step).
///
/// The SMTP exchanges run on a thread of their own (a one-thread runtime), not among the
/// daemon's other tasks: the server's `250` is read, and the send noted, as soon as it
/// arrives instead of after whatever else the runtime has queued, which narrows the window in
/// which a killed daemon has an email accepted and not noted (DECISIONS.md, "A killed daemon
/// remembers what it sent").
pub struct SmtpMailer {
    pool: Arc<SmtpPool>,
    from: Mailbox,
    host: Arc<str>,
    io: tokio::runtime::Handle,
    /// Dropped with the mailer: the thread ends.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpMailer")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// A thread running a one-thread runtime until `stop` is dropped.
fn io_thread() -> std::io::Result<(tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("primed-smtp".into())
        .spawn(move || {
            let _ = runtime.block_on(stopped);
        })?;
    Ok((handle, stop))
}

impl SmtpMailer {
    /// A pool of up to `pool_size` connections to the configured server (made on first use).
    pub fn new(
        config: &SmtpConfig,
        timeout: Duration,
        pool_size: u32,
    ) -> Result<Self, MailSetupError> {
        let from: Mailbox = config
            .from
            .parse()
            .map_err(|_| MailSetupError::From(config.from.clone()))?;
        let tls = || {
            TlsParameters::new(config.host.clone()).map_err(|e| MailSetupError::Tls {
                host: config.host.clone(),
                reason: e.to_string(),
            })
        };
        let security = match config.tls {
            SmtpTls::None => Security::None,
            SmtpTls::StartTls => Security::StartTls(tls()?),
            SmtpTls::Tls => Security::Tls(tls()?),
        };
        let credentials = match (&config.username, &config.password) {
            (Some(user), Some(password)) => Some(Credentials::new(
                user.clone(),
                password.expose().to_string(),
            )),
            _ => None,
        };
        let server = Server {
            host: config.host.clone(),
            port: config.port,
            security,
            credentials,
            timeout,
        };
        let (io, stop) = io_thread().map_err(MailSetupError::Thread)?;
        Ok(Self {
            pool: Arc::new(SmtpPool::new(server, pool_size as usize)),
            from,
            host: format!("{}:{}", config.host, config.port).into(),
            io,
            _stop: stop,
        })
    }
}

/// `421`: the server says it is not available and closes the channel (RFC 5321 §3.8), for
/// every message alike, unlike the other 4xx replies, which defer one message or mailbox.
/// Like a refused connection it holds mail rather than spending its deliveries.
fn service_unavailable(err: &SendError) -> bool {
    match err {
        SendError::Smtp(e) => e.status().is_some_and(|c| c.to_string() == "421"),
        _ => false,
    }
}

/// Classifies an SMTP failure.
pub fn classify(host: &str, err: &SendError) -> MailError {
    if err.is_permanent() {
        return permanent(format!("the SMTP server {host} refused the email: {err}"));
    }
    if service_unavailable(err) {
        return MailError {
            class: ErrorClass::Transient,
            connection: true,
            message: format!("the SMTP server {host} is not available now: {err}"),
        };
    }
    if err.is_transient() {
        return MailError {
            class: ErrorClass::Transient,
            connection: false,
            message: format!("the SMTP server {host} deferred the email: {err}"),
        };
    }
    // Refused, reset, timed out, TLS, a broken reply: the server is not usable now.
    MailError {
        class: ErrorClass::Transient,
        connection: true,
        message: format!("cannot talk to the SMTP server {host}: {err}"),
    }
}

impl Mailer for SmtpMailer {
    fn send<'a>(&'a self, email: &'a Email) -> BoxFuture<'a, Result<(), MailError>> {
        self.send_noting(email, Box::new(|| {}))
    }

    fn send_noting<'a>(
        &'a self,
        email: &'a Email,
        accepted: OnAccepted,
    ) -> BoxFuture<'a, Result<(), MailError>> {
        async move {
            let message = build(&self.from, email)?;
            let envelope = message.envelope();
            let (from, to) = (envelope.from().cloned(), envelope.to().to_vec());
            let formatted = message.formatted();
            let (pool, host) = (self.pool.clone(), self.host.clone());
            let exchange = async move {
                let sent = pool.send(from.as_ref(), &to, &formatted).await;
                if sent.is_ok() {
                    accepted();
                }
                sent.map_err(|e| classify(&host, &e))
            };
            // Run to its end even if the caller goes away: a message written is noted.
            self.io
                .spawn(exchange.instrument(tracing::Span::current()))
                .await
                .unwrap_or_else(|e| {
                    Err(MailError {
                        class: ErrorClass::Transient,
                        connection: true,
                        message: format!("the SMTP thread stopped: {e}"),
                    })
                })
        }
        .boxed()
    }
}

/// Writes each email as an `.eml` file (the embedded mode's "mail server").
pub struct FileMailer {
    dir: PathBuf,
    from: Mailbox,
}

impl FileMailer {
    /// Mail goes to `dir` (created when missing).
    pub fn new(dir: PathBuf, from: &str) -> Result<Self, MailSetupError> {
        let from = from
            .parse()
            .map_err(|_| MailSetupError::From(from.to_string()))?;
        Ok(Self { dir, from })
    }
}

impl Mailer for FileMailer {
    fn send<'a>(&'a self, email: &'a Email) -> BoxFuture<'a, Result<(), MailError>> {
        async move {
            let message = build(&self.from, email)?;
            let name: String = email
                .message_id
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.' || *c == '@')
                .collect();
            let io = |e: std::io::Error| MailError {
                class: ErrorClass::Transient,
                connection: true,
                message: format!("cannot write the email to {}: {e}", self.dir.display()),
            };
            // Readable by this user only: the emails carry addresses and results.
            tokio::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .await
                .map_err(io)?;
            let tmp = self.dir.join(format!(".{name}.tmp"));
            {
                use tokio::io::AsyncWriteExt;
                let mut file = tokio::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .await
                    .map_err(io)?;
                file.write_all(&message.formatted()).await.map_err(io)?;
                file.flush().await.map_err(io)?;
            }
            tokio::fs::rename(&tmp, self.dir.join(format!("{name}.eml")))
                .await
                .map_err(io)
        }
        .boxed()
    }
}

/// Connects to the SMTP server, reads its `220` greeting and says `QUIT`: the `/health`
/// probe (no mail, no authentication).
pub async fn smtp_probe(host: &str, port: u16) -> Result<(), String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let mut reader = BufReader::new(stream);
    let mut greeting = String::new();
    reader
        .read_line(&mut greeting)
        .await
        .map_err(|e| format!("no greeting from {host}:{port}: {e}"))?;
    if !greeting.starts_with("220") {
        return Err(format!(
            "{host}:{port} greeted with {:?} instead of 220",
            greeting.trim_end()
        ));
    }
    let _ = reader.get_mut().write_all(b"QUIT\r\n").await;
    Ok(())
}
