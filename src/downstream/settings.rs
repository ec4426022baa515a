//! `[listen]`: where `mcp-gate serve` takes clients, with what token, and how many; `[stdio]`:
//! how a client that started mcp-gate is served.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::http::listener::ListenerLimits;
use crate::settings::{Invalid, secs};

/// Default `[listen] max_sessions`.
pub const DEFAULT_MAX_SESSIONS: usize = 64;
/// Default `[listen] session_idle_secs`.
pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(600);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub addr: Option<String>,
    pub token_env: Option<String>,
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    pub max_sessions: Option<usize>,
    pub session_idle_secs: Option<u64>,
    pub max_connections: Option<usize>,
    pub header_timeout_secs: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Listen {
    pub addr: Option<SocketAddr>,
    /// Bearer token required from downstream HTTP clients, if set.
    pub token: Option<String>,
    /// Where `token` came from (`listen.token_env (VAR)` or `MCP_GATE_HTTP_TOKEN`), for messages.
    pub token_key: String,
    /// Extra Host header values accepted besides loopback names.
    pub allowed_hosts: Vec<String>,
    /// Extra Origin values accepted besides loopback origins.
    pub allowed_origins: Vec<String>,
    /// Most client sessions of `serve` open at once (each has its own upstream children).
    pub max_sessions: usize,
    /// A session unused this long is closed, with its upstreams.
    pub session_idle: Duration,
    /// Connection limits of the MCP endpoint.
    pub limits: ListenerLimits,
}

impl Listen {
    /// Validates `[listen]`; the token comes from `token_env`, else `MCP_GATE_HTTP_TOKEN`.
    pub fn validate(raw: RawListen) -> Result<Listen, Invalid> {
        let addr = match raw.addr {
            Some(a) => Some(a.parse().map_err(|e| Invalid::new("listen.addr", format!("{a:?}: {e}")))?),
            None => None,
        };
        let (token, token_key) = match raw.token_env {
            Some(var) => {
                (
                    Some(std::env::var(&var).map_err(|_| {
                        Invalid::new("listen.token_env", format!("environment variable {var} is not set"))
                    })?),
                    format!("listen.token_env ({var})"),
                )
            }
            None => (std::env::var("MCP_GATE_HTTP_TOKEN").ok().filter(|t| !t.is_empty()), "MCP_GATE_HTTP_TOKEN".into()),
        };
        let max_sessions = raw.max_sessions.unwrap_or(DEFAULT_MAX_SESSIONS);
        if max_sessions == 0 {
            return Err(Invalid::new("listen.max_sessions", "must be at least 1"));
        }
        Ok(Listen {
            addr,
            token,
            token_key,
            allowed_hosts: raw.allowed_hosts,
            allowed_origins: raw.allowed_origins,
            max_sessions,
            session_idle: secs("listen.session_idle_secs", raw.session_idle_secs, DEFAULT_SESSION_IDLE)?,
            limits: ListenerLimits::validate("listen", raw.max_connections, raw.header_timeout_secs)?,
        })
    }
}

/// `[stdio]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStdio {
    pub busy_poll_us: Option<u64>,
}

/// `[stdio]`: settings of stdio mode (`mcp-gate` started by its client). `serve` ignores them.
#[derive(Debug, Clone)]
pub struct Stdio {
    /// The longest the event loop polls its pipes after a message before it sleeps (zero: it
    /// sleeps at once). See [`super::busy_poll`].
    pub busy_poll: Duration,
}

/// `[stdio] busy_poll_us` unless set: 1 ms, above the time a sequential Python SDK client takes
/// between an answer and its next call on two virtual CPUs (its whole call, direct, takes
/// 0.4–0.5 ms there).
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_millis(1);

impl Default for Stdio {
    fn default() -> Stdio {
        Stdio { busy_poll: DEFAULT_BUSY_POLL }
    }
}

impl Stdio {
    pub fn validate(raw: RawStdio) -> Result<Stdio, Invalid> {
        let busy_poll = raw.busy_poll_us.map_or(DEFAULT_BUSY_POLL, Duration::from_micros);
        if busy_poll > super::busy_poll::MAX_WINDOW {
            return Err(Invalid::new(
                "stdio.busy_poll_us",
                format!(
                    "{} is more than the most allowed, {}",
                    busy_poll.as_micros(),
                    super::busy_poll::MAX_WINDOW.as_micros()
                ),
            ));
        }
        Ok(Stdio { busy_poll })
    }
}
