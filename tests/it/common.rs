//! Shared test plumbing: fixture upstreams, in-process proxies and an rmcp test client.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcp_gate::downstream::{http, stdio};
use mcp_gate::gate::{AllowAll, Gate};
use mcp_gate::session::SessionOptions;
use mcp_gate::upstream::settings::{ServerConfig, UpstreamTransport};
use rmcp::model::{
    ClientCapabilities, ClientConfig, CreateMessageRequestParams, CreateMessageResult, ElicitRequestParams,
    ElicitResult, ElicitationAction, LoggingMessageNotificationParam, ProgressNotificationParam, SamplingMessage,
};
use rmcp::service::{NotificationContext, RequestContext, RunningService};
use rmcp::{ClientHandler, ErrorData, RoleClient, ServiceExt};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpListener;

pub const SAMPLED_TEXT: &str = "sampled through the proxy";

/// The fixture MCP server (`tests/fixtures/conformance_upstream.rs`), built by `cargo test`
/// as an example.
pub fn fixture_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target profile dir");
    let bin = profile_dir.join("examples").join("conformance-upstream");
    assert!(bin.exists(), "{} is missing: run `cargo build --examples` (cargo test builds it)", bin.display());
    bin
}

pub fn gate_bin() -> &'static str {
    env!("CARGO_BIN_EXE_mcp-gate")
}

pub fn stdio_server(name: &str) -> Arc<ServerConfig> {
    Arc::new(ServerConfig {
        name: name.to_owned(),
        transport: UpstreamTransport::Stdio {
            command: fixture_bin().display().to_string(),
            args: vec!["stdio".into()],
            env: Vec::new(),
            cwd: None,
        },
        prefix: true,
        request_timeout: mcp_gate::upstream::settings::DEFAULT_REQUEST_TIMEOUT,
        initialize_timeout: mcp_gate::upstream::settings::DEFAULT_INITIALIZE_TIMEOUT,
    })
}

pub fn http_server(name: &str, url: &str) -> Arc<ServerConfig> {
    Arc::new(ServerConfig {
        name: name.to_owned(),
        transport: UpstreamTransport::StreamableHttp { url: url.to_owned(), headers: Vec::new() },
        prefix: true,
        request_timeout: mcp_gate::upstream::settings::DEFAULT_REQUEST_TIMEOUT,
        initialize_timeout: mcp_gate::upstream::settings::DEFAULT_INITIALIZE_TIMEOUT,
    })
}

pub fn sse_server(name: &str, url: &str) -> Arc<ServerConfig> {
    Arc::new(ServerConfig {
        name: name.to_owned(),
        transport: UpstreamTransport::Sse { url: url.to_owned(), headers: Vec::new() },
        prefix: true,
        request_timeout: mcp_gate::upstream::settings::DEFAULT_REQUEST_TIMEOUT,
        initialize_timeout: mcp_gate::upstream::settings::DEFAULT_INITIALIZE_TIMEOUT,
    })
}

pub fn options(servers: Vec<Arc<ServerConfig>>) -> SessionOptions {
    options_with_gate(servers, Arc::new(AllowAll))
}

pub fn options_with_gate(servers: Vec<Arc<ServerConfig>>, gate: Arc<dyn Gate>) -> SessionOptions {
    SessionOptions {
        servers,
        separator: "__".into(),
        shared: false,
        gate,
        label: "test".into(),
        agent: None,
        stdio: true,
    }
}

/// A running fixture server over Streamable HTTP.
pub struct HttpFixture {
    pub url: String,
    _child: tokio::process::Child,
}

pub async fn http_fixture() -> HttpFixture {
    let mut child = tokio::process::Command::new(fixture_bin())
        .args(["http", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start HTTP fixture");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let url = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.expect("fixture stderr") {
            if let Some(url) = line.split("listening on ").nth(1) {
                return url.trim().to_owned();
            }
        }
        panic!("fixture exited before listening");
    })
    .await
    .expect("fixture did not start in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    HttpFixture { url, _child: child }
}

/// Starts an in-process `mcp-gate serve` and returns its base URL (`http://127.0.0.1:PORT`).
pub async fn http_proxy(opts: SessionOptions, token: Option<&str>) -> String {
    let mut single = std::collections::HashMap::new();
    for s in &opts.servers {
        let mut one = opts.clone();
        one.servers = vec![s.clone()];
        single.insert(s.name.clone(), one);
    }
    let state = http::HttpState::new(http::HttpOptions {
        all: opts,
        single,
        token: token.map(str::to_owned),
        agents: Default::default(),
        allowed_hosts: Vec::new(),
        allowed_origins: Vec::new(),
        limits: Default::default(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(http::serve(listener, state, std::future::pending()));
    format!("http://{addr}")
}

/// Runs the stdio downstream in-process over a pipe and returns the client's end.
pub async fn stdio_proxy(opts: SessionOptions) -> tokio::io::DuplexStream {
    let (client_end, proxy_end) = tokio::io::duplex(1 << 20);
    let (read, write) = tokio::io::split(proxy_end);
    tokio::spawn(async move {
        if let Err(e) = stdio::serve(opts, read, write, std::future::pending()).await {
            eprintln!("stdio proxy ended: {e}");
        }
    });
    client_end
}

/// What the test client saw besides responses.
#[derive(Default)]
pub struct Seen {
    pub progress: Vec<ProgressNotificationParam>,
    pub logs: Vec<LoggingMessageNotificationParam>,
    pub sampling: usize,
    pub elicitations: usize,
}

/// An rmcp client that answers sampling and elicitation and records notifications.
#[derive(Clone, Default)]
pub struct TestClient {
    pub seen: Arc<Mutex<Seen>>,
}

impl ClientHandler for TestClient {
    async fn create_message(
        &self,
        _params: CreateMessageRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        self.seen.lock().unwrap().sampling += 1;
        Ok(CreateMessageResult::new(SamplingMessage::assistant_text(SAMPLED_TEXT), "test-model".into()))
    }

    async fn create_elicitation(
        &self,
        _request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        self.seen.lock().unwrap().elicitations += 1;
        let content = serde_json::json!({"username": "ada", "email": "ada@example.com"});
        Ok(ElicitResult::new(ElicitationAction::Accept).with_content(content))
    }

    async fn on_progress(&self, params: ProgressNotificationParam, _context: NotificationContext<RoleClient>) {
        self.seen.lock().unwrap().progress.push(params);
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.seen.lock().unwrap().logs.push(params);
    }

    fn get_info(&self) -> ClientConfig {
        let mut caps = ClientCapabilities::default();
        caps.sampling = Some(Default::default());
        caps.elicitation = Some(Default::default());
        let mut info = ClientConfig::default();
        info.capabilities = caps;
        info.client_info.name = "mcp-gate-tests".into();
        info
    }
}

pub type Client = RunningService<RoleClient, TestClient>;

pub async fn connect_stdio(stream: tokio::io::DuplexStream) -> (Client, TestClient) {
    let handler = TestClient::default();
    let (read, write) = tokio::io::split(stream);
    let client = handler.clone().serve((read, write)).await.expect("client initialize over stdio");
    (client, handler)
}

pub async fn connect_http(url: &str) -> (Client, TestClient) {
    let handler = TestClient::default();
    let transport = rmcp::transport::StreamableHttpClientTransport::from_uri(url.to_owned());
    let client = handler.clone().serve(transport).await.expect("client initialize over HTTP");
    (client, handler)
}

/// Bounds every await of a test.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), fut).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// The stdio client's end of a started `mcp-gate` child: its stdin and stdout lines.
pub type ChildLines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>;

/// Takes a started `mcp-gate` child's stdin and stdout and completes the MCP handshake as
/// `client`.
pub async fn handshake(child: &mut tokio::process::Child, client: &str) -> (tokio::process::ChildStdin, ChildLines) {
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let initialize = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": client, "version": "1"}}});
    let text = format!("{initialize}\n{}\n", r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    stdin.write_all(text.as_bytes()).await.expect("write the handshake");
    within("initialize", lines.next_line()).await.expect("read").expect("initialize reply");
    (stdin, lines)
}

/// Holds one call to `files`/`tool` through the approval gate (the policy must hold it and
/// fail fast) and returns its approval id.
pub async fn hold_call(
    approvals: &Arc<mcp_gate::approval::ApprovalService>,
    tool: &str,
    agent: &str,
    arguments: serde_json::Value,
) -> String {
    use mcp_gate::gate::{ToolCall, Verdict};
    let gate = mcp_gate::approval::ApprovalGate { approvals: approvals.clone() };
    let call = ToolCall {
        server: "files",
        tool,
        exposed_name: tool,
        arguments: &arguments,
        info: None,
        agent: Some(agent),
        owner: &mcp_gate::gate::Owner::Anonymous,
        offered: &mcp_gate::gate::Offered::plain(mcp_gate::wire::era::Era::Legacy),
        params: &serde_json::value::to_raw_value(&serde_json::json!({})).expect("params"),
        progress: None,
        held: None,
        gone: Default::default(),
    };
    let Verdict::Hold(wait) = gate.check(&call) else { panic!("{tool} is not held") };
    let Verdict::Respond(result) = wait.await else { panic!("fail fast answers") };
    let v: serde_json::Value = serde_json::from_str(result.get()).expect("a JSON result");
    v["_meta"]["mcp-gate/approval"]["id"].as_str().expect("an approval id").to_owned()
}

/// An approval service on an in-memory store with `policy` (named `file` in errors), failing
/// fast, its URLs under `http://127.0.0.1:8377`.
pub async fn fail_fast_service(policy: &str, file: &str) -> Arc<mcp_gate::approval::ApprovalService> {
    let config = mcp_gate::config::Config::from_toml(policy, file).expect("policy");
    let store = mcp_gate::store::Store::open(mcp_gate::store::Location::Memory).await.expect("store");
    let settings = mcp_gate::approval::ApprovalSettings {
        wait: Duration::ZERO,
        public_url: "http://127.0.0.1:8377".into(),
        expiry_by_risk: config.approvals.expiry_by_risk,
        workflows: config.approvals.workflows.clone(),
        ..mcp_gate::approval::ApprovalSettings::default()
    };
    mcp_gate::approval::ApprovalService::new(store, config.policy.clone(), settings)
}
