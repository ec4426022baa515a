//! The sessions of the endpoint: opening one within `max_sessions` (a place kept for each agent),
//! the shared sessions of sessionless clients, draining, reaping idle ones.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use dashmap::DashMap;
use tracing::{info, warn};

use super::{DRAIN_WAIT, HttpOptions, HttpState, Operations, Refusal, Streams, random_id};
use crate::http::guard::{bearer_matches, bearer_token};
use crate::session::{self, SessionHandle, SessionOptions};

pub(super) struct HttpSession {
    pub(super) endpoint: String,
    /// The authenticated agent that opened it; only that agent may use it.
    pub(super) agent: Option<String>,
    pub(super) handle: SessionHandle,
    pub(super) streams: Arc<Streams>,
    pub(super) last_used: Mutex<Instant>,
    /// Requests in flight longer than this are stuck: they no longer keep the session open.
    pub(super) stuck_after: Duration,
    /// Its place under `max_sessions`, given back when the session is dropped.
    pub(super) _slot: Place,
    /// Counted in `mcp_gate_sessions_open` while it exists.
    pub(super) _counted: crate::metrics::SessionOpen,
}

/// Places under `max_sessions` held by each principal: an agent, or `None` for anonymous clients.
/// Only principals holding at least one are present.
pub(super) type Held = Arc<Mutex<HashMap<Option<String>, usize>>>;

/// A session's place under `max_sessions`, counted for its principal; both are given back when
/// it is dropped.
pub(super) struct Place {
    pub(super) _slot: tokio::sync::OwnedSemaphorePermit,
    pub(super) agent: Option<String>,
    pub(super) held: Held,
}

impl Drop for Place {
    fn drop(&mut self) {
        let Ok(mut held) = self.held.lock() else { return };
        if let Some(n) = held.get_mut(&self.agent) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.agent);
            }
        }
    }
}

impl HttpSession {
    pub(super) fn touch(&self) {
        if let Ok(mut t) = self.last_used.lock() {
            *t = Instant::now();
        }
    }

    /// Whether the reaper should close it: unused for `idle`, with no request in flight that is
    /// not stuck, or its actor already gone.
    pub(super) fn reapable(&self, idle: Duration) -> bool {
        if self.handle.is_closed() {
            return true;
        }
        let unused = self.last_used.lock().map(|t| t.elapsed()).unwrap_or_default();
        if unused < idle {
            return false;
        }
        let Ok(inner) = self.streams.inner.lock() else { return true };
        inner.by_request.values().all(|open| open.since.elapsed() >= self.stuck_after)
    }
}

impl HttpState {
    /// The state of an endpoint whose `/readyz` checks nothing.
    pub fn new(opts: HttpOptions) -> Arc<HttpState> {
        HttpState::with_operations(opts, Operations::default())
    }

    pub fn with_operations(opts: HttpOptions, ops: Operations) -> Arc<HttpState> {
        let mut principals: Vec<Option<String>> = opts.agents.principals().map(|p| Some(p.name.clone())).collect();
        if !principals.is_empty() && opts.token.is_some() {
            principals.push(None);
        }
        Arc::new(HttpState {
            sessions: DashMap::new(),
            shared: tokio::sync::Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            slots: Arc::new(tokio::sync::Semaphore::new(opts.limits.max_sessions)),
            held: Held::default(),
            principals,
            opts,
            ops,
        })
    }

    pub(super) fn session_options(&self, endpoint: &str) -> Option<&SessionOptions> {
        if endpoint.is_empty() { Some(&self.opts.all) } else { self.opts.single.get(endpoint) }
    }

    pub(super) async fn new_session(
        &self,
        endpoint: &str,
        agent: Option<&str>,
        shared: bool,
    ) -> Result<(String, Arc<HttpSession>), Refusal> {
        let mut opts = self.session_options(endpoint).ok_or(Refusal::UnknownEndpoint)?.clone();
        let slot = match self.admit(agent) {
            Ok(place) => place,
            Err(_) => {
                // Sessions past their idle time may still hold places: close them first.
                self.reap().await;
                self.admit(agent).inspect_err(|_| {
                    warn!(limit = self.opts.limits.max_sessions, agent, "session refused: too many sessions");
                })?
            }
        };
        let stuck_after = opts.servers.iter().map(|s| s.request_timeout).max().unwrap_or_default();
        let id = random_id()?;
        opts.shared = shared;
        opts.agent = agent.map(str::to_owned);
        opts.label = if shared { format!("http-shared/{endpoint}") } else { format!("http/{}", &id[..8]) };
        let streams = Arc::new(Streams::default());
        let (handle, _task) = session::start(opts, streams.clone()).await?;
        let session = Arc::new(HttpSession {
            endpoint: endpoint.to_owned(),
            agent: agent.map(str::to_owned),
            handle,
            streams,
            last_used: Mutex::new(Instant::now()),
            stuck_after,
            _slot: slot,
            _counted: crate::metrics::session_open(shared),
        });
        if !shared {
            self.sessions.insert(id.clone(), session.clone());
            info!(session = &id[..8], endpoint, "session opened");
        }
        Ok((id, session))
    }

    /// Takes a place under `max_sessions` for `agent`. With `[[agents]]`, one place is kept for
    /// each other principal that holds none: an agent that already holds a session may not take
    /// those, so no agent can lock the others out by opening sessions up to the cap.
    pub(super) fn admit(&self, agent: Option<&str>) -> Result<Place, Refusal> {
        let limit = self.opts.limits.max_sessions;
        let mut held = self.held.lock().map_err(|_| Refusal::Poisoned)?;
        let key = agent.map(str::to_owned);
        if held.contains_key(&key) {
            let kept = self.principals.iter().filter(|p| **p != key && !held.contains_key(*p)).count();
            if self.slots.available_permits() <= kept {
                return Err(Refusal::Reserved(limit));
            }
        }
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| Refusal::Full(limit))?;
        *held.entry(key.clone()).or_default() += 1;
        Ok(Place { _slot: slot, agent: key, held: self.held.clone() })
    }

    pub(super) async fn shared_session(
        &self,
        endpoint: &str,
        agent: Option<&str>,
    ) -> Result<Arc<HttpSession>, Refusal> {
        let mut shared = self.shared.lock().await;
        let key = (endpoint.to_owned(), agent.map(str::to_owned));
        if let Some(s) = shared.get(&key)
            && !s.handle.is_closed()
        {
            return Ok(s.clone());
        }
        // A closed one gives its place back before a new one takes it.
        shared.remove(&key);
        drop(shared);
        let (_, s) = self.new_session(endpoint, agent, true).await?;
        let mut shared = self.shared.lock().await;
        if let Some(other) = shared.get(&key)
            && !other.handle.is_closed()
        {
            // Another request opened it meanwhile: use that one.
            return Ok(other.clone());
        }
        shared.insert(key, s.clone());
        Ok(s)
    }

    /// Who sends this request: `Ok(Some(agent))` for an agent token, `Ok(None)` for an
    /// anonymous client (allowed when no token is required), `Err` when it must be refused.
    pub(super) fn caller(&self, headers: &HeaderMap) -> Result<Option<String>, ()> {
        // Hashing the token is skipped when no agents are configured (the common case).
        let presented = bearer_token(headers).filter(|_| !self.opts.agents.is_empty());
        if let Some(agent) = presented.and_then(|t| self.opts.agents.authenticate(t)) {
            return Ok(Some(agent.name.clone()));
        }
        match &self.opts.token {
            Some(token) if bearer_matches(headers, token) => Ok(None),
            Some(_) => Err(()),
            None if self.opts.agents.is_empty() => Ok(None),
            None => Err(()),
        }
    }

    pub(super) fn all_sessions(&self) -> Vec<Arc<HttpSession>> {
        let mut all: Vec<_> = self.sessions.iter().map(|s| s.value().clone()).collect();
        if let Ok(shared) = self.shared.try_lock() {
            all.extend(shared.values().cloned());
        }
        all
    }

    /// Shutdown: waits up to [`DRAIN_WAIT`] for requests in flight (held calls answer at once
    /// when the approvals stop waiting), then ends every stream and session, which stops the
    /// upstreams.
    pub(super) async fn drain_and_close(&self) {
        let deadline = tokio::time::Instant::now() + DRAIN_WAIT;
        loop {
            let in_flight: usize = self.all_sessions().iter().map(|s| s.streams.in_flight()).sum();
            if in_flight == 0 {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                warn!(in_flight, "stopping with requests still in flight; they are answered with an error");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for session in self.all_sessions() {
            session.streams.close("mcp-gate is shutting down");
        }
        self.sessions.clear();
        self.shared.lock().await.clear();
    }

    /// Closes idle, abandoned and stuck sessions (see [`HttpLimits::session_idle`]), the shared
    /// ones included; their upstreams stop.
    pub(super) async fn reap(&self) {
        let idle = self.opts.limits.session_idle;
        let mut closed = Vec::new();
        self.sessions.retain(|id, s| {
            let keep = !s.reapable(idle);
            if !keep {
                info!(session = &id[..8], "idle session closed");
                closed.push(s.clone());
            }
            keep
        });
        self.shared.lock().await.retain(|(endpoint, _), s| {
            let keep = !s.reapable(idle);
            if !keep {
                info!(endpoint, "idle shared session closed");
                closed.push(s.clone());
            }
            keep
        });
        for s in closed {
            s.streams.close("the session was closed: idle, or its requests got no answer");
        }
    }
}
