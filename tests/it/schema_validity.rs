//! Every message the proxy writes, to clients and to upstreams, checked against the official
//! JSON schema of the protocol version spoken with that peer (`tests/data/mcp-schema/`): a
//! 2025-11-25 client (`initialize`) and a 2026-07-28 client (`server/discover`, then the version
//! and capabilities in each request's `_meta`) each go down every path the gate has.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use mcp_gate::approval::{ApprovalGate, ApprovalService, ApprovalSettings, replies};
use mcp_gate::config::Config;
use mcp_gate::gate::{Gate, ToolCall, Verdict};
use mcp_gate::identity::Principal;
use mcp_gate::store::{ApprovalFilter, Location, Store};
use mcp_gate::upstream::settings::{ServerConfig, UpstreamTransport};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::common::*;

pub(super) const LEGACY: &str = "2025-11-25";
pub(super) const MODERN: &str = "2026-07-28";

// === schemas ===

fn schema(version: &str) -> &'static Value {
    static DOCS: OnceLock<HashMap<&'static str, Value>> = OnceLock::new();
    let docs = DOCS.get_or_init(|| {
        [LEGACY, MODERN]
            .into_iter()
            .map(|v| {
                let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/mcp-schema/{v}/schema.json"));
                let text = std::fs::read_to_string(&path).expect("pinned schema");
                (v, serde_json::from_str(&text).expect("schema JSON"))
            })
            .collect()
    });
    &docs[version]
}

fn defs(version: &str) -> &'static serde_json::Map<String, Value> {
    schema(version)["$defs"].as_object().expect("$defs")
}

/// Validates `instance` against definition `def` of `version`.
fn check(version: &str, def: &str, instance: &Value) -> Result<(), String> {
    type Cache = Mutex<HashMap<(String, String), Arc<jsonschema::Validator>>>;
    static VALIDATORS: OnceLock<Cache> = OnceLock::new();
    let cache = VALIDATORS.get_or_init(Default::default);
    let key = (version.to_owned(), def.to_owned());
    let validator = cache.lock().unwrap().get(&key).cloned();
    let validator = match validator {
        Some(v) => v,
        None => {
            if !defs(version).contains_key(def) {
                return Err(format!("{version} has no definition {def}"));
            }
            let mut doc = schema(version).clone();
            doc["$ref"] = json!(format!("#/$defs/{def}"));
            let v = Arc::new(jsonschema::validator_for(&doc).expect("the schema compiles"));
            cache.lock().unwrap().insert(key, v.clone());
            v
        }
    };
    validator.validate(instance).map_err(|e| format!("{version} {def}: {e} at {}", e.instance_path()))
}

/// The member of a union definition (`ServerNotification`, `ClientRequest`, ...) for `method`.
fn member(version: &str, union: &str, method: &str) -> Option<String> {
    let defs = defs(version);
    defs.get(union)?["anyOf"].as_array()?.iter().find_map(|r| {
        let name = r["$ref"].as_str()?.rsplit('/').next()?;
        (defs.get(name)?["properties"]["method"]["const"] == method).then(|| name.to_owned())
    })
}

/// The definition of the result of `method`.
fn result_def(method: &str) -> &'static str {
    match method {
        "initialize" => "InitializeResult",
        "server/discover" => "DiscoverResult",
        "tools/call" => "CallToolResult",
        "tools/list" => "ListToolsResult",
        "prompts/list" => "ListPromptsResult",
        "resources/list" => "ListResourcesResult",
        "resources/templates/list" => "ListResourceTemplatesResult",
        "subscriptions/listen" => "SubscriptionsListenResult",
        _ => "EmptyResult",
    }
}

/// The definition of a result about tasks (2025-11-25): a `tools/call` answered with a task, and
/// the `tasks/*` results (`tasks/result` of a tool call is a `CallToolResult`).
fn task_result_def(method: &str, result: &Value) -> Option<&'static str> {
    match method {
        "tools/call" if result.get("task").is_some() => Some("CreateTaskResult"),
        "tasks/get" => Some("GetTaskResult"),
        "tasks/cancel" => Some("CancelTaskResult"),
        "tasks/list" => Some("ListTasksResult"),
        "tasks/result" => Some("CallToolResult"),
        _ => None,
    }
}

/// A result of the 2026-07-28 tasks extension (SEP-2663), which `schema.json` does not define:
/// `CreateTaskResult` (`Result & Task`, `resultType: "task"`), `tasks/get` (`Result &
/// DetailedTask`), and the empty acknowledgements of `tasks/cancel` and `tasks/update`.
fn check_modern_task(method: &str, result: &Value) -> Result<(), String> {
    let fail = |why: &str| Err(format!("{method} result: {why}: {result}"));
    let Some(obj) = result.as_object() else { return fail("not an object") };
    if let Some(meta) = obj.get("_meta").filter(|m| !m.is_object()) {
        return fail(&format!("_meta {meta} is not an object"));
    }
    let expected = if method == "tools/call" { "task" } else { "complete" };
    if obj.get("resultType").and_then(Value::as_str) != Some(expected) {
        return fail(&format!("resultType is not {expected:?}"));
    }
    if matches!(method, "tasks/cancel" | "tasks/update") {
        return match obj.keys().all(|k| k == "resultType" || k == "_meta") {
            true => Ok(()),
            false => fail("an acknowledgement carries nothing"),
        };
    }
    let string = |k: &str| obj.get(k).is_some_and(Value::is_string);
    if !string("taskId") || !string("createdAt") || !string("lastUpdatedAt") {
        return fail("taskId, createdAt and lastUpdatedAt are strings");
    }
    if !obj.get("ttlMs").is_some_and(|t| t.is_null() || t.is_number()) {
        return fail("ttlMs is a number or null");
    }
    if obj.get("pollIntervalMs").is_some_and(|p| !p.is_number())
        || obj.get("statusMessage").is_some_and(|s| !s.is_string())
    {
        return fail("pollIntervalMs is a number, statusMessage a string");
    }
    let status = obj.get("status").and_then(Value::as_str).unwrap_or_default();
    match status {
        "completed" if method == "tasks/get" && !obj.get("result").is_some_and(Value::is_object) => {
            fail("a completed task carries its result")
        }
        "failed" if method == "tasks/get" && !obj.get("error").is_some_and(Value::is_object) => {
            fail("a failed task carries its error")
        }
        "working" | "input_required" | "completed" | "failed" | "cancelled" => Ok(()),
        other => fail(&format!("unknown status {other:?}")),
    }
}

/// How many messages were validated, per version.
fn counted(version: &str, n: usize) {
    static COUNTS: OnceLock<Mutex<HashMap<String, usize>>> = OnceLock::new();
    let counts = COUNTS.get_or_init(Default::default);
    let mut c = counts.lock().unwrap();
    *c.entry(version.to_owned()).or_default() += n;
    eprintln!("schema-validated messages so far: {c:?}");
}

/// Checks what the proxy wrote to a client of `version`; `methods` maps the client's request
/// ids (raw JSON text) to their methods.
fn check_to_client(version: &str, msg: &Value, methods: &HashMap<String, String>) -> Result<(), String> {
    check(version, "JSONRPCMessage", msg)?;
    let method = msg["method"].as_str();
    match (method, msg.get("id")) {
        (Some(m), Some(_)) => {
            check(version, "JSONRPCRequest", msg)?;
            let def = member(version, "ServerRequest", m)
                .ok_or_else(|| format!("{version} has no server-to-client request {m}"))?;
            check(version, &def, msg)
        }
        (Some(m), None) => {
            check(version, "JSONRPCNotification", msg)?;
            let def =
                member(version, "ServerNotification", m).ok_or_else(|| format!("{version} has no notification {m}"))?;
            check(version, &def, msg)
        }
        (None, _) if msg.get("error").is_some() => {
            check(version, "JSONRPCErrorResponse", msg)?;
            check_error(version, &msg["error"])
        }
        (None, id) => {
            check(version, "JSONRPCResultResponse", msg)?;
            let id = id.map(Value::to_string).unwrap_or_default();
            let m = methods.get(&id).ok_or_else(|| format!("a response to no request: {msg}"))?;
            if version == MODERN && (m.starts_with("tasks/") || msg["result"]["resultType"] == "task") {
                // The tasks extension is not in the core schema: checked by hand against SEP-2663.
                return check_modern_task(m, &msg["result"]);
            }
            // A 2026-07-28 call may be answered with `input_required` instead of its result.
            let def = match msg["result"]["resultType"].as_str() {
                Some("input_required") if version == MODERN => "InputRequiredResult",
                _ => task_result_def(m, &msg["result"]).unwrap_or_else(|| result_def(m)),
            };
            check(version, def, &msg["result"])?;
            let whole = format!("{def}Response");
            if defs(version).contains_key(&whole) { check(version, &whole, msg) } else { Ok(()) }
        }
    }
}

/// Checks an error object against the definition its code has in `version`, where it has one
/// (2026-07-28 defines the standard JSON-RPC errors and MCP's own; codes from -32000 to -32019
/// are left to implementations, and the proxy's `-32000` for a failed upstream is one of them).
fn check_error(version: &str, error: &Value) -> Result<(), String> {
    check(version, "Error", error)?;
    let code = error["code"].as_i64().ok_or("an error without a code")?;
    let named = defs(version)
        .iter()
        .find(|(n, d)| n.ends_with("Error") && d["properties"]["code"]["const"].as_i64() == Some(code))
        .map(|(n, _)| n.clone());
    // Errors defined as a whole response (`MissingRequiredClientCapabilityError`).
    let response = defs(version)
        .iter()
        .find(|(n, d)| {
            n.ends_with("Error")
                && d["properties"]["error"]["allOf"]
                    .as_array()
                    .is_some_and(|all| all.iter().any(|p| p["properties"]["code"]["const"].as_i64() == Some(code)))
        })
        .map(|(n, _)| n.clone());
    if let Some(def) = response {
        return check(version, &def, &json!({"jsonrpc": "2.0", "id": 0, "error": error}));
    }
    match named {
        Some(def) => check(version, &def, error),
        None if version == MODERN && !(-32019..=-32000).contains(&code) && !(-32768..=-32600).contains(&code) => {
            Err(format!("error code {code} is outside the ranges {version} leaves to implementations"))
        }
        None => Ok(()),
    }
}

/// Checks what the proxy wrote to an upstream that speaks `version`.
fn check_to_upstream(version: &str, msg: &Value) -> Result<(), String> {
    check(version, "JSONRPCMessage", msg)?;
    match (msg["method"].as_str(), msg.get("id")) {
        (Some(m), Some(_)) => {
            check(version, "JSONRPCRequest", msg)?;
            let def = member(version, "ClientRequest", m).ok_or_else(|| format!("{version} has no request {m}"))?;
            check(version, &def, msg)
        }
        (Some(m), None) => {
            check(version, "JSONRPCNotification", msg)?;
            // 2026-07-28 lists no client notifications in its union, but defines them.
            let def = member(version, "ClientNotification", m)
                .or_else(|| {
                    defs(version)
                        .iter()
                        .find(|(n, d)| n.ends_with("Notification") && d["properties"]["method"]["const"] == m)
                        .map(|(n, _)| n.clone())
                })
                .ok_or_else(|| format!("{version} has no notification {m}"))?;
            check(version, &def, msg)
        }
        (None, _) => check(version, "JSONRPCResponse", msg),
    }
}

// === fixtures ===

pub(super) fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mcp-gate-schema-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An upstream started through a wrapper that appends every line the proxy sends it to `log`
/// and writes the server's process id to `pid` (to stop it from the test).
pub(super) fn recorded(name: &str, command: &str, args: &[&str], dir: &Path) -> Arc<ServerConfig> {
    let script = r#"echo $$ > "$2"; exec "$3" "${@:4}" < <(tee -a "$1")"#;
    let mut all = vec!["-c".to_owned(), script.to_owned(), "recorder".to_owned()];
    all.push(dir.join(format!("{name}.log")).display().to_string());
    all.push(dir.join(format!("{name}.pid")).display().to_string());
    all.push(command.to_owned());
    all.extend(args.iter().map(|a| (*a).to_owned()));
    Arc::new(ServerConfig {
        name: name.to_owned(),
        transport: UpstreamTransport::Stdio { command: "bash".into(), args: all, env: Vec::new(), cwd: None },
        prefix: true,
        request_timeout: mcp_gate::upstream::settings::DEFAULT_REQUEST_TIMEOUT,
        initialize_timeout: mcp_gate::upstream::settings::DEFAULT_INITIALIZE_TIMEOUT,
    })
}

fn raw_bin() -> String {
    fixture_bin().with_file_name("raw-upstream").display().to_string()
}

/// Every line an upstream was sent, once the line containing `last` is there.
pub(super) async fn upstream_log(dir: &Path, name: &str, last: &str) -> Vec<Value> {
    let path = dir.join(format!("{name}.log"));
    within("the upstream log", async {
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.contains(last) && text.ends_with('\n') {
                return text.lines().map(|l| serde_json::from_str(l).expect("JSON to the upstream")).collect();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

fn stop(dir: &Path, name: &str) {
    let pid = std::fs::read_to_string(dir.join(format!("{name}.pid"))).unwrap();
    let status = std::process::Command::new("kill").args(["-9", pid.trim()]).status().unwrap();
    assert!(status.success());
}

/// Policy: `echo` runs, `test_error_handling` is denied, the rest waits for a person.
const POLICY: &str = r#"
[[rules]]
name = "echo is harmless"
tool = "echo"
action = "allow"

[[rules]]
name = "no errors"
tool = "test_error_handling"
action = "deny"
reason = "this tool only fails"
"#;

async fn approvals(wait: Duration) -> Arc<ApprovalService> {
    let config = Config::from_toml(POLICY, "schema.toml").expect("policy");
    let store = Store::open(Location::Memory).await.expect("store");
    let settings = ApprovalSettings {
        wait,
        public_url: "http://127.0.0.1:8377".into(),
        expiry_by_risk: config.approvals.expiry_by_risk,
        workflows: config.approvals.workflows.clone(),
        ..ApprovalSettings::default()
    };
    ApprovalService::new(store, config.policy.clone(), settings)
}

/// The real approval gate (fail fast), a waiting one for calls with `"wait": true`, and, for
/// calls with a `"script"` argument, the gate's other replies: each shape the gate can answer
/// with, produced by the same functions, and progress while a call is held.
struct Gates {
    fast: ApprovalGate,
    wait: ApprovalGate,
    scripted: HashMap<&'static str, Box<serde_json::value::RawValue>>,
}

impl Gate for Gates {
    fn check(&self, call: &ToolCall<'_>) -> Verdict {
        match call.arguments.get("script").and_then(Value::as_str) {
            Some("reviewer-approves") => Verdict::Allow,
            Some("progress") => {
                let Some(progress) = &call.progress else { panic!("the call carried a progress token") };
                progress.notify(0.0, "Waiting for approval");
                let reply = self.scripted["pending"].to_owned();
                Verdict::Hold(Box::pin(async move { Verdict::Respond(reply) }))
            }
            Some(name) => Verdict::Respond(self.scripted[name].to_owned()),
            None if call.arguments.get("wait").is_some() => self.wait.check(call),
            None => self.fast.check(call),
        }
    }
}

async fn gates(fast: &Arc<ApprovalService>, wait: &Arc<ApprovalService>) -> Arc<Gates> {
    let id = hold_call(fast, "write_file", "schema-test", json!({"path": "/tmp/x"})).await;
    let a = fast.store.get_approval(&id).await.unwrap().unwrap();
    let url = fast.url_for(&id);
    let scripted = HashMap::from([
        ("pending", replies::pending(&a, &url)),
        ("denied", replies::denied(&a, &url)),
        ("expired", replies::expired(&a, &url)),
        ("spent", replies::spent(&a, &url)),
        ("policy", replies::denied_by_policy("fx", "echo", Some("rule"), "no")),
        ("internal", replies::internal("the store failed")),
        ("reviewer-denies", replies::denied_by_reviewer("fx", "echo", "ai:m", "denied it: destructive", false)),
        ("reviewer-fallback", replies::denied_by_reviewer("fx", "echo", "ai:m", "was unsure", true)),
    ]);
    Arc::new(Gates {
        fast: ApprovalGate { approvals: fast.clone() },
        wait: ApprovalGate { approvals: wait.clone() },
        scripted,
    })
}

// === a client of either era ===

pub(super) struct Peer {
    version: &'static str,
    /// The client capabilities it declares (in each request's `_meta` in 2026-07-28).
    pub(super) capabilities: Value,
    lines: tokio::io::Lines<BufReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>>,
    write: tokio::io::WriteHalf<tokio::io::DuplexStream>,
    next: u64,
    /// Request id (raw JSON) -> method, to know what each response answers.
    methods: HashMap<String, String>,
    /// Every message the proxy wrote to this client.
    pub(super) seen: Vec<Value>,
}

impl Peer {
    /// A client that declares both modes of elicitation.
    pub(super) async fn start(version: &'static str, servers: Vec<Arc<ServerConfig>>, gate: Arc<dyn Gate>) -> Peer {
        Peer::start_named(version, servers, gate, "schema-test").await
    }

    /// [`Peer::start`] with the client's name (over stdio, the owner of its tasks).
    pub(super) async fn start_named(
        version: &'static str,
        servers: Vec<Arc<ServerConfig>>,
        gate: Arc<dyn Gate>,
        name: &str,
    ) -> Peer {
        let capabilities = json!({"elicitation": {"form": {}, "url": {}}});
        Peer::start_declaring_named(version, capabilities, servers, gate, name).await
    }

    pub(super) async fn start_declaring(
        version: &'static str,
        capabilities: Value,
        servers: Vec<Arc<ServerConfig>>,
        gate: Arc<dyn Gate>,
    ) -> Peer {
        Peer::start_declaring_named(version, capabilities, servers, gate, "schema-test").await
    }

    /// A client named `name` (over stdio, the owner of its tasks) that declares `capabilities`.
    pub(super) async fn start_declaring_named(
        version: &'static str,
        capabilities: Value,
        servers: Vec<Arc<ServerConfig>>,
        gate: Arc<dyn Gate>,
        name: &str,
    ) -> Peer {
        let stream = stdio_proxy(options_with_gate(servers, gate)).await;
        let (read, write) = tokio::io::split(stream);
        let mut p = Peer {
            version,
            capabilities,
            lines: BufReader::new(read).lines(),
            write,
            next: 0,
            methods: HashMap::new(),
            seen: Vec::new(),
        };
        if version == LEGACY {
            let params = json!({"protocolVersion": LEGACY, "capabilities": p.capabilities,
                                "clientInfo": {"name": name, "version": "1"}});
            p.request("initialize", params).await;
            p.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await;
        } else {
            let discovered = p.request("server/discover", json!({})).await;
            assert!(discovered["result"]["supportedVersions"].is_array(), "{discovered}");
        }
        p
    }

    pub(super) async fn send(&mut self, v: Value) {
        self.write.write_all(format!("{v}\n").as_bytes()).await.unwrap();
    }

    /// The 2026-07-28 `_meta` every request of that version carries.
    fn with_meta(&self, mut params: Value) -> Value {
        if self.version == MODERN {
            let meta = &mut params["_meta"];
            meta["io.modelcontextprotocol/protocolVersion"] = json!(MODERN);
            meta["io.modelcontextprotocol/clientCapabilities"] = self.capabilities.clone();
            meta["io.modelcontextprotocol/clientInfo"] = json!({"name": "schema-test", "version": "1"});
        }
        params
    }

    /// Sends a request and returns the whole response.
    pub(super) async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.send_request(method, params).await;
        self.response(id).await
    }

    pub(super) async fn send_request(&mut self, method: &str, params: Value) -> u64 {
        self.next += 1;
        let id = self.next;
        self.methods.insert(id.to_string(), method.to_owned());
        let params = self.with_meta(params);
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})).await;
        id
    }

    async fn next_message(&mut self) -> Value {
        let line = within("a message from the proxy", self.lines.next_line()).await.unwrap().expect("open");
        let v: Value = serde_json::from_str(&line).expect("JSON from the proxy");
        self.seen.push(v.clone());
        v
    }

    pub(super) async fn response(&mut self, id: u64) -> Value {
        loop {
            let v = self.next_message().await;
            if v["id"] == id && v.get("method").is_none() {
                return v;
            }
        }
    }

    pub(super) async fn call(&mut self, tool: &str, arguments: Value) -> Value {
        self.request("tools/call", json!({"name": tool, "arguments": arguments})).await["result"].clone()
    }

    /// Validates everything this client was sent and returns how many messages that was.
    pub(super) fn validate(&self) -> usize {
        let failures: Vec<String> = self
            .seen
            .iter()
            .filter_map(|m| check_to_client(self.version, m, &self.methods).err().map(|e| format!("{e}\n  in {m}")))
            .collect();
        assert!(failures.is_empty(), "invalid messages to a {} client:\n{}", self.version, failures.join("\n"));
        counted(self.version, self.seen.len());
        self.seen.len()
    }
}

pub(super) fn validate_upstream(version: &str, log: &[Value]) {
    let failures: Vec<String> =
        log.iter().filter_map(|m| check_to_upstream(version, m).err().map(|e| format!("{e}\n  in {m}"))).collect();
    assert!(failures.is_empty(), "invalid messages to a {version} upstream:\n{}", failures.join("\n"));
    counted(version, log.len());
}

fn text(result: &Value) -> String {
    result["content"][0]["text"].as_str().unwrap_or_default().to_owned()
}

fn approval_id(result: &Value) -> String {
    result["_meta"]["mcp-gate/approval"]["id"].as_str().expect("an approval id").to_owned()
}

// === the paths ===

/// One upstream: allowed, denied by policy, held (fail fast and wait), approved, denied by a
/// person, the other gate replies, AI-reviewed outcomes, progress while held, the URL offer,
/// and malformed or oversized input.
async fn gate_paths(version: &'static str) {
    let dir = scratch(&format!("gate-{version}"));
    let fast = approvals(Duration::ZERO).await;
    let wait = approvals(Duration::from_secs(600)).await;
    let gate = gates(&fast, &wait).await;
    let fx = recorded("fx", &fixture_bin().display().to_string(), &["stdio"], &dir);
    // A 2026-07-28 client that takes URL elicitation is answered with `input_required` instead
    // (tests/it/input_required.rs); this one declares form mode only, so its held calls take the
    // paths every client can.
    let capabilities = if version == LEGACY {
        json!({"elicitation": {"form": {}, "url": {}}})
    } else {
        json!({"elicitation": {"form": {}}})
    };
    let mut c = Peer::start_declaring(version, capabilities, vec![fx], gate).await;

    // Allowed: relayed.
    let r = c.call("echo", json!({"text": "hi"})).await;
    assert_ne!(r["isError"], true, "{r}");
    // Denied by policy.
    let r = c.call("test_error_handling", json!({})).await;
    assert!(text(&r).contains("not allowed by policy"), "{r}");

    // Held, fail fast; the URL offer goes only to a 2025-11-25 client.
    let args = json!({"path": "/srv/a"});
    let r = c.call("test_simple_text", args.clone()).await;
    assert_eq!(r["_meta"]["mcp-gate/approval"]["status"], "pending", "{r}");
    let offers = c.seen.iter().filter(|m| m["method"] == "elicitation/create").count();
    assert_eq!(offers, usize::from(version == LEGACY), "URL offers to a {version} client");
    // Approved: the identical retry runs.
    let id = approval_id(&r);
    fast.decide(&id, &Principal::named("alice"), true, None, None).await.unwrap();
    let r = c.call("test_simple_text", args).await;
    assert!(r["content"].is_array() && r["_meta"].get("mcp-gate/approval").is_none(), "ran upstream: {r}");

    // Denied by a person.
    let args = json!({"path": "/srv/b"});
    let r = c.call("test_audio_content", args.clone()).await;
    fast.decide(&approval_id(&r), &Principal::named("carol"), false, None, Some("not today".into())).await.unwrap();
    let r = c.call("test_audio_content", args).await;
    assert!(text(&r).contains("not today"), "{r}");

    // Held in wait mode, approved while the call waits.
    let call = c.send_request("tools/call", json!({"name": "test_simple_text", "arguments": {"wait": true}})).await;
    let pending = within("the held call", async {
        loop {
            let listed = wait.store.list_approvals(ApprovalFilter::default()).await.unwrap();
            if let Some(a) = listed.into_iter().next() {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    wait.decide(&pending.id, &Principal::named("bob"), true, None, None).await.unwrap();
    let r = c.response(call).await;
    assert!(r["result"]["content"].is_array() && r["result"]["_meta"].get("mcp-gate/approval").is_none(), "{r}");

    // Every other reply of the gate, and the AI reviewer's outcomes.
    for script in ["expired", "spent", "denied", "policy", "internal", "reviewer-denies", "reviewer-fallback"] {
        let r = c.call("echo", json!({"script": script})).await;
        assert_eq!(r["isError"], true, "{script}: {r}");
    }
    let r = c.call("echo", json!({"script": "reviewer-approves", "text": "ok"})).await;
    assert_ne!(r["isError"], true, "{r}");

    // Progress while held.
    let params = json!({"name": "echo", "arguments": {"script": "progress"}, "_meta": {"progressToken": "p-1"}});
    c.request("tools/call", params).await;
    assert!(c.seen.iter().any(|m| m["method"] == "notifications/progress"), "progress while held");

    // Parse and size errors.
    c.write.write_all(b"{not json\n").await.unwrap();
    let v = c.next_message().await;
    assert_eq!(v["error"]["code"], -32700, "{v}");
    let mut big = vec![b'x'; mcp_gate::wire::MAX_MESSAGE_BYTES + 10];
    big.push(b'\n');
    c.write.write_all(&big).await.unwrap();
    let v = c.next_message().await;
    assert_eq!(v["error"]["code"], -32600, "{v}");

    let r = c.call("echo", json!({"text": "the-end"})).await;
    assert_ne!(r["isError"], true, "{r}");
    c.validate();
    validate_upstream(version, &upstream_log(&dir, "fx", "the-end").await);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn gate_replies_are_valid_2025_11_25() {
    gate_paths(LEGACY).await;
}

#[tokio::test]
async fn gate_replies_are_valid_2026_07_28() {
    gate_paths(MODERN).await;
}

/// An upstream that is down: the error the proxy answers with.
async fn upstream_down(version: &'static str) {
    let down = Arc::new(ServerConfig {
        name: "down".into(),
        transport: UpstreamTransport::Stdio { command: "false".into(), args: Vec::new(), env: Vec::new(), cwd: None },
        prefix: false,
        request_timeout: mcp_gate::upstream::settings::DEFAULT_REQUEST_TIMEOUT,
        initialize_timeout: mcp_gate::upstream::settings::DEFAULT_INITIALIZE_TIMEOUT,
    });
    let fast = approvals(Duration::ZERO).await;
    let gate = Arc::new(ApprovalGate { approvals: fast });
    let stream = stdio_proxy(options_with_gate(vec![down], gate)).await;
    let (read, write) = tokio::io::split(stream);
    let mut c = Peer {
        version,
        capabilities: json!({}),
        lines: BufReader::new(read).lines(),
        write,
        next: 0,
        methods: HashMap::new(),
        seen: Vec::new(),
    };
    let r = c.request("tools/call", json!({"name": "echo", "arguments": {}})).await;
    assert!(r["error"]["message"].as_str().unwrap_or_default().contains("down"), "{r}");
    c.validate();
}

#[tokio::test]
async fn upstream_down_errors_are_valid_in_both_versions() {
    upstream_down(LEGACY).await;
    upstream_down(MODERN).await;
}

/// Several upstreams: merged `initialize` / `server/discover` and list results, and the list
/// changes the proxy announces after an upstream restarts.
async fn merged_paths(version: &'static str) {
    let dir = scratch(&format!("merged-{version}"));
    let raw = recorded("raw", &raw_bin(), &[], &dir);
    let fx = recorded("fx", &fixture_bin().display().to_string(), &["stdio"], &dir);
    let gate = Arc::new(mcp_gate::gate::AllowAll);
    let mut c = Peer::start(version, vec![raw, fx], gate).await;

    for method in ["tools/list", "prompts/list", "resources/list", "resources/templates/list"] {
        let r = c.request(method, json!({})).await;
        assert!(r.get("result").is_some(), "{method}: {r}");
    }
    let listen = if version == LEGACY {
        c.request("ping", json!({})).await;
        None
    } else {
        // A listen stream (held open by the first upstream) that asks for tool list changes; the
        // upstream's acknowledgement names it by the client's id.
        let listen = c.send_request("subscriptions/listen", json!({"notifications": {"toolsListChanged": true}})).await;
        let ack = c.next_message().await;
        assert_eq!(ack["method"], "notifications/subscriptions/acknowledged", "{ack}");
        assert_eq!(ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], listen, "{ack}");
        Some(listen)
    };

    // The second upstream dies and is restarted: the client hears that its lists may differ.
    stop(&dir, "fx");
    let changed = within("the list change", async {
        loop {
            let v = c.next_message().await;
            if v["method"] == "notifications/tools/list_changed" {
                return v;
            }
        }
    })
    .await;
    if let Some(listen) = listen {
        assert_eq!(changed["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], listen, "{changed}");
    }
    let r = c.call("fx__echo", json!({"text": "the-end"})).await;
    assert_ne!(r["isError"], true, "{r}");
    c.validate();
    validate_upstream(version, &upstream_log(&dir, "fx", "the-end").await);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn merged_results_and_list_changes_are_valid_2025_11_25() {
    merged_paths(LEGACY).await;
}

#[tokio::test]
async fn merged_results_and_list_changes_are_valid_2026_07_28() {
    merged_paths(MODERN).await;
}

/// A 2026-07-28 client over Streamable HTTP (the `MCP-Protocol-Version`, `Mcp-Method` and
/// `Mcp-Name` headers, and the version in `_meta`): a held call's fail-fast reply.
#[tokio::test]
async fn held_reply_over_http_is_valid_2026_07_28() {
    let fast = approvals(Duration::ZERO).await;
    let gate = Arc::new(ApprovalGate { approvals: fast });
    let base = http_proxy(options_with_gate(vec![stdio_server("fx")], gate), None).await;
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"url": {}}},
        "io.modelcontextprotocol/clientInfo": {"name": "schema-test", "version": "1"},
    });
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                      "params": {"name": "test_simple_text", "arguments": {}, "_meta": meta}});
    let resp = within(
        "the held reply",
        reqwest::Client::new()
            .post(format!("{base}/mcp"))
            .header("mcp-protocol-version", MODERN)
            .header("mcp-method", "tools/call")
            .header("mcp-name", "test_simple_text")
            .header("accept", "application/json")
            .json(&body)
            .send(),
    )
    .await
    .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let reply: Value = resp.json().await.unwrap();
    assert_eq!(reply["result"]["_meta"]["mcp-gate/approval"]["status"], "pending", "{reply}");
    let methods = HashMap::from([("7".to_owned(), "tools/call".to_owned())]);
    check_to_client(MODERN, &reply, &methods).unwrap();
    counted(MODERN, 1);
}

/// Allows every call and hides `raw_tool` from every agent.
struct HidesRawTool;

impl Gate for HidesRawTool {
    fn check(&self, _call: &ToolCall<'_>) -> Verdict {
        Verdict::Allow
    }

    fn hides(&self, _server: &str, tool: &mcp_gate::gate::tools::ToolInfo, _agent: Option<&str>) -> bool {
        tool.name == "raw_tool"
    }

    fn hides_any(&self) -> bool {
        true
    }
}

/// A tool list the policy filtered depends on who asked: no shared cache may keep it, even when
/// the upstream said its list may be cached by anyone.
#[tokio::test]
async fn a_filtered_tool_list_is_private_2026_07_28() {
    let raw = Arc::new(ServerConfig {
        name: "raw".into(),
        transport: UpstreamTransport::Stdio { command: raw_bin(), args: Vec::new(), env: Vec::new(), cwd: None },
        prefix: false,
        request_timeout: mcp_gate::upstream::settings::DEFAULT_REQUEST_TIMEOUT,
        initialize_timeout: mcp_gate::upstream::settings::DEFAULT_INITIALIZE_TIMEOUT,
    });
    let stream = stdio_proxy(options_with_gate(vec![raw], Arc::new(HidesRawTool))).await;
    let (read, write) = tokio::io::split(stream);
    let mut c = Peer {
        version: MODERN,
        capabilities: json!({}),
        lines: BufReader::new(read).lines(),
        write,
        next: 0,
        methods: HashMap::new(),
        seen: Vec::new(),
    };
    let r = c.request("tools/list", json!({})).await;
    assert_eq!(r["result"]["tools"], json!([]), "{r}");
    assert_eq!(r["result"]["cacheScope"], "private", "{r}");
    assert_eq!(r["result"]["ttlMs"], 60000, "{r}");
    c.validate();
}

/// Over HTTP, 2026-07-28 clients share one session and the proxy renames their request ids; the
/// notifications of a `subscriptions/listen` stream still name it by the client's own id.
#[tokio::test]
async fn listen_streams_are_named_by_the_clients_id_over_http_2026_07_28() {
    let raw = Arc::new(ServerConfig {
        name: "raw".into(),
        transport: UpstreamTransport::Stdio { command: raw_bin(), args: Vec::new(), env: Vec::new(), cwd: None },
        prefix: false,
        request_timeout: mcp_gate::upstream::settings::DEFAULT_REQUEST_TIMEOUT,
        initialize_timeout: mcp_gate::upstream::settings::DEFAULT_INITIALIZE_TIMEOUT,
    });
    let base = http_proxy(options(vec![raw]), None).await;
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
    });
    let body = json!({"jsonrpc": "2.0", "id": "listen-1", "method": "subscriptions/listen",
                      "params": {"notifications": {"toolsListChanged": true}, "_meta": meta}});
    let mut resp = within(
        "the listen stream",
        reqwest::Client::new()
            .post(format!("{base}/mcp"))
            .header("mcp-protocol-version", MODERN)
            .header("mcp-method", "subscriptions/listen")
            .header("accept", "application/json, text/event-stream")
            .json(&body)
            .send(),
    )
    .await
    .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let mut text = String::new();
    let event = within("the acknowledgement", async {
        loop {
            if let Some(start) = text.find("data: ")
                && let Some(len) = text[start..].find("\n\n")
            {
                return serde_json::from_str::<Value>(&text[start + 6..start + len]).unwrap();
            }
            let chunk = resp.chunk().await.unwrap().expect("the stream stays open");
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert_eq!(event["method"], "notifications/subscriptions/acknowledged", "{event}");
    assert_eq!(event["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], "listen-1", "{event}");
    check_to_client(MODERN, &event, &HashMap::new()).unwrap();
    counted(MODERN, 1);
}
