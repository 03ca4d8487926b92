//! Error fingerprints: dead letters that failed the same way share one, whatever the
//! numbers, ids, addresses, hosts and quoted values in their messages.
//!
//! A fingerprint is the first 16 hex digits of the SHA-256 of the subject, the error type
//! and the [`normalise`]d message, so it is the same in every daemon and across restarts.

use std::sync::LazyLock;

use regex::Regex;
use sha2::{Digest, Sha256};

use crate::model::ErrorClass;

/// The replacements, in order: the earlier ones take what a later one would cut in pieces
/// (an address before its host, a UUID before its numbers).
static RULES: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    [
        // Quoted values: "…", '…', `…`.
        (r#""[^"]*"|'[^']*'|`[^`]*`"#, "<q>"),
        // Addresses.
        (
            r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*",
            "<email>",
        ),
        // UUIDs.
        (
            r"\b[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\b",
            "<id>",
        ),
        // IPv4 and bracketed IPv6 addresses, with a port.
        (r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b", "<host>"),
        (r"\[[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\](?::\d+)?", "<host>"),
        // Host names (a label of letters at the end), with a port.
        (
            r"\b(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}\b(?::\d+)?",
            "<host>",
        ),
        // Long hexadecimal ids (at least 8 digits, one of them a number).
        (r"\b[0-9A-Fa-f]*[0-9][0-9A-Fa-f]*\b", "<hex>"),
        // Numbers, with their decimals.
        (r"\d+(?:\.\d+)*", "<n>"),
        // Runs of white space.
        (r"\s+", " "),
    ]
    .into_iter()
    .filter_map(|(pattern, with)| Regex::new(pattern).ok().map(|r| (r, with)))
    .collect()
});

/// `message` with what varies from one failure to the next replaced by placeholders:
/// quoted values `<q>`, addresses `<email>`, UUIDs `<id>`, IP addresses and host names
/// `<host>`, hexadecimal ids `<hex>`, numbers `<n>`.
pub fn normalise(message: &str) -> String {
    let mut out = message.to_string();
    for (rule, with) in RULES.iter() {
        if rule.is_match(&out) {
            // The hexadecimal rule takes only ids of 8 or more digits; shorter runs are
            // numbers (or words), left to the later rules.
            if *with == "<hex>" {
                out = rule
                    .replace_all(&out, |c: &regex::Captures<'_>| {
                        let m = &c[0];
                        if m.len() >= 8 && m.bytes().any(|b| b.is_ascii_alphabetic()) {
                            "<hex>".to_string()
                        } else {
                            m.to_string()
                        }
                    })
                    .into_owned();
            } else {
                out = rule.replace_all(&out, *with).into_owned();
            }
        }
    }
    out.trim().to_string()
}

/// The fingerprint of a failure of `class` with `message` on `subject`: 16 hex digits.
pub fn fingerprint(subject: &str, class: ErrorClass, message: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(subject.as_bytes());
    hash.update([0]);
    hash.update(class.as_str().as_bytes());
    hash.update([0]);
    hash.update(normalise(message).as_bytes());
    hash.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `text` looks like a fingerprint (16 lower-case hex digits).
pub fn is_fingerprint(text: &str) -> bool {
    text.len() == 16
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_varies_between_failures_is_replaced_and_the_rest_kept() {
        assert_eq!(
            normalise("550 5.1.1 <bob@example.com>: Recipient address rejected"),
            "<n> <n> <<email>>: Recipient address rejected"
        );
        assert_eq!(
            normalise("connect to smtp.example.com:2525 failed after 3 tries"),
            "connect to <host> failed after <n> tries"
        );
        assert_eq!(
            normalise("connection to 10.0.0.7:25 refused"),
            "connection to <host> refused"
        );
        assert_eq!(
            normalise("request 0190f3a2-7c4e-7a11-9c1b-2f1e0d9c8b7a has no row"),
            "request <id> has no row"
        );
        assert_eq!(
            normalise(r#"unknown field "colour", expected 'color'"#),
            "unknown field <q>, expected <q>"
        );
        assert_eq!(normalise("trace deadbeef01 lost"), "trace <hex> lost");
        assert_eq!(normalise("  a\n\tb  "), "a b");
    }

    #[test]
    fn failures_that_differ_only_in_their_values_share_a_fingerprint() {
        let a = fingerprint(
            "email.send",
            ErrorClass::Permanent,
            "550 5.1.1 <bob@example.com>: Recipient address rejected",
        );
        let b = fingerprint(
            "email.send",
            ErrorClass::Permanent,
            "551 5.1.2 <carol@mail.example.org>: Recipient address rejected",
        );
        assert_eq!(a, b);
        assert!(is_fingerprint(&a), "{a}");
    }

    #[test]
    fn another_subject_type_or_wording_is_another_fingerprint() {
        let base = fingerprint("email.send", ErrorClass::Transient, "timed out after 30s");
        assert_ne!(
            base,
            fingerprint(
                "primecheck.requested",
                ErrorClass::Transient,
                "timed out after 30s"
            )
        );
        assert_ne!(
            base,
            fingerprint("email.send", ErrorClass::Permanent, "timed out after 30s")
        );
        assert_ne!(
            base,
            fingerprint("email.send", ErrorClass::Transient, "connection refused")
        );
    }

    #[test]
    fn a_fingerprint_is_sixteen_lower_case_hex_digits() {
        assert!(is_fingerprint("0123456789abcdef"));
        assert!(!is_fingerprint("0123456789ABCDEF"));
        assert!(!is_fingerprint("0123456789abcde"));
        assert!(!is_fingerprint("0123456789abcdeg"));
    }
}
