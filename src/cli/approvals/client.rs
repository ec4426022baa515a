//! A small client of the approval server's JSON API (`/api/v1`).

use std::path::Path;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::secret::ExposeSecret;

/// Where the approval server is and how to authenticate to it.
#[derive(Clone)]
pub struct Target {
    /// `http://HOST:PORT`, without a trailing slash.
    pub base: String,
    pub token: crate::secret::SecretString,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("base", &self.base).finish_non_exhaustive()
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an API error (`{"error": {"code", "message"}}`) or an HTTP error.
    #[error("{code}: {message}")]
    Api { status: u16, code: String, message: String },
    #[error("cannot reach the approval server at {base}: {why}")]
    Unreachable { base: String, why: String },
    #[error("the approval server at {base} answered something that is not the API's JSON: {why}")]
    Protocol { base: String, why: String },
    /// The listener did not prove that it knows the token (see [`crate::server::handshake`]).
    #[error("the listener at {base} {why}: it may not be the approval server (another program on its port?)")]
    Unverified { base: String, why: String },
}

impl ClientError {
    /// The API error code, when the server gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// The approval server's base URL: `http://` + the approvals listen address, on loopback when the
/// server listens on every interface.
pub fn base_from_listen(listen: &str) -> Result<String, String> {
    let addr: std::net::SocketAddr =
        listen.parse().map_err(|_| format!("{listen:?} is not an address like 127.0.0.1:8377"))?;
    if addr.port() == 0 {
        return Err(format!(
            "the approval server listens on {listen} (a free port picked at start): give --url or MCP_GATE_URL \
             with the address it printed"
        ));
    }
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    Ok(format!("http://{}", std::net::SocketAddr::new(ip, addr.port())))
}

/// The approver token stored by the approval server in its data directory, if any.
pub fn token_from_file(data_dir: &Path) -> Result<String, String> {
    let path = data_dir.join("approver-token");
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().len() >= 16 => Ok(text.trim().to_owned()),
        Ok(_) => Err(format!("{} does not hold a token", path.display())),
        Err(e) => Err(format!(
            "no approver token: set MCP_GATE_TOKEN, or start mcp-gate once so that it creates {} ({e})",
            path.display()
        )),
    }
}

/// The JSON API, with the bearer token on every request.
pub struct ApiClient {
    pub target: Target,
    http: reqwest::Client,
    /// Whether the listener proved it knows the token (see [`crate::server::handshake`]).
    verified: std::sync::atomic::AtomicBool,
}

impl ApiClient {
    pub fn new(target: Target) -> Result<ApiClient, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .user_agent(concat!("mcp-gate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Unreachable { base: target.base.clone(), why: e.to_string() })?;
        Ok(ApiClient { target, http, verified: std::sync::atomic::AtomicBool::new(false) })
    }

    /// Has the listener prove it knows the token before the token is sent to it. A listener that
    /// fails is reported on stderr and sent nothing.
    pub async fn verify(&self) -> Result<(), ClientError> {
        use crate::server::handshake::HandshakeError;
        let base = self.target.base.clone();
        match crate::server::handshake::verify_listener(&self.http, &base, self.target.token.expose_secret()).await {
            Ok(()) => {
                self.verified.store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            Err(HandshakeError::UnknownKey) => Err(ClientError::Api {
                status: 401,
                code: "unauthorized".into(),
                message: "missing or wrong bearer token (the approval server does not know this token)".into(),
            }),
            Err(HandshakeError::Refused(why) | HandshakeError::Unreachable(why)) => {
                Err(ClientError::Unreachable { base, why })
            }
            Err(e) => {
                let e = ClientError::Unverified { base, why: e.to_string() };
                tracing::warn!("{e}");
                Err(e)
            }
        }
    }

    async fn verified(&self) -> Result<(), ClientError> {
        if self.verified.load(std::sync::atomic::Ordering::Relaxed) { Ok(()) } else { self.verify().await }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.target.base)
    }

    /// `GET /api/v1/approvals` with the given query.
    pub async fn list(&self, query: &[(&str, String)]) -> Result<Value, ClientError> {
        let url = reqwest::Url::parse_with_params(&self.url("/api/v1/approvals"), query)
            .map_err(|e| ClientError::Unreachable { base: self.target.base.clone(), why: e.to_string() })?;
        self.send(self.http.get(url)).await
    }

    /// `GET /api/v1/approvals/{id}`.
    pub async fn show(&self, id: &str) -> Result<Value, ClientError> {
        self.send(self.http.get(self.url(&format!("/api/v1/approvals/{}", path_segment(id))))).await
    }

    /// `POST /api/v1/approvals/{id}/approve` or `/deny`.
    pub async fn decide(
        &self,
        id: &str,
        approve: bool,
        notes: Option<&str>,
        reason: Option<&str>,
        approver: Option<&str>,
    ) -> Result<Value, ClientError> {
        let verb = if approve { "approve" } else { "deny" };
        let mut body = json!({});
        for (key, value) in [("notes", notes), ("reason", reason), ("approver", approver)] {
            if let Some(v) = value {
                body[key] = Value::String(v.to_owned());
            }
        }
        let url = self.url(&format!("/api/v1/approvals/{}/{verb}", path_segment(id)));
        self.send(self.http.post(url).json(&body)).await
    }

    /// `POST /api/v1/sign-in-links`: a one-time link that signs a browser in as this token's
    /// approver, leading to request `id` (or the queue).
    pub async fn sign_in_link(&self, id: Option<&str>) -> Result<Value, ClientError> {
        let body = match id {
            Some(id) => json!({ "approval_id": id }),
            None => json!({}),
        };
        self.send(self.http.post(self.url(crate::server::web::signin::API_PATH)).json(&body)).await
    }

    /// Opens `GET /api/v1/events` (server-sent events).
    pub async fn events(&self, read_timeout: std::time::Duration) -> Result<reqwest::Response, ClientError> {
        // The stream stays open: no overall time limit, but a silent connection (the server sends
        // a comment every 15 s) counts as lost.
        let http = reqwest::Client::builder()
            .read_timeout(read_timeout)
            .user_agent(concat!("mcp-gate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| self.unreachable(e))?;
        // A reconnection may find another listener on the port: it proves itself again.
        self.verify().await?;
        let response = http
            .get(self.url("/api/v1/events"))
            .bearer_auth(self.target.token.expose_secret())
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if response.status().is_success() { Ok(response) } else { Err(self.api_error(response).await) }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        self.verified().await?;
        let response =
            request.bearer_auth(self.target.token.expose_secret()).send().await.map_err(|e| self.unreachable(e))?;
        if !response.status().is_success() {
            return Err(self.api_error(response).await);
        }
        let body = response.bytes().await.map_err(|e| self.unreachable(e))?;
        serde_json::from_slice(&body)
            .map_err(|e| ClientError::Protocol { base: self.target.base.clone(), why: e.to_string() })
    }

    fn unreachable(&self, e: reqwest::Error) -> ClientError {
        // The URL is known from the target.
        let e = e.without_url();
        let mut why = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            why.push_str(": ");
            why.push_str(&s.to_string());
            source = s.source();
        }
        ClientError::Unreachable { base: self.target.base.clone(), why }
    }

    async fn api_error(&self, response: reqwest::Response) -> ClientError {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        let error = parsed.as_ref().and_then(|v| v.get("error"));
        match (error.and_then(|e| e["code"].as_str()), error.and_then(|e| e["message"].as_str())) {
            (Some(code), Some(message)) => {
                ClientError::Api { status: status.as_u16(), code: code.to_owned(), message: message.to_owned() }
            }
            _ => ClientError::Api {
                status: status.as_u16(),
                code: format!("http_{}", status.as_u16()),
                message: http_message(status, &text),
            },
        }
    }
}

fn http_message(status: StatusCode, body: &str) -> String {
    let excerpt: String = body.trim().chars().take(200).collect();
    let reason = status.canonical_reason().unwrap_or("error");
    if excerpt.is_empty() {
        format!("HTTP {} {reason}", status.as_u16())
    } else {
        format!("HTTP {}: {excerpt}", status.as_u16())
    }
}

/// Percent-encodes an id for use as one path segment.
fn path_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_from_listen_addresses() {
        assert_eq!(base_from_listen("127.0.0.1:8377").unwrap(), "http://127.0.0.1:8377");
        assert_eq!(base_from_listen("0.0.0.0:9000").unwrap(), "http://127.0.0.1:9000");
        assert_eq!(base_from_listen("[::]:9000").unwrap(), "http://[::1]:9000");
        assert!(base_from_listen("127.0.0.1:0").unwrap_err().contains("--url"));
        assert!(base_from_listen("nope").is_err());
    }

    #[test]
    fn ids_are_one_path_segment() {
        assert_eq!(path_segment("apr_0123abcd"), "apr_0123abcd");
        assert_eq!(path_segment("../x y"), "%2E%2E%2Fx%20y");
    }
}
