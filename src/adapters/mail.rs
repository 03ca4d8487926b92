//! Mail: SMTP through lettre (pooled connections), or `.eml` files in the embedded mode.
//!
//! SMTP failures are classified for the retry policy: the server cannot be reached
//! (refused, reset, timed out, TLS failure) → transient and `connection` (counts towards the
//! circuit breaker, the message is held); a 4xx reply → transient; a 5xx reply or an
//! address that cannot be parsed → permanent.

use std::path::PathBuf;
use std::time::Duration;

use actors::model::ErrorClass;
use actors::workers::{Email, MailError, Mailer};
use futures::FutureExt;
use futures::future::BoxFuture;
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

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

/// Sends through an SMTP server.
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    host: String,
}

impl SmtpMailer {
    /// A pooled transport to the configured server (connections are made on first use).
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
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port)
            .timeout(Some(timeout))
            .pool_config(PoolConfig::new().max_size(pool_size.max(1)));
        builder = match config.tls {
            SmtpTls::None => builder.tls(Tls::None),
            SmtpTls::StartTls => builder.tls(Tls::Required(tls()?)),
            SmtpTls::Tls => builder.tls(Tls::Wrapper(tls()?)),
        };
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose().to_string(),
            ));
        }
        Ok(Self {
            transport: builder.build(),
            from,
            host: format!("{}:{}", config.host, config.port),
        })
    }
}

/// Classifies an SMTP error.
pub fn classify(host: &str, err: &lettre::transport::smtp::Error) -> MailError {
    if err.is_permanent() {
        return permanent(format!("the SMTP server {host} refused the email: {err}"));
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
        async move {
            let message = build(&self.from, email)?;
            self.transport
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| classify(&self.host, &e))
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
            tokio::fs::create_dir_all(&self.dir).await.map_err(io)?;
            let tmp = self.dir.join(format!(".{name}.tmp"));
            tokio::fs::write(&tmp, message.formatted())
                .await
                .map_err(io)?;
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
