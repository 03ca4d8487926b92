//! Validation of the public API's input: pure functions, unit-tested.

/// Why a number is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumberError {
    /// Empty, or not only decimal digits.
    NotDecimal,
    /// More digits than allowed.
    TooLong {
        /// The limit.
        max: usize,
        /// The number's length.
        got: usize,
    },
}

/// A non-negative decimal integer as digits: no sign, no spaces, no leading zeros kept.
pub fn number(input: &str, max_digits: usize) -> Result<String, NumberError> {
    if input.is_empty() || !input.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NumberError::NotDecimal);
    }
    let trimmed = input.trim_start_matches('0');
    let digits = if trimmed.is_empty() { "0" } else { trimmed };
    if digits.len() > max_digits {
        return Err(NumberError::TooLong {
            max: max_digits,
            got: digits.len(),
        });
    }
    Ok(digits.to_string())
}

/// A deliverable-looking address: `local@domain`, at most 254 characters, no spaces or
/// control characters, a domain of letters, digits, hyphens and dots with no empty label.
/// The domain is lower-cased.
pub fn email(input: &str) -> Option<String> {
    if input.len() > 254 || input.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let (local, domain) = input.rsplit_once('@')?;
    if local.is_empty()
        || local.len() > 64
        || local.contains('@')
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
    {
        return None;
    }
    let local_ok = local
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c) || !c.is_ascii());
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = !domain.is_empty()
        && domain.len() <= 253
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    (local_ok && domain_ok).then(|| format!("{local}@{}", domain.to_ascii_lowercase()))
}

/// An `Idempotency-Key`: 1 to 255 visible ASCII characters.
pub fn idempotency_key(input: &str) -> bool {
    !input.is_empty() && input.len() <= 255 && input.bytes().all(|b| b.is_ascii_graphic())
}

/// A request id: a UUID in its hyphenated form (ids are UUIDv7).
pub fn request_id(input: &str) -> bool {
    uuid::Uuid::try_parse(input).is_ok() && input.len() == 36
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(number("17", 10), Ok("17".into()));
        assert_eq!(number("0", 10), Ok("0".into()));
        assert_eq!(number("000", 10), Ok("0".into()));
        assert_eq!(number("007", 10), Ok("7".into()));
        assert_eq!(
            number("0000000000012", 2),
            Ok("12".into()),
            "leading zeros do not count"
        );
        for bad in [
            "", "-1", "+1", "1.5", "1e5", " 1", "1 ", "0x10", "١٢", "12a",
        ] {
            assert_eq!(number(bad, 10), Err(NumberError::NotDecimal), "{bad:?}");
        }
        assert_eq!(
            number("123456", 5),
            Err(NumberError::TooLong { max: 5, got: 6 })
        );
    }

    #[test]
    fn emails() {
        assert_eq!(email("a@example.com").as_deref(), Some("a@example.com"));
        assert_eq!(
            email("First.Last+tag@Example.COM").as_deref(),
            Some("First.Last+tag@example.com")
        );
        assert_eq!(email("user@localhost").as_deref(), Some("user@localhost"));
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@@b.com",
            "a b@c.com",
            "a@b c.com",
            "a@-b.com",
            "a@b..com",
            ".a@b.com",
            "a.@b.com",
            "a..b@c.com",
            "a@b.com\n",
            "a@b_c.com",
        ] {
            assert_eq!(email(bad), None, "{bad:?}");
        }
        assert_eq!(email(&format!("{}@b.com", "a".repeat(65))), None);
        assert_eq!(email(&format!("a@{}.com", "b".repeat(250))), None);
    }

    #[test]
    fn idempotency_keys_and_ids() {
        assert!(idempotency_key("order-42"));
        assert!(!idempotency_key(""));
        assert!(!idempotency_key("has space"));
        assert!(!idempotency_key(&"k".repeat(256)));
        assert!(request_id("01936d6e-5f2a-7c3b-9d4e-123456789abc"));
        assert!(!request_id("42"));
        assert!(!request_id("01936d6e5f2a7c3b9d4e123456789abc"));
    }
}
