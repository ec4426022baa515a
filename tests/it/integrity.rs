//! What the policy judged is exactly what runs: the real binary in front of a recording upstream
//! (`raw-upstream` answers each request with the exact line it received), fed hostile messages.

use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::binary::{data_dir, gate_in};
use super::common::*;

fn raw_bin() -> String {
    fixture_bin().with_file_name("raw-upstream").display().to_string()
}

/// A policy that allows everything but deletes, in front of one recording upstream.
fn write_config(dir: &std::path::Path) -> std::path::PathBuf {
    let cfg = dir.join("proxy.toml");
    let text = format!(
        "[policy]\ndefault = \"allow\"\n\n[[rules]]\nname = \"no deletes\"\ntool = \"delete_*\"\naction = \"deny\"\nreason = \"deletes are not allowed\"\n\n[[rules]]\nname = \"no transfers to mallory\"\ntool = \"transfer\"\nwhen = [{{ pointer = \"/to\", equals = \"mallory\" }}]\naction = \"deny\"\nreason = \"no\"\n\n[servers.raw]\ncommand = {:?}\n",
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
        let mut child = gate_in(&dir)
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (stdin, lines) = handshake(&mut child, "integrity").await;
        let mut proxy = Proxy { _child: child, stdin, lines, dir };
        // The tool list is known from here on, so calls are judged in the order sent.
        let list = proxy.request(r#"{"jsonrpc":"2.0","id":"list","method":"tools/list"}"#, &json!("list")).await;
        assert!(list["result"]["tools"].is_array(), "{list}");
        proxy
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

#[tokio::test]
async fn duplicate_names_are_refused_over_http_whatever_mcp_name_says() {
    use mcp_gate::config::{ServerConfig, UpstreamTransport};
    let raw = std::sync::Arc::new(ServerConfig {
        name: "raw".into(),
        transport: UpstreamTransport::Stdio { command: raw_bin(), args: Vec::new(), env: Vec::new(), cwd: None },
        prefix: true,
    });
    let base = http_proxy(options(vec![raw]), None).await;
    let client = reqwest::Client::new();
    for (id, body) in [
        (
            7,
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","n\u0061me":"delete_file","arguments":{}}}"#,
        ),
        (
            8,
            r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"echo","arguments":{},"name":"delete_file"}}"#,
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
        assert_refused(&v, &json!(id), -32600, "duplicate key \"name\"");
    }
}
