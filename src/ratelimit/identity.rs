//! Who a request is: its client IP (through trusted proxies only), its user (a verified
//! HS256 JWT `sub`), or a bypass (whitelisted network, admin token, service key).

use std::net::IpAddr;

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use ipnet::IpNet;
use serde::Deserialize;
use sha2::Sha256;

use crate::config::Secret;

/// Header carrying a service-to-service key.
pub const SERVICE_KEY_HEADER: &str = "x-service-key";

/// Clock tolerance for `exp` and `nbf`, in seconds.
const LEEWAY_SECS: i64 = 30;

/// Longest accepted `sub` (it becomes part of a Redis key).
const MAX_SUB_LEN: usize = 256;

/// Why a request is not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bypass {
    /// Its client IP is in `RATE_LIMIT_WHITELIST`.
    Whitelist,
    /// It carries an admin token.
    Admin,
    /// It carries a service key.
    ServiceKey,
}

impl Bypass {
    /// The name used in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Bypass::Whitelist => "whitelist",
            Bypass::Admin => "admin-token",
            Bypass::ServiceKey => "service-key",
        }
    }
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Not counted.
    Bypass(Bypass),
    /// Counted by IP, user (when authenticated) and globally.
    Client {
        /// The client address.
        ip: IpAddr,
        /// The verified JWT subject.
        user: Option<String>,
    },
}

/// A credential that was presented but is not valid: the request is refused (401), never
/// served as anonymous.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// A bearer token that is neither an admin token nor a valid user token.
    #[error("the bearer token is not valid: {0}")]
    Token(String),
    /// An unknown service key.
    #[error("the X-Service-Key is not a configured service key (RATE_LIMIT_SERVICE_KEYS)")]
    ServiceKey,
}

/// What identity resolution needs to know.
#[derive(Clone, Default)]
pub struct IdentityConfig {
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Clients that are never limited.
    pub whitelist: Vec<IpNet>,
    /// Service keys (header `X-Service-Key`).
    pub service_keys: Vec<Secret>,
    /// Admin tokens (bearer).
    pub admin_keys: Vec<Secret>,
    /// HS256 secret of user tokens; none: user tokens are refused.
    pub jwt_secret: Option<Secret>,
}

impl IdentityConfig {
    /// Resolves who sent a request that arrived from `peer` with `headers`, at `now` (unix
    /// seconds, for token expiry).
    pub fn resolve(
        &self,
        peer: IpAddr,
        headers: &HeaderMap,
        now: i64,
    ) -> Result<Identity, CredentialError> {
        let ip = client_ip(peer, headers, &self.trusted_proxies);
        if let Some(key) = headers.get(SERVICE_KEY_HEADER) {
            let key = key.to_str().unwrap_or("").trim();
            return if !key.is_empty() && Secret::any_matches(&self.service_keys, key) {
                Ok(Identity::Bypass(Bypass::ServiceKey))
            } else {
                Err(CredentialError::ServiceKey)
            };
        }
        let user = match bearer(headers, &self.admin_keys, self.jwt_secret.as_ref(), now)? {
            Some(Bearer::Admin) => return Ok(Identity::Bypass(Bypass::Admin)),
            Some(Bearer::User(sub)) => Some(sub),
            None => None,
        };
        if self.whitelist.iter().any(|net| net.contains(&ip)) {
            return Ok(Identity::Bypass(Bypass::Whitelist));
        }
        Ok(Identity::Client { ip, user })
    }
}

/// Who a bearer token says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bearer {
    /// One of the admin tokens.
    Admin,
    /// A valid user token, with its `sub`.
    User(String),
}

/// The `Authorization: Bearer` token of `headers`: none, an admin token, or a user token
/// verified with `jwt_secret` at `now` (unix seconds). A token that is neither is an error,
/// never anonymous. The one place both the rate limiter and the API read bearer tokens.
pub fn bearer(
    headers: &HeaderMap,
    admin_keys: &[Secret],
    jwt_secret: Option<&Secret>,
    now: i64,
) -> Result<Option<Bearer>, CredentialError> {
    let Some(auth) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let auth = auth.to_str().unwrap_or("");
    let Some(token) = auth.strip_prefix("Bearer ").map(str::trim) else {
        return Err(CredentialError::Token(
            "send it as 'Authorization: Bearer <token>'".into(),
        ));
    };
    if Secret::any_matches(admin_keys, token) {
        return Ok(Some(Bearer::Admin));
    }
    let Some(secret) = jwt_secret else {
        return Err(CredentialError::Token(
            "user tokens are not accepted here (JWT_SECRET is not set)".into(),
        ));
    };
    verify_hs256(token, secret.expose().as_bytes(), now).map(|sub| Some(Bearer::User(sub)))
}

/// The client address: the peer, unless the peer is a trusted proxy, in which case the
/// rightmost `X-Forwarded-For` entry that is not itself a trusted proxy. Entries a client
/// wrote before the first trusted proxy are never believed.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                client = ip.to_canonical();
                if !is_trusted(&client) {
                    break;
                }
            }
            // Garbage from the far side of the proxies: count the request at the last hop
            // that is known.
            Err(_) => break,
        }
    }
    client
}

#[derive(Deserialize)]
struct JwtHeader {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<i64>,
    nbf: Option<i64>,
}

/// Verifies an HS256 JWT and returns its `sub`. Only HS256 is accepted (no `none`, no
/// algorithm confusion); `exp` is required (a token that never expires cannot be taken back)
/// and, with `nbf` when present, checked with 30 s leeway.
pub fn verify_hs256(token: &str, secret: &[u8], now: i64) -> Result<String, CredentialError> {
    let bad = |why: &str| CredentialError::Token(why.to_string());
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("it is not a JWT (header.payload.signature)"));
    };
    let header: JwtHeader = URL_SAFE_NO_PAD
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| bad("its header is not base64url JSON"))?;
    if header.alg != "HS256" {
        return Err(bad("only HS256 tokens are accepted"));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| bad("its signature is not base64url"))?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret).map_err(|_| bad("the JWT secret is unusable"))?;
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    mac.verify_slice(&signature)
        .map_err(|_| bad("its signature does not match"))?;
    let claims: Claims = URL_SAFE_NO_PAD
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| bad("its payload is not base64url JSON with a string sub"))?;
    if claims.exp.is_some_and(|exp| now > exp + LEEWAY_SECS) {
        return Err(bad("it has expired"));
    }
    if claims.nbf.is_some_and(|nbf| now + LEEWAY_SECS < nbf) {
        return Err(bad("it is not valid yet"));
    }
    if claims.exp.is_none() {
        return Err(bad(
            "it has no exp claim; user tokens must expire (issue them with an exp)",
        ));
    }
    match claims.sub {
        Some(sub) if !sub.is_empty() && sub.len() <= MAX_SUB_LEN => Ok(sub),
        Some(_) => Err(bad("its sub is empty or longer than 256 bytes")),
        None => Err(bad("it has no sub claim")),
    }
}

/// Signs `claims` as an HS256 JWT (for tests, benchmarks and tools that mint user tokens).
pub fn sign_hs256(claims: &serde_json::Value, secret: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; this branch cannot be reached.
        Err(_) => return signing_input,
    };
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use serde_json::json;

    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn xff(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = nets(&["10.0.0.0/8"]);
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        // An untrusted peer cannot choose its identity.
        assert_eq!(client_ip(client, &xff("1.2.3.4"), &trusted), client);
        // Through one trusted proxy.
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &xff("203.0.113.7"), &trusted),
            client
        );
        // A client that prepends a fake hop is still counted by its real address.
        assert_eq!(
            client_ip(
                "10.0.0.1".parse().unwrap(),
                &xff("1.2.3.4, 203.0.113.7, 10.0.0.2"),
                &trusted
            ),
            client
        );
        // Garbage after the proxy: counted at the proxy.
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &xff("nonsense"), &trusted),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        // IPv4-mapped IPv6 peers are their IPv4 address.
        assert_eq!(
            client_ip(
                "::ffff:203.0.113.7".parse().unwrap(),
                &HeaderMap::new(),
                &[]
            ),
            client
        );
    }

    #[test]
    fn a_well_known_token_verifies() {
        // The example token of jwt.io, signed with "your-256-bit-secret".
        let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        // Its signature verifies; it is refused only because it never expires.
        let err = verify_hs256(token, b"your-256-bit-secret", 0).unwrap_err();
        assert!(err.to_string().contains("no exp claim"), "{err}");
        let err = verify_hs256(token, b"another secret", 0).unwrap_err();
        assert!(err.to_string().contains("signature"), "{err}");
    }

    #[test]
    fn bad_tokens_are_refused_with_a_reason() {
        let secret = b"s3cret";
        let now = 1_700_000_000;
        let good = sign_hs256(&json!({"sub": "alice", "exp": now + 60}), secret);
        assert_eq!(verify_hs256(&good, secret, now).unwrap(), "alice");
        let expired = sign_hs256(&json!({"sub": "alice", "exp": now - 31}), secret);
        let early = sign_hs256(
            &json!({"sub": "alice", "nbf": now + 31, "exp": now + 60}),
            secret,
        );
        let nosub = sign_hs256(&json!({"name": "alice", "exp": now + 60}), secret);
        let noexp = sign_hs256(&json!({"sub": "alice"}), secret);
        let none_alg = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(br#"{"sub":"mallory"}"#)
        );
        let mut tampered = good.clone();
        tampered.insert(good.find('.').unwrap() + 2, 'x');
        for (token, why) in [
            (expired.as_str(), "expired"),
            (early.as_str(), "not valid yet"),
            (nosub.as_str(), "no sub"),
            (noexp.as_str(), "no exp"),
            (none_alg.as_str(), "only HS256"),
            (tampered.as_str(), "not"),
            ("abc", "not a JWT"),
        ] {
            let err = verify_hs256(token, secret, now).unwrap_err().to_string();
            assert!(err.contains(why), "{token}: {err}");
        }
    }

    #[test]
    fn resolution_order() {
        let cfg = IdentityConfig {
            trusted_proxies: vec![],
            whitelist: nets(&["192.0.2.0/24"]),
            service_keys: vec![Secret::new("service-key-0123456789")],
            admin_keys: vec![Secret::new("admin-token-0123456789")],
            jwt_secret: Some(Secret::new("jwt")),
        };
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(
            cfg.resolve(ip, &h, 0).unwrap(),
            Identity::Client { ip, user: None }
        );
        assert_eq!(
            cfg.resolve("192.0.2.9".parse().unwrap(), &h, 0).unwrap(),
            Identity::Bypass(Bypass::Whitelist)
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer admin-token-0123456789"),
        );
        assert_eq!(
            cfg.resolve(ip, &h, 0).unwrap(),
            Identity::Bypass(Bypass::Admin)
        );
        let token = sign_hs256(&json!({"sub": "bob", "exp": 60}), b"jwt");
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        assert_eq!(
            cfg.resolve(ip, &h, 0).unwrap(),
            Identity::Client {
                ip,
                user: Some("bob".into())
            }
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer x.y.z"),
        );
        assert!(matches!(
            cfg.resolve(ip, &h, 0),
            Err(CredentialError::Token(_))
        ));
        h.insert(
            SERVICE_KEY_HEADER,
            HeaderValue::from_static("service-key-0123456789"),
        );
        assert_eq!(
            cfg.resolve(ip, &h, 0).unwrap(),
            Identity::Bypass(Bypass::ServiceKey)
        );
        h.insert(SERVICE_KEY_HEADER, HeaderValue::from_static("guess"));
        assert_eq!(cfg.resolve(ip, &h, 0), Err(CredentialError::ServiceKey));
    }
}
