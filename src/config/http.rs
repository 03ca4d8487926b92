//! What one HTTP client may hold of the server.

use std::time::Duration;

use super::error::ConfigError;
use super::raw::Raw;

/// What one HTTP client may hold of the server: time to send a request, time a kept-alive
/// connection may idle, and how many connections all clients together may keep open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// From a request's first byte to its last header.
    pub header_timeout: Duration,
    /// From the headers to the body's last byte.
    pub body_timeout: Duration,
    /// Between the end of an answer and the next request on the connection.
    pub idle_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    /// The defaults of the configuration keys.
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}

impl HttpLimits {
    pub(super) fn read(raw: &Raw) -> Result<Self, ConfigError> {
        let seconds = |name| {
            raw.positive(name, "a whole number of seconds, at least 1")
                .map(|n| Duration::from_secs(n.into()))
        };
        Ok(HttpLimits {
            header_timeout: seconds("PRIMED_HTTP_HEADER_TIMEOUT_SECONDS")?,
            body_timeout: seconds("PRIMED_HTTP_BODY_TIMEOUT_SECONDS")?,
            idle_timeout: seconds("PRIMED_HTTP_IDLE_TIMEOUT_SECONDS")?,
            max_connections: raw.positive(
                "PRIMED_HTTP_MAX_CONNECTIONS",
                "a whole number of connections, at least 1",
            )? as usize,
        })
    }
}
