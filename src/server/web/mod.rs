//! The approval server: a JSON API and server-rendered pages over the same [`ApprovalService`] core.
//!
//! - The API (`/api/v1/...`) needs `Authorization: Bearer TOKEN`.
//! - The pages need a cookie session, opened by signing in with the token. The approval URL
//!   handed to the model leads to a page that asks for that sign-in: the URL holds no secret.
//! - Every state change is a POST with the session's CSRF token; GET never changes anything.
//! - Every request's Host and Origin are checked (DNS rebinding); responses carry a strict CSP.
//! - `mcp-gate approvals open` signs a browser in with a one-time link instead ([`signin`]).

pub mod api;
pub mod events;
pub mod ops;
pub mod pages;
pub mod signin;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use tokio::net::TcpListener;

use crate::approval::ApprovalService;
use crate::identity::{Credentials, OPERATOR, Principal};
use crate::secret::{ExposeSecret, SecretString};

/// The browser session cookie.
pub const COOKIE: &str = "mcp_gate_session";

/// Signed-in browser sessions expire after this long.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// How long a one-time sign-in link ([`signin`]) stays valid.
pub const SIGN_IN_LINK_TTL: std::time::Duration = std::time::Duration::from_secs(60);

pub struct WebState {
    pub approvals: Arc<ApprovalService>,
    /// The shared approver token (identity [`OPERATOR`]).
    pub token: SecretString,
    /// Named approvers (`[[approvers]]`).
    pub approvers: Credentials,
    /// Host header values accepted besides loopback names.
    pub allowed_hosts: Vec<String>,
    pub allowed_origins: Vec<String>,
    /// Connection cap and header timeout of the listener (`[approvals]`).
    pub limits: crate::http::listener::ListenerLimits,
    /// Where the shared approver token is stored, when it came from a file (the sign-in page
    /// says so).
    pub token_file: Option<std::path::PathBuf>,
    /// One-time sign-in links ([`signin`]).
    pub sign_in: signin::SignInLinks,
    /// What `/readyz` checks: the approval store.
    pub readiness: crate::http::health::Readiness,
    /// The server listens on a non-loopback address: `/healthz`, `/readyz` and `/metrics` answer
    /// whatever the Host (see [`crate::http::health`]).
    pub any_host_operations: bool,
    /// `[metrics]`: whether `/metrics` is served, and with what token.
    pub metrics: crate::metrics::settings::MetricsSettings,
    sessions: DashMap<String, BrowserSession>,
    /// Handshakes under way: server nonce -> (key, client nonce, when).
    handshakes: DashMap<String, ([u8; 32], String, Instant)>,
}

/// How long a handshake's server nonce stays valid.
const HANDSHAKE_TTL: Duration = Duration::from_secs(30);

/// Most handshakes under way at once.
const MAX_HANDSHAKES: usize = 1024;

#[derive(Clone)]
pub struct BrowserSession {
    pub csrf: String,
    /// Who signed in.
    pub who: Principal,
    created: Instant,
}

impl WebState {
    pub fn new(
        approvals: Arc<ApprovalService>,
        token: SecretString,
        approvers: Credentials,
        allowed_hosts: Vec<String>,
    ) -> Arc<WebState> {
        let readiness = crate::http::health::Readiness::default().with(ops::store_check(approvals.store.clone()));
        Arc::new(WebState {
            approvals,
            token,
            approvers,
            allowed_hosts,
            allowed_origins: Vec::new(),
            limits: crate::http::listener::ListenerLimits::default(),
            token_file: None,
            sign_in: signin::SignInLinks::default(),
            readiness,
            any_host_operations: false,
            metrics: Default::default(),
            sessions: DashMap::new(),
            handshakes: DashMap::new(),
        })
    }

    /// The handshake key whose id is `key_id`: the shared token's or a named approver's.
    pub fn handshake_key(&self, key_id: &str) -> Option<[u8; 32]> {
        let shared = crate::server::handshake::key_of(self.token.expose_secret());
        let mut found = None;
        for key in std::iter::once(&shared).chain(self.approvers.hashes()) {
            if crate::secret::constant_time_eq(crate::server::handshake::key_id(key).as_bytes(), key_id.as_bytes())
                && found.is_none()
            {
                found = Some(*key);
            }
        }
        found
    }

    /// Remembers a handshake's server nonce; `false` when too many are under way.
    pub fn start_handshake(&self, server_nonce: String, key: [u8; 32], client_nonce: String) -> bool {
        if self.handshakes.len() >= MAX_HANDSHAKES {
            self.handshakes.retain(|_, (_, _, at)| at.elapsed() < HANDSHAKE_TTL);
            if self.handshakes.len() >= MAX_HANDSHAKES {
                return false;
            }
        }
        self.handshakes.insert(server_nonce, (key, client_nonce, Instant::now()));
        true
    }

    /// Takes a handshake's state (each server nonce is used once).
    pub fn finish_handshake(&self, server_nonce: &str) -> Option<([u8; 32], String)> {
        let (_, (key, client_nonce, at)) = self.handshakes.remove(server_nonce)?;
        (at.elapsed() < HANDSHAKE_TTL).then_some((key, client_nonce))
    }

    /// Whose token this is: the shared token is [`OPERATOR`], the others are named approvers.
    pub fn identify(&self, token: &str) -> Option<Principal> {
        if self.is_shared_token(token) {
            return Some(Principal::named(OPERATOR));
        }
        self.approvers.authenticate(token).cloned()
    }

    /// Whether `token` is the shared approver token, which the processes of one machine share.
    pub fn is_shared_token(&self, token: &str) -> bool {
        crate::secret::constant_time_eq(token.as_bytes(), self.token.expose_secret().as_bytes())
    }

    pub fn open_session(&self, who: Principal) -> Result<(String, BrowserSession), crate::random::RandomError> {
        self.sessions.retain(|_, s| s.created.elapsed() < SESSION_TTL);
        let id = crate::random::hex(32)?;
        let session = BrowserSession { csrf: crate::random::hex(32)?, who, created: Instant::now() };
        self.sessions.insert(id.clone(), session.clone());
        Ok((id, session))
    }

    pub fn session(&self, id: &str) -> Option<BrowserSession> {
        self.sessions.get(id).filter(|s| s.created.elapsed() < SESSION_TTL).map(|s| s.clone())
    }

    /// The signed-in session named by the request's cookie, with its id.
    pub fn browser_session(&self, headers: &axum::http::HeaderMap) -> Option<(String, BrowserSession)> {
        for value in headers.get_all(header::COOKIE) {
            let Ok(text) = value.to_str() else { continue };
            for part in text.split(';') {
                if let Some(id) = part.trim().strip_prefix(COOKIE).and_then(|r| r.strip_prefix('='))
                    && let Some(s) = self.session(id)
                {
                    return Some((id.to_owned(), s));
                }
            }
        }
        None
    }

    pub fn close_session(&self, id: &str) {
        self.sessions.remove(id);
    }
}

/// Builds the router (tests call this directly).
pub fn router(state: Arc<WebState>) -> Router {
    Router::new()
        .merge(api::routes())
        .merge(events::routes())
        .merge(pages::routes())
        .merge(signin::routes())
        .merge(ops::routes())
        .layer(middleware::from_fn_with_state(state.clone(), guard_layer))
        .with_state(state)
}

pub async fn serve(
    listener: TcpListener,
    state: Arc<WebState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.limits;
    crate::http::listener::serve(listener, router(state), limits, shutdown).await
}

/// Host/Origin checks on every request (the operations routes follow
/// [`crate::http::health::probe_guard`]) and security headers on every response.
async fn guard_layer(State(state): State<Arc<WebState>>, request: Request, next: Next) -> Response {
    let (hosts, origins, headers) = (&state.allowed_hosts, &state.allowed_origins, request.headers());
    let checked = if crate::http::health::is_operations_path(request.uri().path()) {
        crate::http::health::probe_guard(hosts, origins, state.any_host_operations, headers)
    } else {
        crate::http::guard::check_host_origin(hosts, origins, headers)
    };
    if let Err(why) = checked {
        return (StatusCode::FORBIDDEN, why.to_string()).into_response();
    }
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not `no-referrer`: with it browsers send `Origin: null` on our own form posts, which the
    // Origin check must refuse. `same-origin` sends nothing to other sites.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The approver token: `MCP_GATE_TOKEN` or `[approvals] token`, else the one stored in the data
/// directory (created with mode 0600 on first run). Returns the token and, when it came from
/// a file, that file's path.
///
/// Processes started at the same moment with no token file agree on one token: the file appears
/// complete and only once (a hard link of a finished temporary file), and the losers read it.
pub fn load_or_create_token(
    configured: Option<&str>,
    data_dir: &std::path::Path,
) -> std::io::Result<(SecretString, Option<std::path::PathBuf>)> {
    stored_token(configured, data_dir).map(|(token, path)| (SecretString::from(token), path))
}

fn stored_token(
    configured: Option<&str>,
    data_dir: &std::path::Path,
) -> std::io::Result<(String, Option<std::path::PathBuf>)> {
    if let Some(t) = configured {
        return Ok((t.to_owned(), None));
    }
    let path = data_dir.join("approver-token");
    if let Some(t) = read_token(&path) {
        return Ok((t, Some(path)));
    }
    crate::store::create_private_dir(data_dir)?;
    let token = crate::random::hex(24).map_err(std::io::Error::other)?;
    let suffix = crate::random::hex(4).map_err(std::io::Error::other)?;
    let temporary = data_dir.join(format!(".approver-token.{}.{suffix}", std::process::id()));
    write_private(&temporary, &token)?;
    let linked = std::fs::hard_link(&temporary, &path);
    let outcome = match linked {
        Ok(()) => Ok((token, Some(path))),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match read_token(&path) {
            Some(theirs) => Ok((theirs, Some(path))),
            // An unusable file (empty or too short): replace it.
            None => std::fs::rename(&temporary, &path).map(|()| (token, Some(path))),
        },
        // No hard links on this file system: replace whatever is there.
        Err(_) => std::fs::rename(&temporary, &path).map(|()| (token, Some(path))),
    };
    let _ = std::fs::remove_file(&temporary);
    outcome
}

/// A usable token stored at `path`.
fn read_token(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let t = text.trim();
    (t.len() >= 16).then(|| t.to_owned())
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_starting_together_share_one_token() {
        let dir = std::env::temp_dir().join(format!(
            "mcp-gate-token-{}-{}",
            std::process::id(),
            crate::random::hex(4).unwrap()
        ));
        let tokens: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| load_or_create_token(None, &dir).unwrap().0.expose_secret().to_owned()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(tokens.iter().all(|t| t == &tokens[0] && t.len() == 48), "{tokens:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir), 0o700, "the data directory is private");
            assert_eq!(mode(&dir.join("approver-token")), 0o600, "the token file is private");
        }
        assert_eq!(load_or_create_token(None, &dir).unwrap().0.expose_secret().to_owned(), tokens[0]);
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("approver-token")], "no temporary files left behind");

        std::fs::write(dir.join("approver-token"), "short\n").unwrap();
        let replaced = load_or_create_token(None, &dir).unwrap().0.expose_secret().to_owned();
        assert_ne!(replaced, "short");
        assert_eq!(load_or_create_token(None, &dir).unwrap().0.expose_secret().to_owned(), replaced);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
