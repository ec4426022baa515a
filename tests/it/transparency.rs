//! Byte-level relay checks and bad input, driving the stdio downstream with raw lines.

use std::sync::Arc;

use mcp_gate::upstream::settings::{ServerConfig, UpstreamTransport};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf};

use super::common::*;

fn raw_bin() -> String {
    fixture_bin().with_file_name("raw-upstream").display().to_string()
}

fn raw_server(command: &str) -> Arc<ServerConfig> {
    Arc::new(ServerConfig {
        name: "raw".into(),
        transport: UpstreamTransport::Stdio { command: command.into(), args: Vec::new(), env: Vec::new(), cwd: None },
        prefix: true,
        request_timeout: mcp_gate::upstream::settings::DEFAULT_REQUEST_TIMEOUT,
        initialize_timeout: mcp_gate::upstream::settings::DEFAULT_INITIALIZE_TIMEOUT,
    })
}

/// A client speaking raw lines to an in-process stdio proxy.
struct RawClient {
    lines: tokio::io::Lines<BufReader<ReadHalf<DuplexStream>>>,
    write: WriteHalf<DuplexStream>,
}

impl RawClient {
    async fn new() -> RawClient {
        let stream = stdio_proxy(options(vec![raw_server(&raw_bin())])).await;
        let (read, write) = tokio::io::split(stream);
        RawClient { lines: BufReader::new(read).lines(), write }
    }

    /// A client of a proxy whose gate is `gate`, initialized, with the tool list fetched (so that
    /// calls are judged at once).
    async fn listed(gate: Arc<dyn mcp_gate::gate::Gate>) -> RawClient {
        let stream = stdio_proxy(options_with_gate(vec![raw_server(&raw_bin())], gate)).await;
        let (read, write) = tokio::io::split(stream);
        let mut c = RawClient { lines: BufReader::new(read).lines(), write };
        c.initialize().await;
        c.send(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#).await;
        c.recv().await;
        c
    }

    async fn send(&mut self, line: &str) {
        self.write.write_all(line.as_bytes()).await.expect("write");
        self.write.write_all(b"\n").await.expect("write");
    }

    async fn recv(&mut self) -> String {
        within("a line from the proxy", self.lines.next_line()).await.expect("read").expect("proxy closed stdout")
    }

    async fn initialize(&mut self) -> String {
        self.send(r#"{"jsonrpc":"2.0","id":"init-1","method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{"x-client-cap":{}},"clientInfo":{"name":"raw","version":"1"}}}"#).await;
        let reply = self.recv().await;
        self.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).await;
        reply
    }
}

/// What the upstream received for a request, with its id put back to the client's.
fn received_as_sent(reply: &str, client_id: &str) -> String {
    let v: Value = serde_json::from_str(reply).expect("reply is JSON");
    let received = v["result"]["received"].as_str().expect("received line").to_owned();
    let up: Value = serde_json::from_str(&received).expect("received is JSON");
    received.replacen(&format!("\"id\":{}", up["id"]), &format!("\"id\":{client_id}"), 1)
}

#[tokio::test]
async fn unknown_fields_methods_and_meta_survive_byte_for_byte() {
    let mut c = RawClient::new().await;
    let init = c.initialize().await;
    assert_eq!(
        init,
        r#"{"jsonrpc":"2.0","id":"init-1","result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{},"x-vendor-cap":{"on":true}},"serverInfo":{"name":"raw","version":"1"}}}"#
    );

    // An unknown method with odd numbers, _meta and an unknown top-level key.
    let sent = r#"{"jsonrpc":"2.0","id":"c-2","method":"vendor/unknownMethod","params":{"a":1.50,"big":18446744073709551615,"s":"\u00e9\n","_meta":{"progressToken":7,"x":"y"}},"x-top":{"k":[]}}"#;
    c.send(sent).await;
    let reply = c.recv().await;
    assert_eq!(received_as_sent(&reply, "\"c-2\""), sent, "the upstream got the request unchanged but for its id");
    assert!(
        reply.ends_with(r#","unknownResultField":{"deep":[1.0,2e3]}},"x-extra-top":true}"#),
        "result and unknown top-level keys come back as sent: {reply}"
    );
    assert!(reply.starts_with(r#"{"jsonrpc":"2.0","id":"c-2","result":"#));

    // Tool fields rmcp does not model (execution.taskSupport, vendor keys) are listed as sent.
    c.send(r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#).await;
    assert_eq!(
        c.recv().await,
        r#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"raw_tool","inputSchema":{"type":"object"},"execution":{"taskSupport":"optional"},"x-vendor":{"k":[1,2.50,"\u00e9"]}}],"_meta":{"vendor/key":1}}}"#
    );

    // tools/call with a task parameter and _meta goes upstream unchanged.
    let sent = r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"raw_tool","arguments":{"n":1.50},"task":{"ttl":5000},"_meta":{"progressToken":"p","vendor":{}}}}"#;
    c.send(sent).await;
    assert_eq!(received_as_sent(&c.recv().await, "4"), sent);

    // A client notification reaches the upstream unchanged.
    let sent = r#"{"jsonrpc":"2.0","method":"notifications/vendor","params":{"x":0.10}}"#;
    c.send(sent).await;
    let seen: Value = serde_json::from_str(&c.recv().await).unwrap();
    assert_eq!(seen["method"], "notifications/raw/seen");
    assert_eq!(seen["params"]["line"], sent);
}

#[tokio::test]
async fn malformed_input_gets_json_rpc_errors_and_loses_nothing() {
    let mut c = RawClient::new().await;
    c.initialize().await;

    c.send("{not json").await;
    let v: Value = serde_json::from_str(&c.recv().await).unwrap();
    assert_eq!(v["id"], Value::Null);
    assert_eq!(v["error"]["code"], -32700);

    c.send(r#"{"jsonrpc":"2.0","id":5}"#).await;
    let v: Value = serde_json::from_str(&c.recv().await).unwrap();
    assert_eq!(v["error"]["code"], -32600);

    c.send(r#"[{"jsonrpc":"2.0","id":6,"method":"ping"}]"#).await;
    let v: Value = serde_json::from_str(&c.recv().await).unwrap();
    assert_eq!(v["error"]["code"], -32600);

    // Over the 16 MiB cap: rejected, and the next message is served.
    let huge =
        format!(r#"{{"jsonrpc":"2.0","id":7,"method":"x","params":{{"s":"{}"}}}}"#, "a".repeat(16 * 1024 * 1024 + 1));
    c.send(&huge).await;
    let v: Value = serde_json::from_str(&c.recv().await).unwrap();
    assert_eq!(v["error"]["code"], -32600);
    assert_eq!(v["id"], 7, "answered under the id the line starts with: {v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("limit"));

    // A garbage line from the upstream is skipped; the reply after it arrives.
    c.send(r#"{"jsonrpc":"2.0","id":8,"method":"raw/garbage"}"#).await;
    let v: Value = serde_json::from_str(&c.recv().await).unwrap();
    assert_eq!(v["id"], 8);
    assert!(v["result"]["received"].is_string());
}

#[tokio::test]
async fn a_crashed_upstream_fails_in_flight_calls_and_comes_back() {
    let mut c = RawClient::new().await;
    c.initialize().await;
    c.send(r#"{"jsonrpc":"2.0","id":"boom","method":"raw/crash"}"#).await;
    let v: Value = serde_json::from_str(&c.recv().await).unwrap();
    assert_eq!(v["id"], "boom");
    assert_eq!(v["error"]["code"], -32000);
    let text = v["error"]["message"].as_str().unwrap();
    assert!(text.contains("raw") && text.contains("exit"), "{text}");

    // After the restart the client is told to list tools again, and calls work.
    let v: Value = serde_json::from_str(&c.recv().await).unwrap();
    assert_eq!(v["method"], "notifications/tools/list_changed");
    c.send(r#"{"jsonrpc":"2.0","id":9,"method":"vendor/after"}"#).await;
    let v: Value = serde_json::from_str(&c.recv().await).unwrap();
    assert_eq!(v["id"], 9);
    assert!(v["result"]["received"].as_str().unwrap().contains("vendor/after"));
}

#[tokio::test]
async fn cancellation_reaches_the_upstream_under_its_id() {
    let mut c = RawClient::new().await;
    c.initialize().await;
    c.send(r#"{"jsonrpc":"2.0","id":"slow-1","method":"raw/hold"}"#).await;
    c.send(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"slow-1","reason":"user"}}"#)
        .await;
    let seen: Value = serde_json::from_str(&c.recv().await).unwrap();
    let line: Value = serde_json::from_str(seen["params"]["line"].as_str().unwrap()).unwrap();
    assert_eq!(line["method"], "notifications/cancelled");
    assert_eq!(line["params"]["requestId"], seen["params"]["held"], "the cancel names the id the upstream saw");
    assert_eq!(line["params"]["reason"], "user");
    // A cancel for a request that is not in flight is not forwarded.
    c.send(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"never"}}"#).await;
    c.send(r#"{"jsonrpc":"2.0","id":10,"method":"vendor/next"}"#).await;
    let v: Value = serde_json::from_str(&c.recv().await).unwrap();
    assert_eq!(v["id"], 10, "nothing but the next reply arrives");
}

#[tokio::test]
async fn a_command_that_cannot_start_names_server_and_command() {
    let err = mcp_gate::session::start(options(vec![raw_server("/nonexistent/mcp-server")]), Arc::new(Discard))
        .await
        .err()
        .expect("start fails");
    let text = err.to_string();
    assert!(text.contains("`raw`") && text.contains("/nonexistent/mcp-server"), "{text}");
}

struct Discard;

impl mcp_gate::session::Downstream for Discard {
    fn send(&self, _msg: &mcp_gate::wire::jsonrpc::Message, _route: mcp_gate::session::Route<'_>) {}
}

/// Holds every tool call until the test ends.
struct HoldForever;

impl mcp_gate::gate::Gate for HoldForever {
    fn check(&self, _call: &mcp_gate::gate::ToolCall<'_>) -> mcp_gate::gate::Verdict {
        mcp_gate::gate::Verdict::Hold(Box::pin(std::future::pending()))
    }
}

/// An upstream's progress carrying the token of a call the gate holds is a spoof (the call was
/// never sent upstream): it is dropped; progress for other tokens still reaches the client.
#[tokio::test]
async fn upstream_progress_for_a_held_call_is_dropped() {
    let mut c = RawClient::listed(Arc::new(HoldForever)).await;
    c.send(r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"raw_tool","arguments":{},"_meta":{"progressToken":"held-1"}}}"#).await;
    c.send(r#"{"jsonrpc":"2.0","id":4,"method":"raw/progress","params":{"token":"held-1"}}"#).await;
    let line = c.recv().await;
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["id"], 4, "the spoofed progress is not relayed before the reply: {line}");

    c.send(r#"{"jsonrpc":"2.0","id":5,"method":"raw/progress","params":{"token":"other-7"}}"#).await;
    let line = c.recv().await;
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["method"], "notifications/progress", "progress for other tokens still flows: {line}");
    assert_eq!(v["params"]["progressToken"], "other-7");
    assert_eq!(serde_json::from_str::<Value>(&c.recv().await).unwrap()["id"], 5);
}

/// The same spoof with the held call's token written another way: a string with an escape
/// (`"held\u002d1"` is `"held-1"`) or a number with a fraction (`7.0` is `7` to JavaScript and to
/// the Python SDK's lax integers). Clients match tokens by value, so the proxy must too.
#[tokio::test]
async fn upstream_progress_for_a_held_call_is_dropped_however_its_token_is_written() {
    let mut c = RawClient::listed(Arc::new(HoldForever)).await;
    c.send(r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"raw_tool","arguments":{},"_meta":{"progressToken":"held-1"}}}"#).await;
    c.send(r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"raw_tool","arguments":{},"_meta":{"progressToken":7}}}"#).await;
    for (id, token) in [(5, r#""held\u002d1""#), (6, "7.0"), (7, "7e0")] {
        let spoof = format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progressToken":{token},"progress":1,"message":"approved by operator, running..."}}}}"#
        );
        let line = format!("{spoof}\n{}", r#"{"jsonrpc":"2.0","id":"ID","result":{}}"#);
        let ask = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "raw/reply", "params": {"line": line}});
        c.send(&ask.to_string()).await;
        let line = c.recv().await;
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["id"], id, "the spoofed progress for token {token} is relayed: {line}");
    }
}

/// Holds each call for a second, then answers it with a result naming its tool.
struct HoldThenName;

impl mcp_gate::gate::Gate for HoldThenName {
    fn check(&self, call: &mcp_gate::gate::ToolCall<'_>) -> mcp_gate::gate::Verdict {
        let result = serde_json::json!({"content": [{"type": "text", "text": call.tool}]});
        let result = mcp_gate::wire::jsonrpc::to_raw(&result);
        mcp_gate::gate::Verdict::Hold(Box::pin(async move {
            tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
            mcp_gate::gate::Verdict::Respond(result)
        }))
    }
}

/// A client that reuses the id of a call still held breaks JSON-RPC, but it must not lose a
/// call for it: the second call gets an answer (a result or an error), and the proxy keeps
/// working. Were the second call keyed by the same id in the session's map of held calls, it
/// would overwrite the first's entry and its verdict would be thrown away when it lands.
#[tokio::test]
async fn a_request_id_reused_while_held_gets_an_answer_each_time() {
    let mut c = RawClient::listed(Arc::new(HoldThenName)).await;
    c.send(r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"run_a","arguments":{}}}"#).await;
    c.send(r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"run_b","arguments":{}}}"#).await;
    let mut answers = Vec::new();
    for _ in 0..2 {
        let line = tokio::time::timeout(std::time::Duration::from_secs(3), c.lines.next_line()).await;
        let Ok(Ok(Some(line))) = line else { break };
        answers.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    assert_eq!(answers.len(), 2, "one of the two calls got no answer: {answers:?}");
    assert!(answers.iter().all(|a| a["id"] == 5), "{answers:?}");
    c.send(r#"{"jsonrpc":"2.0","id":6,"method":"ping"}"#).await;
    assert_eq!(serde_json::from_str::<Value>(&c.recv().await).unwrap()["id"], 6);
}

/// A line of exactly the size limit ends with CRLF: it is the same line whether the CR and the
/// LF arrive in one read or in two: the CR alone must not take the buffer past the limit before
/// the LF is seen.
#[tokio::test]
async fn a_line_at_the_limit_ending_in_crlf_is_read_however_it_arrives() {
    use mcp_gate::wire::framing::{Line, LineReader};
    let (mut tx, rx) = tokio::io::duplex(64);
    let mut reader = LineReader::with_max(rx, 10);
    let read = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Ok(Some(line)) = reader.next_line().await {
            lines.push(match line {
                Line::Data(d) => String::from_utf8_lossy(&d).into_owned(),
                Line::TooLong { .. } => "<too long>".to_owned(),
            });
        }
        lines
    });
    tx.write_all(b"0123456789\r\n0123456789\r").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    tx.write_all(b"\n").await.unwrap();
    drop(tx);
    assert_eq!(within("lines", read).await.unwrap(), ["0123456789", "0123456789"]);
}

/// Holds each call for a moment, then lets it run, reporting how it ended on a channel.
struct HoldThenRun(tokio::sync::mpsc::UnboundedSender<String>);

impl mcp_gate::gate::Gate for HoldThenRun {
    fn check(&self, _call: &mcp_gate::gate::ToolCall<'_>) -> mcp_gate::gate::Verdict {
        let outcomes = self.0.clone();
        mcp_gate::gate::Verdict::Hold(Box::pin(async move {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            mcp_gate::gate::Verdict::AllowTracked(Box::new(move |outcome| {
                let text = match outcome {
                    mcp_gate::gate::Outcome::Result(r) => format!("result {}", r.get()),
                    mcp_gate::gate::Outcome::Error(e) => format!("error {e}"),
                    mcp_gate::gate::Outcome::NotRun => "not run".to_owned(),
                };
                let _ = outcomes.send(text);
            }))
        }))
    }
}

/// A call approved while held runs on the server it was judged for, even when that server's
/// tool list changed meanwhile (a `list_changed`, a restart). Routed again by name when the
/// verdict lands, an unprefixed server whose list is not known at that moment would make the
/// approved call fail as an unknown tool, and its claim would be neither run nor given back (the
/// outcome hook dropped), so the approval would be lost.
#[tokio::test]
async fn a_held_call_runs_where_it_was_judged_when_the_tool_list_changes_meanwhile() {
    let mut plain = (*raw_server(&raw_bin())).clone();
    plain.name = "plain".into();
    plain.prefix = false;
    let mut named = (*raw_server(&raw_bin())).clone();
    named.name = "named".into();
    let (outcomes_tx, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
    let gate = Arc::new(HoldThenRun(outcomes_tx));
    let stream = stdio_proxy(options_with_gate(vec![Arc::new(plain), Arc::new(named)], gate)).await;
    let (read, write) = tokio::io::split(stream);
    let mut c = RawClient { lines: BufReader::new(read).lines(), write };
    c.initialize().await;
    c.send(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#).await;
    let list = c.recv().await;
    assert!(list.contains(r#""name":"raw_tool""#) && list.contains(r#""name":"named__raw_tool""#), "{list}");
    // Held on `plain`; meanwhile `plain` says its tool list changed (other requests go to the
    // first server).
    c.send(r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"raw_tool","arguments":{}}}"#).await;
    let changed = format!(
        "{}\n{}",
        r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#,
        r#"{"jsonrpc":"2.0","id":"ID","result":{}}"#
    );
    let ask = serde_json::json!({"jsonrpc": "2.0", "id": 6, "method": "raw/reply", "params": {"line": changed}});
    c.send(&ask.to_string()).await;
    let mut reply = None;
    for _ in 0..4 {
        let v: Value = serde_json::from_str(&c.recv().await).unwrap();
        if v["id"] == 5 {
            reply = Some(v);
            break;
        }
    }
    let reply = reply.expect("an answer to the held call");
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(3), outcomes.recv()).await;
    assert!(matches!(outcome, Ok(Some(_))), "the gate never heard how the call it let through ended: {reply}");
    assert!(
        reply["result"]["received"].as_str().is_some_and(|r| r.contains("raw_tool")),
        "the approved call did not run: {reply} ({outcome:?})"
    );
}

/// Over HTTP, a second request reusing the id of one still in flight in the same session is
/// refused under that id; the first keeps its stream and gets its own answer. (It used to
/// take over the first's stream, and the first's closing then took the second's: both calls
/// answered with an empty body.)
#[tokio::test]
async fn over_http_a_request_id_in_flight_cannot_be_reused() {
    let base = http_proxy(options_with_gate(vec![raw_server(&raw_bin())], Arc::new(HoldThenName)), None).await;
    let url = format!("{base}/mcp");
    let http = reqwest::Client::new();
    let post = |body: String, session: Option<String>| {
        let mut req = http
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .body(body);
        if let Some(s) = session {
            req = req.header("mcp-session-id", s);
        }
        req.send()
    };
    let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"reuse","version":"1"}}}"#;
    let resp = within("initialize", post(init.to_owned(), None)).await.unwrap();
    let session = resp.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    resp.bytes().await.unwrap();
    let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    within("initialized", post(note.to_owned(), Some(session.clone()))).await.unwrap();
    let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    within("tools/list", post(list.to_owned(), Some(session.clone()))).await.unwrap().bytes().await.unwrap();

    let call = |tool: &str| {
        format!(r#"{{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{{"name":"{tool}","arguments":{{}}}}}}"#)
    };
    let first = tokio::spawn(post(call("run_a"), Some(session.clone())));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let second = within("the second call", post(call("run_b"), Some(session.clone()))).await.unwrap();
    let text = second.text().await.unwrap();
    let v: Value = serde_json::from_str(text.trim_start_matches("event: message\ndata: ").trim()).unwrap();
    assert_eq!((&v["id"], &v["error"]["code"]), (&serde_json::json!(5), &serde_json::json!(-32600)), "{text}");
    assert!(v["error"]["message"].as_str().unwrap_or_default().contains("in use"), "{text}");
    let first = within("the first call", first).await.unwrap().unwrap().text().await.unwrap();
    assert!(
        first.contains(r#""id":5,"result""#) && first.contains("run_a"),
        "the first call lost its answer: {first:?}"
    );
}

/// Sessionless (2026-07-28) clients share one upstream connection, so the proxy gives each
/// request's progress token one of its own (`mcp-gate-N`) and routes the upstream's progress by
/// it. A client that writes the `progressToken` key with an escape (`"pr\u006fgressToken"`, the
/// same key to every JSON reader) must not slip past that: today the quick text search for
/// `progressToken` misses it, the token goes upstream unmapped, and the client can name another
/// client's mapped token, whose stream then receives its call's progress.
#[tokio::test]
async fn an_escaped_progress_token_key_cannot_reach_another_clients_stream() {
    let base = http_proxy(options(vec![stdio_server("conf")]), None).await;
    let url = format!("{base}/mcp");
    let http = reqwest::Client::new();
    let meta = |who: &str| {
        format!(
            r#""io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{{}},"io.modelcontextprotocol/clientInfo":{{"name":"{who}","version":"1"}}"#
        )
    };
    let call = |token_key: &str, token: &str, who: &str| {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"test_tool_with_progress","arguments":{{}},"_meta":{{"{token_key}":"{token}",{}}}}}}}"#,
            meta(who)
        );
        http.post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "test_tool_with_progress")
            .body(body)
            .send()
    };
    // Alice's token is the session's first mapped one, `mcp-gate-1`; Bob names it.
    let alice = tokio::spawn(call("progressToken", "alice-token", "alice"));
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let bob = within("bob", call(r"pr\u006fgressToken", "mcp-gate-1", "bob")).await.unwrap();
    let bob = bob.text().await.unwrap();
    let alice = within("alice", alice).await.unwrap().unwrap().text().await.unwrap();
    let steps = alice.matches("notifications/progress").count();
    assert_eq!(steps, 3, "Alice's stream got progress of another call:\n{alice}\nBob's:\n{bob}");
}

/// An upstream that crashes while a call is held loses nothing: the call, once let through,
/// runs on the restarted upstream (it never reached the one that crashed), and the gate hears
/// how it ended.
#[tokio::test]
async fn a_call_held_while_its_upstream_restarts_runs_on_the_new_one() {
    let (outcomes_tx, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
    let gate = Arc::new(HoldThenRun(outcomes_tx));
    let mut c = RawClient::listed(gate).await;
    c.send(r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"raw_tool","arguments":{"n":1}}}"#).await;
    c.send(r#"{"jsonrpc":"2.0","id":"boom","method":"raw/crash"}"#).await;
    let mut seen = Vec::new();
    let reply = loop {
        let v: Value = serde_json::from_str(&c.recv().await).unwrap();
        if v["id"] == 3 {
            break v;
        }
        seen.push(v);
    };
    assert_eq!(seen[0]["id"], "boom", "{seen:?}");
    let received = reply["result"]["received"].as_str().unwrap_or_else(|| panic!("not run: {reply}"));
    assert!(received.contains(r#""name":"raw_tool","arguments":{"n":1}"#), "{received}");
    let outcome = within("the outcome", outcomes.recv()).await.unwrap();
    assert!(outcome.starts_with("result"), "{outcome}");
}

/// Sessionless (2026-07-28) clients share a session in which the proxy knows their requests by
/// ids of its own (`mcp-gate-N`). Another client naming one of those ids in a
/// `notifications/cancelled` must not cancel it: today the held call of the first client is
/// abandoned and its stream never gets an answer. (A 2026-07-28 client cancels by closing the
/// request's stream.)
#[tokio::test]
async fn a_sessionless_client_cannot_cancel_another_clients_call() {
    let base = http_proxy(options_with_gate(vec![raw_server(&raw_bin())], Arc::new(HoldThenName)), None).await;
    let url = format!("{base}/mcp");
    let http = reqwest::Client::new();
    let meta = |who: &str| {
        format!(
            r#""_meta":{{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{{}},"io.modelcontextprotocol/clientInfo":{{"name":"{who}","version":"1"}}}}"#
        )
    };
    let post = |body: String, method: &str, name: Option<&str>| {
        let mut req = http
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", method)
            .body(body);
        if let Some(name) = name {
            req = req.header("mcp-name", name);
        }
        req.send()
    };
    let call = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"run_a","arguments":{{}},{}}}}}"#,
        meta("alice")
    );
    let alice = tokio::spawn(post(call, "tools/call", Some("run_a")));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for n in 1..=3 {
        let cancel = format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":"mcp-gate-{n}",{}}}}}"#,
            meta("mallory")
        );
        let resp = within("cancel", post(cancel, "notifications/cancelled", None)).await.unwrap();
        assert_eq!(resp.status(), 202);
    }
    let alice = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        alice.await.unwrap().unwrap().text().await.unwrap()
    })
    .await
    .expect("Alice's held call was cancelled by another client: no answer");
    assert!(alice.contains(r#""id":1,"result""#) && alice.contains("run_a"), "{alice}");
}
