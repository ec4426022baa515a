//! Unit tests of the session actor, driven through fake upstream links: a [`Connector`] that
//! hands each transport's other end to the test, which reads what the session sends upstream and
//! reports what the upstream answers.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{Connector, Downstream, Input, Route, SessionHandle, SessionOptions, start_with};
use crate::gate::{AllowAll, CancellationToken, Gate, Offered, Owner, RefusedCall, ToolCall, Verdict};
use crate::upstream::settings::{ServerConfig, UpstreamTransport};
use crate::upstream::{ConnectError, Outgoing, Reporter, Running, UpstreamLink};
use crate::wire::era::Era;
use crate::wire::jsonrpc::{self, Message, code};

// === fakes ===

/// Where the session sent a message to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sent {
    Reply,
    Related(String),
    Unrelated,
}

struct Client(mpsc::UnboundedSender<(Message, Sent)>);

impl Downstream for Client {
    fn send(&self, msg: &Message, route: Route<'_>) {
        let sent = match route {
            Route::Reply => Sent::Reply,
            Route::Related(id) => Sent::Related(id.to_owned()),
            Route::Unrelated => Sent::Unrelated,
        };
        let copy = Message::parse(&msg.to_bytes()).expect("the session sends valid messages");
        let _ = self.0.send((copy, sent));
    }
}

/// The far end of one upstream transport.
struct FakeUpstream {
    generation: u64,
    reporter: Reporter,
    rx: mpsc::Receiver<Outgoing>,
    _running: Running,
}

impl FakeUpstream {
    /// The next message the session sent to this upstream.
    async fn recv(&mut self) -> Message {
        let out = self.recv_outgoing().await;
        Message::parse(&out.bytes).expect("the session sends valid messages")
    }

    /// The next message the session sent to this upstream, with what goes beside it.
    async fn recv_outgoing(&mut self) -> Outgoing {
        tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
            .await
            .expect("the upstream got nothing")
            .expect("the link was dropped")
    }

    /// Asserts that the session sent nothing more to this upstream.
    async fn nothing(&mut self) {
        settle().await;
        if let Ok(out) = self.rx.try_recv() {
            panic!("unexpected message upstream: {}", String::from_utf8_lossy(&out.bytes));
        }
    }

    fn reply(&self, request: &Message, result: Value) {
        let id = request.id.clone().expect("a request");
        self.reporter.message(Message::response(id, jsonrpc::to_raw(&result)), None);
    }

    fn send(&self, msg: Message) {
        self.reporter.message(msg, None);
    }

    /// Answers the proxy's own `tools/list` with these tools.
    async fn answer_tool_fetch(&mut self, tools: &[&str]) {
        let fetch = self.recv().await;
        assert_eq!(fetch.method(), "tools/list", "the proxy fetches the tool list first");
        self.reply(&fetch, tool_list(tools));
    }
}

/// Starts in-memory links; `fail` makes that many next connections fail.
struct FakeConnector {
    started: mpsc::UnboundedSender<FakeUpstream>,
    fail: Arc<AtomicU32>,
}

impl Connector for FakeConnector {
    fn connect(
        &self,
        server: Arc<ServerConfig>,
        reporter: Reporter,
    ) -> BoxFuture<'static, Result<UpstreamLink, ConnectError>> {
        if self.fail.load(Ordering::SeqCst) > 0 {
            self.fail.fetch_sub(1, Ordering::SeqCst);
            let error = ConnectError::Http { server: server.name.clone(), message: "refused".into() };
            return Box::pin(async move { Err(error) });
        }
        let (tx, rx) = UpstreamLink::channel();
        let (link, running) = UpstreamLink::new(tx);
        let fake = FakeUpstream { generation: reporter.generation, reporter, rx, _running: running };
        let _ = self.started.send(fake);
        Box::pin(async move { Ok(link) })
    }
}

/// What the gate saw of a call.
struct Seen {
    server: String,
    tool: String,
    listed: bool,
    gone: CancellationToken,
    owner: Owner,
    offered: Offered,
}

/// A gate that answers with the verdicts queued, then allows.
#[derive(Default)]
struct FakeGate {
    verdicts: Mutex<VecDeque<Verdict>>,
    seen: Mutex<Vec<Seen>>,
    /// The calls refused before they were judged: server, tool names, reason.
    refused: Mutex<Vec<(String, Vec<String>, String)>>,
}

impl FakeGate {
    fn then(&self, verdict: Verdict) {
        self.verdicts.lock().unwrap().push_back(verdict);
    }
}

impl Gate for FakeGate {
    fn check(&self, call: &ToolCall<'_>) -> Verdict {
        self.seen.lock().unwrap().push(Seen {
            server: call.server.to_owned(),
            tool: call.tool.to_owned(),
            listed: call.info.is_some(),
            gone: call.gone.clone(),
            owner: call.owner.clone(),
            offered: *call.offered,
        });
        self.verdicts.lock().unwrap().pop_front().unwrap_or(Verdict::Allow)
    }

    fn refused(&self, call: &RefusedCall<'_>) {
        let names = call.tool_names.to_vec();
        self.refused.lock().unwrap().push((call.server.to_owned(), names, call.reason.to_owned()));
    }
}

/// A session over fake upstreams, as its client sees it.
struct Harness {
    handle: SessionHandle,
    client: mpsc::UnboundedReceiver<(Message, Sent)>,
    started: mpsc::UnboundedReceiver<FakeUpstream>,
    fail: Arc<AtomicU32>,
}

impl Harness {
    /// A session in front of `servers` (name, prefix), with the upstreams it started.
    async fn start(servers: &[(&str, bool)], gate: Arc<dyn Gate>, shared: bool) -> (Harness, Vec<FakeUpstream>) {
        let servers = servers
            .iter()
            .map(|(name, prefix)| {
                let transport =
                    UpstreamTransport::Stdio { command: "unused".into(), args: Vec::new(), env: Vec::new(), cwd: None };
                Arc::new(ServerConfig::new(*name, transport, *prefix))
            })
            .collect::<Vec<_>>();
        let count = servers.len();
        let opts = SessionOptions {
            servers,
            separator: "__".into(),
            shared,
            gate,
            label: "test".into(),
            agent: None,
            stdio: true,
        };
        let (client_tx, client) = mpsc::unbounded_channel();
        let (started_tx, mut started) = mpsc::unbounded_channel();
        let fail = Arc::new(AtomicU32::new(0));
        let connector = Arc::new(FakeConnector { started: started_tx, fail: fail.clone() });
        let (handle, _task) = start_with(opts, Arc::new(Client(client_tx)), connector).await.expect("session starts");
        let mut ups = Vec::new();
        for _ in 0..count {
            ups.push(started.recv().await.expect("an upstream"));
        }
        (Harness { handle, client, started, fail }, ups)
    }

    fn request(&self, id: Value, method: &str, params: Value) {
        assert!(self.handle.client(Message::request(jsonrpc::to_raw(&id), method, Some(jsonrpc::to_raw(&params)))));
    }

    fn notify(&self, method: &str, params: Value) {
        assert!(self.handle.client(Message::notification(method, Some(jsonrpc::to_raw(&params)))));
    }

    /// The next message the client got.
    async fn recv(&mut self) -> (Message, Sent) {
        tokio::time::timeout(Duration::from_secs(5), self.client.recv())
            .await
            .expect("the client got nothing")
            .expect("the session ended")
    }

    async fn nothing(&mut self) {
        settle().await;
        if let Ok((msg, _)) = self.client.try_recv() {
            panic!("unexpected message to the client: {msg}");
        }
    }

    /// The next transport the session started (a restart).
    async fn next_upstream(&mut self) -> FakeUpstream {
        tokio::time::timeout(Duration::from_secs(600), self.started.recv())
            .await
            .expect("no restart")
            .expect("the session ended")
    }
}

/// Lets the actor and the tasks it spawned run until they wait.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

fn value(raw: &Option<Box<serde_json::value::RawValue>>) -> Value {
    raw.as_deref().map_or(Value::Null, |r| serde_json::from_str(r.get()).expect("JSON"))
}

fn id_of(msg: &Message) -> Value {
    value(&msg.id)
}

fn tool_list(tools: &[&str]) -> Value {
    let tools: Vec<Value> = tools.iter().map(|name| json!({"name": name, "inputSchema": {"type": "object"}})).collect();
    json!({ "tools": tools })
}

// === ids ===

#[tokio::test]
async fn request_ids_are_fresh_upstream_and_mapped_back() {
    let (mut h, mut ups) = Harness::start(&[("a", false)], Arc::new(AllowAll), false).await;
    let up = &mut ups[0];
    h.request(json!("first"), "resources/list", json!({}));
    h.request(json!(7), "prompts/list", json!({}));
    let one = up.recv().await;
    let two = up.recv().await;
    assert_eq!((one.method(), id_of(&one)), ("resources/list", json!(1)));
    assert_eq!((two.method(), id_of(&two)), ("prompts/list", json!(2)));

    // Answered out of order, each answer goes back under its client's id.
    up.reply(&two, json!({"prompts": []}));
    up.reply(&one, json!({"resources": []}));
    let (a, route) = h.recv().await;
    assert_eq!((id_of(&a), value(&a.result), route), (json!(7), json!({"prompts": []}), Sent::Reply));
    let (b, _) = h.recv().await;
    assert_eq!((id_of(&b), value(&b.result)), (json!("first"), json!({"resources": []})));

    // An answer to an id the proxy never sent (or already answered) reaches nobody.
    up.reply(&one, json!({"resources": ["again"]}));
    h.nothing().await;
}

#[tokio::test]
async fn requests_from_an_upstream_get_a_fresh_id_and_their_answers_go_back() {
    let (mut h, mut ups) = Harness::start(&[("a", false)], Arc::new(AllowAll), false).await;
    let up = &mut ups[0];
    up.send(Message::request(jsonrpc::to_raw("srv-9"), "roots/list", None));
    let (request, _) = h.recv().await;
    assert_eq!((request.method(), id_of(&request)), ("roots/list", json!(1)));
    assert!(h.handle.client(Message::response(jsonrpc::number_id(1), jsonrpc::to_raw(&json!({"roots": []})))));
    let answer = up.recv().await;
    assert_eq!((id_of(&answer), value(&answer.result)), (json!("srv-9"), json!({"roots": []})));
}

#[tokio::test]
async fn progress_tokens_pass_unchanged_in_a_session_of_one_client() {
    let (mut h, mut ups) = Harness::start(&[("a", false)], Arc::new(AllowAll), false).await;
    let up = &mut ups[0];
    h.request(json!(7), "resources/read", json!({"uri": "mem://x", "_meta": {"progressToken": "tok"}}));
    let sent = up.recv().await;
    assert_eq!(value(&sent.params)["_meta"]["progressToken"], json!("tok"));
    let progress = json!({"progressToken": "tok", "progress": 1});
    up.send(Message::notification("notifications/progress", Some(jsonrpc::to_raw(&progress))));
    let (note, route) = h.recv().await;
    assert_eq!((value(&note.params), route), (progress, Sent::Related("7".into())));
}

#[tokio::test]
async fn progress_tokens_are_remapped_in_a_shared_session() {
    let (mut h, mut ups) = Harness::start(&[("a", false)], Arc::new(AllowAll), true).await;
    let up = &mut ups[0];
    h.request(json!(7), "resources/read", json!({"uri": "mem://x", "_meta": {"progressToken": "tok"}}));
    h.request(json!(8), "resources/read", json!({"uri": "mem://y", "_meta": {"progressToken": "tok"}}));
    let first = value(&up.recv().await.params)["_meta"]["progressToken"].clone();
    let second = value(&up.recv().await.params)["_meta"]["progressToken"].clone();
    assert_ne!(first, json!("tok"), "two clients may use the same token: the upstream sees the proxy's");
    assert_ne!(first, second);

    // The upstream's progress for the second request reaches its client under the client's token.
    let progress = json!({"progressToken": second, "progress": 1});
    up.send(Message::notification("notifications/progress", Some(jsonrpc::to_raw(&progress))));
    let (note, route) = h.recv().await;
    assert_eq!(value(&note.params), json!({"progressToken": "tok", "progress": 1}));
    assert_eq!(route, Sent::Related("8".into()));
}

#[tokio::test]
async fn a_cancellation_names_the_upstream_id() {
    let (mut h, mut ups) = Harness::start(&[("a", false)], Arc::new(AllowAll), false).await;
    let up = &mut ups[0];
    h.request(json!("warm-up"), "ping", json!({}));
    let warm_up = up.recv().await;
    up.reply(&warm_up, json!({}));
    h.recv().await;

    h.request(json!(5), "resources/read", json!({"uri": "mem://slow"}));
    let read = up.recv().await;
    assert_eq!(id_of(&read), json!(2));
    h.notify("notifications/cancelled", json!({"requestId": 5, "reason": "changed my mind"}));
    let cancel = up.recv().await;
    assert_eq!(cancel.method(), "notifications/cancelled");
    assert_eq!(value(&cancel.params), json!({"requestId": 2, "reason": "changed my mind"}));

    // A late answer to the cancelled request is not relayed.
    up.reply(&read, json!({"contents": []}));
    h.nothing().await;
}

// === tools/call through the gate ===

#[tokio::test]
async fn an_allowed_call_goes_upstream_after_the_tool_list_is_fetched() {
    let gate = Arc::new(FakeGate::default());
    let (mut h, mut ups) = Harness::start(&[("a", false)], gate.clone(), false).await;
    let up = &mut ups[0];
    h.request(json!(1), "tools/call", json!({"name": "echo", "arguments": {"text": "hi"}}));
    up.answer_tool_fetch(&["echo"]).await;
    let call = up.recv().await;
    assert_eq!(call.method(), "tools/call");
    assert_eq!(value(&call.params), json!({"name": "echo", "arguments": {"text": "hi"}}));
    {
        let seen = gate.seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!((seen[0].server.as_str(), seen[0].tool.as_str(), seen[0].listed), ("a", "echo", true));
    }
    up.reply(&call, json!({"content": []}));
    let (answer, _) = h.recv().await;
    assert_eq!((id_of(&answer), value(&answer.result)), (json!(1), json!({"content": []})));
}

#[tokio::test]
async fn a_client_that_listed_tools_is_not_made_to_wait_for_a_fetch() {
    let gate = Arc::new(FakeGate::default());
    let (mut h, mut ups) = Harness::start(&[("a", false)], gate.clone(), false).await;
    let up = &mut ups[0];
    h.request(json!(1), "tools/list", json!({}));
    let list = up.recv().await;
    up.reply(&list, tool_list(&["echo"]));
    h.recv().await;
    h.request(json!(2), "tools/call", json!({"name": "echo", "arguments": {}}));
    let call = up.recv().await;
    assert_eq!(call.method(), "tools/call", "the list the client got is the one the gate uses");
    assert!(gate.seen.lock().unwrap()[0].listed);
}

/// The gate learns, per request, what the client declared: a 2025-11-25 client in
/// `initialize` and `params.task`, a 2026-07-28 client in each request's `_meta`; and who owns
/// the call (over stdio: the client's name).
#[tokio::test]
async fn the_gate_sees_what_each_request_offers_and_who_owns_it() {
    let gate = Arc::new(FakeGate::default());
    let (mut h, mut ups) = Harness::start(&[("a", false)], gate.clone(), false).await;
    let up = &mut ups[0];
    let caps = json!({"elicitation": {"url": {}}});
    let init = json!({"protocolVersion": "2025-11-25", "capabilities": caps, "clientInfo": {"name": "tester", "version": "1"}});
    h.request(json!(0), "initialize", init);
    let sent = up.recv().await;
    up.reply(
        &sent,
        json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "a", "version": "1"}}),
    );
    h.recv().await;

    let legacy = json!({"name": "rm", "arguments": {}, "task": {"ttl": 60000}, "_meta": {"progressToken": 5}});
    h.request(json!(1), "tools/call", legacy);
    up.answer_tool_fetch(&["rm"]).await;
    let call = up.recv().await;
    up.reply(&call, json!({"content": []}));
    h.recv().await;
    h.request(json!(2), "tools/call", json!({"name": "rm", "arguments": {}}));
    let call = up.recv().await;
    up.reply(&call, json!({"content": []}));
    h.recv().await;
    let modern_meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {
            "elicitation": {"url": {}},
            "extensions": {"io.modelcontextprotocol/tasks": {}},
        },
    });
    h.request(json!(3), "tools/call", json!({"name": "rm", "arguments": {}, "_meta": modern_meta}));
    let call = up.recv().await;
    up.reply(&call, json!({"content": []}));
    h.recv().await;
    let bare_modern = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28"});
    h.request(json!(4), "tools/call", json!({"name": "rm", "arguments": {}, "task": {}, "_meta": bare_modern}));
    let call = up.recv().await;
    up.reply(&call, json!({"content": []}));
    h.recv().await;

    let seen = gate.seen.lock().unwrap();
    let offered: Vec<Offered> = seen.iter().map(|s| s.offered).collect();
    let legacy = Offered {
        task: true,
        requested_ttl_ms: Some(60000),
        url_elicitation: true,
        progress: true,
        ..Offered::plain(Era::Legacy)
    };
    let plain_legacy = Offered { url_elicitation: true, ..Offered::plain(Era::Legacy) };
    let modern = Offered { task: true, input_required: true, ..Offered::plain(Era::Modern) };
    // A 2026-07-28 request declares nothing it does not carry: no inference from `initialize`,
    // and the legacy `task` parameter means nothing there.
    assert_eq!(offered, vec![legacy, plain_legacy, modern, Offered::plain(Era::Modern)]);
    assert!(seen.iter().all(|s| s.owner == Owner::StdioClient("tester".into())));
}

#[tokio::test]
async fn a_denied_call_is_answered_by_the_proxy_and_never_sent() {
    let gate = Arc::new(FakeGate::default());
    let denial = json!({"content": [{"type": "text", "text": "denied"}], "isError": true});
    gate.then(Verdict::Respond(jsonrpc::to_raw(&denial)));
    let (mut h, mut ups) = Harness::start(&[("a", false)], gate.clone(), false).await;
    let up = &mut ups[0];
    h.request(json!(1), "tools/call", json!({"name": "rm", "arguments": {}}));
    up.answer_tool_fetch(&["rm"]).await;
    let (answer, _) = h.recv().await;
    assert_eq!((id_of(&answer), value(&answer.result)), (json!(1), denial));
    up.nothing().await;
}

/// `PATH` is no argument to the policy's conditions on `/path`, but a server that matches keys
/// loosely reads it as `path`: refused before the gate, audited, never sent.
#[tokio::test]
async fn an_argument_that_differs_from_a_declared_property_only_by_case_is_refused_before_the_gate() {
    let gate = Arc::new(FakeGate::default());
    let (mut h, mut ups) = Harness::start(&[("a", false)], gate.clone(), false).await;
    let up = &mut ups[0];
    h.request(json!(1), "tools/call", json!({"name": "write_file", "arguments": {"PATH": "/etc/passwd"}}));
    let fetch = up.recv().await;
    let schema = json!({"type": "object", "properties": {"path": {"type": "string"}, "content": {}}});
    up.reply(&fetch, json!({"tools": [{"name": "write_file", "inputSchema": schema}, {"name": "free", "inputSchema": {"type": "object"}}]}));
    let (refused, _) = h.recv().await;
    assert_eq!((id_of(&refused), refused.error_code()), (json!(1), Some(code::INVALID_PARAMS)));
    let message = value(&refused.error)["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains(r#"argument "PATH" differs from "path""#), "{message}");
    up.nothing().await;
    assert!(gate.seen.lock().unwrap().is_empty(), "the gate judged it");
    {
        let refused = gate.refused.lock().unwrap();
        assert_eq!(refused.len(), 1);
        assert_eq!((refused[0].0.as_str(), refused[0].1.as_slice()), ("a", ["write_file".to_owned()].as_slice()));
        assert!(refused[0].2.contains(r#""PATH""#), "{:?}", refused[0].2);
    }
    // As declared, with undeclared extras, or for a tool that declares no properties: judged and sent.
    h.request(json!(2), "tools/call", json!({"name": "write_file", "arguments": {"path": "/tmp/a", "Mode": 1}}));
    h.request(json!(3), "tools/call", json!({"name": "free", "arguments": {"PATH": "/etc/passwd"}}));
    for (id, name) in [(2, "write_file"), (3, "free")] {
        let call = up.recv().await;
        assert_eq!(value(&call.params)["name"], name);
        up.reply(&call, json!({"content": []}));
        let (answer, _) = h.recv().await;
        assert_eq!(id_of(&answer), json!(id));
    }
    assert_eq!(gate.seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_held_call_waits_and_goes_upstream_once_allowed() {
    let gate = Arc::new(FakeGate::default());
    let (release, decided) = oneshot::channel();
    gate.then(Verdict::Hold(Box::pin(async move { decided.await.expect("released") })));
    let (mut h, mut ups) = Harness::start(&[("a", false)], gate.clone(), false).await;
    let up = &mut ups[0];
    h.request(json!(1), "tools/call", json!({"name": "deploy", "arguments": {}}));
    up.answer_tool_fetch(&["deploy"]).await;
    up.nothing().await;
    h.nothing().await;

    assert!(release.send(Verdict::Allow).is_ok());
    let call = up.recv().await;
    assert_eq!(value(&call.params)["name"], json!("deploy"));
    up.reply(&call, json!({"content": []}));
    let (answer, _) = h.recv().await;
    assert_eq!(id_of(&answer), json!(1));
}

#[tokio::test]
async fn a_held_call_cancelled_by_its_caller_is_never_sent() {
    let gate = Arc::new(FakeGate::default());
    let (release, decided) = oneshot::channel();
    gate.then(Verdict::Hold(Box::pin(async move { decided.await.expect("released") })));
    let (mut h, mut ups) = Harness::start(&[("a", false)], gate.clone(), false).await;
    let up = &mut ups[0];
    h.request(json!(1), "tools/call", json!({"name": "deploy", "arguments": {}}));
    up.answer_tool_fetch(&["deploy"]).await;
    h.notify("notifications/cancelled", json!({"requestId": 1}));
    settle().await;
    assert!(gate.seen.lock().unwrap()[0].gone.is_cancelled(), "the gate is told the caller is gone");

    let _ = release.send(Verdict::Allow);
    up.nothing().await;
    h.nothing().await;
}

/// A client may reuse the id of a held call it cancelled. The first call's decision, when it
/// comes, is not taken for the second's: the second stays held until its own decision.
#[tokio::test]
async fn a_cancelled_held_calls_decision_does_not_answer_a_call_that_reused_its_id() {
    let gate = Arc::new(FakeGate::default());
    let (release_first, first) = oneshot::channel();
    let (release_second, second) = oneshot::channel();
    gate.then(Verdict::Hold(Box::pin(async move { first.await.expect("released") })));
    gate.then(Verdict::Hold(Box::pin(async move { second.await.expect("released") })));
    let (mut h, mut ups) = Harness::start(&[("a", false)], gate.clone(), false).await;
    let up = &mut ups[0];
    h.request(json!(7), "tools/call", json!({"name": "wipe", "arguments": {"path": "/a"}}));
    up.answer_tool_fetch(&["wipe"]).await;
    settle().await;
    h.notify("notifications/cancelled", json!({"requestId": 7}));
    h.request(json!(7), "tools/call", json!({"name": "wipe", "arguments": {"path": "/b"}}));
    settle().await;
    assert_eq!(gate.seen.lock().unwrap().len(), 2, "the second call is held too");

    // The first call's decision: it is not run, and the second is not answered with it.
    let _ = release_first.send(Verdict::Allow);
    up.nothing().await;
    h.nothing().await;
    // The second call's own decision sends it, with its own arguments.
    let _ = release_second.send(Verdict::Allow);
    let call = up.recv().await;
    assert_eq!(value(&call.params)["arguments"], json!({"path": "/b"}));
}

/// The gate hears how every call it let through ended: a call whose caller cancelled it after it
/// was sent is reported with an unknown outcome, not left without one.
#[tokio::test]
async fn a_tracked_call_cancelled_after_it_was_sent_reports_an_unknown_outcome() {
    let gate = Arc::new(FakeGate::default());
    let (first_hook, mut ended) = outcome_recorder();
    let (second_hook, mut second_ended) = outcome_recorder();
    gate.then(Verdict::AllowTracked(first_hook));
    gate.then(Verdict::AllowTracked(second_hook));
    let (h, mut ups) = Harness::start(&[("a", false)], gate.clone(), false).await;
    let up = &mut ups[0];
    h.request(json!(1), "tools/call", json!({"name": "deploy", "arguments": {}}));
    up.answer_tool_fetch(&["deploy"]).await;
    let first = up.recv().await;
    h.notify("notifications/cancelled", json!({"requestId": 1}));
    let cancel = up.recv().await;
    assert_eq!(cancel.method(), "notifications/cancelled");
    let report = tokio::time::timeout(Duration::from_secs(5), ended.recv()).await.expect("an outcome in time");
    let report = report.expect("an outcome");
    assert!(report.starts_with("error ") && report.contains("outcome unknown"), "{report}");
    // Its late answer changes nothing; an answered call reports its result.
    up.reply(&first, json!({"content": []}));
    h.request(json!(2), "tools/call", json!({"name": "deploy", "arguments": {}}));
    let second = up.recv().await;
    up.reply(&second, json!({"content": []}));
    assert_eq!(second_ended.recv().await.expect("an outcome"), r#"result {"content":[]}"#);
}

/// A gate hook that reports how its call ended (`result …`, `error …`, `not run`) on the channel.
fn outcome_recorder() -> (crate::gate::OutcomeHook, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    let hook: crate::gate::OutcomeHook = Box::new(move |outcome: crate::gate::Outcome<'_>| {
        let text = match outcome {
            crate::gate::Outcome::Result(r) => format!("result {}", r.get()),
            crate::gate::Outcome::Error(e) => format!("error {e}"),
            crate::gate::Outcome::NotRun => "not run".to_owned(),
        };
        let _ = tx.send(text);
    });
    (hook, rx)
}

/// A call that came before the tool list it needs waits, unjudged, for the list; its caller
/// cancelling it (or its stream closing) drops it: it is never judged or sent.
#[tokio::test]
async fn a_call_cancelled_while_waiting_for_the_tool_list_is_never_judged_or_sent() {
    let gate = Arc::new(FakeGate::default());
    let (mut h, mut ups) = Harness::start(&[("a", false)], gate.clone(), false).await;
    let up = &mut ups[0];
    h.request(json!(1), "tools/call", json!({"name": "wipe", "arguments": {}}));
    h.request(json!(2), "tools/call", json!({"name": "wipe", "arguments": {"dir": "/tmp"}}));
    let fetch = up.recv().await;
    assert_eq!(fetch.method(), "tools/list");
    h.notify("notifications/cancelled", json!({"requestId": 1}));
    assert!(h.handle.send(Input::ClientGone { id: "2".into(), cancel_upstream: true }));
    settle().await;
    up.reply(&fetch, tool_list(&["wipe"]));
    up.nothing().await;
    h.nothing().await;
    assert!(gate.seen.lock().unwrap().is_empty(), "the gate never saw them");
}

/// A call that waited for the tool list goes upstream with the `Mcp-Param-*` headers it came with.
#[tokio::test]
async fn a_call_that_waited_for_the_tool_list_keeps_its_param_headers() {
    let (h, mut ups) = Harness::start(&[("a", false)], Arc::new(AllowAll), false).await;
    let up = &mut ups[0];
    let msg = Message::request(
        jsonrpc::to_raw(&json!(1)),
        "tools/call",
        Some(jsonrpc::to_raw(&json!({"name": "deploy", "arguments": {"region": "sandbox"}}))),
    );
    let param_headers = vec![("Region".to_owned(), "sandbox".to_owned())];
    assert!(h.handle.send(Input::Client { msg, param_headers: param_headers.clone() }));
    up.answer_tool_fetch(&["deploy"]).await;
    let call = up.recv_outgoing().await;
    assert_eq!(Message::parse(&call.bytes).expect("a message").method(), "tools/call");
    assert_eq!(call.param_headers, param_headers);
}

/// The `Mcp-Param-*` headers that go upstream are made from the arguments that were judged; a
/// client whose header for a marked argument disagrees with its body is refused with `-32020`.
#[tokio::test]
async fn param_headers_upstream_say_what_the_judged_arguments_say() {
    let (mut h, mut ups) = Harness::start(&[("a", false)], Arc::new(AllowAll), false).await;
    let up = &mut ups[0];
    let call = |id: u64, region: &str, header: &str| Input::Client {
        msg: Message::request(
            jsonrpc::to_raw(&json!(id)),
            "tools/call",
            Some(jsonrpc::to_raw(&json!({"name": "deploy", "arguments": {"region": region}}))),
        ),
        param_headers: vec![("region".to_owned(), header.to_owned()), ("trace".to_owned(), "t1".to_owned())],
    };
    assert!(h.handle.send(call(1, "sandbox", "production")));
    let fetch = up.recv().await;
    let schema = json!({"type": "object", "properties": {"region": {"type": "string", "x-mcp-header": "Region"}}});
    up.reply(&fetch, json!({"tools": [{"name": "deploy", "inputSchema": schema}]}));
    let (refused, _) = h.recv().await;
    assert_eq!(value(&refused.error)["code"], json!(code::HEADER_MISMATCH), "{:?}", value(&refused.error));
    up.nothing().await;

    assert!(h.handle.send(call(2, "sandbox", "sandbox")));
    let sent = up.recv_outgoing().await;
    assert_eq!(value(&Message::parse(&sent.bytes).unwrap().params)["arguments"], json!({"region": "sandbox"}));
    let expected = [("trace", "t1"), ("Region", "sandbox")].map(|(a, b)| (a.to_owned(), b.to_owned()));
    assert_eq!(sent.param_headers, expected);
}

// === several upstreams ===

#[tokio::test]
async fn tools_list_fans_out_and_merges_under_prefixes() {
    let gate = Arc::new(FakeGate::default());
    let (mut h, mut ups) = Harness::start(&[("a", true), ("b", true)], gate.clone(), false).await;
    h.request(json!(1), "tools/list", json!({}));
    let to_a = ups[0].recv().await;
    let to_b = ups[1].recv().await;
    assert_eq!((to_a.method(), to_b.method()), ("tools/list", "tools/list"));
    // b answers first; the merged list keeps the configured order.
    ups[1].reply(&to_b, tool_list(&["y"]));
    h.nothing().await;
    ups[0].reply(&to_a, tool_list(&["x"]));
    let (merged, _) = h.recv().await;
    let names: Vec<Value> =
        value(&merged.result)["tools"].as_array().expect("tools").iter().map(|t| t["name"].clone()).collect();
    assert_eq!((id_of(&merged), names), (json!(1), vec![json!("a__x"), json!("b__y")]));

    // A prefixed name goes to its server under the server's own name.
    h.request(json!(2), "tools/call", json!({"name": "b__y", "arguments": {}}));
    let call = ups[1].recv().await;
    assert_eq!(value(&call.params)["name"], json!("y"));
    assert_eq!(gate.seen.lock().unwrap()[0].server, "b");
    ups[0].nothing().await;
}

#[tokio::test]
async fn prompts_route_by_prefix_and_resources_by_the_uris_listed() {
    let (mut h, mut ups) = Harness::start(&[("a", true), ("b", true)], Arc::new(AllowAll), false).await;
    h.request(json!(1), "prompts/get", json!({"name": "b__greet"}));
    let get = ups[1].recv().await;
    assert_eq!((get.method(), value(&get.params)), ("prompts/get", json!({"name": "greet"})));
    ups[0].nothing().await;

    h.request(json!(2), "resources/list", json!({}));
    let to_a = ups[0].recv().await;
    let to_b = ups[1].recv().await;
    ups[0].reply(&to_a, json!({"resources": [{"uri": "file:///x", "name": "x"}]}));
    ups[1].reply(&to_b, json!({"resources": [{"uri": "mem://y", "name": "y"}]}));
    h.recv().await;

    h.request(json!(3), "resources/read", json!({"uri": "mem://y"}));
    assert_eq!(value(&ups[1].recv().await.params), json!({"uri": "mem://y"}));
    h.request(json!(4), "resources/read", json!({"uri": "file:///x"}));
    assert_eq!(value(&ups[0].recv().await.params), json!({"uri": "file:///x"}));
    h.request(json!(5), "resources/read", json!({"uri": "other://z"}));
    let (refused, _) = h.recv().await;
    assert_eq!((id_of(&refused), refused.error_code()), (json!(5), Some(code::INVALID_PARAMS)));
    ups[0].nothing().await;
    ups[1].nothing().await;
}

#[tokio::test]
async fn a_call_to_an_unprefixed_tool_waits_for_the_lists_that_could_hold_it() {
    let (h, mut ups) = Harness::start(&[("a", false), ("b", false)], Arc::new(AllowAll), false).await;
    h.request(json!(1), "tools/call", json!({"name": "y", "arguments": {}}));
    let fetch_a = ups[0].recv().await;
    let fetch_b = ups[1].recv().await;
    assert_eq!((fetch_a.method(), fetch_b.method()), ("tools/list", "tools/list"));
    ups[0].reply(&fetch_a, tool_list(&["x"]));
    ups[0].nothing().await;
    ups[1].nothing().await;
    ups[1].reply(&fetch_b, tool_list(&["y"]));
    let call = ups[1].recv().await;
    assert_eq!((call.method(), value(&call.params)["name"].clone()), ("tools/call", json!("y")));
    ups[0].nothing().await;
}

// === restarts ===

#[tokio::test(start_paused = true)]
async fn a_crashed_upstream_restarts_with_backoff() {
    let (mut h, mut ups) = Harness::start(&[("a", false)], Arc::new(AllowAll), false).await;
    let mut up = ups.remove(0);
    h.request(json!(1), "resources/list", json!({}));
    up.recv().await;
    up.reporter.closed("crashed");
    let (failed, _) = h.recv().await;
    assert_eq!((id_of(&failed), failed.error_code()), (json!(1), Some(code::UPSTREAM_ERROR)));

    let crashed = Instant::now();
    let second = h.next_upstream().await;
    assert_eq!((crashed.elapsed(), second.generation), (Duration::from_millis(250), 2));

    // A crash soon after doubles the wait; a restart that fails doubles it again.
    let crashed = Instant::now();
    h.fail.store(1, Ordering::SeqCst);
    second.reporter.closed("crashed again");
    let fourth = h.next_upstream().await;
    assert_eq!((crashed.elapsed(), fourth.generation), (Duration::from_millis(500 + 1000), 4));

    // After a run of over a minute, the backoff starts over.
    tokio::time::advance(Duration::from_secs(61)).await;
    let crashed = Instant::now();
    fourth.reporter.closed("crashed much later");
    let fifth = h.next_upstream().await;
    assert_eq!((crashed.elapsed(), fifth.generation), (Duration::from_millis(250), 5));
}

#[tokio::test(start_paused = true)]
async fn requests_during_a_restart_fail_at_once_and_later_ones_reach_the_new_upstream() {
    let (mut h, mut ups) = Harness::start(&[("a", false)], Arc::new(AllowAll), false).await;
    let old = ups.remove(0);
    old.reporter.closed("crashed");
    h.request(json!(1), "resources/list", json!({"cursor": "during"}));
    let (failed, _) = h.recv().await;
    assert_eq!((id_of(&failed), failed.error_code()), (json!(1), Some(code::UPSTREAM_ERROR)));
    assert!(value(&failed.error)["message"].as_str().is_some_and(|m| m.contains("being restarted")));

    let mut new = h.next_upstream().await;
    // The client is told that the restarted upstream's lists may have changed.
    for list in ["tools", "prompts", "resources"] {
        let (note, route) = h.recv().await;
        assert_eq!((note.method(), route), (format!("notifications/{list}/list_changed").as_str(), Sent::Unrelated));
    }
    // What the old transport still reports is ignored.
    old.send(Message::notification("notifications/message", Some(jsonrpc::to_raw(&json!({"data": "stale"})))));
    h.nothing().await;

    h.request(json!(2), "resources/list", json!({"cursor": "after"}));
    let sent = new.recv().await;
    assert_eq!(value(&sent.params), json!({"cursor": "after"}), "the request made during the restart is not replayed");
    new.reply(&sent, json!({"resources": []}));
    let (answer, _) = h.recv().await;
    assert_eq!((id_of(&answer), value(&answer.result)), (json!(2), json!({"resources": []})));
}

/// A held call approved while its upstream is restarting cannot be sent: it is reported as not
/// run, so that its approval stays for the retry instead of being spent on nothing.
#[tokio::test]
async fn an_approved_call_that_cannot_be_sent_is_reported_not_run() {
    let gate = Arc::new(FakeGate::default());
    let (release, decided) = oneshot::channel();
    gate.then(Verdict::Hold(Box::pin(async move { decided.await.expect("released") })));
    let (mut h, mut ups) = Harness::start(&[("a", false)], gate.clone(), false).await;
    let old = &mut ups[0];
    h.request(json!(1), "tools/call", json!({"name": "deploy", "arguments": {}}));
    old.answer_tool_fetch(&["deploy"]).await;
    settle().await;
    old.reporter.closed("crashed");
    settle().await;

    let (hook, mut ended) = outcome_recorder();
    let _ = release.send(Verdict::AllowTracked(hook));
    let outcome = tokio::time::timeout(Duration::from_secs(5), ended.recv()).await.expect("an outcome in time");
    assert_eq!(outcome.as_deref(), Some("not run"), "reported as not run");
    let (failed, _) = h.recv().await;
    assert_eq!((id_of(&failed), failed.error_code()), (json!(1), Some(code::UPSTREAM_ERROR)));
}

#[tokio::test]
async fn client_gone_cancels_its_request_upstream() {
    let (mut h, mut ups) = Harness::start(&[("a", false)], Arc::new(AllowAll), false).await;
    let up = &mut ups[0];
    h.request(json!(3), "resources/read", json!({"uri": "mem://slow"}));
    let read = up.recv().await;
    assert!(h.handle.send(Input::ClientGone { id: "3".into(), cancel_upstream: true }));
    let cancel = up.recv().await;
    assert_eq!(cancel.method(), "notifications/cancelled");
    assert_eq!(value(&cancel.params)["requestId"], id_of(&read));
    h.nothing().await;
}
