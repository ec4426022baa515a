//! Requests that go to several upstreams at once (`initialize`, `server/discover`, the lists,
//! `logging/setLevel`) and the merge of their answers ([`super::merge`] holds the pure helpers).

use serde_json::Value;
use serde_json::value::RawValue;
use tracing::warn;

use super::Pending;
use super::merge::{self, ListPosition};
use super::upstreams::{Tools, Upstream};
use super::{Route, Session, SessionError};
use crate::gate::tools::ToolList;
use crate::wire::era::{self, Era};
use crate::wire::jsonrpc::{self, Message};

/// An upstream's answer to one part of a fan-out: its result, or its error object.
pub(super) type PartOutcome = Result<Box<RawValue>, Box<RawValue>>;

pub(super) struct Fanout {
    pub(super) client_id: Box<RawValue>,
    pub(super) method: String,
    /// The era of the client's request: what the merged result must look like.
    pub(super) era: Era,
    pub(super) waiting: usize,
    /// (upstream, its result or error object).
    pub(super) parts: Vec<(usize, PartOutcome)>,
}

impl Session {
    pub(super) fn fan_out(&mut self, msg: Message, include: impl Fn(&Upstream) -> bool) {
        let targets: Vec<usize> = (0..self.upstreams.len())
            .filter(|&i| self.upstreams[i].link.is_up() && include(&self.upstreams[i]))
            .collect();
        self.fan_out_to(msg, targets.into_iter().map(|i| (i, None)).collect());
    }

    /// Sends a request to several upstreams; `params` overrides the request's params per upstream.
    pub(super) fn fan_out_to(&mut self, msg: Message, targets: Vec<(usize, Option<Box<RawValue>>)>) {
        let Some(client_id) = msg.id.clone() else { return };
        let fanout_id = self.next_fanout;
        self.next_fanout += 1;
        let era = self.era_of(&msg);
        self.fanouts.insert(
            fanout_id,
            Fanout { client_id, method: msg.method().to_owned(), era, waiting: targets.len(), parts: Vec::new() },
        );
        if targets.is_empty() {
            self.finish_fanout(fanout_id);
            return;
        }
        for (index, params) in targets {
            let up = &mut self.upstreams[index];
            let up_id = up.next_id;
            up.next_id += 1;
            up.wait_for(up_id, msg.method(), Pending::Fanout(fanout_id));
            let part = Message {
                id: Some(jsonrpc::number_id(up_id)),
                method: msg.method.clone(),
                params: params.or_else(|| msg.params.as_ref().map(|p| p.to_owned())),
                ..Message::default()
            };
            self.send_upstream(index, &part, Some(up_id));
        }
    }

    pub(super) fn fanout_part(&mut self, fanout_id: u64, index: usize, outcome: PartOutcome) {
        let Some(f) = self.fanouts.get_mut(&fanout_id) else { return };
        f.parts.push((index, outcome));
        f.waiting -= 1;
        if f.waiting == 0 {
            self.finish_fanout(fanout_id);
        }
    }

    pub(super) fn finish_fanout(&mut self, fanout_id: u64) {
        let Some(f) = self.fanouts.remove(&fanout_id) else { return };
        let mut ok: Vec<(usize, Box<RawValue>)> = Vec::new();
        let mut first_error = None;
        for (index, outcome) in f.parts {
            match outcome {
                Ok(r) => ok.push((index, r)),
                Err(e) => {
                    warn!(server = %self.upstreams[index].cfg.name, method = %f.method, error = %e.get(), "upstream failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        ok.sort_by_key(|(i, _)| *i);
        if ok.is_empty()
            && let Some(error) = first_error
        {
            let msg = Message { id: Some(f.client_id), error: Some(error), ..Message::default() };
            self.downstream.send(&msg, Route::Reply);
            return;
        }
        let values = |ok: &[(usize, Box<RawValue>)], ups: &[Upstream]| -> Vec<(String, Value)> {
            ok.iter()
                .map(|(i, r)| (ups[*i].cfg.name.clone(), serde_json::from_str(r.get()).unwrap_or(Value::Null)))
                .collect()
        };
        let ttl = era::min_ttl(ok.iter().map(|(_, r)| &**r));
        let result = match f.method.as_str() {
            "initialize" => {
                for (i, r) in &ok {
                    self.upstreams[*i].set_init_result(serde_json::from_str(r.get()).ok());
                }
                let parts = values(&ok, &self.upstreams);
                let parts: Vec<(&str, Value)> = parts.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
                let requested =
                    self.initialize_params.as_deref().and_then(|p| jsonrpc::string_field(p, "protocolVersion"));
                let merged = jsonrpc::to_raw(&merge::merge_initialize(&parts, requested.as_deref()));
                if self.offers_tasks() { self.with_task_capabilities(&merged) } else { merged }
            }
            "server/discover" => {
                let parts = values(&ok, &self.upstreams);
                let parts: Vec<(&str, Value)> = parts.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
                let merged = jsonrpc::to_raw(&merge::merge_discover(&parts));
                if self.opts.gate.offers_tasks() { self.with_tasks_extension(&merged) } else { merged }
            }
            "tasks/list" => self.merge_list(&f.method, ok),
            "tools/list" | "prompts/list" | "resources/list" | "resources/templates/list" => {
                let merged = self.merge_list(&f.method, ok);
                if f.era.is_modern() { era::cacheable(merged, ttl) } else { merged }
            }
            _ => jsonrpc::to_raw(&serde_json::json!({})),
        };
        self.reply(Some(f.client_id), era::own_result(result, f.era));
    }

    pub(super) fn list(&mut self, msg: Message) {
        let cursor = msg.params.as_deref().and_then(|p| jsonrpc::string_field(p, "cursor"));
        let position: ListPosition = match cursor {
            Some(c) => match merge::decode_cursor(&c) {
                Some(p) => p,
                None => return self.reply_error(msg.id, &SessionError::InvalidCursor),
            },
            None => (0..self.upstreams.len()).map(|i| (i, None)).collect(),
        };
        let capability = match msg.method() {
            "tools/list" => "tools",
            "prompts/list" => "prompts",
            _ => "resources",
        };
        let mut targets = Vec::new();
        for (index, cursor) in position {
            let Some(up) = self.upstreams.get(index) else { continue };
            if !up.link.is_up() {
                continue;
            }
            // Skip upstreams whose initialize result says they lack the capability.
            if let Some(init) = &up.init_result
                && init.pointer(&format!("/capabilities/{capability}")).is_none()
            {
                continue;
            }
            let mut obj = msg.params.as_deref().and_then(|p| jsonrpc::parse_object(p).ok()).unwrap_or_default();
            obj.retain(|(k, _)| k != "cursor");
            if let Some(c) = cursor {
                obj.push(("cursor".to_owned(), jsonrpc::to_raw(&c)));
            }
            let params = (!obj.is_empty()).then(|| jsonrpc::object_to_raw(&obj));
            targets.push((index, params));
        }
        self.fan_out_to(msg, targets);
    }

    pub(super) fn merge_list(&mut self, method: &str, parts: Vec<(usize, Box<RawValue>)>) -> Box<RawValue> {
        let key = match method {
            "tools/list" => "tools",
            "prompts/list" => "prompts",
            "resources/list" => "resources",
            "tasks/list" => "tasks",
            _ => "resourceTemplates",
        };
        let mut merged: Vec<Box<RawValue>> = Vec::new();
        let mut next: ListPosition = Vec::new();
        for (index, result) in parts {
            let next_cursor = jsonrpc::string_field(&result, "nextCursor");
            let up = &self.upstreams[index];
            let (name, prefix, sep) = (up.cfg.name.clone(), up.cfg.prefix, self.opts.separator.clone());
            let result = if key == "tools" && self.opts.gate.hides_any() {
                self.without_hidden_tools(index, &result)
            } else {
                result
            };
            let result =
                if key == "tools" && self.offers_tasks() { self.with_task_support(index, &result) } else { result };
            let entries = match key {
                "tools" | "prompts" => {
                    merge::rename_entries(&result, key, |n| merge::exposed_name(&name, n, prefix, &sep))
                        .unwrap_or_default()
                }
                _ => merge::entries(&result, key),
            };
            match key {
                "tools" if next_cursor.is_none() => {
                    // A first page without continuation is the whole list: keep it for policy.
                    if let Ok(list) = ToolList::from_result(&result) {
                        self.upstreams[index].tools = Tools::Known(list);
                    }
                }
                "resources" => {
                    for e in &entries {
                        if let Some(uri) = jsonrpc::string_field(e, "uri") {
                            self.resource_routes.insert(uri, index);
                        }
                    }
                }
                "tasks" => {
                    for e in &entries {
                        if let Some(id) = jsonrpc::string_field(e, "taskId") {
                            self.task_routes.insert(id, index);
                        }
                    }
                }
                "resourceTemplates" => {
                    for e in &entries {
                        if let Some(t) = jsonrpc::string_field(e, "uriTemplate") {
                            let prefix = merge::template_prefix(&t).to_owned();
                            self.template_routes.retain(|(p, _)| p != &prefix);
                            self.template_routes.push((prefix, index));
                        }
                    }
                }
                _ => {}
            }
            merged.extend(entries);
            if let Some(c) = next_cursor {
                next.push((index, Some(c)));
            }
        }
        let mut out = serde_json::Map::new();
        let list = jsonrpc::to_raw(&merged);
        out.insert(key.to_owned(), serde_json::from_str(list.get()).unwrap_or(Value::Array(Vec::new())));
        if let Some(c) = merge::encode_cursor(&next) {
            out.insert("nextCursor".to_owned(), Value::String(c));
        }
        jsonrpc::to_raw(&out)
    }
}
