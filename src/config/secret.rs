//! Secrets that are never printed, and URLs shown without their credentials.

use std::fmt;

/// `value` with the credentials of every URL in it (`scheme://user:password@host`, one URL or
/// a comma-separated list) replaced by `<redacted>`, so that a value that is not a secret as
/// a whole (`NATS_URL`) can be shown and logged without the password it may carry.
pub fn redact_url_credentials(value: &str) -> String {
    value
        .split(',')
        .map(|part| {
            let Some(scheme_end) = part.find("://") else {
                return part.to_string();
            };
            let authority_start = scheme_end + 3;
            let rest = &part[authority_start..];
            let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            match rest[..authority_len].rfind('@') {
                Some(at) => format!("{}<redacted>{}", &part[..authority_start], &rest[at..]),
                None => part.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A value that is never printed or logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` equals one of `keys`. Every key is compared in constant time and
    /// none is skipped, so timing tells neither whether nor which one matched.
    pub fn any_matches(keys: &[Secret], presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        let mut matched = subtle::Choice::from(0);
        for key in keys {
            matched |= key.0.as_bytes().ct_eq(presented.as_bytes());
        }
        bool::from(matched)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}
