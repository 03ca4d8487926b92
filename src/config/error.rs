//! Bad configuration.

use std::path::PathBuf;

/// Bad configuration. Each variant names the key and the expected form.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value does not have the expected form.
    #[error("{key} must be {expected}, got {value}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// The value as given (quoted), or `<redacted>` for secrets.
        value: String,
        /// The expected form.
        expected: &'static str,
    },
    /// A structured value (a list of rules or policies) does not parse.
    #[error("{key} is not valid: {reason}")]
    Spec {
        /// The key.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Two keys that exclude each other are both set.
    #[error("{a} and {b} are both set; set only one of them")]
    Conflict {
        /// One key.
        a: &'static str,
        /// The other.
        b: &'static str,
    },
    /// The config file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The config file has a key primed does not know.
    #[error(
        "config file {path}: unknown key {key:?}; keys are the environment variable names, e.g. primed_http_addr = \"127.0.0.1:8080\" (see `primed config check`)"
    )]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// The config file has a value of a type that cannot be a setting.
    #[error(
        "config file {path}: {key} must be a string, number, boolean or (for ADMIN_API_KEYS) a list of strings"
    )]
    BadFileValue {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
}
