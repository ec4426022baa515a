//! `tools/call`: routed to its upstream, judged by the [`Gate`](crate::gate::Gate) (allowed,
//! answered by the proxy, or held until decided), parked while the upstream's tool list is being
//! fetched, and the approval URL offered to a client that takes URL elicitation.

use std::collections::HashMap;

use serde_json::Value;
use serde_json::value::RawValue;
use tracing::{info, warn};

use super::Pending;
use super::relay::progress_token;
use super::upstreams::Tools;
use super::{HeldRoute, Input, Route, Session, SessionError, merge, param_headers};
use crate::gate::tools::ToolList;
use crate::gate::{
    APPROVAL_INPUT, CancellationToken, Channel, Gate, HeldSink, OWN_STATE_PREFIX, Offered, Outcome, ProgressSink,
    RefusedCall, ToolCall, Verdict, is_own_state,
};
use crate::wire::era::{self, Era};
use crate::wire::jsonrpc::{self, Message};

impl Session {
    pub(super) fn on_tools_call(&mut self, msg: Message, param_headers: Vec<(String, String)>) {
        let Some(params) = msg.params.as_deref() else {
            return self.reply_error(msg.id, &SessionError::BadParams("tools/call needs params"));
        };
        // The message passed the strict reading, so this parse sees exactly what the upstream
        // will; should it fail anyway, the call is refused rather than judged on a default. It is
        // the one parse of the params: the tool's name, the gate's facts and the offers come from it.
        let parsed = serde_json::from_str::<Value>(params.get());
        let name = match &parsed {
            Ok(Value::Object(p)) => p.get("name").and_then(Value::as_str).map(str::to_owned),
            _ => jsonrpc::string_field(params, "name"),
        };
        let Some(name) = name else {
            return self.reply_error(msg.id, &SessionError::BadParams("tools/call needs a tool name"));
        };
        let (index, tool_name) = match self.route_tool(&name) {
            Ok(Some(route)) => route,
            Ok(None) => {
                // An unprefixed tool of a server whose list we do not have yet.
                self.park(msg, param_headers);
                return;
            }
            Err(e) => return self.reply_error(msg.id, &e),
        };
        let up = &self.upstreams[index];
        let tool = match up.tools.known() {
            Some(list) => list.get(&tool_name),
            None if up.link.is_up() => {
                self.park(msg, param_headers);
                self.fetch_tools(index);
                return;
            }
            // The upstream is down: forward() answers with the error.
            None => return self.forward(index, msg, param_headers),
        };
        let (arguments, offered) = match parsed {
            Ok(Value::Object(mut p)) => {
                let offered = self.offered(&msg, &p);
                (p.remove("arguments").unwrap_or(Value::Null), offered)
            }
            Ok(_) => return self.reply_error(msg.id, &SessionError::BadParams("tools/call params must be an object")),
            Err(e) => return self.refuse_call(msg, index, name, SessionError::UnreadableParams(e.to_string())),
        };
        // An argument the policy does not see under the name the tool declares, but a server that
        // matches keys loosely reads as that property.
        if let Some((key, property)) = tool.and_then(|t| t.case_variant_argument(&arguments)) {
            let error = SessionError::CaseVariantArgument { key: key.to_owned(), property: property.to_owned() };
            return self.refuse_call(msg, index, name, error);
        }
        // The `Mcp-Param-*` headers sent upstream say what the judged arguments say.
        let schema = tool.and_then(|t| t.tool.as_ref()).map(|t| t.input_schema.as_ref());
        let param_headers = match param_headers::mirror(schema, &arguments, param_headers) {
            Ok(headers) => headers,
            Err(mismatch) => {
                return self.refuse_call(msg, index, name, SessionError::HeaderMismatch(mismatch.to_string()));
            }
        };
        let gone = CancellationToken::new();
        let owner = self.owner();
        let call = ToolCall {
            server: &self.upstreams[index].cfg.name,
            tool: &tool_name,
            exposed_name: &name,
            arguments: &arguments,
            info: tool,
            agent: self.agent(),
            owner: &owner,
            offered: &offered,
            params,
            progress: self.progress_sink(&msg, &gone),
            held: self.held_sink(&msg),
            gone: gone.clone(),
        };
        match self.opts.gate.check(&call) {
            Verdict::Hold(wait) => {
                let Some(id) = msg.id_text().map(str::to_owned) else { return };
                self.held.insert(id, gone.clone());
                // A weak handle: a held call does not keep its session alive.
                let tx = self.self_tx.clone();
                if let Some(token) = progress_token(&msg) {
                    self.held_progress.insert(token);
                }
                let msg = Box::new(msg);
                let route = Box::new(HeldRoute { index, tool: tool_name, exposed: name, param_headers, gone });
                tokio::spawn(async move {
                    let verdict = wait.await;
                    match tx.upgrade() {
                        Some(tx) => {
                            let _ = tx.send(Input::Resume { msg, verdict, route });
                        }
                        None => {
                            if let Verdict::AllowTracked(hook) = verdict {
                                hook(Outcome::NotRun);
                            }
                        }
                    }
                });
            }
            verdict => self.apply_verdict_routed(msg, verdict, index, &tool_name, &name, param_headers),
        }
        self.note_channel(&offered);
    }

    /// Answers a call refused before it could be judged with `error`, and has it audited as refused.
    fn refuse_call(&mut self, msg: Message, index: usize, name: String, error: SessionError) {
        let reason = error.to_string();
        let names = [name];
        let server = self.upstreams[index].cfg.name.clone();
        let refused = RefusedCall { server: &server, tool_names: &names, agent: self.agent(), reason: &reason };
        self.opts.gate.refused(&refused);
        self.reply_error(msg.id, &error);
    }

    pub(super) fn apply_verdict_routed(
        &mut self,
        mut msg: Message,
        verdict: Verdict,
        index: usize,
        tool: &str,
        exposed: &str,
        param_headers: Vec<(String, String)>,
    ) {
        match verdict {
            Verdict::Allow => {
                if tool != exposed {
                    rename_param(&mut msg, tool);
                }
                strip_own_input(&mut msg, &*self.opts.gate);
                self.forward(index, msg, param_headers);
            }
            Verdict::AllowTracked(hook) => {
                if tool != exposed {
                    rename_param(&mut msg, tool);
                }
                strip_own_input(&mut msg, &*self.opts.gate);
                self.forward_tracked(index, msg, param_headers, Some(hook));
            }
            Verdict::Respond(result) => {
                let era = self.era_of(&msg);
                let asked = msg.id_text().is_some_and(|id| self.elicited.contains_key(id));
                if era == Era::Legacy && !asked && self.elicits_approval(&msg) {
                    // 2026-07-28 has no server-to-client requests: the URL is in the result.
                    self.offer_approval_url(&result);
                }
                self.reply(msg.id, era::own_result(result, era))
            }
            Verdict::Hold(_) => self.reply_error(msg.id, &SessionError::HeldTwice),
            Verdict::Refuse(e) => self.reply_error(msg.id, &SessionError::Gate(e)),
            Verdict::Task { created, start } => {
                let era = self.era_of(&msg);
                self.reply(msg.id, era::own_result(created, era));
                self.attach_task(start);
            }
        }
    }

    /// A `tools/list` result without the tools the policy hides from this agent.
    pub(super) fn without_hidden_tools(&self, index: usize, result: &RawValue) -> Box<RawValue> {
        let Ok(mut obj) = jsonrpc::parse_object(result) else { return result.to_owned() };
        let server = &self.upstreams[index].cfg.name;
        let kept: Vec<Box<RawValue>> = merge::entries(result, "tools")
            .into_iter()
            .filter(|entry| {
                let Ok(list) = ToolList::from_result(&jsonrpc::to_raw(&serde_json::json!({ "tools": [entry] }))) else {
                    return true;
                };
                let hidden = list
                    .names()
                    .next()
                    .and_then(|n| list.get(n))
                    .is_some_and(|tool| self.opts.gate.hides(server, tool, self.agent()));
                !hidden
            })
            .collect();
        jsonrpc::set(&mut obj, "tools", jsonrpc::to_raw(&kept));
        if jsonrpc::get(&obj, "cacheScope").is_some() {
            // The list now depends on who asked: no shared cache may serve it to another agent.
            jsonrpc::set(&mut obj, "cacheScope", jsonrpc::to_raw("private"));
        }
        jsonrpc::object_to_raw(&obj)
    }

    /// The caller of a held call is gone (cancelled, stream closed): its wait ends without
    /// claiming, and no answer is sent for it. False when `id` is not a held call.
    pub(super) fn abandon_held(&mut self, id: &str) -> bool {
        if self.abandon_parked(id) {
            return true;
        }
        let Some(gone) = self.held.remove(id) else { return false };
        info!(id, "held call abandoned by its caller");
        gone.cancel();
        true
    }

    /// Drops the parked call `id` (waiting for a tool list, not judged yet) whose caller is gone:
    /// it is never judged, held or run. `true` when there was one.
    fn abandon_parked(&mut self, id: &str) -> bool {
        let before = self.parked.len();
        self.parked.retain(|(msg, _)| msg.id_text() != Some(id));
        if self.parked.len() == before {
            return false;
        }
        info!(id, "parked call abandoned by its caller");
        true
    }

    /// A way for the gate to send progress to the caller, when the call carried a token. It
    /// falls silent once the caller is gone.
    pub(super) fn progress_sink(&self, msg: &Message, gone: &CancellationToken) -> Option<ProgressSink> {
        let params = msg.params.as_deref()?;
        if !jsonrpc::may_hold(params.get(), "progressToken") {
            return None;
        }
        let obj = jsonrpc::parse_object(params).ok()?;
        let meta = jsonrpc::parse_object(jsonrpc::get(&obj, "_meta")?).ok()?;
        let token = jsonrpc::get(&meta, "progressToken")?.to_owned();
        let client_id = msg.id_text()?.to_owned();
        let downstream = self.downstream.clone();
        let gone = gone.clone();
        Some(ProgressSink::new(move |progress, message| {
            if gone.is_cancelled() {
                return;
            }
            let params = serde_json::json!({ "progressToken": &*token, "progress": progress, "message": message });
            let note = Message::notification("notifications/progress", Some(jsonrpc::to_raw(&params)));
            downstream.send(&note, Route::Related(&client_id));
        }))
    }

    /// A client that declared URL-mode elicitation is also asked to open the approval page of a
    /// pending call, so a person sees it even when the model does not relay the link.
    pub(super) fn offer_approval_url(&mut self, result: &RawValue) {
        if !result.get().contains("\"pending\"") {
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(result.get()) else { return };
        let meta = &v["_meta"]["mcp-gate/approval"];
        let (Some("pending"), Some(url), Some(id)) =
            (meta["status"].as_str(), meta["url"].as_str(), meta["id"].as_str())
        else {
            return;
        };
        self.send_url_elicitation(id, url);
    }

    /// Asks the client to open the approval page `url` of approval `id` (`elicitation/create`,
    /// URL mode; the approval id is the `elicitationId`).
    fn send_url_elicitation(&mut self, id: &str, url: &str) {
        let our_id = self.next_client_id;
        self.next_client_id += 1;
        self.own_requests.insert(our_id);
        let params = serde_json::json!({
            "mode": "url",
            "elicitationId": id,
            "url": url,
            "message": "A tool call is waiting for your approval. Open the page to approve or deny it.",
        });
        let request =
            Message::request(jsonrpc::number_id(our_id), "elicitation/create", Some(jsonrpc::to_raw(&params)));
        self.downstream.send(&request, Route::Unrelated);
    }

    /// For a 2025-11-25 client whose held calls are offered by URL elicitation: the sink that
    /// asks it to open the approval page as soon as the wait starts.
    fn held_sink(&self, msg: &Message) -> Option<HeldSink> {
        if self.era_of(msg) != Era::Legacy || !self.elicits_approval(msg) {
            return None;
        }
        let call = msg.id_text()?.to_owned();
        let tx = self.self_tx.clone();
        Some(HeldSink::new(move |approval, url| {
            if let Some(tx) = tx.upgrade() {
                let _ = tx.send(Input::Held { call: call.clone(), approval: approval.to_owned(), url: url.to_owned() });
            }
        }))
    }

    /// A held call started waiting: a client that takes URL elicitation is asked to open the
    /// page now (not only with the pending answer at the end of the wait).
    pub(super) fn on_held(&mut self, call: String, approval: String, url: String) {
        if !self.held.contains_key(&call) || self.elicited.contains_key(&call) {
            return;
        }
        self.send_url_elicitation(&approval, &url);
        self.elicited.insert(call, approval);
    }

    /// After a pending answer: tells the client the elicitation of `approval` is complete once
    /// it is decided, if this session is still there then.
    pub(super) fn complete_elicitation_when_decided(&self, approval: String) {
        let decided = self.opts.gate.decided(&approval);
        let tx = self.self_tx.clone();
        tokio::spawn(async move {
            decided.await;
            if let Some(tx) = tx.upgrade() {
                let _ = tx.send(Input::Decided { approval });
            }
        });
    }

    /// Tells the client the URL elicitation of `approval` is over: the request was decided.
    pub(super) fn complete_elicitation(&mut self, approval: &str) {
        let params = serde_json::json!({ "elicitationId": approval });
        let note = Message::notification("notifications/elicitation/complete", Some(jsonrpc::to_raw(&params)));
        self.downstream.send(&note, Route::Unrelated);
    }

    /// Whether the approval URL of a pending answer to `msg` is also offered by elicitation: the
    /// client declared URL elicitation, and elicitation is the channel the gate chose for this
    /// call (not a lower one the agent's `use` asks for), or the gate does not choose.
    fn elicits_approval(&self, msg: &Message) -> bool {
        if !self.client_takes_url_elicitation() {
            return false;
        }
        let params = msg.params.as_deref().and_then(|p| serde_json::from_str::<Value>(p.get()).ok());
        let Some(Value::Object(params)) = params else { return false };
        let offered = self.offered(msg, &params);
        self.opts.gate.channel(self.agent(), &offered).is_none_or(|c| c == Channel::Elicitation)
    }

    /// Logs, once per client and set of declared channels, what the client declared and the
    /// channel through which its held calls are answered: how a client is served is visible
    /// without holding a call.
    fn note_channel(&mut self, offered: &Offered) {
        let declared = Offered { requested_ttl_ms: None, ..*offered };
        if self.channels_logged.contains(&declared) {
            return;
        }
        self.channels_logged.push(declared);
        let Some(channel) = self.opts.gate.channel(self.agent(), offered) else { return };
        info!(
            client = self.agent().unwrap_or("(no name)"),
            modern = offered.era.is_modern(),
            task = offered.task,
            input_required = offered.input_required,
            url_elicitation = offered.url_elicitation,
            progress = offered.progress,
            channel = channel.as_str(),
            "held calls of this client are answered through its best declared channel"
        );
    }

    /// The channels this request's client declared (see [`Offered`]), read from the request
    /// itself in 2026-07-28 and from `initialize` before.
    pub(super) fn offered(&self, msg: &Message, params: &serde_json::Map<String, Value>) -> Offered {
        let era = self.era_of(msg);
        let mut offered = Offered::plain(era);
        offered.progress = params.get("_meta").and_then(|m| m.get("progressToken")).is_some();
        match era {
            Era::Legacy => {
                if let Some(task) = params.get("task").filter(|t| t.is_object()) {
                    offered.task = true;
                    offered.requested_ttl_ms = task.get("ttl").and_then(Value::as_u64);
                }
                offered.url_elicitation = self.client_takes_url_elicitation();
            }
            Era::Modern => {
                let caps = params.get("_meta").and_then(|m| m.get(era::CLIENT_CAPABILITIES_META));
                offered.task =
                    caps.and_then(|c| c.get("extensions")).and_then(|e| e.get(era::TASKS_EXTENSION)).is_some();
                offered.input_required = caps.and_then(|c| c.get("elicitation")).and_then(|e| e.get("url")).is_some();
            }
        }
        offered
    }

    /// Whether the client declared URL-mode elicitation in `initialize` (only clients of the
    /// legacy era are offered the URL this way).
    pub(super) fn client_takes_url_elicitation(&self) -> bool {
        self.url_elicitation
    }

    /// Finds the upstream of an exposed tool name. `Ok(None)`: not known until tool lists arrive.
    pub(super) fn route_tool(&self, exposed: &str) -> Result<Option<(usize, String)>, SessionError> {
        if !self.multi {
            return Ok(Some((0, exposed.to_owned())));
        }
        if let Some((server, rest)) = merge::split_prefixed(exposed, &self.opts.separator)
            && let Some(index) = self.upstreams.iter().position(|u| u.cfg.prefix && u.cfg.name == server)
        {
            return Ok(Some((index, rest.to_owned())));
        }
        let mut unknown = false;
        for (index, up) in self.upstreams.iter().enumerate().filter(|(_, u)| !u.cfg.prefix) {
            match up.tools.known() {
                Some(list) if list.get(exposed).is_some() => return Ok(Some((index, exposed.to_owned()))),
                Some(_) => {}
                None => unknown = true,
            }
        }
        if unknown { Ok(None) } else { Err(SessionError::UnknownTool(exposed.to_owned())) }
    }

    /// Keeps a call, with its `Mcp-Param-*` headers, until the tool list it needs comes.
    pub(super) fn park(&mut self, msg: Message, param_headers: Vec<(String, String)>) {
        self.parked.push_back((msg, param_headers));
        for index in 0..self.upstreams.len() {
            if !self.upstreams[index].cfg.prefix {
                self.fetch_tools(index);
            }
        }
    }

    /// Asks a running upstream for its tool list, unless it is known or already asked for.
    pub(super) fn fetch_tools(&mut self, index: usize) {
        let up = &mut self.upstreams[index];
        match up.tools {
            Tools::Unknown if up.link.is_up() => {
                up.tools = Tools::Fetching;
                self.internal_request(index, "tools/list", None, Pending::ToolsFetch(Vec::new()));
            }
            Tools::Unknown | Tools::Fetching | Tools::Known(_) => {}
        }
    }

    pub(super) fn tools_fetched(&mut self, index: usize, list: Option<ToolList>) {
        let up = &mut self.upstreams[index];
        match (list, &up.tools) {
            (Some(list), _) => up.tools = Tools::Known(list),
            (None, state) => {
                if matches!(state, Tools::Fetching) {
                    up.tools = Tools::Unknown;
                }
                // Could not get the list: the calls waiting for it fail closed.
                let error = SessionError::NoToolList { server: up.cfg.name.clone() };
                for (msg, _) in std::mem::take(&mut self.parked) {
                    self.reply_error(msg.id, &error);
                }
                return;
            }
        }
        if self.multi
            && let Err(e) = self.check_collisions()
        {
            warn!("{e}");
            self.downstream.fatal(&e.to_string());
            for (msg, _) in std::mem::take(&mut self.parked) {
                self.reply_error(msg.id, &e);
            }
            return;
        }
        let parked = std::mem::take(&mut self.parked);
        for (msg, param_headers) in parked {
            self.on_tools_call(msg, param_headers);
        }
    }

    /// Two upstreams exposing the same tool name is a configuration error.
    pub(super) fn check_collisions(&self) -> Result<(), SessionError> {
        let mut seen: HashMap<String, &str> = HashMap::new();
        for up in &self.upstreams {
            let Some(list) = up.tools.known() else { continue };
            for tool in list.names() {
                let exposed = merge::exposed_name(&up.cfg.name, tool, up.cfg.prefix, &self.opts.separator);
                if let Some(other) = seen.insert(exposed.clone(), &up.cfg.name) {
                    return Err(SessionError::ToolCollision {
                        exposed,
                        first: other.to_owned(),
                        second: up.cfg.name.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

pub(super) fn rename_param(msg: &mut Message, name: &str) {
    let Some(params) = msg.params.as_deref() else { return };
    let Ok(mut obj) = jsonrpc::parse_object(params) else { return };
    jsonrpc::set(&mut obj, "name", jsonrpc::to_raw(name));
    msg.params = Some(jsonrpc::object_to_raw(&obj));
}

/// Removes from a call's params what belongs to the gate's own `input_required` rounds: a
/// `requestState` the gate issued and the client's answer to its input request. Anything else (an
/// upstream's own state and the answers to its requests, or another gate's) passes unchanged.
pub(super) fn strip_own_input(msg: &mut Message, gate: &dyn Gate) {
    let Some(params) = msg.params.as_deref() else { return };
    if !jsonrpc::may_hold(params.get(), OWN_STATE_PREFIX) {
        return;
    }
    let Ok(mut obj) = jsonrpc::parse_object(params) else { return };
    let Some(at) = obj.iter().position(|(k, v)| {
        k == "requestState"
            && serde_json::from_str::<String>(v.get()).is_ok_and(|s| is_own_state(&s) && gate.issued_state(&s))
    }) else {
        return;
    };
    obj.remove(at);
    if let Some(i) = obj.iter().position(|(k, _)| k == "inputResponses")
        && let Ok(mut responses) = jsonrpc::parse_object(&obj[i].1)
        && let Some(j) = responses.iter().position(|(k, _)| k == APPROVAL_INPUT)
    {
        responses.remove(j);
        if responses.is_empty() {
            obj.remove(i);
        } else {
            obj[i].1 = jsonrpc::object_to_raw(&responses);
        }
    }
    msg.params = Some(jsonrpc::object_to_raw(&obj));
}

/// Whether the end of a held call's wait is a decision (approved and claimed, denied, expired,
/// spent), not the pending answer of a wait that ran out.
pub(super) fn decided(verdict: &Verdict) -> bool {
    match verdict {
        Verdict::Respond(result) => {
            !result.get().contains("\"pending\"") || {
                serde_json::from_str::<Value>(result.get()).ok().is_none_or(|v| {
                    v.pointer("/_meta/mcp-gate~1approval/status").and_then(Value::as_str) != Some("pending")
                })
            }
        }
        _ => true,
    }
}
