//! Relaying across the session: every request sent upstream gets a fresh id and its answer is
//! mapped back to the client's id; requests from an upstream get a fresh id towards the client;
//! progress tokens, cancellations and subscription ids are mapped the same way.

use bytes::Bytes;
use serde_json::Value;
use serde_json::value::RawValue;
use tracing::{debug, warn};

use super::upstreams::Tools;
use super::{Pending, Route, Session, SessionError};
use crate::gate::tools::ToolList;
use crate::gate::{Outcome, OutcomeHook};
use crate::upstream::Outgoing;
use crate::wire::era;
use crate::wire::jsonrpc::{self, Message};

pub(super) struct ProgressEntry {
    pub(super) client_id: String,
    /// The client's own token when the session remapped it.
    pub(super) original: Option<Box<RawValue>>,
}

impl Session {
    pub(super) fn on_client_response(&mut self, mut msg: Message) {
        let Some(our_id) = msg.id_text().and_then(|t| t.parse::<u64>().ok()) else {
            warn!("response from the client with an id the proxy never sent; dropped");
            return;
        };
        if self.own_requests.remove(&our_id) {
            // The answer to the proxy's own elicitation: nothing to do with it.
            return;
        }
        let Some((index, up_id)) = self.server_requests.remove(&our_id) else {
            warn!(id = our_id, "response from the client to no pending request; dropped");
            return;
        };
        msg.id = Some(up_id);
        self.send_upstream(index, &msg, None);
    }

    /// Sends a client request to one upstream under a fresh id.
    pub(super) fn forward(&mut self, index: usize, msg: Message, param_headers: Vec<(String, String)>) {
        self.forward_tracked(index, msg, param_headers, None);
    }

    pub(super) fn forward_tracked(
        &mut self,
        index: usize,
        mut msg: Message,
        param_headers: Vec<(String, String)>,
        hook: Option<OutcomeHook>,
    ) {
        let Some(client_id) = msg.id.take() else { return };
        if !self.upstreams[index].link.is_up() {
            let error = SessionError::Restarting { server: self.upstreams[index].cfg.name.clone() };
            // Nothing was sent: an approved call keeps its approval for the retry.
            if let Some(hook) = hook {
                hook(Outcome::NotRun);
            }
            self.reply_error(Some(client_id), &error);
            return;
        }
        let method = msg.method().to_owned();
        if method == "tools/call" || method.starts_with("prompts/get") || method == "resources/read" {
            self.track_progress(&mut msg, client_id.get());
        }
        let up = &mut self.upstreams[index];
        let up_id = up.next_id;
        up.next_id += 1;
        let tools_first_page = method == "tools/list" && !has_cursor(&msg);
        self.client_requests.insert(client_id.get().to_owned(), (index, up_id));
        up.wait_for(
            up_id,
            &method,
            Pending::Client {
                client_id,
                method: method.clone(),
                tools_first_page,
                hook: hook.map(super::Tracked::new),
            },
        );
        msg.id = Some(jsonrpc::number_id(up_id));
        let mut out = outgoing(&msg, up.is_http());
        out.request_id = Some(up_id);
        out.param_headers = param_headers;
        let Some(Err(e)) = up.link.link().map(|link| link.send(out)) else { return };
        // Refused: the request gets its error now.
        let error = SessionError::Refused { server: up.cfg.name.clone(), error: e };
        warn!("{error}");
        if let Some(mut pending) = up.answered(up_id) {
            // Nothing was sent: an approved call keeps its approval for the retry.
            if let Pending::Client { hook, .. } = &mut pending
                && let Some(hook) = hook.take()
            {
                hook.report(Outcome::NotRun);
            }
            self.fail_pending(index, pending, &error);
        }
    }

    /// Records a request's progress token so its notifications reach the right client stream,
    /// remapping it when the session is shared.
    pub(super) fn track_progress(&mut self, msg: &mut Message, client_id: &str) {
        let Some(params) = msg.params.as_deref() else { return };
        if !jsonrpc::may_hold(params.get(), "progressToken") {
            return;
        }
        let Ok(mut obj) = jsonrpc::parse_object(params) else { return };
        let Some(meta) = jsonrpc::get(&obj, "_meta") else { return };
        let Ok(mut meta) = jsonrpc::parse_object(meta) else { return };
        let Some(token) = jsonrpc::get(&meta, "progressToken").map(|t| t.to_owned()) else { return };
        if self.opts.shared {
            let ours = jsonrpc::to_raw(&format!("mcp-gate-{}", self.next_progress));
            self.next_progress += 1;
            self.progress.insert(
                jsonrpc::value_key(&ours),
                ProgressEntry { client_id: client_id.to_owned(), original: Some(token) },
            );
            jsonrpc::set(&mut meta, "progressToken", ours);
            jsonrpc::set(&mut obj, "_meta", jsonrpc::object_to_raw(&meta));
            msg.params = Some(jsonrpc::object_to_raw(&obj));
        } else {
            self.progress
                .insert(jsonrpc::value_key(&token), ProgressEntry { client_id: client_id.to_owned(), original: None });
        }
    }

    pub(super) fn send_upstream(&mut self, index: usize, msg: &Message, request_id: Option<u64>) {
        let up = &self.upstreams[index];
        let Some(link) = up.link.link() else {
            debug!(server = %up.cfg.name, method = msg.method(), "upstream down; message dropped");
            return;
        };
        let mut out = outgoing(msg, up.is_http());
        out.request_id = request_id;
        if let Err(e) = link.send(out) {
            warn!(server = %up.cfg.name, method = msg.method(), "message dropped: {e}");
            // A request the proxy sent for itself fails now rather than at its deadline.
            if let Some(id) = request_id
                && let Some(pending) = self.upstreams[index].answered(id)
            {
                let error = SessionError::Refused { server: self.upstreams[index].cfg.name.clone(), error: e };
                self.fail_pending(index, pending, &error);
            }
        }
    }

    /// Sends the proxy's own request to an upstream.
    pub(super) fn internal_request(
        &mut self,
        index: usize,
        method: &str,
        params: Option<Box<RawValue>>,
        pending: Pending,
    ) {
        let params = self.with_modern_meta(params);
        let up = &mut self.upstreams[index];
        let up_id = up.next_id;
        up.next_id += 1;
        up.wait_for(up_id, method, pending);
        let msg = Message::request(jsonrpc::number_id(up_id), method, params);
        self.send_upstream(index, &msg, Some(up_id));
    }

    /// The upstream's answer to `up_id` was over the size limit: the request gets an error.
    pub(super) fn on_too_large(&mut self, index: usize, up_id: u64) {
        let Some(pending) = self.upstreams[index].answered(up_id) else { return };
        let error = SessionError::TooLarge {
            server: self.upstreams[index].cfg.name.clone(),
            limit: crate::wire::MAX_MESSAGE_BYTES,
        };
        warn!(up_id, "{error}");
        self.fail_pending(index, pending, &error);
    }

    /// Answers a request that will get no answer from its upstream with an error.
    pub(super) fn fail_pending(&mut self, index: usize, pending: Pending, error: &SessionError) {
        match pending {
            Pending::Client { client_id, hook, .. } => {
                if let Some(hook) = hook {
                    hook.report(Outcome::Error(&error.to_string()));
                }
                self.client_requests.remove(client_id.get());
                if !self.progress.is_empty() {
                    self.progress.retain(|_, e| e.client_id != client_id.get());
                }
                self.reply_error(Some(client_id), error);
            }
            Pending::Fanout(f) => self.fanout_part(f, index, Err(error.to_error_object())),
            Pending::ToolsFetch(_) => self.tools_fetched(index, None),
            Pending::Reinit => {}
            Pending::Task(hook) => hook.report(Outcome::Error(error.to_error_object().get())),
        }
    }

    pub(super) fn on_upstream_response(&mut self, index: usize, mut msg: Message) {
        let Some(up_id) = msg.id_text().and_then(|t| t.parse::<u64>().ok()) else {
            warn!(server = %self.upstreams[index].cfg.name, "response with an id the proxy never sent: {msg}");
            return;
        };
        let Some(pending) = self.upstreams[index].answered(up_id) else {
            debug!(server = %self.upstreams[index].cfg.name, up_id, "response to a cancelled or unknown request");
            return;
        };
        match pending {
            Pending::Client { client_id, method, tools_first_page, hook } => {
                if let Some(hook) = hook {
                    match (&msg.result, &msg.error) {
                        (Some(result), _) => hook.report(Outcome::Result(result)),
                        (None, Some(error)) => hook.report(Outcome::Error(error.get())),
                        (None, None) => hook.report(Outcome::Error("empty response")),
                    }
                }
                self.client_requests.remove(client_id.get());
                if !self.progress.is_empty() {
                    self.progress.retain(|_, e| e.client_id != client_id.get());
                }
                if let Some(result) = msg.result.as_deref() {
                    self.observe_result(index, &method, result, tools_first_page);
                }
                if method == "tools/list"
                    && self.opts.gate.hides_any()
                    && let Some(result) = msg.result.as_deref()
                {
                    msg.result = Some(self.without_hidden_tools(index, result));
                }
                if method == "server/discover"
                    && self.opts.gate.offers_tasks()
                    && let Some(result) = msg.result.as_deref()
                {
                    msg.result = Some(self.with_tasks_extension(result));
                }
                if self.offers_tasks()
                    && let Some(result) = msg.result.as_deref()
                {
                    match method.as_str() {
                        "initialize" => msg.result = Some(self.with_task_capabilities(result)),
                        "tools/list" => msg.result = Some(self.with_task_support(index, result)),
                        _ => {}
                    }
                }
                msg.id = Some(client_id);
                self.downstream.send(&msg, Route::Reply);
            }
            Pending::Fanout(fanout_id) => {
                let outcome = match (msg.result, msg.error) {
                    (Some(r), _) => Ok(r),
                    (None, Some(e)) => Err(e),
                    (None, None) => Err(SessionError::EmptyResponse.to_error_object()),
                };
                self.fanout_part(fanout_id, index, outcome);
            }
            Pending::ToolsFetch(mut pages) => {
                let Some(result) = msg.result else {
                    warn!(server = %self.upstreams[index].cfg.name, "tools/list failed: {}", msg.error.as_deref().map_or("", RawValue::get));
                    return self.tools_fetched(index, None);
                };
                let next = jsonrpc::string_field(&result, "nextCursor");
                pages.push(result);
                match next {
                    Some(cursor) if pages.len() < 1000 => {
                        let params = jsonrpc::to_raw(&serde_json::json!({ "cursor": cursor }));
                        self.internal_request(index, "tools/list", Some(params), Pending::ToolsFetch(pages));
                    }
                    _ => {
                        let list = ToolList::from_pages(&pages);
                        self.tools_fetched(index, Some(list));
                    }
                }
            }
            Pending::Task(hook) => match (&msg.result, &msg.error) {
                (Some(result), _) => hook.report(Outcome::Result(result)),
                (None, Some(error)) => hook.report(Outcome::Error(error.get())),
                (None, None) => hook.report(Outcome::Error("empty response")),
            },
            Pending::Reinit => {
                if msg.result.is_some() {
                    self.upstreams[index]
                        .set_init_result(msg.result.as_deref().and_then(|r| serde_json::from_str(r.get()).ok()));
                    self.send_upstream(index, &Message::notification("notifications/initialized", None), None);
                    self.announce_list_changes(index);
                } else {
                    warn!(server = %self.upstreams[index].cfg.name, "re-initialize after restart failed: {msg}");
                }
            }
        }
    }

    /// Keeps what the proxy needs from results it relays (single upstream).
    pub(super) fn observe_result(&mut self, index: usize, method: &str, result: &RawValue, tools_first_page: bool) {
        match method {
            "tools/list" if tools_first_page => {
                if jsonrpc::string_field(result, "nextCursor").is_none()
                    && let Ok(list) = ToolList::from_result(result)
                {
                    self.upstreams[index].tools = Tools::Known(list);
                }
            }
            "initialize" => self.upstreams[index].set_init_result(serde_json::from_str(result.get()).ok()),
            "tools/call" if self.multi => {
                // A task handle (2025-11-25 `task.taskId`, 2026-07-28 `taskId`) belongs to this upstream.
                if let Ok(v) = serde_json::from_str::<Value>(result.get())
                    && let Some(id) = v.pointer("/task/taskId").or_else(|| v.get("taskId")).and_then(Value::as_str)
                {
                    self.task_routes.insert(id.to_owned(), index);
                }
            }
            _ => {}
        }
    }

    pub(super) fn on_upstream_request(&mut self, index: usize, mut msg: Message, related: Option<u64>) {
        let our_id = self.next_client_id;
        self.next_client_id += 1;
        let Some(up_id) = msg.id.replace(jsonrpc::number_id(our_id)) else { return };
        self.server_requests.insert(our_id, (index, up_id));
        let related = self.related_client_request(index, related);
        match related {
            Some(id) => self.downstream.send(&msg, Route::Related(&id)),
            None => self.downstream.send(&msg, Route::Unrelated),
        }
    }

    /// The client request an upstream message belongs to: the one whose HTTP stream carried it,
    /// or the only one in flight.
    pub(super) fn related_client_request(&self, index: usize, related: Option<u64>) -> Option<String> {
        if let Some(up_id) = related
            && let Some(Pending::Client { client_id, .. }) = self.upstreams[index].pending.get(&up_id)
        {
            return Some(client_id.get().to_owned());
        }
        let mut in_flight = self.client_requests.iter().filter(|(_, (i, _))| *i == index);
        match (in_flight.next(), in_flight.next()) {
            (Some((id, _)), None) => Some(id.clone()),
            _ => None,
        }
    }

    pub(super) fn on_upstream_notification(&mut self, index: usize, mut msg: Message, related: Option<u64>) {
        match msg.method() {
            "notifications/progress" => {
                let Some(params) = msg.params.as_deref() else { return };
                let Ok(mut obj) = jsonrpc::parse_object(params) else { return };
                // Compared by value: the client reads `"a\u002db"` as `"a-b"` and `7.0` as `7`.
                let Some(token) = jsonrpc::get(&obj, "progressToken").map(jsonrpc::value_key) else { return };
                if self.held_progress.contains(&token) && !self.progress.contains_key(&token) {
                    warn!(server = %self.upstreams[index].cfg.name, "dropped progress for a held call");
                    return;
                }
                let Some(entry) = self.progress.get(&token) else {
                    return self.downstream.send(&msg, Route::Unrelated);
                };
                let client_id = entry.client_id.clone();
                if let Some(original) = &entry.original {
                    jsonrpc::set(&mut obj, "progressToken", original.clone());
                    msg.params = Some(jsonrpc::object_to_raw(&obj));
                }
                self.downstream.send(&msg, Route::Related(&client_id));
                return;
            }
            "notifications/cancelled" => {
                // Cancels a request the upstream sent to the client, or ends a listen stream
                // the client opened (2026-07-28).
                let Some(params) = msg.params.as_deref() else { return };
                let Ok(mut obj) = jsonrpc::parse_object(params) else { return };
                let Some(request_id) = jsonrpc::get(&obj, "requestId").map(|r| r.get().to_owned()) else { return };
                let ours = self
                    .server_requests
                    .iter()
                    .find(|(_, (i, up))| *i == index && up.get() == request_id)
                    .map(|(ours, _)| *ours);
                let mapped = match ours {
                    Some(ours) => {
                        self.server_requests.remove(&ours);
                        Some(jsonrpc::number_id(ours))
                    }
                    None => request_id.parse::<u64>().ok().and_then(|up_id| {
                        match self.upstreams[index].pending.get(&up_id) {
                            Some(Pending::Client { client_id, .. }) => Some(client_id.clone()),
                            _ => None,
                        }
                    }),
                };
                let Some(mapped) = mapped else { return };
                jsonrpc::set(&mut obj, "requestId", mapped);
                msg.params = Some(jsonrpc::object_to_raw(&obj));
            }
            "notifications/tools/list_changed" => {
                self.upstreams[index].tools.changed();
            }
            _ => {}
        }
        let listen = self.map_subscription_id(index, &mut msg);
        let related = match msg.method() {
            "notifications/message" => self.related_client_request(index, related),
            _ => related.and_then(|r| match self.upstreams[index].pending.get(&r) {
                Some(Pending::Client { client_id, .. }) => Some(client_id.get().to_owned()),
                _ => None,
            }),
        };
        let related = related.or(listen);
        match related {
            Some(id) => self.downstream.send(&msg, Route::Related(&id)),
            None => self.downstream.send(&msg, Route::Unrelated),
        }
    }

    /// A notification of a `subscriptions/listen` stream (2026-07-28) names the stream by the id
    /// the upstream got; the client knows it by its own. Returns that id: the stream it goes on.
    pub(super) fn map_subscription_id(&self, index: usize, msg: &mut Message) -> Option<String> {
        let params = msg.params.as_deref()?;
        if !jsonrpc::may_hold(params.get(), era::SUBSCRIPTION_META) {
            return None;
        }
        let mut obj = jsonrpc::parse_object(params).ok()?;
        let mut meta = jsonrpc::parse_object(jsonrpc::get(&obj, "_meta")?).ok()?;
        let up_id = jsonrpc::get(&meta, era::SUBSCRIPTION_META)?.get().parse::<u64>().ok()?;
        let Some(Pending::Client { client_id, .. }) = self.upstreams[index].pending.get(&up_id) else { return None };
        jsonrpc::set(&mut meta, era::SUBSCRIPTION_META, client_id.clone());
        jsonrpc::set(&mut obj, "_meta", jsonrpc::object_to_raw(&meta));
        msg.params = Some(jsonrpc::object_to_raw(&obj));
        Some(client_id.get().to_owned())
    }
}

pub(super) fn has_cursor(msg: &Message) -> bool {
    msg.params
        .as_deref()
        .is_some_and(|p| jsonrpc::may_hold(p.get(), "cursor") && jsonrpc::string_field(p, "cursor").is_some())
}

/// Serializes a message for an upstream, with HTTP header material when it goes over HTTP.
pub(super) fn outgoing(msg: &Message, http: bool) -> Outgoing {
    let mut out = Outgoing::plain(Bytes::from(msg.to_bytes()));
    if !http {
        return out;
    }
    out.method = msg.method.clone();
    if let Some(params) = msg.params.as_deref() {
        out.protocol_version = era::request_version(msg);
        out.name = match msg.method() {
            "tools/call" | "prompts/get" => jsonrpc::string_field(params, "name"),
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => jsonrpc::string_field(params, "uri"),
            m if m.starts_with("tasks/") => jsonrpc::string_field(params, "taskId"),
            _ => None,
        };
    }
    out
}

/// The progress token of a request, if it carries one, as compared ([`jsonrpc::value_key`]).
pub(super) fn progress_token(msg: &Message) -> Option<String> {
    let params = msg.params.as_deref()?;
    if !jsonrpc::may_hold(params.get(), "progressToken") {
        return None;
    }
    let obj = jsonrpc::parse_object(params).ok()?;
    let meta = jsonrpc::parse_object(jsonrpc::get(&obj, "_meta")?).ok()?;
    jsonrpc::get(&meta, "progressToken").map(jsonrpc::value_key)
}
