//! `mcp-gate demo`: a built-in MCP server (a pretend file store with read tools and one
//! destructive tool), the zero-config policy in front of it, and a scripted client that makes
//! a read call (allowed) and a delete call (held until you approve it in the browser).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::session::{self, Downstream, Route};
use crate::store::{ApprovalFilter, Status};
use crate::wire::jsonrpc::{self, Message};

/// How long the scripted client waits for you to decide.
const DEMO_WAIT_SECS: u64 = 300;

fn say(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

pub async fn run(approvals_listen: &str) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the mcp-gate executable")?;
    let token = crate::random::hex(16)?;
    let toml = format!(
        "[servers.files]\ncommand = {exe:?}\nargs = [\"demo-server\"]\n\n\
         [approvals]\nlisten = {approvals_listen:?}\nwait_secs = {DEMO_WAIT_SECS}\ndatabase = \":memory:\"\ntoken = {token:?}\n\n\
         [[channels]]\nagent = \"demo-agent\"\nanswer_within_secs = {DEMO_WAIT_SECS}\n",
        exe = exe.display().to_string(),
    );
    // The demo's own settings win over the environment's.
    // SAFETY of intent: these variables are read once, by the config loader below.
    let config = Config::from_toml(&toml, "demo configuration")?;
    let started = crate::app::start_gate_announcing(&config, false).await?;
    say("");
    say("mcp-gate demo");
    say("=============");
    say("A pretend file server sits behind mcp-gate. With no rules configured, tools annotated");
    say("readOnlyHint run freely and every other call waits for a person.");
    say("");
    say(&format!("  approvals page:  {}/", started.public_url));
    say(&format!("  approver token:  {token}   (this demo only; normally it is stored in the data directory)"));
    say("");

    let (tx, mut rx) = mpsc::unbounded_channel();
    let client = Arc::new(Printer { tx });
    let servers = config.servers.iter().cloned().map(Arc::new).collect();
    let opts = crate::app::session_options(&config, servers, &started.gate, "demo");
    let (handle, _task) = session::start(opts, client).await?;
    let mut next = 0u64;
    let mut request = |method: &str, params: Value| {
        next += 1;
        handle.client(Message::request(jsonrpc::number_id(next), method, Some(jsonrpc::to_raw(&params))));
        next
    };
    let init = json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "demo-agent", "version": "1"}});
    let id = request("initialize", init);
    wait_reply(&mut rx, id).await?;
    handle.client(Message::notification("notifications/initialized", None));

    say("1. The agent lists the files (read-only tool: allowed by the default policy)");
    let id = request("tools/call", json!({"name": "list_files", "arguments": {}}));
    say(&format!("   -> {}", text_of(&wait_reply(&mut rx, id).await?)));

    say("2. The agent deletes notes/todo.txt (destructive tool: held for approval)");
    let id = request(
        "tools/call",
        json!({"name": "delete_file", "arguments": {"path": "notes/todo.txt"}, "_meta": {"progressToken": "demo"}}),
    );
    // Show where to approve as soon as the request exists.
    let store = started.approvals.store.clone();
    let mut shown = false;
    for _ in 0..50 {
        let pending = store
            .list_approvals(ApprovalFilter { status: Some(Status::Pending), ..ApprovalFilter::default() })
            .await
            .unwrap_or_default();
        if let Some(a) = pending.first() {
            let who = crate::identity::Principal::named(crate::identity::OPERATOR);
            if let Ok(Some(secret)) = started.web.sign_in.issue(who, format!("/approvals/{}", a.id)) {
                say(
                    "   Open this link: it signs you in (once, within a minute) at the request; approve or deny there.",
                );
                say(&format!("     {}{}/{secret}", started.public_url, crate::server::web::signin::LINK_PATH));
            }
            say(&format!(
                "   Later, open {} and sign in with the token (a new link: MCP_GATE_TOKEN={token} mcp-gate approvals open --url {} {}).",
                started.approvals.url_for(&a.id),
                started.public_url,
                a.id
            ));
            say(&format!("   (Waiting up to {DEMO_WAIT_SECS} s. The same works with the API:"));
            say(&format!(
                "    curl -X POST -H 'Authorization: Bearer {token}' -H 'content-type: application/json' \\\n      -d '{{\"notes\":\"ok\"}}' {}/api/v1/approvals/{}/approve )",
                started.public_url, a.id
            ));
            shown = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !shown {
        say("   (the approval request did not appear; see the log above)");
    }
    let reply = wait_reply(&mut rx, id).await?;
    say(&format!("   -> {}", text_of(&reply)));
    say("3. The agent lists the files again");
    let id = request("tools/call", json!({"name": "list_files", "arguments": {}}));
    say(&format!("   -> {}", text_of(&wait_reply(&mut rx, id).await?)));
    say("");
    say("Done. Next: put mcp-gate in front of your own server (see README.md), and write [[rules]] in proxy.toml.");
    Ok(())
}

struct Printer {
    tx: mpsc::UnboundedSender<Value>,
}

impl Downstream for Printer {
    fn send(&self, msg: &Message, _route: Route<'_>) {
        if let Ok(v) = serde_json::from_slice::<Value>(&msg.to_bytes()) {
            let _ = self.tx.send(v);
        }
    }
}

async fn wait_reply(rx: &mut mpsc::UnboundedReceiver<Value>, id: u64) -> anyhow::Result<Value> {
    while let Some(v) = rx.recv().await {
        if v.get("id").and_then(Value::as_u64) == Some(id) {
            return Ok(v);
        }
        if v.get("method").and_then(Value::as_str) == Some("notifications/progress")
            && let Some(m) = v.pointer("/params/message").and_then(Value::as_str)
        {
            say(&format!("   (progress) {m}"));
        }
    }
    anyhow::bail!("the session ended")
}

fn text_of(reply: &Value) -> String {
    if let Some(e) = reply.get("error") {
        return format!("error: {e}");
    }
    let text = reply.pointer("/result/content/0/text").and_then(Value::as_str).unwrap_or("(no text)");
    let flag = if reply.pointer("/result/isError") == Some(&Value::Bool(true)) { "[isError] " } else { "" };
    format!("{flag}{}", text.replace('\n', "\n      "))
}

/// The demo's MCP server: a pretend file store, over stdio.
pub async fn serve_stdio() -> anyhow::Result<()> {
    let files: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::from([
        ("notes/todo.txt".to_owned(), "buy milk\nship mcp-gate\n".to_owned()),
        ("notes/ideas.md".to_owned(), "# Ideas\n- gate every destructive call\n".to_owned()),
        ("README".to_owned(), "A pretend file store for the mcp-gate demo.\n".to_owned()),
    ]));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        let Ok(msg) = serde_json::from_str::<Value>(&line) else { continue };
        let Some(id) = msg.get("id").cloned() else { continue };
        let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
        let result = match method {
            "initialize" => Ok(json!({
                "protocolVersion": msg.pointer("/params/protocolVersion").cloned().unwrap_or(json!("2025-06-18")),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "demo-files", "version": env!("CARGO_PKG_VERSION")},
            })),
            "ping" => Ok(json!({})),
            "tools/list" => Ok(json!({"tools": [
                {"name": "list_files", "description": "List the files.", "inputSchema": {"type": "object"},
                 "annotations": {"readOnlyHint": true}},
                {"name": "read_file", "description": "Read a file.",
                 "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
                 "annotations": {"readOnlyHint": true}},
                {"name": "delete_file", "description": "Delete a file. Cannot be undone.",
                 "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
                 "annotations": {"readOnlyHint": false, "destructiveHint": true}},
            ]})),
            "tools/call" => {
                let name = msg.pointer("/params/name").and_then(Value::as_str).unwrap_or("");
                let path = msg.pointer("/params/arguments/path").and_then(Value::as_str).unwrap_or("");
                let mut files = files.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                let (text, error) = match name {
                    "list_files" => (files.keys().cloned().collect::<Vec<_>>().join("\n"), false),
                    "read_file" => match files.get(path) {
                        Some(t) => (t.clone(), false),
                        None => (format!("no such file: {path}"), true),
                    },
                    "delete_file" => match files.remove(path) {
                        Some(_) => (format!("deleted {path}"), false),
                        None => (format!("no such file: {path}"), true),
                    },
                    _ => (format!("unknown tool {name}"), true),
                };
                Ok(json!({"content": [{"type": "text", "text": text}], "isError": error}))
            }
            _ => Err(json!({"code": crate::wire::jsonrpc::code::METHOD_NOT_FOUND, "message": "Method not found"})),
        };
        let reply = match result {
            Ok(r) => json!({"jsonrpc": "2.0", "id": id, "result": r}),
            Err(e) => json!({"jsonrpc": "2.0", "id": id, "error": e}),
        };
        out.write_all(format!("{reply}\n").as_bytes()).await?;
        out.flush().await?;
    }
    Ok(())
}
