//! The full approval API: OpenAPI coverage, filters and pages, bulk decisions, stats, the
//! event stream, the audit log, and named approvers with workflow restrictions.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mcp_gate::approval::{ApprovalGate, ApprovalService, ApprovalSettings};
use mcp_gate::config::Config;
use mcp_gate::gate::{Gate, ToolCall, Verdict};
use mcp_gate::server::web::WebState;
use mcp_gate::store::{Clock, Location, Store};
use serde_json::{Value, json};

const TOKEN: &str = "shared-approver-token-0123456789";
const ALICE: &str = "alice-token-0123456789abcdef";
const BOB: &str = "bob-token-0123456789abcdef";
const CAROL: &str = "carol-token-0123456789abcdef";

fn sha(token: &str) -> String {
    mcp_gate::identity::sha256(token).iter().map(|b| format!("{b:02x}")).collect()
}

struct Api {
    base: String,
    approvals: Arc<ApprovalService>,
    http: reqwest::Client,
}

impl Api {
    async fn start(toml: &str) -> Api {
        let config = Config::from_toml(toml, "test.toml").unwrap();
        let store = Store::open(Location::Memory).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let settings = ApprovalSettings {
            public_url: base.clone(),
            expiry_by_risk: config.approvals.expiry_by_risk,
            workflows: config.approvals.workflows.clone(),
            ..ApprovalSettings::default()
        };
        let approvals = ApprovalService::new(store, config.policy.clone(), settings);
        let state = WebState::new(approvals.clone(), TOKEN.into(), config.approvals.approvers.clone(), Vec::new());
        tokio::spawn(mcp_gate::server::web::serve(listener, state, std::future::pending()));
        Api { base, approvals, http: reqwest::Client::new() }
    }

    /// Holds one call (fail fast) and returns its approval id.
    async fn hold(&self, tool: &str, agent: &str, arguments: Value) -> String {
        super::common::hold_call(&self.approvals, tool, agent, arguments).await
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let resp = self.http.get(format!("{}{path}", self.base)).bearer_auth(token).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let resp = self.http.post(format!("{}{path}", self.base)).bearer_auth(token).json(&body).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

fn ids(list: &Value) -> Vec<String> {
    list["approvals"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn the_openapi_document_covers_every_route_and_every_route_needs_a_token() {
    let api = Api::start("").await;
    let resp = api.http.get(format!("{}/api/v1/openapi.json", api.base)).send().await.unwrap();
    assert_eq!(resp.status(), 200, "the document needs no token");
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let routes = [
        ("get", "/api/v1/approvals"),
        ("get", "/api/v1/approvals/{id}"),
        ("post", "/api/v1/approvals/{id}/approve"),
        ("post", "/api/v1/approvals/{id}/deny"),
        ("post", "/api/v1/approvals/bulk-approve"),
        ("post", "/api/v1/approvals/bulk-deny"),
        ("get", "/api/v1/approvals/stats"),
        ("get", "/api/v1/events"),
        ("get", "/api/v1/audit"),
        ("get", "/api/v1/hub"),
        ("post", "/api/v1/hub/announce"),
        ("post", "/api/v1/sign-in-links"),
    ];
    for (method, path) in routes {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} is documented");
        let url = format!("{}{}", api.base, path.replace("{id}", "apr_0000000000000000"));
        let req = if method == "get" { api.http.get(url) } else { api.http.post(url).json(&json!({})) };
        let resp = req.bearer_auth("wrong-token").send().await.unwrap();
        assert_eq!(resp.status(), 401, "{method} {path} refuses a wrong token");
        assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], "unauthorized");
    }
    // The handshake needs no token: it is how a client decides whether to send one. A wrong
    // key id is refused, and a malformed body too.
    let open_routes = [("post", "/api/v1/handshake"), ("post", "/api/v1/handshake/confirm")];
    for (method, path) in open_routes {
        let op = paths.get(path).and_then(|p| p.get(method));
        assert!(op.is_some_and(|op| op["security"] == json!([])), "{method} {path} is documented as open");
        let resp = api.http.post(format!("{}{path}", api.base)).json(&json!({})).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{method} {path} refuses a malformed body");
    }
    let hello = json!({"key_id": "00", "client_nonce": "ab".repeat(32)});
    let resp = api.http.post(format!("{}/api/v1/handshake", api.base)).json(&hello).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"]["code"], "unknown_key");
    mcp_gate::server::handshake::verify_listener(&api.http, &api.base, TOKEN).await.expect("the server proves itself");
    // Every documented path is served (nothing documented that does not exist).
    let served: std::collections::HashSet<_> = routes.iter().chain(&open_routes).map(|r| r.1).collect();
    assert_eq!(paths.len(), served.len() + 1);
    // Every schema reference resolves.
    let text = doc.to_string();
    for r in text.split("\"$ref\":\"").skip(1) {
        let target = &r[..r.find('"').unwrap()];
        let pointer = target.trim_start_matches('#');
        assert!(doc.pointer(pointer).is_some(), "{target} resolves");
    }
}

#[tokio::test]
async fn listing_filters_searches_and_pages() {
    let api = Api::start("").await;
    let a = api.hold("delete_file", "claude", json!({"path": "/srv/report.pdf"})).await;
    let b = api.hold("delete_file", "cursor", json!({"path": "/srv/notes_2026.txt"})).await;
    let c = api.hold("move_file", "claude", json!({"from": "/a", "to": "/notesX2026"})).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let d = api.hold("write_file", "claude", json!({"path": "/etc/hosts", "content": "100% sure"})).await;

    let (_, all) = api.get("/api/v1/approvals", TOKEN).await;
    assert_eq!(ids(&all).len(), 4);
    assert_eq!(ids(&all)[0], d, "newest first");
    assert_eq!(all["total"], 4);

    let (_, by_agent) = api.get("/api/v1/approvals?agent=cursor", TOKEN).await;
    assert_eq!(ids(&by_agent), vec![b.clone()]);
    let (_, by_tool) = api.get("/api/v1/approvals?tool=move_file&status=pending", TOKEN).await;
    assert_eq!(ids(&by_tool), vec![c.clone()]);
    let (_, by_rule) = api.get("/api/v1/approvals?rule=default", TOKEN).await;
    assert_eq!(by_rule["total"], 4, "the zero-config policy names no rule");
    let (_, no_rule) = api.get("/api/v1/approvals?rule=nope", TOKEN).await;
    assert_eq!(no_rule["total"], 0);

    // Search looks into the arguments, case-insensitively, with wildcards taken literally.
    let (_, found) = api.get("/api/v1/approvals?q=REPORT.pdf", TOKEN).await;
    assert_eq!(ids(&found), vec![a.clone()]);
    let (_, found) = api.get("/api/v1/approvals?q=100%25", TOKEN).await;
    assert_eq!(ids(&found), vec![d.clone()]);
    let (_, found) = api.get("/api/v1/approvals?q=notes_2026", TOKEN).await;
    assert_eq!(ids(&found), vec![b.clone()], "an underscore matches only an underscore");
    let (_, found) = api.get("/api/v1/approvals?q=notesX", TOKEN).await;
    assert_eq!(ids(&found), vec![c.clone()]);

    // Pages.
    let (_, page1) = api.get("/api/v1/approvals?limit=3", TOKEN).await;
    assert_eq!(ids(&page1).len(), 3);
    assert_eq!(page1["next_offset"], 3);
    let (_, page2) = api.get("/api/v1/approvals?limit=3&offset=3", TOKEN).await;
    assert_eq!(ids(&page2), vec![a.clone()]);
    assert_eq!(page2["next_offset"], Value::Null);

    // Date range: everything was created today; nothing tomorrow.
    let created_d = api.approvals.store.get_approval(&d).await.unwrap().unwrap().created_at;
    let (_, since_d) = api.get(&format!("/api/v1/approvals?from={created_d}"), TOKEN).await;
    assert_eq!(ids(&since_d), vec![d.clone()]);
    let (_, before_d) = api.get(&format!("/api/v1/approvals?to={created_d}"), TOKEN).await;
    assert_eq!(before_d["total"], 3);
    let (_, future) = api.get("/api/v1/approvals?from=2999-01-01", TOKEN).await;
    assert_eq!(future["total"], 0);

    let (status, err) = api.get("/api/v1/approvals?from=yesterday", TOKEN).await;
    assert_eq!((status, err["error"]["code"].as_str()), (400, Some("bad_time")));
    let (status, err) = api.get("/api/v1/approvals?status=maybe", TOKEN).await;
    assert_eq!((status, err["error"]["code"].as_str()), (400, Some("bad_status")));
}

#[tokio::test]
async fn bulk_decisions_report_each_request() {
    let api = Api::start("").await;
    let a = api.hold("delete_file", "claude", json!({"n": 1})).await;
    let b = api.hold("delete_file", "claude", json!({"n": 2})).await;
    let c = api.hold("delete_file", "claude", json!({"n": 3})).await;

    let (status, out) = api
        .post(
            "/api/v1/approvals/bulk-approve",
            TOKEN,
            json!({"approval_ids": [a, b, "apr_missing"], "notes": "batch reviewed"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(out["decided"], 2);
    assert_eq!(out["failed"], 1);
    assert_eq!(out["results"][0], json!({"id": a, "ok": true, "status": "approved"}));
    assert_eq!(out["results"][2]["error"]["code"], "not_found");
    let stored = api.approvals.store.get_approval(&a).await.unwrap().unwrap();
    assert_eq!(stored.notes.as_deref(), Some("batch reviewed"));

    let (status, err) = api.post("/api/v1/approvals/bulk-deny", TOKEN, json!({"approval_ids": [c]})).await;
    assert_eq!((status, err["error"]["code"].as_str()), (422, Some("reason_required")));
    let (status, err) = api.post("/api/v1/approvals/bulk-deny", TOKEN, json!({"approval_ids": []})).await;
    assert_eq!((status, err["error"]["code"].as_str()), (400, Some("bad_request")));

    let (status, out) = api
        .post("/api/v1/approvals/bulk-deny", TOKEN, json!({"approval_ids": [c, a], "reason": "end of day cleanup"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(out["results"][0]["status"], "denied");
    assert_eq!(out["results"][1]["error"]["code"], "not_pending", "an approved request stays approved");
    let stored = api.approvals.store.get_approval(&c).await.unwrap().unwrap();
    assert_eq!(stored.deny_reason.as_deref(), Some("end of day cleanup"));
}

#[tokio::test]
async fn stats_count_statuses_and_time_to_decision() {
    let api = Api::start("").await;
    let a = api.hold("delete_file", "claude", json!({"n": 1})).await;
    let b = api.hold("delete_file", "cursor", json!({"n": 2})).await;
    let _c = api.hold("write_file", "claude", json!({"n": 3})).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    api.post(&format!("/api/v1/approvals/{a}/approve"), TOKEN, json!({})).await;
    api.post(&format!("/api/v1/approvals/{b}/deny"), TOKEN, json!({"reason": "no"})).await;

    let (status, stats) = api.get("/api/v1/approvals/stats", TOKEN).await;
    assert_eq!(status, 200);
    assert_eq!(stats["total"], 3);
    assert_eq!(stats["by_status"]["pending"], 1);
    assert_eq!(stats["by_status"]["approved"], 1);
    assert_eq!(stats["by_status"]["denied"], 1);
    assert_eq!(stats["by_status"]["expired"], 0);
    let times = &stats["time_to_decision"];
    assert_eq!(times["decided"], 2);
    assert!(times["median_ms"].as_i64().unwrap() >= 20, "{times}");
    assert!(times["p90_ms"].as_i64().unwrap() >= times["median_ms"].as_i64().unwrap());
    let claude = stats["by_agent"].as_array().unwrap().iter().find(|g| g["key"] == "claude").unwrap();
    assert_eq!(
        (claude["total"].as_u64(), claude["approved"].as_u64(), claude["pending"].as_u64()),
        (Some(2), Some(1), Some(1))
    );
    let tool = stats["by_tool"].as_array().unwrap().iter().find(|g| g["key"] == "files:delete_file").unwrap();
    assert_eq!(tool["total"], 2);
    assert_eq!(stats["by_rule"][0]["key"], "default");

    let (_, empty) = api.get("/api/v1/approvals/stats?from=2999-01-01", TOKEN).await;
    assert_eq!(empty["total"], 0);
    assert_eq!(empty["time_to_decision"]["median_ms"], Value::Null);
}

/// Reads server-sent events until one named `name` arrives; returns its data.
async fn next_event(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buf: &mut String,
    name: &str,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let event = block.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or("");
            let data = block.lines().find_map(|l| l.strip_prefix("data: ")).unwrap_or("");
            if event == name {
                return serde_json::from_str(data).unwrap();
            }
        }
        let chunk = tokio::time::timeout_at(deadline, stream.next()).await.expect("event in time").unwrap().unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn the_event_stream_announces_requests_and_decisions() {
    let api = Api::start("").await;
    let resp = api.http.get(format!("{}/api/v1/events", api.base)).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = api.http.get(format!("{}/api/v1/events?kinds=bogus", api.base)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 400);

    let resp = api.http.get(format!("{}/api/v1/events", api.base)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let only_denials =
        api.http.get(format!("{}/api/v1/events?kinds=denied", api.base)).bearer_auth(TOKEN).send().await.unwrap();
    let mut denials = only_denials.bytes_stream();
    let mut denial_buf = String::new();

    let id = api.hold("delete_file", "claude", json!({"path": "/x"})).await;
    let requested = next_event(&mut stream, &mut buf, "requested").await;
    assert_eq!(requested["approval"]["id"], id);
    assert_eq!(requested["actor"], "claude");
    assert_eq!(requested["approval"]["url"], format!("{}/approvals/{id}", api.base));

    api.post(&format!("/api/v1/approvals/{id}/deny"), TOKEN, json!({"reason": "not now"})).await;
    let denied = next_event(&mut stream, &mut buf, "denied").await;
    assert_eq!(denied["approval"]["status"], "denied");
    assert_eq!(denied["actor"], "operator");
    // The filtered stream skipped `requested` and got the denial first.
    let first = tokio::time::timeout(Duration::from_secs(5), denials.next()).await.unwrap().unwrap().unwrap();
    denial_buf.push_str(&String::from_utf8_lossy(&first));
    assert!(denial_buf.starts_with("event: denied"), "{denial_buf}");
}

#[tokio::test]
async fn the_audit_log_pages_newest_first() {
    let api = Api::start("").await;
    let a = api.hold("delete_file", "claude", json!({"n": 1})).await;
    let _b = api.hold("delete_file", "claude", json!({"n": 2})).await;
    api.post(&format!("/api/v1/approvals/{a}/approve"), TOKEN, json!({"notes": "ok"})).await;

    let (status, page) = api.get("/api/v1/audit?limit=2", TOKEN).await;
    assert_eq!(status, 200);
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["event"], "approved");
    assert!(entries[0]["id"].as_i64() > entries[1]["id"].as_i64());
    let before = page["next_before"].as_i64().unwrap();
    let (_, rest) = api.get(&format!("/api/v1/audit?before={before}"), TOKEN).await;
    assert_eq!(rest["entries"].as_array().unwrap().len(), 1);
    assert_eq!(rest["next_before"], Value::Null);
    let (_, mine) = api.get(&format!("/api/v1/audit?approval_id={a}"), TOKEN).await;
    let events: Vec<&str> = mine["entries"].as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["approved", "requested"]);
    // The chain fields are there for anyone re-verifying.
    assert_eq!(entries[0]["prev_hash"], entries[1]["hash"]);
}

fn approvers_config() -> String {
    format!(
        r#"
[[approvers]]
name = "alice"
teams = ["sre"]
token_sha256 = "{}"

[[approvers]]
name = "bob"
token_sha256 = "{}"

[[approvers]]
name = "carol"
token_sha256 = "{}"

[[rules]]
name = "deletes"
tool = "delete_*"
action = "approve"
workflow = "sre-two"

[policy]
default = "approve"

[[workflows]]
name = "sre-two"
required_approvals = 2
approvers = ["team:sre", "bob"]
"#,
        sha(ALICE),
        sha(BOB),
        sha(CAROL)
    )
}

#[tokio::test]
async fn named_approvers_are_known_by_their_tokens_and_limited_by_workflows() {
    let api = Api::start(&approvers_config()).await;
    let id = api.hold("delete_file", "claude", json!({"path": "/srv"})).await;
    let approve = format!("/api/v1/approvals/{id}/approve");

    let (status, err) = api.post(&approve, CAROL, json!({})).await;
    assert_eq!((status, err["error"]["code"].as_str()), (403, Some("not_an_approver")), "{err}");
    let (status, err) = api.post(&approve, TOKEN, json!({})).await;
    assert_eq!(status, 403, "the shared token is not on the workflow's list: {err}");
    let (status, err) = api.post(&approve, ALICE, json!({"approver": "bob"})).await;
    assert_eq!((status, err["error"]["code"].as_str()), (403, Some("approver_mismatch")));

    let (status, voted) = api.post(&approve, ALICE, json!({"notes": "one of two"})).await;
    assert_eq!((status, voted["status"].as_str()), (200, Some("pending")));
    let (status, err) = api.post(&approve, ALICE, json!({})).await;
    assert_eq!((status, err["error"]["code"].as_str()), (409, Some("already_decided")), "the same person twice");
    let (status, done) = api.post(&approve, BOB, json!({})).await;
    assert_eq!((status, done["status"].as_str()), (200, Some("approved")));
    let voters: Vec<&str> = done["votes"].as_array().unwrap().iter().map(|v| v["actor"].as_str().unwrap()).collect();
    assert_eq!(voters, ["alice", "bob"]);

    // Another workflow (the default) admits any approver, but never the requester.
    let own = api.hold("write_file", "carol", json!({"x": 1})).await;
    let (status, err) = api.post(&format!("/api/v1/approvals/{own}/approve"), CAROL, json!({})).await;
    assert_eq!((status, err["error"]["code"].as_str()), (403, Some("own_request")));
    let (status, _) = api.post(&format!("/api/v1/approvals/{own}/deny"), CAROL, json!({"reason": "withdrawn"})).await;
    assert_eq!(status, 200, "withdrawing one's own request is fine");
}

#[tokio::test]
async fn the_detail_carries_history_and_the_agents_risk_snapshot() {
    let api = Api::start("").await;
    let a = api.hold("delete_file", "claude", json!({"n": 1})).await;
    let b = api.hold("delete_file", "claude", json!({"n": 2})).await;
    let _other = api.hold("delete_file", "cursor", json!({"n": 3})).await;
    api.post(&format!("/api/v1/approvals/{a}/deny"), TOKEN, json!({"reason": "no"})).await;

    let (status, detail) = api.get(&format!("/api/v1/approvals/{b}"), TOKEN).await;
    assert_eq!(status, 200);
    let risk = &detail["risk_snapshot"];
    assert_eq!(risk["agent"], "claude");
    assert_eq!(risk["pending_now"], 1);
    // The audit writer batches policy-only records; held calls are written at once.
    assert_eq!(risk["last_hour"]["calls"], 2, "{risk}");
    assert_eq!(risk["last_hour"]["denied"], 1);
    assert_eq!(risk["last_day"]["approved"], 0);
    assert_eq!(detail["history"][0]["to"], "pending");
}

const CI_BOT: &str = "ci-bot-agent-token-0123456789";
const OPS_BOT: &str = "ops-bot-agent-token-0123456789";

/// One JSON-RPC request over Streamable HTTP; returns the status, the session id and the
/// response message (from a JSON body or the first SSE `data:` line).
async fn rpc(base: &str, token: Option<&str>, session: Option<&str>, body: Value) -> (u16, Option<String>, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let sid = resp.headers().get("mcp-session-id").map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    let json = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .or_else(|| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null);
    (status, sid, json)
}

#[tokio::test]
async fn http_agents_are_known_by_their_tokens_and_keep_their_sessions() {
    use mcp_gate::downstream::http;
    let config = Config::from_toml(
        &format!(
            "[[agents]]\nname = \"ci-bot\"\ntoken_sha256 = \"{}\"\n\n[[agents]]\nname = \"ops-bot\"\ntoken_sha256 = \"{}\"\n",
            sha(CI_BOT),
            sha(OPS_BOT)
        ),
        "agents.toml",
    )
    .unwrap();
    let store = Store::open(Location::Memory).await.unwrap();
    let settings = ApprovalSettings {
        public_url: "http://127.0.0.1:1".into(),
        expiry_by_risk: config.approvals.expiry_by_risk,
        workflows: config.approvals.workflows.clone(),
        ..ApprovalSettings::default()
    };
    let approvals = ApprovalService::new(store, config.policy.clone(), settings);
    let gate: Arc<dyn Gate> = Arc::new(ApprovalGate { approvals: approvals.clone() });
    let opts = super::common::options_with_gate(vec![super::common::stdio_server("fx")], gate);
    let state = http::HttpState::new(http::HttpOptions {
        all: opts,
        single: Default::default(),
        token: None,
        agents: config.approvals.agents.clone(),
        allowed_hosts: Vec::new(),
        allowed_origins: Vec::new(),
        limits: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(http::serve(listener, state, std::future::pending()));

    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "pretender", "version": "1"}}});
    let (status, _, _) = rpc(&base, None, None, init.clone()).await;
    assert_eq!(status, 401, "agents configured: anonymous clients are refused");
    let (status, _, _) = rpc(&base, Some(TOKEN), None, init.clone()).await;
    assert_eq!(status, 401, "an approver token is not an agent token");

    let (status, sid, _) = rpc(&base, Some(CI_BOT), None, init).await;
    assert_eq!(status, 200);
    let sid = sid.expect("a session id");
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    rpc(&base, Some(CI_BOT), Some(&sid), initialized).await;

    // Another agent cannot use ci-bot's session.
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let (status, _, _) = rpc(&base, Some(OPS_BOT), Some(&sid), list.clone()).await;
    assert_eq!(status, 404);

    let (_, _, tools) = rpc(&base, Some(CI_BOT), Some(&sid), list).await;
    let tool = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["annotations"]["readOnlyHint"] != true)
        .expect("a tool that is not read-only")["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": tool, "arguments": {}}});
    let (status, _, reply) = rpc(&base, Some(CI_BOT), Some(&sid), call).await;
    assert_eq!(status, 200);
    let id = reply["result"]["_meta"]["mcp-gate/approval"]["id"].as_str().expect("held").to_owned();
    let stored = approvals.store.get_approval(&id).await.unwrap().unwrap();
    assert_eq!(stored.agent.as_deref(), Some("ci-bot"), "the token names the agent, not clientInfo");
}

/// Signs in through the page and returns the session cookie and the page's CSRF token.
async fn sign_in(api: &Api, token: &str) -> (String, String) {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let resp = http.post(format!("{}/login", api.base)).form(&[("token", token), ("next", "/")]).send().await.unwrap();
    assert_eq!(resp.status(), 303, "signed in");
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let html = http.get(format!("{}/", api.base)).header("cookie", &cookie).send().await.unwrap().text().await.unwrap();
    let at = html.find("name=\"csrf\" value=\"").expect("csrf field") + "name=\"csrf\" value=\"".len();
    (cookie, html[at..].split('"').next().unwrap().to_owned())
}

async fn page_text(api: &Api, cookie: &str, path: &str) -> (u16, String) {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let resp = http.get(format!("{}{path}", api.base)).header("cookie", cookie).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// The channel through which the opening call was answered, and who may vote, are in the API's
/// JSON of a request and on its page.
#[tokio::test]
async fn a_request_shows_its_channel_and_approvers() {
    let api = Api::start(&format!(
        "[[rules]]\nname = \"deletes\"\ntool = \"delete_file\"\naction = \"approve\"\nworkflow = \"ops\"\n\n\
         [[workflows]]\nname = \"ops\"\napprovers = [\"operator\", \"alice\", \"team:sre\"]\n\n\
         [[approvers]]\nname = \"alice\"\nteams = [\"sre\"]\ntoken_sha256 = \"{}\"\n",
        "a".repeat(64)
    ))
    .await;
    let id = api.hold("delete_file", "claude", json!({"path": "/srv/a"})).await;
    let (status, v) = api.get(&format!("/api/v1/approvals/{id}"), TOKEN).await;
    assert_eq!((status, &v["channel"]), (200, &json!("fail_fast")), "{v}");
    assert_eq!(v["approvers"], json!(["operator", "alice", "team:sre"]), "{v}");
    let (cookie, _) = sign_in(&api, TOKEN).await;
    let (_, html) = page_text(&api, &cookie, &format!("/approvals/{id}")).await;
    assert!(
        html.contains("<dt>Channel</dt><dd><code>fail_fast</code> · the call was answered pending at once"),
        "{html}"
    );
    assert!(html.contains("<dt>Approvers</dt><dd>operator, alice, team:sre</dd>"), "{html}");
    // A workflow without a list admits everyone: no row.
    let api = Api::start("").await;
    let id = api.hold("delete_file", "claude", json!({"path": "/srv/a"})).await;
    let (_, v) = api.get(&format!("/api/v1/approvals/{id}"), TOKEN).await;
    assert_eq!(v["approvers"], json!([]), "{v}");
    let (cookie, _) = sign_in(&api, TOKEN).await;
    let (_, html) = page_text(&api, &cookie, &format!("/approvals/{id}")).await;
    assert!(!html.contains("<dt>Approvers</dt>"), "{html}");
}

#[tokio::test]
async fn the_dashboard_filters_pages_and_decides_in_bulk() {
    let api = Api::start("").await;
    let a = api.hold("delete_file", "claude", json!({"path": "<img src=x onerror=alert(1)>"})).await;
    let b = api.hold("delete_file", "cursor", json!({"path": "/srv/b"})).await;
    let c = api.hold("write_file", "claude", json!({"path": "/srv/c"})).await;
    let (cookie, csrf) = sign_in(&api, TOKEN).await;

    let (status, html) = page_text(&api, &cookie, "/").await;
    assert_eq!(status, 200);
    for id in [&a, &b, &c] {
        assert!(html.contains(&format!("href=\"/approvals/{id}\"")), "{id} is listed");
    }
    assert!(html.contains("Pending requests") && html.contains("(3)"));
    assert!(html.contains("Approve selected") && html.contains("Deny selected"));
    assert!(html.contains("aria-current=\"page\">Pending"));

    // Filters and search narrow the list; the search text is echoed escaped.
    let (_, html) = page_text(&api, &cookie, "/?agent=cursor").await;
    assert!(html.contains(&b) && !html.contains(&a) && !html.contains(&c));
    let (_, html) = page_text(&api, &cookie, "/?q=%3Cimg+src").await;
    assert!(html.contains(&a) && !html.contains(&b));
    assert!(!html.contains("<img src") && html.contains("&lt;img src"), "the query is escaped");
    let (_, html) = page_text(&api, &cookie, "/?limit=2").await;
    assert!(html.contains("rel=\"next\"") && html.contains("1–2 of 3"), "paginated");
    let (_, html) = page_text(&api, &cookie, "/?limit=2&offset=2").await;
    assert!(html.contains("rel=\"prev\"") && html.contains("3–3 of 3"));
    let (_, html) = page_text(&api, &cookie, "/?from=nonsense").await;
    assert!(html.contains("is not a time"), "a bad filter is explained, not a crash");

    // Bulk: CSRF required; deny needs a reason; approve two at once.
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let bulk = |form: Vec<(&'static str, String)>| {
        http.post(format!("{}/approvals/bulk", api.base)).header("cookie", &cookie).form(&form).send()
    };
    let resp = bulk(vec![("csrf", "forged".into()), ("id", a.clone()), ("action", "approve".into())]).await.unwrap();
    assert_eq!(resp.status(), 403);
    let resp = bulk(vec![("csrf", csrf.clone()), ("id", a.clone()), ("action", "deny".into())]).await.unwrap();
    assert!(resp.headers()["location"].to_str().unwrap().contains("error="), "deny needs a reason");
    let resp = bulk(vec![
        ("csrf", csrf.clone()),
        ("id", a.clone()),
        ("id", b.clone()),
        ("action", "approve".into()),
        ("notes", "both fine".into()),
        ("back", "/?agent=claude".into()),
    ])
    .await
    .unwrap();
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/?agent=claude&done="), "{location}");
    for id in [&a, &b] {
        let stored = api.approvals.store.get_approval(id).await.unwrap().unwrap();
        assert_eq!(stored.status, mcp_gate::store::Status::Approved);
        assert_eq!(stored.notes.as_deref(), Some("both fine"));
    }
    let (_, html) = page_text(&api, &cookie, "/").await;
    assert!(html.contains(&c) && !html.contains(&format!("/approvals/{a}\"")), "decided rows leave Pending");
    let (_, html) = page_text(&api, &cookie, "/?view=all&status=approved").await;
    assert!(html.contains(&a) && html.contains(&b) && !html.contains(&format!("/approvals/{c}\"")));
    assert!(html.contains("aria-current=\"page\">All"));
}

/// Holds a fail-fast call of `delete_file` on `files` (described upstream by `tool`) from `agent`
/// through the gate; the id of its approval request.
async fn hold_delete_file(api: &Api, tool: Value, arguments: &Value, agent: &str) -> String {
    let gate = ApprovalGate { approvals: api.approvals.clone() };
    let tool: rmcp::model::Tool = serde_json::from_value(tool).unwrap();
    let info = mcp_gate::gate::tools::ToolInfo { name: "delete_file".into(), tool: Some(tool), task_support: None };
    let call = ToolCall {
        server: "files",
        tool: "delete_file",
        exposed_name: "delete_file",
        arguments,
        info: Some(&info),
        agent: Some(agent),
        owner: &mcp_gate::gate::Owner::Anonymous,
        offered: &mcp_gate::gate::Offered::plain(mcp_gate::wire::era::Era::Legacy),
        params: &serde_json::value::to_raw_value(&serde_json::json!({})).expect("params"),
        progress: None,
        held: None,
        gone: Default::default(),
    };
    let Verdict::Hold(wait) = gate.check(&call) else { panic!("held") };
    let Verdict::Respond(reply) = wait.await else { panic!("answered") };
    let reply: Value = serde_json::from_str(reply.get()).unwrap();
    reply["_meta"]["mcp-gate/approval"]["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_request_page_shows_the_tool_reason_risk_and_history() {
    let api = Api::start("").await;
    let tool = json!({
        "name": "delete_file",
        "description": "Deletes a file <b>forever</b>",
        "inputSchema": {"type": "object"},
        "annotations": {"destructiveHint": true}
    });
    let arguments = json!({"path": "/srv/data", "nested": {"deep": [1, 2]}});
    let id = hold_delete_file(&api, tool, &arguments, "claude").await;
    let (cookie, csrf) = sign_in(&api, TOKEN).await;

    let (status, html) = page_text(&api, &cookie, &format!("/approvals/{id}")).await;
    assert_eq!(status, 200);
    assert!(html.contains("Deletes a file &lt;b&gt;forever&lt;/b&gt;"), "the description, escaped");
    assert!(html.contains("destructiveHint"));
    assert!(html.contains("Risk snapshot") && html.contains("Last hour") && html.contains("Last day"));
    assert!(html.contains("Policy trace") && html.contains("History"));
    assert!(html.contains("&quot;deep&quot;: [") || html.contains("\"deep\": ["), "arguments as formatted JSON");
    assert!(html.contains("remaining"));

    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let resp = http
        .post(format!("{}/approvals/{id}/deny", api.base))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str()), ("reason", "not during the freeze"), ("notes", "ask again monday")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let (_, html) = page_text(&api, &cookie, &format!("/approvals/{id}")).await;
    assert!(html.contains("reason: not during the freeze") && html.contains("notes: ask again monday"));
    assert!(!html.contains(&format!("action=\"/approvals/{id}/deny\"")), "no decision form once decided");
    assert!(html.contains("status denied"));

    let (_, stats) = page_text(&api, &cookie, "/stats").await;
    assert!(stats.contains("Time to decision") && stats.contains("By agent") && stats.contains("claude"));
    assert!(stats.contains("aria-current=\"page\">Stats"));
}

#[tokio::test(start_paused = true)]
async fn a_request_near_its_deadline_is_announced_once_as_expiring() {
    let config = Config::from_toml("", "empty.toml").unwrap();
    let store = Store::open_with_clock(Location::Memory, Clock::tokio(1_800_000_000_000)).await.unwrap();
    let settings = ApprovalSettings {
        public_url: "http://127.0.0.1:1".into(),
        // Requests live 400 ms; the 10-minute warning therefore starts half-way, at 200 ms.
        expiry_by_risk: [Duration::from_millis(400); 4],
        expiry_warning: Duration::from_secs(600),
        workflows: config.approvals.workflows.clone(),
        ..ApprovalSettings::default()
    };
    let approvals = ApprovalService::new(store, config.policy.clone(), settings);
    let mut changes = approvals.changes.subscribe();
    let id = super::common::hold_call(&approvals, "delete_file", "claude", json!({})).await;
    assert_eq!(changes.recv().await.unwrap().kind, mcp_gate::approval::ChangeKind::Requested);

    approvals.sweep().await;
    assert!(changes.try_recv().is_err(), "not expiring when just made");
    tokio::time::advance(Duration::from_millis(199)).await;
    approvals.sweep().await;
    assert!(changes.try_recv().is_err(), "not expiring before half its life");
    tokio::time::advance(Duration::from_millis(1)).await;
    approvals.sweep().await;
    approvals.sweep().await;
    let change = changes.try_recv().unwrap();
    assert_eq!((change.kind, change.approval.id.as_str()), (mcp_gate::approval::ChangeKind::Expiring, id.as_str()));
    assert!(changes.try_recv().is_err(), "announced once, not on every sweep");

    tokio::time::advance(Duration::from_millis(199)).await;
    approvals.sweep().await;
    assert!(changes.try_recv().is_err(), "not expired before its deadline");
    tokio::time::advance(Duration::from_millis(1)).await;
    approvals.sweep().await;
    assert_eq!(changes.try_recv().unwrap().kind, mcp_gate::approval::ChangeKind::Expired);
}

/// The shared token is one credential: whatever approver name it sends, it casts one vote, so a
/// two-person workflow is never completed with it alone. Names that pass for the system, the AI
/// reviewer or the requester (in case, width or invisible variants) are refused.
#[tokio::test]
async fn one_token_is_one_approver_whatever_name_it_sends() {
    let api = Api::start(
        "[[rules]]\nname = \"deletes\"\ntool = \"delete_*\"\naction = \"approve\"\nworkflow = \"two\"\n\
         [[workflows]]\nname = \"two\"\nrequired_approvals = 2\n",
    )
    .await;
    let id = api.hold("delete_file", "Agent-X", json!({"path": "/srv"})).await;
    let approve = format!("/api/v1/approvals/{id}/approve");
    let (status, voted) = api.post(&approve, TOKEN, json!({})).await;
    assert_eq!((status, voted["status"].as_str()), (200, Some("pending")), "{voted}");
    let (status, err) = api.post(&approve, TOKEN, json!({"approver": "second-person"})).await;
    assert_eq!((status, err["error"]["code"].as_str()), (409, Some("already_decided")), "{err}");
    let a = api.approvals.store.get_approval(&id).await.unwrap().unwrap();
    assert_eq!(a.status.as_str(), "pending", "one token never reaches a quorum of two");

    let other = api.hold("write_file", "Agent-X", json!({"x": 1})).await;
    let approve = format!("/api/v1/approvals/{other}/approve");
    for name in ["agent-x", " AGENT-X ", "ａｇｅｎｔ-ｘ", "agent\u{200b}-x"] {
        let (status, err) = api.post(&approve, TOKEN, json!({"approver": name})).await;
        assert_eq!((status, err["error"]["code"].as_str()), (403, Some("own_request")), "{name:?}: {err}");
    }
    for name in ["ai:claude-sonnet", "AI:x", "system", " System", "ｓｙｓｔｅｍ"] {
        let (status, err) = api.post(&approve, TOKEN, json!({"approver": name})).await;
        assert_eq!((status, err["error"]["code"].as_str()), (403, Some("reserved_name")), "{name:?}: {err}");
    }
    let (status, done) = api.post(&approve, TOKEN, json!({"approver": "Operator"})).await;
    assert_eq!((status, done["status"].as_str()), (200, Some("approved")), "{done}");
}

/// check-config warns when a workflow needs more approvers than there are credentials to vote.
#[test]
fn check_config_warns_when_a_quorum_cannot_be_reached() {
    let two = "[[workflows]]\nname = \"two\"\nrequired_approvals = 2\n";
    let text = Config::from_toml(two, "test.toml").unwrap().explain();
    assert!(text.contains("warning: workflow two needs 2 approvers but only 1 may vote"), "{text}");
    let named = format!("{two}[[approvers]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\n", sha(ALICE));
    let text = Config::from_toml(&named, "test.toml").unwrap().explain();
    assert!(!text.contains("warning: workflow two"), "{text}");
    for bad in ["ai:reviewer", "System", "OPERATOR"] {
        let toml = format!("[[approvers]]\nname = \"{bad}\"\ntoken_sha256 = \"{}\"\n", sha(ALICE));
        let err = Config::from_toml(&toml, "test.toml").unwrap_err().to_string();
        assert!(err.contains("approvers[0].name"), "{bad}: {err}");
    }
}

/// Invisible, bidi and look-alike characters reach the page as highlighted marks, never raw, in
/// the arguments, the agent's name, the tool's name and description, with a warning; long
/// arguments are shown in full.
#[tokio::test]
async fn the_dashboard_shows_hidden_characters_visibly() {
    let api = Api::start("").await;
    let tool = json!({
        "name": "delete_file",
        "description": "Reads\u{2066} a file\u{feff}",
        "inputSchema": {"type": "object"},
    });
    let long = "y".repeat(20_000);
    let arguments = json!({"path": "/home/user/\u{202e}cod.tropeR", "note": "a\u{200b}b\u{a0}\u{a0}c", "blob": long});
    let id = hold_delete_file(&api, tool, &arguments, "clau\u{200b}de").await;
    let (cookie, _) = sign_in(&api, TOKEN).await;

    let (status, html) = page_text(&api, &cookie, &format!("/approvals/{id}")).await;
    assert_eq!(status, 200);
    for raw in ['\u{202e}', '\u{200b}', '\u{a0}', '\u{2066}', '\u{feff}'] {
        assert!(!html.contains(raw), "U+{:04X} reaches the page raw", raw as u32);
    }
    let mark =
        |c: &str| format!(r#"<span class="hidden-char" title="an invisible or look-alike character">⟨U+{c}⟩</span>"#);
    assert!(html.contains(&format!("/home/user/{}cod.tropeR", mark("202E"))), "{html}");
    assert!(html.contains(&format!("a{}b{}{}c", mark("200B"), mark("00A0"), mark("00A0"))));
    assert!(html.contains(&format!("clau{}de", mark("200B"))), "the agent's name");
    assert!(html.contains(&format!("Reads{} a file{}", mark("2066"), mark("FEFF"))), "the description");
    assert!(html.contains("invisible or look-alike characters"), "a warning on the request");
    assert!(html.contains(&long), "arguments are shown in full");

    let (_, queue) = page_text(&api, &cookie, "/").await;
    assert!(queue.contains(&format!("clau{}de", mark("200B"))) && !queue.contains('\u{200b}'), "{queue}");
    assert!(queue.contains("hidden characters"), "{queue}");
}

/// After sign-in only same-origin paths are followed; notices and errors come from fixed codes,
/// never from the query.
#[tokio::test]
async fn sign_in_redirects_stay_here_and_notices_are_fixed_texts() {
    let api = Api::start("").await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let login =
        |next: &'static str| http.post(format!("{}/login", api.base)).form(&[("token", TOKEN), ("next", next)]).send();
    for next in [
        "/\t/evil.example",
        "/\n/evil.example",
        "//evil.example",
        "/\\evil.example",
        "/a\\b",
        "https://evil.example",
        "evil",
        "/\r\nx",
        "/ /evil.example",
        "/\u{200b}/evil.example",
    ] {
        let resp = login(next).await.unwrap();
        assert_eq!(resp.status(), 303, "{next:?}");
        assert_eq!(resp.headers()["location"], "/", "{next:?} is not followed");
    }
    let resp = login("/approvals/apr_1?view=all").await.unwrap();
    assert_eq!(resp.headers()["location"], "/approvals/apr_1?view=all", "a same-origin path is followed");

    let id = api.hold("delete_file", "claude", json!({"path": "/srv"})).await;
    let (cookie, csrf) = sign_in(&api, TOKEN).await;
    let forged = "Approved+by+security+team%2C+running";
    let (_, html) = page_text(&api, &cookie, &format!("/approvals/{id}?done={forged}&error={forged}")).await;
    assert!(!html.contains("Approved by security team"), "query text is never shown as a notice");
    let (_, html) = page_text(&api, &cookie, &format!("/?done={forged}&error={forged}")).await;
    assert!(!html.contains("Approved by security team"));

    let resp = http
        .post(format!("{}/approvals/{id}/approve", api.base))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(location, format!("/approvals/{id}?done=approved"));
    let (_, html) = page_text(&api, &cookie, &location).await;
    assert!(html.contains("role=\"status\">Recorded: approved."), "{html}");
    let (_, html) = page_text(&api, &cookie, &format!("/approvals/{id}?error=own_request")).await;
    assert!(html.contains("You made this request: you cannot approve it."));
}
