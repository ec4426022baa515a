//! Each upstream as the session sees it: its link, its pending requests and their deadlines, its
//! tool list; and what happens when it stops: pending requests fail, it is restarted with backoff
//! and re-initialized, and the client is told its lists may have changed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use serde_json::value::RawValue;
use tracing::{info, warn};

use super::relay::Pending;
use super::{Input, Route, Session};
use crate::config::{ServerConfig, UpstreamTransport};
use crate::gate::Outcome;
use crate::gate::tools::ToolList;
use crate::upstream::{self, Reporter, UpstreamLink};
use crate::wire::era::{self, Era};
use crate::wire::jsonrpc::{self, Message, code};

pub(super) struct Upstream {
    pub(super) cfg: Arc<ServerConfig>,
    pub(super) link: Option<UpstreamLink>,
    pub(super) generation: u64,
    pub(super) next_id: u64,
    /// Requests sent to it and not answered yet, by our id. Entered and left only through
    /// [`Upstream::wait_for`] and [`Upstream::answered`], which keep `deadlines` alongside.
    pub(super) pending: HashMap<u64, Pending>,
    /// When each pending request times out.
    pub(super) deadlines: HashMap<u64, tokio::time::Instant>,
    pub(super) tools: Option<ToolList>,
    pub(super) fetching_tools: bool,
    pub(super) started: Instant,
    pub(super) failures: u32,
    pub(super) init_result: Option<Value>,
}

impl Upstream {
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
            self.deadlines.insert(id, tokio::time::Instant::now() + timeout);
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
    pub(super) fn overdue(&self, now: tokio::time::Instant) -> Vec<u64> {
        self.deadlines.iter().filter(|(_, d)| **d <= now).map(|(id, _)| *id).collect()
    }
}

impl Session {
    pub(super) fn on_upstream_closed(&mut self, index: usize, reason: String) {
        let up = &mut self.upstreams[index];
        let name = up.cfg.name.clone();
        warn!(server = %name, %reason, "upstream stopped");
        up.link = None;
        up.tools = None;
        up.fetching_tools = false;
        let pending = up.take_pending();
        let text = format!("upstream `{name}` stopped before answering: {reason}");
        for (_, p) in pending {
            match p {
                Pending::Client { client_id, hook, .. } => {
                    if let Some(hook) = hook {
                        hook(Outcome::Error(&text));
                    }
                    self.client_requests.remove(client_id.get());
                    self.reply_error(Some(client_id), code::UPSTREAM_ERROR, &text);
                }
                Pending::Fanout(f) => {
                    let error = jsonrpc::to_raw(&serde_json::json!({"code": code::UPSTREAM_ERROR, "message": text}));
                    self.fanout_part(f, index, Err(error));
                }
                Pending::ToolsFetch(_) => self.tools_fetched(index, None),
                Pending::Reinit => {}
            }
        }
        self.server_requests.retain(|_, (i, _)| *i != index);
        self.schedule_restart(index);
    }

    /// Answers every request its upstream has not answered within its timeout with an error
    /// naming the server and the timeout, and cancels it upstream.
    pub(super) fn time_out_overdue(&mut self) {
        let now = tokio::time::Instant::now();
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
                };
                let (secs, key) = if method == "initialize" {
                    (cfg.initialize_timeout.as_secs(), "initialize_timeout_secs")
                } else {
                    (cfg.request_timeout.as_secs(), "request_timeout_secs")
                };
                let text = format!("upstream `{name}` did not answer `{method}` within {secs} s (`{key}`)");
                warn!(server = %name, up_id, "{text}");
                if method != "initialize" {
                    let params = serde_json::json!({"requestId": up_id, "reason": "timed out"});
                    let cancel = Message::notification("notifications/cancelled", Some(jsonrpc::to_raw(&params)));
                    self.send_upstream(index, &cancel, None);
                }
                self.fail_pending(index, pending, &text);
            }
        }
    }

    pub(super) fn schedule_restart(&mut self, index: usize) {
        let up = &mut self.upstreams[index];
        if up.started.elapsed() > Duration::from_secs(60) {
            up.failures = 0;
        }
        let delay = Duration::from_millis(250u64.saturating_mul(1 << up.failures.min(7))).min(Duration::from_secs(30));
        up.failures += 1;
        let generation = up.generation + 1;
        let cfg = up.cfg.clone();
        let reporter = Reporter::new(index, generation, self.up_tx.clone());
        let Some(tx) = self.self_tx.upgrade() else { return };
        info!(server = %cfg.name, delay_ms = delay.as_millis() as u64, "restarting upstream");
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if tx.is_closed() {
                return;
            }
            let link = upstream::connect(&cfg, reporter).await.map_err(|e| e.to_string());
            let _ = tx.send(Input::Restarted { index, generation, link });
        });
        // Reports from the old transport are ignored from now on.
        up.generation = generation;
    }

    pub(super) fn on_restarted(&mut self, index: usize, generation: u64, link: Result<UpstreamLink, String>) {
        if self.upstreams[index].generation != generation {
            return;
        }
        match link {
            Ok(link) => {
                let up = &mut self.upstreams[index];
                up.link = Some(link);
                up.started = Instant::now();
                info!(server = %up.cfg.name, "upstream restarted");
                match self.initialize_params.clone() {
                    Some(params) => self.internal_request(index, "initialize", Some(params), Pending::Reinit),
                    None => self.announce_list_changes(index),
                }
            }
            Err(e) => {
                warn!(server = %self.upstreams[index].cfg.name, "restart failed: {e}");
                self.schedule_restart(index);
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
