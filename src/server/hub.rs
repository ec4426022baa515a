//! One hub per machine: the mcp-gate processes of a machine that use the same database share one
//! approval server.
//!
//! Each AI client starts its own mcp-gate. The first one to bind the approval address
//! (`[approvals] listen`) is the **hub**: it serves the dashboard and the API and runs the
//! services only one process should run ([`Node`]'s `on_hub`: the expiry sweeper and warnings,
//! notifications). A later process that finds the address held by an mcp-gate using the same
//! database file (`GET /api/v1/hub`) becomes a **follower**: it keeps its held requests in the
//! shared store as before, announces its own changes to the hub (`POST /api/v1/hub/announce`) so
//! the hub's dashboard, event stream and notifications show them, and listens to the hub's
//! `GET /api/v1/events` to wake its waiting calls as soon as a decision lands there.
//!
//! When the hub exits, its followers' event streams end and each tries to bind the address after a
//! short random pause: one wins and becomes the hub, the others find it and follow it. After every
//! (re)connection a follower wakes all its waiting calls, which re-read their request from the
//! store, so a decision made while it was not listening still reaches them.
//!
//! A process does not share when its database is `:memory:` or the port is 0, nor when the
//! address is held by something else (another program, an mcp-gate with another database, one
//! that rejects our token): it serves on a free port of its own, as before.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tracing::{debug, info, warn};

use crate::approval::{ApprovalService, Change};
use crate::secret::{ExposeSecret, SecretString};
use crate::server::hub_api::{Announcement, HubInfo, SERVICE};
use crate::server::web::WebState;
use crate::store::{FileId, now_ms};
use crate::wire::sse::EventReader;

/// How long a probe of the approval address may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long an announcement to the hub may take before it is retried.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(5);

/// Silence on the hub's event stream (which sends a comment every 15 s) that counts as a lost hub.
const IDLE_TIMEOUT: Duration = Duration::from_secs(40);

/// The pause between attempts when the address is held by something we cannot follow.
const RETRY: Duration = Duration::from_secs(1);

impl HubInfo {
    /// Whether this hub uses our database: the same path and, when both are known, the same file.
    fn shares(&self, database: Option<&Path>, file_id: Option<FileId>) -> Sharing {
        if self.database.as_deref() != database {
            return Sharing::OtherPath;
        }
        match (&self.database_id, file_id) {
            (Some(theirs), Some(ours)) if *theirs != ours.to_string() => Sharing::OtherFile,
            _ => Sharing::Same,
        }
    }
}

/// What [`HubInfo::shares`] found.
#[derive(Debug, PartialEq, Eq)]
enum Sharing {
    Same,
    OtherPath,
    /// The same path, but another file: deleted or replaced under one of the two processes.
    OtherFile,
}

/// The error logged when the hub's database file is not ours although the path is.
fn split_file(listen: &str, info: &HubInfo, ours: Option<FileId>) {
    tracing::error!(
        %listen,
        "refusing to follow the hub (pid {}): it uses {} but not the same file (its file {}, ours {}); the \
         database was deleted or replaced under one of the two processes, and following would split the \
         approval queue. Serving approvals on a free port instead; restart the hub.",
        info.pid,
        info.database.as_deref().map_or_else(|| ":memory:".into(), |p| p.display().to_string()),
        info.database_id.as_deref().unwrap_or("?"),
        ours.map_or_else(|| "?".to_owned(), |id| id.to_string()),
    );
}

/// How a process starts, as found by [`discover`].
pub enum Start {
    /// Serve approvals here. `shared`: on the machine's approval address, as the hub.
    Serve { listener: TcpListener, shared: bool },
    /// Another mcp-gate with the same database serves the address: follow it.
    Follow(Hub),
}

/// A hub to follow.
#[derive(Debug, Clone)]
pub struct Hub {
    /// `http://ADDR` to reach it.
    pub base: String,
    pub info: HubInfo,
}

/// What a probe of the approval address found.
enum Probe {
    Gate(HubInfo),
    /// Nothing listens (yet, or any more).
    Refused,
    /// It answered 401 to our token.
    Unauthorized,
    /// Something that is not an mcp-gate, or not one we can talk to.
    Other(String),
    /// A listener that did not prove it knows the approver token: it was sent nothing.
    Unproven(String),
}

/// Binds the approval address, or finds the hub holding it, or falls back to a free port.
pub async fn discover(listen: &str, token: &str, database: Option<&Path>) -> std::io::Result<Start> {
    let addr: Option<SocketAddr> = listen.parse().ok();
    let shareable = database.is_some() && addr.is_some_and(|a| a.port() != 0);
    if !shareable {
        return match TcpListener::bind(listen).await {
            Ok(listener) => Ok(Start::Serve { listener, shared: false }),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                warn!(%listen, "approval port in use; using a free port instead");
                fallback(listen).await
            }
            Err(e) => Err(e),
        };
    }
    let client = client()?;
    let base = base_url(listen);
    // The file just opened at `database`: its identity now is the store's.
    let file_id = database.and_then(|p| FileId::of(p).ok().flatten());
    // A hub that is exiting refuses connections before it releases the port: try again.
    for _ in 0..20 {
        match TcpListener::bind(listen).await {
            Ok(listener) => return Ok(Start::Serve { listener, shared: true }),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
            Err(e) => return Err(e),
        }
        match probe(&client, &base, token).await {
            Probe::Gate(info) if info.shares(database, file_id) == Sharing::Same => {
                return Ok(Start::Follow(Hub { base, info }));
            }
            Probe::Gate(info) if info.shares(database, file_id) == Sharing::OtherFile => {
                split_file(listen, &info, file_id);
                return fallback(listen).await;
            }
            Probe::Refused => tokio::time::sleep(jitter()).await,
            other => {
                warn!(%listen, "{}; serving approvals on a free port instead", why_not(&other, database));
                return fallback(listen).await;
            }
        }
    }
    warn!(%listen, "the approval address is in use but nothing answers there; serving approvals on a free port instead");
    fallback(listen).await
}

/// Why the process at the approval address cannot be followed.
fn why_not(probe: &Probe, database: Option<&Path>) -> String {
    match probe {
        Probe::Gate(info) => format!(
            "the approval address is held by mcp-gate (pid {}) using another database ({}, not {})",
            info.pid,
            info.database.as_deref().map_or_else(|| ":memory:".into(), |p| p.display().to_string()),
            database.map_or_else(|| ":memory:".into(), |p| p.display().to_string()),
        ),
        Probe::Unauthorized => "the mcp-gate at the approval address rejected our approver token (processes share \
                                a hub only with the same data directory or MCP_GATE_TOKEN)"
            .to_owned(),
        Probe::Other(what) => format!("the approval address is held by something that is not mcp-gate ({what})"),
        Probe::Refused => "nothing answers at the approval address".to_owned(),
        Probe::Unproven(why) => format!(
            "the listener at the approval address is not mcp-gate or not one we trust: {why} (another program \
             may be squatting the port)"
        ),
    }
}

/// A free port on the approval address's interface (loopback when it names none).
async fn fallback(listen: &str) -> std::io::Result<Start> {
    let ip = listen.parse::<SocketAddr>().map_or_else(|_| "127.0.0.1".parse().ok(), |a| Some(a.ip()));
    let any = SocketAddr::new(ip.unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()), 0);
    Ok(Start::Serve { listener: TcpListener::bind(any).await?, shared: false })
}

fn client() -> std::io::Result<reqwest::Client> {
    // Loopback traffic must not go through a proxy from the environment. It is plain HTTP to the
    // approval address (`base_url`), so the client trusts no certificate authority: loading the
    // system's roots would cost every process several milliseconds at start for nothing.
    // Should the TLS library refuse an empty set of authorities, the client is built with the
    // system's, still without a proxy (the token must not pass through one). When neither can be
    // built, the process does not start: no other client would keep the token off a proxy.
    let builder = || reqwest::Client::builder().no_proxy().connect_timeout(PROBE_TIMEOUT);
    builder()
        .tls_certs_only(Vec::<reqwest::Certificate>::new())
        .build()
        .or_else(|_| builder().build())
        .map_err(|e| std::io::Error::other(format!("cannot build the approval address's HTTP client: {e}")))
}

/// The URL to reach the approval address from this machine (a wildcard address as loopback).
fn base_url(listen: &str) -> String {
    match listen.parse::<SocketAddr>() {
        Ok(mut a) => {
            if a.ip().is_unspecified() {
                a.set_ip(if a.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            format!("http://{a}")
        }
        Err(_) => format!("http://{listen}"),
    }
}

async fn probe(client: &reqwest::Client, base: &str, token: &str) -> Probe {
    use crate::server::handshake::HandshakeError;
    // The listener proves it knows the token before the token is sent.
    match tokio::time::timeout(PROBE_TIMEOUT, crate::server::handshake::verify_listener(client, base, token)).await {
        Err(_) => return Probe::Other(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())),
        Ok(Ok(())) => {}
        Ok(Err(HandshakeError::Refused(_))) => return Probe::Refused,
        Ok(Err(HandshakeError::UnknownKey)) => return Probe::Unauthorized,
        Ok(Err(HandshakeError::Unreachable(e))) => return Probe::Other(format!("no HTTP answer: {e}")),
        Ok(Err(e)) => return Probe::Unproven(e.to_string()),
    }
    let sent = client.get(format!("{base}/api/v1/hub")).bearer_auth(token).timeout(PROBE_TIMEOUT).send().await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Probe::Refused,
        Err(e) if e.is_timeout() => return Probe::Other(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())),
        Err(e) => return Probe::Other(format!("no HTTP answer: {e}")),
    };
    let status = resp.status();
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Probe::Unauthorized;
    }
    if !status.is_success() {
        return Probe::Other(format!("GET /api/v1/hub answered {status}"));
    }
    match resp.json::<HubInfo>().await {
        Ok(info) if info.service == SERVICE => Probe::Gate(info),
        Ok(info) => Probe::Other(format!("it says it is {:?}", info.service)),
        Err(e) => Probe::Other(format!("GET /api/v1/hub answered something else: {e}")),
    }
}

/// A random pause of up to 200 ms, so that followers racing for the address spread out.
fn jitter() -> Duration {
    let mut b = [0u8; 2];
    let _ = crate::random::fill(&mut b);
    Duration::from_millis(u64::from(u16::from_le_bytes(b) % 200))
}

/// This process's part: what it serves as the hub, or how it follows one.
pub struct Node {
    pub approvals: Arc<ApprovalService>,
    /// The approval server, served when this process is (or becomes) the hub.
    pub web: Arc<WebState>,
    /// The machine's approval address (`[approvals] listen`).
    pub listen: String,
    /// The approver token, presented to the hub.
    pub token: SecretString,
    /// Starts the services only the hub runs. Called once, when this process becomes the hub:
    /// at start-up, or when it takes over from a hub that exited.
    pub on_hub: Box<dyn FnOnce() + Send>,
}

/// Where a follower stands.
#[derive(Debug, Clone)]
enum Role {
    /// Looking for a hub (or about to become it).
    Joining,
    Follower {
        base: String,
    },
    /// This process is the hub since `since` (unix ms); changes made here from then on were
    /// seen by the hub's own subscribers.
    Hub {
        since: i64,
    },
}

/// A running [`Node`].
struct Running {
    approvals: Arc<ApprovalService>,
    web: Arc<WebState>,
    listen: String,
    token: SecretString,
    on_hub: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    client: reqwest::Client,
}

impl Node {
    /// Serves, or follows the hub, as `start` says. Returns at once; the work is done by tasks.
    pub fn start(self, start: Start) -> std::io::Result<()> {
        let node = Arc::new(Running {
            approvals: self.approvals,
            web: self.web,
            listen: self.listen,
            token: self.token,
            on_hub: Mutex::new(Some(self.on_hub)),
            client: client()?,
        });
        match start {
            Start::Serve { listener, shared } => node.become_hub(listener, shared),
            Start::Follow(hub) => {
                // Subscribed before any call can be held, so every local change is announced.
                let changes = node.approvals.changes.subscribe();
                let (role, seen) = watch::channel(Role::Joining);
                tokio::spawn(node.clone().forward(changes, seen));
                tokio::spawn(node.follow(hub, role));
            }
        }
        Ok(())
    }
}

impl Running {
    /// Serves the approval server on `listener` and starts the hub's services.
    fn become_hub(&self, listener: TcpListener, shared: bool) {
        let url = listener.local_addr().map(|a| format!("http://{a}/")).unwrap_or_default();
        let web = self.web.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::server::web::serve(listener, web, std::future::pending()).await {
                tracing::error!("approval server stopped: {e}");
            }
        });
        let start_services = self.on_hub.lock().ok().and_then(|mut f| f.take());
        if let Some(start_services) = start_services {
            start_services();
        }
        if shared {
            info!("approvals at {url} (hub)");
        } else {
            info!("approvals at {url} (this process only)");
        }
        // Decisions may have been recorded while no hub was listening.
        self.approvals.wake_all();
    }

    /// Follows `hub` until it goes away, then takes over or follows whoever did; returns once
    /// this process is the hub.
    async fn follow(self: Arc<Self>, mut hub: Hub, role: watch::Sender<Role>) {
        loop {
            role.send_replace(Role::Follower { base: hub.base.clone() });
            let url = self.approvals.settings.public_url.trim_end_matches('/');
            info!("approvals at {url}/ (via the hub, pid {})", hub.info.pid);
            match self.listen_to(&hub.base).await {
                Ok(()) => info!(pid = hub.info.pid, "the hub's event stream ended"),
                Err(Lost::Gone(e)) => info!(pid = hub.info.pid, "the hub is gone: {e}"),
                Err(Lost::Failed(e)) => {
                    warn!(pid = hub.info.pid, "cannot follow the hub's events: {e}");
                    tokio::time::sleep(RETRY).await;
                }
            }
            role.send_replace(Role::Joining);
            hub = match self.take_over_or_find().await {
                Some(next) => next,
                None => {
                    role.send_replace(Role::Hub { since: now_ms() });
                    return;
                }
            };
        }
    }

    /// After losing the hub: binds the address (this process is now the hub: `None`), or finds
    /// the mcp-gate that did.
    async fn take_over_or_find(&self) -> Option<Hub> {
        let base = base_url(&self.listen);
        let database = self.approvals.store.path();
        let mut warned = false;
        loop {
            tokio::time::sleep(jitter()).await;
            match TcpListener::bind(&self.listen).await {
                Ok(listener) => {
                    info!("took over the approval address");
                    self.become_hub(listener, true);
                    return None;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
                Err(e) => {
                    if !std::mem::replace(&mut warned, true) {
                        warn!(listen = %self.listen, "cannot bind the approval address: {e}; retrying");
                    }
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
            let file_id = self.approvals.store.file_id();
            match probe(&self.client, &base, self.token.expose_secret()).await {
                Probe::Gate(info) if info.shares(database, file_id) == Sharing::Same => {
                    return Some(Hub { base, info });
                }
                Probe::Gate(info) if info.shares(database, file_id) == Sharing::OtherFile => {
                    if !std::mem::replace(&mut warned, true) {
                        split_file(&self.listen, &info, file_id);
                    }
                    self.approvals.wake_all();
                    tokio::time::sleep(RETRY).await;
                }
                Probe::Refused => {}
                other => {
                    if !std::mem::replace(&mut warned, true) {
                        warn!(listen = %self.listen, "{}; retrying", why_not(&other, database));
                    }
                    // Meanwhile, a decision can only reach the waiting calls through the store.
                    self.approvals.wake_all();
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }

    /// Listens to the hub's change stream and wakes the local calls waiting on each changed
    /// request. Returns when the stream ends.
    async fn listen_to(&self, base: &str) -> Result<(), Lost> {
        self.verify(base).await.map_err(|e| match e {
            crate::server::handshake::HandshakeError::Refused(e) => Lost::Gone(e),
            e => Lost::Failed(e.to_string()),
        })?;
        let resp = self
            .client
            .get(format!("{base}/api/v1/events"))
            .bearer_auth(self.token.expose_secret())
            .send()
            .await
            .map_err(|e| if e.is_connect() { Lost::Gone(e.to_string()) } else { Lost::Failed(e.to_string()) })?;
        if !resp.status().is_success() {
            return Err(Lost::Failed(format!("GET /api/v1/events answered {}", resp.status())));
        }
        // The hub subscribed before answering: whatever happened until now is in the store.
        self.approvals.wake_all();
        let mut events = EventReader::new(Box::pin(resp.bytes_stream()));
        loop {
            let event = match tokio::time::timeout(IDLE_TIMEOUT, events.next_event()).await {
                Ok(Some(Ok(event))) => event,
                Ok(Some(Err(e))) => return Err(Lost::Gone(e.to_string())),
                Ok(None) => return Ok(()),
                Err(_) => return Err(Lost::Failed(format!("no word from the hub for {} s", IDLE_TIMEOUT.as_secs()))),
            };
            if event.event_type() == "resync" {
                self.approvals.wake_all();
                continue;
            }
            match changed_id(&event.data) {
                Some(id) => {
                    debug!(id, event = event.event_type(), "a change on the hub");
                    self.approvals.wake(&id);
                }
                None if event.data.is_empty() => {}
                None => debug!(event = event.event_type(), "an event from the hub without an approval id"),
            }
        }
    }

    /// Announces this process's own changes to the hub, in order, retrying until the hub takes
    /// them. If this process becomes the hub, the changes not yet announced are published here.
    async fn forward(self: Arc<Self>, mut changes: broadcast::Receiver<Change>, mut role: watch::Receiver<Role>) {
        loop {
            let change = match changes.recv().await {
                Ok(c) if c.relayed => continue,
                Ok(c) => c,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    warn!("{n} changes were not announced to the hub (the dashboard still lists them)");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let note = Announcement { kind: change.kind, id: change.approval.id.clone(), actor: change.actor.clone() };
            loop {
                let current = role.borrow_and_update().clone();
                match current {
                    Role::Hub { since } => {
                        if change.at >= since {
                            // Published after this process became the hub: its subscribers saw it,
                            // and so they see everything from now on.
                            return;
                        }
                        let republished = self.approvals.changed_elsewhere(note.kind, &note.id, note.actor.as_deref());
                        if let Err(e) = republished.await {
                            warn!(id = %note.id, "re-reading a change failed: {e}");
                        }
                        break;
                    }
                    Role::Follower { base } => match self.announce(&base, &note).await {
                        Ok(()) => break,
                        Err(Refusal::Final(e)) => {
                            warn!(id = %note.id, kind = %note.kind, "the hub refused a change: {e}");
                            break;
                        }
                        Err(Refusal::Again(e)) => {
                            debug!(id = %note.id, "announcing to the hub failed, will retry: {e}");
                            let _ = tokio::time::timeout(Duration::from_millis(250), role.changed()).await;
                        }
                    },
                    Role::Joining => {
                        if role.changed().await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Has the listener at `base` prove it knows the token before it is sent there; one that
    /// fails is reported.
    async fn verify(&self, base: &str) -> Result<(), crate::server::handshake::HandshakeError> {
        let verified = tokio::time::timeout(
            PROBE_TIMEOUT,
            crate::server::handshake::verify_listener(&self.client, base, self.token.expose_secret()),
        )
        .await
        .unwrap_or_else(|_| {
            Err(crate::server::handshake::HandshakeError::Unreachable(format!(
                "no answer within {} s",
                PROBE_TIMEOUT.as_secs()
            )))
        });
        if let Err(e) = &verified
            && e.is_unproven()
        {
            warn!(listen = %self.listen, "the listener at {base} {e}");
        }
        verified
    }

    async fn announce(&self, base: &str, note: &Announcement) -> Result<(), Refusal> {
        self.verify(base).await.map_err(|e| Refusal::Again(e.to_string()))?;
        let resp = self
            .client
            .post(format!("{base}/api/v1/hub/announce"))
            .bearer_auth(self.token.expose_secret())
            .json(note)
            .timeout(ANNOUNCE_TIMEOUT)
            .send()
            .await
            .map_err(|e| Refusal::Again(e.to_string()))?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else if status.is_server_error() {
            Err(Refusal::Again(format!("{status}")))
        } else {
            Err(Refusal::Final(format!("{status}: {}", resp.text().await.unwrap_or_default())))
        }
    }
}

/// Why following the hub's events stopped.
enum Lost {
    /// The connection went away: the hub probably exited.
    Gone(String),
    /// The hub answered, but not with an event stream.
    Failed(String),
}

/// Why an announcement did not land.
enum Refusal {
    /// Worth retrying (the hub is away or busy).
    Again(String),
    /// The hub will never take it.
    Final(String),
}

/// The approval id of a change event's data (`{"approval": {"id": ...}}`).
fn changed_id(data: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Data {
        approval: Id,
    }
    #[derive(Deserialize)]
    struct Id {
        id: String,
    }
    serde_json::from_str::<Data>(data).ok().map(|d| d.approval.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_of_a_change_event() {
        let data = r#"{"kind":"approved","at":1,"actor":"ann","approval":{"id":"apr_1","status":"approved"}}"#;
        assert_eq!(changed_id(data).as_deref(), Some("apr_1"));
        assert_eq!(changed_id(r#"{"missed":3}"#), None);
        assert_eq!(changed_id("not json"), None);
    }

    #[test]
    fn wildcard_addresses_are_reached_on_loopback() {
        assert_eq!(base_url("127.0.0.1:8377"), "http://127.0.0.1:8377");
        assert_eq!(base_url("0.0.0.0:8377"), "http://127.0.0.1:8377");
        assert_eq!(base_url("[::]:8377"), "http://[::1]:8377");
    }

    #[test]
    fn a_hub_with_another_file_at_the_same_path_is_not_shared() {
        let hub = |database_id: Option<&str>| HubInfo {
            service: SERVICE.into(),
            version: "0".into(),
            pid: 1,
            database: Some("/data/mcp-gate.db".into()),
            database_id: database_id.map(str::to_owned),
        };
        let path = Some(Path::new("/data/mcp-gate.db"));
        let ours = Some(FileId { dev: 1, ino: 2 });
        assert_eq!(hub(Some("1:2")).shares(path, ours), Sharing::Same);
        assert_eq!(hub(Some("1:3")).shares(path, ours), Sharing::OtherFile);
        assert_eq!(hub(None).shares(path, ours), Sharing::Same, "an older hub that does not say");
        assert_eq!(hub(Some("1:2")).shares(Some(Path::new("/other.db")), ours), Sharing::OtherPath);
        let v = serde_json::to_value(hub(Some("1:2"))).unwrap();
        assert_eq!(v["database_id"], "1:2");
    }

    #[tokio::test]
    async fn in_memory_or_port_zero_never_joins() {
        let start = discover("127.0.0.1:0", "token-0123456789abcdef", Some(Path::new("/tmp/x.db"))).await.unwrap();
        assert!(matches!(start, Start::Serve { shared: false, .. }));
        let held = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = held.local_addr().unwrap().to_string();
        let start = discover(&addr, "token-0123456789abcdef", None).await.unwrap();
        let Start::Serve { listener, shared: false } = start else { panic!("serves alone") };
        assert_ne!(listener.local_addr().unwrap().to_string(), addr, "a free port instead");
    }
}
