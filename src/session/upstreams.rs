//! Each upstream as the session sees it: its link, its pending requests and their deadlines, its
//! tool list; and what happens when it stops: pending requests fail, it is restarted with backoff
//! and re-initialized, and the client is told its lists may have changed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::time::Instant;
use tracing::{info, warn};

use super::Pending;
use super::{Input, Route, Session, SessionError};
use crate::gate::tools::ToolList;
use crate::upstream::settings::{ServerConfig, UpstreamTransport};
use crate::upstream::{self, ConnectError, Reporter, UpstreamLink};
use crate::wire::era::{self, Era};
use crate::wire::jsonrpc::{self, Message};

/// Starts the transport of one upstream. The session calls it for each upstream when it starts
/// and again for each restart; [`Transports`] starts the real ones, and a test can hand the
/// session the other end of an in-memory link instead.
pub trait Connector: Send + Sync + 'static {
    fn connect(
        &self,
        server: Arc<ServerConfig>,
        reporter: Reporter,
    ) -> BoxFuture<'static, Result<UpstreamLink, ConnectError>>;
}

/// The real transports: [`crate::upstream::connect`].
pub struct Transports;

impl Connector for Transports {
    fn connect(
        &self,
        server: Arc<ServerConfig>,
        reporter: Reporter,
    ) -> BoxFuture<'static, Result<UpstreamLink, ConnectError>> {
        Box::pin(async move { upstream::connect(&server, reporter).await })
    }
}

/// A run that lasted this long was not a crash loop: the next restart starts the backoff over.
const STABLE_RUN: Duration = Duration::from_secs(60);

/// The wait before the restart that follows `attempt` earlier failures in a row: 250 ms,
/// doubling, at most 30 s.
pub(super) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << attempt.min(7))).min(Duration::from_secs(30))
}

/// Whether an upstream's transport runs. Reports carry the generation of the transport that
/// sent them; those of an older one are ignored.
pub(super) enum Link {
    /// Running since `since`; `failures` restarts in a row failed or crashed before it.
    Up { link: UpstreamLink, generation: u64, since: Instant, failures: u32 },
    /// Stopped: transport `generation` is being started after its backoff (this is restart
    /// number `attempt` in a row).
    Restarting { generation: u64, attempt: u32 },
}

impl Link {
    pub(super) fn link(&self) -> Option<&UpstreamLink> {
        match self {
            Link::Up { link, .. } => Some(link),
            Link::Restarting { .. } => None,
        }
    }

    pub(super) fn is_up(&self) -> bool {
        matches!(self, Link::Up { .. })
    }

    pub(super) fn generation(&self) -> u64 {
        match self {
            Link::Up { generation, .. } | Link::Restarting { generation, .. } => *generation,
        }
    }
}

/// What the session knows of an upstream's tools, which the gate needs to judge a call.
pub(super) enum Tools {
    /// Not listed yet, or the list changed, or the upstream restarted.
    Unknown,
    /// The proxy asked for the list; calls that need it are parked until it comes.
    Fetching,
    Known(ToolList),
}

impl Tools {
    pub(super) fn known(&self) -> Option<&ToolList> {
        match self {
            Tools::Known(list) => Some(list),
            Tools::Unknown | Tools::Fetching => None,
        }
    }

    /// The upstream said its list changed. A fetch under way is answered with the list as it is
    /// now, so it stays under way.
    pub(super) fn changed(&mut self) {
        match self {
            Tools::Known(_) => *self = Tools::Unknown,
            Tools::Unknown | Tools::Fetching => {}
        }
    }
}

pub(super) struct Upstream {
    pub(super) cfg: Arc<ServerConfig>,
    pub(super) link: Link,
    pub(super) next_id: u64,
    /// Requests sent to it and not answered yet, by our id. Entered and left only through
    /// [`Upstream::wait_for`] and [`Upstream::answered`], which keep `deadlines` alongside.
    pub(super) pending: HashMap<u64, Pending>,
    /// When each pending request times out.
    pub(super) deadlines: HashMap<u64, Instant>,
    pub(super) tools: Tools,
    /// Its `initialize` result; set through [`Upstream::set_init_result`].
    pub(super) init_result: Option<Value>,
    /// The era of the protocol version in `init_result`, read once when it is set (asked of
    /// every request that does not declare its own).
    pub(super) init_era: Option<Era>,
}

impl Upstream {
    /// An upstream whose first transport is running.
    pub(super) fn new(cfg: Arc<ServerConfig>, link: UpstreamLink) -> Upstream {
        Upstream {
            cfg,
            link: Link::Up { link, generation: 1, since: Instant::now(), failures: 0 },
            next_id: 1,
            pending: HashMap::new(),
            deadlines: HashMap::new(),
            tools: Tools::Unknown,
            init_result: None,
            init_era: None,
        }
    }

    /// Keeps its `initialize` result (`None`: none, or unreadable) and the era it negotiated.
    pub(super) fn set_init_result(&mut self, result: Option<Value>) {
        self.init_era = result.as_ref().and_then(|r| r.get("protocolVersion")?.as_str()).map(Era::of_version);
        self.init_result = result;
    }

    pub(super) fn is_http(&self) -> bool {
        !matches!(self.cfg.transport, UpstreamTransport::Stdio { .. })
    }

    /// Records a request sent under `id`, with its deadline.
    /// A `subscriptions/listen` stream is open by design until the client ends it: it has no
    /// deadline.
    pub(super) fn wait_for(&mut self, id: u64, method: &str, pending: Pending) {
        let timeout = match method {
            "subscriptions/listen" => None,
            "initialize" => Some(self.cfg.initialize_timeout),
            _ => Some(self.cfg.request_timeout),
        };
        if let Some(timeout) = timeout {
            self.deadlines.insert(id, Instant::now() + timeout);
        }
        self.pending.insert(id, pending);
    }

    /// The request `id` is answered (or given up): no longer pending.
    pub(super) fn answered(&mut self, id: u64) -> Option<Pending> {
        self.deadlines.remove(&id);
        self.pending.remove(&id)
    }

    /// Every pending request, which will not be answered.
    pub(super) fn take_pending(&mut self) -> HashMap<u64, Pending> {
        self.deadlines.clear();
        std::mem::take(&mut self.pending)
    }

    /// The pending requests whose deadline has passed.
    pub(super) fn overdue(&self, now: Instant) -> Vec<u64> {
        self.deadlines.iter().filter(|(_, d)| **d <= now).map(|(id, _)| *id).collect()
    }
}

impl Session {
    pub(super) fn on_upstream_closed(&mut self, index: usize, reason: String) {
        let up = &mut self.upstreams[index];
        let name = up.cfg.name.clone();
        warn!(server = %name, %reason, "upstream stopped");
        crate::metrics::upstream_error(&name, crate::metrics::UpstreamError::Stopped);
        let attempt = match up.link {
            Link::Up { since, .. } if since.elapsed() > STABLE_RUN => 0,
            Link::Up { failures, .. } => failures,
            // The new transport ended before the session saw it start: that restart failed.
            Link::Restarting { attempt, .. } => attempt,
        };
        up.tools = Tools::Unknown;
        // Down from here on: nothing of what follows is sent to the stopped transport.
        self.schedule_restart(index, attempt);
        let pending = self.upstreams[index].take_pending();
        let error = SessionError::Stopped { server: name, reason };
        for (_, p) in pending {
            self.fail_pending(index, p, &error);
        }
        self.server_requests.retain(|_, (i, _)| *i != index);
    }

    /// Answers every request its upstream has not answered within its timeout with an error
    /// naming the server and the timeout, and cancels it upstream.
    pub(super) fn time_out_overdue(&mut self) {
        let now = Instant::now();
        for index in 0..self.upstreams.len() {
            for up_id in self.upstreams[index].overdue(now) {
                let up = &mut self.upstreams[index];
                let Some(pending) = up.answered(up_id) else { continue };
                let (name, cfg) = (up.cfg.name.clone(), up.cfg.clone());
                let method = match &pending {
                    Pending::Client { method, .. } => method.as_str(),
                    Pending::Fanout(f) => self.fanouts.get(f).map_or("", |f| f.method.as_str()),
                    Pending::ToolsFetch(_) => "tools/list",
                    Pending::Reinit => "initialize",
                    Pending::Task(_) => "tools/call",
                };
                let (secs, key) = if method == "initialize" {
                    (cfg.initialize_timeout.as_secs(), "initialize_timeout_secs")
                } else {
                    (cfg.request_timeout.as_secs(), "request_timeout_secs")
                };
                let error = SessionError::TimedOut { server: name.clone(), method: method.to_owned(), secs, key };
                warn!(server = %name, up_id, "{error}");
                crate::metrics::upstream_error(&name, crate::metrics::UpstreamError::TimedOut);
                if method != "initialize" {
                    let params = serde_json::json!({"requestId": up_id, "reason": "timed out"});
                    let cancel = Message::notification("notifications/cancelled", Some(jsonrpc::to_raw(&params)));
                    self.send_upstream(index, &cancel, None);
                }
                self.fail_pending(index, pending, &error);
            }
        }
    }

    /// Starts the next transport of an upstream after the backoff for `attempt` failures in a
    /// row. From now on, reports of the old transport are ignored.
    fn schedule_restart(&mut self, index: usize, attempt: u32) {
        let up = &mut self.upstreams[index];
        let delay = backoff(attempt);
        let generation = up.link.generation() + 1;
        up.link = Link::Restarting { generation, attempt: attempt + 1 };
        let cfg = up.cfg.clone();
        let reporter = Reporter::new(index, generation, self.up_tx.clone());
        let Some(tx) = self.self_tx.upgrade() else { return };
        let connector = self.connector.clone();
        info!(server = %cfg.name, delay_ms = delay.as_millis() as u64, "restarting upstream");
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if tx.is_closed() {
                return;
            }
            let link = connector.connect(cfg, reporter).await;
            let _ = tx.send(Input::Restarted { index, generation, link });
        });
    }

    pub(super) fn on_restarted(&mut self, index: usize, generation: u64, link: Result<UpstreamLink, ConnectError>) {
        let up = &mut self.upstreams[index];
        let attempt = match up.link {
            Link::Restarting { generation: g, attempt } if g == generation => attempt,
            // A restart that was superseded, or an upstream already up.
            Link::Restarting { .. } | Link::Up { .. } => return,
        };
        match link {
            Ok(link) => {
                up.link = Link::Up { link, generation, since: Instant::now(), failures: attempt };
                info!(server = %up.cfg.name, "upstream restarted");
                crate::metrics::upstream_restarted(&up.cfg.name);
                match self.initialize_params.clone() {
                    Some(params) => self.internal_request(index, "initialize", Some(params), Pending::Reinit),
                    None => self.announce_list_changes(index),
                }
            }
            Err(e) => {
                warn!(server = %up.cfg.name, "restart failed: {e}");
                crate::metrics::upstream_error(&up.cfg.name, crate::metrics::UpstreamError::RestartFailed);
                self.schedule_restart(index, attempt);
            }
        }
    }

    /// After a restart the upstream's lists may differ: tell the client to list again.
    pub(super) fn announce_list_changes(&mut self, index: usize) {
        match self.era {
            // A client that has said nothing yet has listed nothing that could be stale.
            None => return,
            Some(Era::Modern) => return self.announce_on_listens(),
            Some(Era::Legacy) if self.initialize_params.is_some() && !self.client_initialized => return,
            Some(Era::Legacy) => {}
        }
        let caps = self.upstreams[index].init_result.as_ref().and_then(|r| r.get("capabilities")).cloned();
        for (cap, method) in [
            ("tools", "notifications/tools/list_changed"),
            ("prompts", "notifications/prompts/list_changed"),
            ("resources", "notifications/resources/list_changed"),
        ] {
            if caps.as_ref().is_none_or(|c| c.get(cap).is_some()) {
                self.downstream.send(&Message::notification(method, None), Route::Unrelated);
            }
        }
    }

    /// 2026-07-28 delivers list changes only on the `subscriptions/listen` streams that asked
    /// for them, tagged with the stream's id: unsolicited ones are not part of that version. The
    /// proxy announces a restart on every listen stream still open (one that went to the
    /// restarted upstream has already ended with an error, and the client listens again).
    pub(super) fn announce_on_listens(&mut self) {
        self.listens.retain(|id, _| self.client_requests.contains_key(id));
        for (id, filter) in &self.listens {
            for (wanted, method) in [
                ("toolsListChanged", "notifications/tools/list_changed"),
                ("promptsListChanged", "notifications/prompts/list_changed"),
                ("resourcesListChanged", "notifications/resources/list_changed"),
            ] {
                if filter.get(wanted).and_then(Value::as_bool) != Some(true) {
                    continue;
                }
                let Ok(subscription) = RawValue::from_string(id.clone()) else { continue };
                let params = serde_json::json!({ "_meta": { era::SUBSCRIPTION_META: subscription } });
                let note = Message::notification(method, Some(jsonrpc::to_raw(&params)));
                self.downstream.send(&note, Route::Related(id));
            }
        }
    }
}
