//! Request guards shared by the MCP endpoint and the approval server: Host and Origin checks
//! against DNS rebinding, and bearer tokens compared in constant time.

use axum::http::HeaderMap;
use tracing::warn;

/// A request refused by [`check_host_origin`]: its Host or Origin is not one this server answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Forbidden: {0}")]
pub struct Forbidden(pub String);

/// DNS-rebinding protection: the Host must name this machine (or a configured host) and an
/// Origin, when present, must be a loopback origin (or a configured one).
pub fn check_host_origin(
    allowed_hosts: &[String],
    allowed_origins: &[String],
    headers: &HeaderMap,
) -> Result<(), Forbidden> {
    let forbidden = |what: String| {
        warn!("rejected request: {what}");
        Err(Forbidden(what))
    };
    // One Host only: with two, which one is "the" Host depends on who reads it (RFC 9112 answers 400).
    if headers.get_all("host").iter().count() > 1 {
        return forbidden("more than one Host header".to_owned());
    }
    let Some(host) = header_str(headers, "host") else { return forbidden("no Host header".to_owned()) };
    if !host_allowed(strip_port(host), allowed_hosts) {
        return forbidden(format!("Host {host:?} is not allowed"));
    }
    check_origin(allowed_origins, headers)
}

/// The Origin half of [`check_host_origin`]: an Origin, when present, must be a loopback origin
/// (or a configured one).
pub fn check_origin(allowed_origins: &[String], headers: &HeaderMap) -> Result<(), Forbidden> {
    if headers.get_all("origin").iter().count() > 1 {
        let what = "more than one Origin header".to_owned();
        warn!("rejected request: {what}");
        return Err(Forbidden(what));
    }
    if let Some(origin) = header_str(headers, "origin") {
        if allowed_origins.iter().any(|o| o == origin) {
            return Ok(());
        }
        let authority = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
        match authority {
            Some(a) if host_allowed(strip_port(a), &[]) => {}
            _ => {
                let what = format!("Origin {origin:?} is not allowed");
                warn!("rejected request: {what}");
                return Err(Forbidden(what));
            }
        }
    }
    Ok(())
}

/// The host of `host[:port]`. A bracketed IPv6 address is followed by nothing or by `:digits`;
/// anything else after it (`[::1].evil.example`) leaves the whole text, which no check admits.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((address, "")) => address,
            Some((address, port)) if port.strip_prefix(':').is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit())) => {
                address
            }
            _ => host,
        };
    }
    host.rsplit_once(':').map_or(host, |(h, p)| if p.chars().all(|c| c.is_ascii_digit()) { h } else { host })
}

fn host_allowed(host: &str, extra: &[String]) -> bool {
    let host = host.to_ascii_lowercase();
    matches!(host.as_str(), "localhost" | "127.0.0.1" | "::1") || extra.iter().any(|h| h.eq_ignore_ascii_case(&host))
}

/// The token of an `Authorization: Bearer TOKEN` header (the scheme in any case, RFC 9110
/// 11.1). A request with two Authorization headers presents none: which one would speak depends
/// on who reads them (a proxy in front may read the other).
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    if headers.get_all("authorization").iter().count() > 1 {
        return None;
    }
    let value = header_str(headers, "authorization")?;
    let (scheme, token) = value.split_at_checked("Bearer ".len())?;
    scheme.eq_ignore_ascii_case("Bearer ").then(|| token.trim())
}

pub fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    bearer_token(headers).is_some_and(|given| crate::secret::constant_time_eq(given.as_bytes(), token.as_bytes()))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A header map from name/value pairs (tests here and in the HTTP downstream).
#[cfg(test)]
pub(crate) fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, axum::http::HeaderValue::from_str(v).unwrap());
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_origin_checks() {
        let (h, o) = (vec!["gate.internal".to_owned()], vec!["https://app.example".to_owned()]);
        assert!(check_host_origin(&h, &o, &headers(&[("host", "127.0.0.1:8080")])).is_ok());
        assert!(check_host_origin(&h, &o, &headers(&[("host", "[::1]:8080")])).is_ok());
        assert!(check_host_origin(&h, &o, &headers(&[("host", "gate.internal")])).is_ok());
        assert!(check_host_origin(&h, &o, &headers(&[("host", "evil.example:8080")])).is_err());
        assert!(
            check_host_origin(&h, &o, &headers(&[("host", "localhost:1"), ("origin", "http://localhost:3000")]))
                .is_ok()
        );
        assert!(
            check_host_origin(&h, &o, &headers(&[("host", "localhost:1"), ("origin", "https://app.example")])).is_ok()
        );
        assert!(
            check_host_origin(&h, &o, &headers(&[("host", "localhost:1"), ("origin", "http://evil.example")])).is_err()
        );
        assert!(check_host_origin(&h, &o, &headers(&[("origin", "http://localhost")])).is_err());
        // Text after a bracketed address is not a port.
        for host in ["[::1].evil.example", "[::1]evil.example:80", "[::1]:80x", "[::1"] {
            assert!(check_host_origin(&h, &o, &headers(&[("host", host)])).is_err(), "{host}");
        }
        assert!(check_origin(&o, &headers(&[("origin", "http://[::1].evil.example")])).is_err());
        assert!(check_origin(&o, &headers(&[("origin", "http://[::1]:3000")])).is_ok());
        let mut two = headers(&[("host", "127.0.0.1:1")]);
        two.append("host", axum::http::HeaderValue::from_static("evil.example"));
        assert!(check_host_origin(&h, &o, &two).is_err(), "two Host headers");
        let mut two = headers(&[("host", "127.0.0.1:1"), ("origin", "http://localhost")]);
        two.append("origin", axum::http::HeaderValue::from_static("http://evil.example"));
        assert!(check_host_origin(&h, &o, &two).is_err(), "two Origin headers");
    }

    #[test]
    fn bearer_token_comparison() {
        assert!(bearer_matches(&headers(&[("authorization", "Bearer s3cret")]), "s3cret"));
        assert!(!bearer_matches(&headers(&[("authorization", "Bearer s3cre")]), "s3cret"));
        assert!(!bearer_matches(&headers(&[]), "s3cret"));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_one_header_only() {
        // RFC 9110 11.1: the scheme is case-insensitive.
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            assert_eq!(bearer_token(&headers(&[("authorization", &format!("{scheme} s3cret"))])), Some("s3cret"));
        }
        assert_eq!(bearer_token(&headers(&[("authorization", "Basic s3cret")])), None);
        assert_eq!(bearer_token(&headers(&[("authorization", "Bearers3cret")])), None);
        // Two Authorization headers: which one speaks depends on who reads them, so neither does.
        let mut two = headers(&[("authorization", "Bearer s3cret")]);
        two.append("authorization", axum::http::HeaderValue::from_static("Bearer other"));
        assert_eq!(bearer_token(&two), None);
        assert!(!bearer_matches(&two, "s3cret"));
    }
}
