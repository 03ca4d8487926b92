//! The values as read, with where each came from, and the typed readers that turn one into a
//! setting or a [`ConfigError`] naming the key and the expected form.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use super::error::ConfigError;
use super::keys::lookup;
use super::secret::{Secret, redact_url_credentials};

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// An environment variable.
    Env,
    /// The config file.
    File,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Default => "default",
            Origin::Env => "environment",
            Origin::File => "config file",
        })
    }
}

/// The raw values and their origins.
pub(super) struct Raw {
    pub(super) values: BTreeMap<&'static str, (String, Origin)>,
}

impl Raw {
    pub(super) fn get(&self, name: &'static str) -> Option<&str> {
        self.values
            .get(name)
            .map(|(v, _)| v.as_str())
            .or_else(|| lookup(name).and_then(|k| k.default))
    }

    pub(super) fn is_set(&self, name: &'static str) -> bool {
        self.values.contains_key(name)
    }

    pub(super) fn invalid(&self, name: &'static str, expected: &'static str) -> ConfigError {
        let secret = lookup(name).is_some_and(|k| k.secret);
        let value = match self.get(name) {
            Some(_) if secret => "<redacted>".to_string(),
            Some(v) => format!("{:?}", redact_url_credentials(v)),
            None => "nothing".to_string(),
        };
        ConfigError::Invalid {
            key: name,
            value,
            expected,
        }
    }

    pub(super) fn required(&self, name: &'static str) -> Result<&str, ConfigError> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| self.invalid(name, "set (it has no default)"))
    }

    pub(super) fn port(&self, name: &'static str) -> Result<u16, ConfigError> {
        let expected = "a number between 1 and 65535";
        let v = self.required(name)?;
        match v.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(self.invalid(name, expected)),
        }
    }

    pub(super) fn positive(
        &self,
        name: &'static str,
        expected: &'static str,
    ) -> Result<u32, ConfigError> {
        let v = self.required(name)?;
        match v.trim().parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(self.invalid(name, expected)),
        }
    }

    pub(super) fn host(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(v)
                if v.trim().is_empty() || v.contains(char::is_whitespace) || v.contains('/') =>
            {
                Err(self.invalid(name, "a host name or IP address"))
            }
            Some(v) => Ok(Some(v.trim().to_string())),
        }
    }

    pub(super) fn boolean(&self, name: &'static str) -> Result<bool, ConfigError> {
        match self.required(name)?.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(self.invalid(name, "true or false")),
        }
    }

    /// A comma-separated list of secrets, each at least 16 characters long.
    pub(super) fn secret_list(
        &self,
        name: &'static str,
        expected: &'static str,
    ) -> Result<Vec<Secret>, ConfigError> {
        let keys: Vec<Secret> = self
            .get(name)
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(Secret::new)
            .collect();
        if keys.iter().any(|k| k.expose().len() < 16) {
            return Err(self.invalid(name, expected));
        }
        Ok(keys)
    }

    pub(super) fn secret(&self, name: &'static str) -> Option<Secret> {
        self.get(name).filter(|v| !v.is_empty()).map(Secret::new)
    }
}

pub(super) fn read_file(path: &Path) -> Result<Vec<(&'static str, String)>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::ParseFile {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
    let mut out = Vec::new();
    for (name, value) in table {
        let key = lookup(&name.to_ascii_uppercase()).ok_or_else(|| ConfigError::UnknownKey {
            path: path.to_path_buf(),
            key: name.clone(),
        })?;
        let bad = || ConfigError::BadFileValue {
            path: path.to_path_buf(),
            key: key.name.to_string(),
        };
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) if key.name == "ADMIN_API_KEYS" => items
                .into_iter()
                .map(|i| i.as_str().map(String::from).ok_or_else(bad))
                .collect::<Result<Vec<_>, _>>()?
                .join(","),
            _ => return Err(bad()),
        };
        out.push((key.name, value));
    }
    Ok(out)
}

pub(super) fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.trim().rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
    (!host.is_empty()).then(|| (host.to_string(), port))
}

pub(super) fn looks_like_email(s: &str) -> bool {
    matches!(s.split_once('@'), Some((local, domain)) if !local.is_empty() && !domain.is_empty() && !s.contains(char::is_whitespace))
}

pub(super) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
