//! SMTP delivery.

use super::error::ConfigError;
use super::raw::{Raw, looks_like_email};
use super::secret::Secret;

/// How to talk TLS to the SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain text (a local relay or Mailpit).
    None,
    /// Upgrade with STARTTLS.
    StartTls,
    /// TLS from the first byte.
    Tls,
}

/// SMTP delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct SmtpConfig {
    /// host
    pub host: String,
    /// port
    pub port: u16,
    /// user
    pub username: Option<String>,
    /// password
    pub password: Option<Secret>,
    /// TLS mode
    pub tls: SmtpTls,
    /// sender address
    pub from: String,
}

impl SmtpConfig {
    /// None when `SMTP_HOST` is unset (emails are written as .eml files).
    pub(super) fn read(raw: &Raw) -> Result<Option<Self>, ConfigError> {
        Ok(match raw.host("SMTP_HOST")? {
            None => None,
            Some(host) => {
                let tls = match raw
                    .required("SMTP_TLS")?
                    .trim()
                    .to_ascii_lowercase()
                    .as_str()
                {
                    "none" | "off" | "false" => SmtpTls::None,
                    "starttls" => SmtpTls::StartTls,
                    "tls" | "true" | "on" => SmtpTls::Tls,
                    _ => return Err(raw.invalid("SMTP_TLS", "one of none, starttls, tls")),
                };
                let from = raw.required("SMTP_FROM")?.trim().to_string();
                if !looks_like_email(&from) {
                    return Err(
                        raw.invalid("SMTP_FROM", "an email address, e.g. primed@example.com")
                    );
                }
                Some(SmtpConfig {
                    host,
                    port: raw.port("SMTP_PORT")?,
                    username: raw
                        .get("SMTP_USERNAME")
                        .filter(|v| !v.is_empty())
                        .map(String::from),
                    password: raw.secret("SMTP_PASSWORD"),
                    tls,
                    from,
                })
            }
        })
    }
}
