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
    let stream = stdio_proxy(options_with_gate(vec![raw_server(&raw_bin())], Arc::new(HoldForever))).await;
    let (read, write) = tokio::io::split(stream);
    let mut c = RawClient { lines: BufReader::new(read).lines(), write };
    c.initialize().await;
    c.send(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#).await;
    c.recv().await;
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
