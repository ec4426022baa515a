//! Gate tasks in the session: advertising tasks to 2025-11-25 clients (only when the gate can
//! hold a call), the runners of this session's gate tasks (their approved call goes upstream from
//! here, its answer goes to the gate, not to the client), and the `tasks/*` requests for gate
//! task ids, which the gate answers. Other task ids are an upstream's and pass through.

use serde_json::Value;
use serde_json::value::RawValue;
use tracing::{debug, warn};

use super::{Input, Pending, Session, merge};
use crate::gate::{CancellationToken, Outcome, TASK_ID_PREFIX, TaskAnswer, TaskMethod, TaskOp, TaskRun, TaskStart};
use crate::wire::era::{self, Era};
use crate::wire::jsonrpc::{self, Message, code};

impl Session {
    /// Whether the gate offers tasks to this client (2025-11-25 only: the 2026-07-28 extension is
    /// not offered).
    pub(super) fn offers_tasks(&self) -> bool {
        self.opts.gate.offers_tasks() && self.era != Some(Era::Modern)
    }

    /// An `initialize` result with the gate's task capabilities added: task-augmented
    /// `tools/call`, `tasks/cancel`, and `tasks/list` for a client the proxy can tell apart.
    pub(super) fn with_task_capabilities(&self, result: &RawValue) -> Box<RawValue> {
        let Ok(mut v) = serde_json::from_str::<Value>(result.get()) else { return result.to_owned() };
        let Some(caps) = v.get_mut("capabilities").and_then(Value::as_object_mut) else { return result.to_owned() };
        let tasks = caps.entry("tasks").or_insert_with(|| Value::Object(Default::default()));
        let Some(tasks) = tasks.as_object_mut() else { return result.to_owned() };
        tasks.entry("cancel").or_insert_with(|| serde_json::json!({}));
        if self.owner() != crate::gate::Owner::Anonymous {
            tasks.entry("list").or_insert_with(|| serde_json::json!({}));
        }
        let requests = tasks.entry("requests").or_insert_with(|| serde_json::json!({}));
        if let Some(requests) = requests.as_object_mut() {
            let tools = requests.entry("tools").or_insert_with(|| serde_json::json!({}));
            if let Some(tools) = tools.as_object_mut() {
                tools.entry("call").or_insert_with(|| serde_json::json!({}));
            }
        }
        jsonrpc::to_raw(&v)
    }

    /// A `tools/list` result where each tool the gate could hold for this agent takes tasks
    /// (`execution.taskSupport: "optional"`, unless the upstream said `required`).
    pub(super) fn with_task_support(&self, index: usize, result: &RawValue) -> Box<RawValue> {
        let Ok(mut obj) = jsonrpc::parse_object(result) else { return result.to_owned() };
        let server = &self.upstreams[index].cfg.name;
        let mut changed = false;
        let tools: Vec<Box<RawValue>> = merge::entries(result, "tools")
            .into_iter()
            .map(|entry| {
                let Ok(list) = crate::gate::tools::ToolList::from_result(&jsonrpc::to_raw(
                    &serde_json::json!({ "tools": [&*entry] }),
                )) else {
                    return entry;
                };
                let Some(tool) = list.names().next().and_then(|n| list.get(n)) else { return entry };
                if matches!(tool.task_support.as_deref(), Some("optional" | "required"))
                    || !self.opts.gate.could_hold(server, tool, self.agent())
                {
                    return entry;
                }
                let Ok(mut v) = serde_json::from_str::<Value>(entry.get()) else { return entry };
                let Some(t) = v.as_object_mut() else { return entry };
                let execution = t.entry("execution").or_insert_with(|| serde_json::json!({}));
                if !execution.is_object() {
                    *execution = serde_json::json!({});
                }
                execution["taskSupport"] = Value::String("optional".into());
                changed = true;
                jsonrpc::to_raw(&v)
            })
            .collect();
        if !changed {
            return result.to_owned();
        }
        jsonrpc::set(&mut obj, "tools", jsonrpc::to_raw(&tools));
        if jsonrpc::get(&obj, "cacheScope").is_some() {
            jsonrpc::set(&mut obj, "cacheScope", jsonrpc::to_raw("private"));
        }
        jsonrpc::object_to_raw(&obj)
    }

    /// Whether a `tasks/*` request is the gate's to answer: a gate task's id, or the list when no
    /// upstream lists tasks of its own.
    pub(super) fn is_gate_task_request(&self, msg: &Message) -> bool {
        if !self.opts.gate.offers_tasks() {
            return false;
        }
        match msg.method() {
            "tasks/get" | "tasks/result" | "tasks/cancel" | "tasks/update" => msg
                .params
                .as_deref()
                .and_then(|p| jsonrpc::string_field(p, "taskId"))
                .is_some_and(|id| id.starts_with(TASK_ID_PREFIX)),
            "tasks/list" => !self.era_of(msg).is_modern(),
            _ => false,
        }
    }

    /// The upstreams that list tasks of their own (2025-11-25 `tasks.list`).
    fn task_listing_upstreams(&self) -> Vec<usize> {
        (0..self.upstreams.len())
            .filter(|&i| {
                let up = &self.upstreams[i];
                up.link.is_up() && up.init_result.as_ref().and_then(|r| r.pointer("/capabilities/tasks/list")).is_some()
            })
            .collect()
    }

    /// A 2025-11-25 `tasks/list`: the owner's gate tasks come first (cursors `mcpg:N`); their last
    /// page continues with a merged cursor over the upstreams that list tasks, whose pages follow
    /// (see [`merge::encode_cursor`]).
    fn on_task_list(&mut self, msg: Message) -> Option<Message> {
        let listing = self.task_listing_upstreams();
        let cursor = msg.params.as_deref().and_then(|p| jsonrpc::string_field(p, "cursor"));
        let Some(cursor) = cursor.filter(|c| !c.starts_with("mcpg:")) else { return Some(msg) };
        let Some(position) = merge::decode_cursor(&cursor) else {
            self.reply_error(msg.id, &super::SessionError::InvalidCursor);
            return None;
        };
        let mut targets = Vec::new();
        for (index, cursor) in position {
            if !listing.contains(&index) {
                continue;
            }
            let mut obj = msg.params.as_deref().and_then(|p| jsonrpc::parse_object(p).ok()).unwrap_or_default();
            obj.retain(|(k, _)| k != "cursor");
            if let Some(c) = cursor {
                obj.push(("cursor".to_owned(), jsonrpc::to_raw(&c)));
            }
            // Always params of its own: the request's carry the merged cursor, not the upstream's.
            targets.push((index, Some(jsonrpc::object_to_raw(&obj))));
        }
        self.fan_out_to(msg, targets);
        None
    }

    /// Asks the gate about one of its tasks; the answer comes back as [`Input::TaskAnswer`].
    pub(super) fn on_gate_task_request(&mut self, msg: Message) {
        let msg = if msg.method() == "tasks/list" {
            match self.on_task_list(msg) {
                Some(msg) => msg,
                None => return,
            }
        } else {
            msg
        };
        let method = match msg.method() {
            "tasks/get" => TaskMethod::Get,
            "tasks/result" => TaskMethod::Result,
            "tasks/cancel" => TaskMethod::Cancel,
            "tasks/update" => TaskMethod::Update,
            _ => TaskMethod::List,
        };
        let era = self.era_of(&msg);
        let params = msg.params.as_deref();
        if era.is_modern() && !declares_tasks_extension(params) && method != TaskMethod::Result {
            // Only a client that declares the extension on the request may use its methods.
            let error = serde_json::json!({
                "code": code::MISSING_CAPABILITY,
                "message": "Missing required client capability",
                "data": { "requiredCapabilities": { "extensions": { (era::TASKS_EXTENSION): {} } } },
            });
            let reply = Message { id: msg.id, error: Some(jsonrpc::to_raw(&error)), ..Message::default() };
            self.downstream.send(&reply, super::Route::Reply);
            return;
        }
        let op = TaskOp {
            method,
            id: params.and_then(|p| jsonrpc::string_field(p, "taskId")),
            cursor: params.and_then(|p| jsonrpc::string_field(p, "cursor")),
            owner: self.owner(),
            era,
        };
        let reply = self.opts.gate.task(op);
        if let Some(start) = reply.resume {
            self.attach_task(start);
        }
        let Some(id) = msg.id else { return };
        // The last page of the gate's tasks continues with the upstreams' own.
        let upstream_pages = (method == TaskMethod::List)
            .then(|| merge::encode_cursor(&self.task_listing_upstreams().into_iter().map(|i| (i, None)).collect()))
            .flatten();
        let tx = self.self_tx.clone();
        tokio::spawn(async move {
            let mut answer = reply.answer.await;
            if let (Some(next), TaskAnswer::Result(page)) = (upstream_pages, &answer)
                && jsonrpc::string_field(page, "nextCursor").is_none()
                && let Ok(mut obj) = jsonrpc::parse_object(page)
            {
                obj.push(("nextCursor".to_owned(), jsonrpc::to_raw(&next)));
                answer = TaskAnswer::Result(jsonrpc::object_to_raw(&obj));
            }
            if let Some(tx) = tx.upgrade() {
                let _ = tx.send(Input::TaskAnswer { id, era, answer });
            }
        });
    }

    pub(super) fn on_task_answer(&mut self, id: Box<RawValue>, era: Era, answer: TaskAnswer) {
        match answer {
            TaskAnswer::Result(result) => self.reply(Some(id), era::own_result(result, era)),
            TaskAnswer::Error { code, message } => {
                self.downstream.send(&Message::error(Some(id), code, &message), super::Route::Reply)
            }
        }
    }

    /// Runs a gate task's runner for this session, unless one runs here already. It stops when
    /// the session ends; the owner's next poll attaches a new one.
    pub(super) fn attach_task(&mut self, start: TaskStart) {
        self.tasks.retain(|_, stop| !stop.is_cancelled());
        if self.tasks.contains_key(&start.id) {
            return;
        }
        let stop = CancellationToken::new();
        self.tasks.insert(start.id.clone(), stop.clone());
        let tx = self.self_tx.clone();
        let TaskStart { id, run } = start;
        tokio::spawn(async move {
            let run = tokio::select! {
                run = run => run,
                _ = stop.cancelled() => return,
            };
            let run = match tx.upgrade() {
                Some(tx) => match tx.send(Input::TaskRun { id, run }) {
                    Ok(()) => return,
                    Err(e) => match e.0 {
                        Input::TaskRun { run, .. } => run,
                        _ => return,
                    },
                },
                None => run,
            };
            if let TaskRun::Run { hook, .. } = run {
                hook(Outcome::NotRun);
            }
        });
    }

    /// A runner resolved: an approved task's call goes upstream now, its answer to the gate.
    pub(super) fn on_task_run(&mut self, id: String, run: TaskRun) {
        self.tasks.remove(&id);
        let TaskRun::Run { server, params, hook } = run else { return };
        let Some(index) = self.upstreams.iter().position(|u| u.cfg.name == server) else {
            warn!(task = %id, server, "the task's upstream is not in this session; not run");
            hook(Outcome::NotRun);
            return;
        };
        if !self.upstreams[index].link.is_up() {
            debug!(task = %id, "the task's upstream is down; its claim is given back");
            hook(Outcome::NotRun);
            return;
        }
        debug!(task = %id, server, "running an approved task");
        // Sent with the client's latest 2026-07-28 `_meta` (as the proxy's own requests are), less
        // the tasks extension: the upstream answers the gate task with a plain result.
        let params =
            self.with_modern_meta(Some(params)).map(|p| crate::approval::tasks::upstream_params(&p, &tool_name(&p)));
        let up = &mut self.upstreams[index];
        let up_id = up.next_id;
        up.next_id += 1;
        up.wait_for(up_id, "tools/call", Pending::Task(super::Tracked::new(hook)));
        let mut msg = Message::request(jsonrpc::number_id(up_id), "tools/call", params);
        // The task may come from a retry that carried the proxy's own `requestState` and answer
        // (stored with its params): they are the proxy's, never the upstream's.
        super::calls::strip_own_input(&mut msg, &*self.opts.gate);
        self.send_upstream(index, &msg, Some(up_id));
    }

    /// A `server/discover` result that names the tasks extension among the proxy's capabilities.
    pub(super) fn with_tasks_extension(&self, result: &RawValue) -> Box<RawValue> {
        let Ok(mut v) = serde_json::from_str::<Value>(result.get()) else { return result.to_owned() };
        let Some(caps) = v.get_mut("capabilities").and_then(Value::as_object_mut) else { return result.to_owned() };
        let extensions = caps.entry("extensions").or_insert_with(|| serde_json::json!({}));
        let Some(extensions) = extensions.as_object_mut() else { return result.to_owned() };
        extensions.entry(era::TASKS_EXTENSION).or_insert_with(|| serde_json::json!({}));
        jsonrpc::to_raw(&v)
    }
}

/// The params of a `subscriptions/listen` request without the gate's own task ids in
/// `notifications.taskIds` (they are not the upstream's to know); `None` when it names none.
/// The list goes when nothing of it is left.
pub(super) fn without_gate_task_ids(params: &RawValue) -> Option<Box<RawValue>> {
    if !jsonrpc::may_hold(params.get(), TASK_ID_PREFIX) {
        return None;
    }
    let mut v = serde_json::from_str::<Value>(params.get()).ok()?;
    let filter = v.get_mut("notifications").and_then(Value::as_object_mut)?;
    let ids = filter.get_mut("taskIds").and_then(Value::as_array_mut)?;
    let before = ids.len();
    ids.retain(|id| !id.as_str().is_some_and(|id| id.starts_with(TASK_ID_PREFIX)));
    if ids.len() == before {
        return None;
    }
    if ids.is_empty() {
        filter.remove("taskIds");
    }
    Some(jsonrpc::to_raw(&v))
}

/// Whether a 2026-07-28 request declares the tasks extension among its client capabilities.
fn declares_tasks_extension(params: Option<&RawValue>) -> bool {
    params
        .filter(|p| jsonrpc::may_hold(p.get(), era::TASKS_EXTENSION))
        .and_then(|p| serde_json::from_str::<Value>(p.get()).ok())
        .and_then(|v| v.pointer("/_meta").and_then(|m| m.get(era::CLIENT_CAPABILITIES_META)).cloned())
        .and_then(|c| c.get("extensions").and_then(|e| e.get(era::TASKS_EXTENSION)).cloned())
        .is_some()
}

fn tool_name(params: &RawValue) -> String {
    jsonrpc::string_field(params, "name").unwrap_or_default()
}
