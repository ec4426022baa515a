//! The relay over every transport pair: results through the proxy equal results direct.

use std::sync::Arc;

use mcp_gate::upstream::settings::ServerConfig;
use rmcp::model::ProtocolVersion;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, GetPromptRequestParams, ProgressToken, ReadResourceRequestParams,
    RequestMetaObject,
};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt};
use rmcp::{ServiceExt, transport::TokioChildProcess};
use serde_json::{Value, json};

use super::common::*;
use super::sse_fixture::sse_fixture;

fn args(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

async fn call(client: &Client, name: &str, arguments: Value) -> CallToolResult {
    within(name, client.call_tool(CallToolRequestParams::new(name.to_owned()).with_arguments(args(arguments))))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A client connected straight to the fixture, for comparison.
async fn direct() -> (Client, TestClient) {
    let handler = TestClient::default();
    let mut cmd = tokio::process::Command::new(fixture_bin());
    cmd.arg("stdio");
    let transport = TokioChildProcess::new(cmd).expect("spawn fixture");
    let client = handler.clone().serve(transport).await.expect("direct initialize");
    (client, handler)
}

async fn progress_call(client: &Client, name: String) -> Result<CallToolResult, rmcp::ServiceError> {
    let mut params = CallToolRequestParams::new(name);
    params.meta = Some(RequestMetaObject::with_progress_token(ProgressToken(rmcp::model::NumberOrString::String(
        "tok-1".into(),
    ))));
    client.call_tool(params).await
}

/// The checks every transport pair must pass. `prefix` is how the proxy exposes names.
async fn exercise(proxied: &Client, seen: &TestClient, prefix: &str) {
    let (reference, reference_seen) = direct().await;
    exercise_against(proxied, seen, prefix, &reference, &reference_seen, true).await;
}

async fn exercise_against(
    proxied: &Client,
    seen: &TestClient,
    prefix: &str,
    reference: &Client,
    reference_seen: &TestClient,
    server_requests: bool,
) {
    let mut want = within("direct tools", reference.list_all_tools()).await.expect("direct tools");
    let mut got = within("tools", proxied.list_all_tools()).await.expect("tools through the proxy");
    // With several upstreams, compare this upstream's share of the list.
    got.retain(|t| prefix.is_empty() || t.name.starts_with(prefix));
    want.sort_by(|a, b| a.name.cmp(&b.name));
    got.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(got.len(), want.len(), "same number of tools");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.name, format!("{prefix}{}", w.name));
        let (mut g, w) = (serde_json::to_value(g).unwrap(), serde_json::to_value(w).unwrap());
        g["name"] = w["name"].clone();
        assert_eq!(g, w, "tool listed unchanged");
    }

    for (tool, arguments) in [
        ("test_simple_text", json!({})),
        ("test_image_content", json!({})),
        ("test_audio_content", json!({})),
        ("test_embedded_resource", json!({})),
        ("test_multiple_content_types", json!({})),
        ("test_error_handling", json!({})),
        ("echo", json!({"message": "héllo \u{1F600}", "n": 1.50})),
    ] {
        let want = call(reference, tool, arguments.clone()).await;
        let got = call(proxied, &format!("{prefix}{tool}"), arguments).await;
        assert_eq!(got, want, "{tool}: same result through the proxy");
    }

    // Progress notifications reach the caller, as many as a direct call gets.
    let want = within("direct progress call", progress_call(reference, "test_tool_with_progress".into())).await;
    let got = within("progress call", progress_call(proxied, format!("{prefix}test_tool_with_progress"))).await;
    assert_eq!(got.expect("progress call"), want.expect("direct progress call"));
    let want_progress = reference_seen.seen.lock().unwrap().progress.len();
    assert!(want_progress > 0, "the fixture reports progress");
    // Notifications may trail the response by a moment.
    for _ in 0..50 {
        if seen.seen.lock().unwrap().progress.len() >= want_progress {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(seen.seen.lock().unwrap().progress.len(), want_progress, "progress notifications relayed");

    // A server-to-client request (sampling) during a call, answered by this client.
    if server_requests {
        sampling_and_elicitation(proxied, seen, prefix).await;
    }

    // Resources route by URI; prompts by (prefixed) name.
    let resources = within("resources", proxied.list_all_resources()).await.expect("resources");
    assert!(resources.iter().any(|r| r.uri == "test://static-text"));
    let got = within("read", proxied.read_resource(ReadResourceRequestParams::new("test://static-text")))
        .await
        .expect("read through the proxy");
    let want = reference.read_resource(ReadResourceRequestParams::new("test://static-text")).await.expect("read");
    assert_eq!(got, want);
    let prompts = within("prompts", proxied.list_all_prompts()).await.expect("prompts");
    assert!(prompts.iter().any(|p| p.name == format!("{prefix}test_simple_prompt")));
    let got = within(
        "prompt",
        proxied.get_prompt(
            GetPromptRequestParams::new(format!("{prefix}test_prompt_with_arguments"))
                .with_arguments(args(json!({"arg1": "a", "arg2": "b"}))),
        ),
    )
    .await
    .expect("prompt through the proxy");
    let want = reference
        .get_prompt(
            GetPromptRequestParams::new("test_prompt_with_arguments")
                .with_arguments(args(json!({"arg1": "a", "arg2": "b"}))),
        )
        .await
        .expect("prompt");
    assert_eq!(got, want);

    // An unknown tool: the upstream's error, relayed.
    let err = within("unknown", proxied.call_tool(CallToolRequestParams::new(format!("{prefix}no_such_tool")))).await;
    let direct_err = reference.call_tool(CallToolRequestParams::new("no_such_tool")).await;
    assert_eq!(format!("{err:?}"), format!("{direct_err:?}"));
}

async fn sampling_and_elicitation(proxied: &Client, seen: &TestClient, prefix: &str) {
    let result = call(proxied, &format!("{prefix}test_sampling"), json!({"prompt": "hi"})).await;
    let text = serde_json::to_string(&result.content).unwrap();
    assert!(text.contains(SAMPLED_TEXT), "sampling round trip: {text}");
    let result = call(proxied, &format!("{prefix}test_elicitation"), json!({"message": "who?"})).await;
    assert!(serde_json::to_string(&result.content).unwrap().contains("ada"), "elicitation round trip");
    assert_eq!(seen.seen.lock().unwrap().sampling, 1);
}

async fn upstream(kind: &str) -> (Arc<ServerConfig>, Option<HttpFixture>) {
    match kind {
        "stdio" => (stdio_server("fx"), None),
        "http" => {
            let fx = http_fixture().await;
            (http_server("fx", &fx.url), Some(fx))
        }
        "sse" => (sse_server("fx", &sse_fixture().await), None),
        _ => unreachable!(),
    }
}

async fn through_stdio(kind: &str) {
    let (server, _fx) = upstream(kind).await;
    let (client, seen) = connect_stdio(stdio_proxy(options(vec![server])).await).await;
    exercise(&client, &seen, "").await;
}

async fn through_http(kind: &str) {
    let (server, _fx) = upstream(kind).await;
    let base = http_proxy(options(vec![server]), None).await;
    let (client, seen) = connect_http(&format!("{base}/mcp")).await;
    exercise(&client, &seen, "").await;
    // The per-server endpoint is the same single upstream.
    let (client, seen) = connect_http(&format!("{base}/mcp/fx")).await;
    exercise(&client, &seen, "").await;
}

#[tokio::test]
async fn stdio_to_stdio() {
    through_stdio("stdio").await;
}

#[tokio::test]
async fn stdio_to_http() {
    through_stdio("http").await;
}

#[tokio::test]
async fn stdio_to_sse() {
    through_stdio("sse").await;
}

#[tokio::test]
async fn http_to_stdio() {
    through_http("stdio").await;
}

#[tokio::test]
async fn http_to_http() {
    through_http("http").await;
}

#[tokio::test]
async fn http_to_sse() {
    through_http("sse").await;
}

/// Two upstreams behind one endpoint: names are prefixed and calls reach the right server.
#[tokio::test]
async fn several_upstreams_are_namespaced() {
    let fx = http_fixture().await;
    let servers = vec![stdio_server("alpha"), http_server("beta", &fx.url)];
    let (client, seen) = connect_stdio(stdio_proxy(options(servers.clone())).await).await;
    exercise(&client, &seen, "beta__").await;
    let tools = client.list_all_tools().await.expect("tools");
    assert!(tools.iter().any(|t| t.name == "alpha__echo"));
    assert!(tools.iter().any(|t| t.name == "beta__echo"));
    let info = client.peer_info().expect("initialize result");
    assert_eq!(info.server_info.as_ref().map(|i| i.name.as_str()), Some("mcp-gate"));

    let base = http_proxy(options(servers), None).await;
    let (client, seen) = connect_http(&format!("{base}/mcp")).await;
    exercise(&client, &seen, "alpha__").await;
}

/// A client of the 2026-07-28 era (no initialize: `server/discover` and per-request `_meta`).
fn discover() -> ClientLifecycleMode {
    ClientLifecycleMode::Discover { preferred_versions: vec![ProtocolVersion::V_2026_07_28] }
}

async fn modern_direct() -> (Client, TestClient) {
    let handler = TestClient::default();
    let mut cmd = tokio::process::Command::new(fixture_bin());
    cmd.arg("stdio");
    let transport = TokioChildProcess::new(cmd).expect("spawn fixture");
    let client = handler.clone().serve_with_lifecycle(transport, discover()).await.expect("direct discover");
    (client, handler)
}

#[tokio::test]
async fn modern_client_over_stdio() {
    let stream = stdio_proxy(options(vec![stdio_server("fx")])).await;
    let handler = TestClient::default();
    let (read, write) = tokio::io::split(stream);
    let client = handler.clone().serve_with_lifecycle((read, write), discover()).await.expect("discover via proxy");
    assert_eq!(client.peer_info().map(|i| i.protocol_version.clone()), Some(ProtocolVersion::V_2026_07_28));
    let (reference, reference_seen) = modern_direct().await;
    exercise_against(&client, &handler, "", &reference, &reference_seen, false).await;
}

#[tokio::test]
async fn modern_client_over_http() {
    let base = http_proxy(options(vec![stdio_server("fx")]), None).await;
    for _ in 0..2 {
        // Two sessionless clients share the endpoint's upstream without mixing their requests.
        let handler = TestClient::default();
        let transport = rmcp::transport::StreamableHttpClientTransport::from_uri(format!("{base}/mcp"));
        let client = handler.clone().serve_with_lifecycle(transport, discover()).await.expect("discover via proxy");
        let (reference, reference_seen) = modern_direct().await;
        exercise_against(&client, &handler, "", &reference, &reference_seen, false).await;
    }
}

#[tokio::test]
async fn auto_client_falls_back_against_a_legacy_upstream() {
    // raw-upstream knows nothing of server/discover: the client must fall back to initialize.
    let raw = fixture_bin().with_file_name("raw-upstream").display().to_string();
    let server = Arc::new(ServerConfig {
        name: "raw".into(),
        transport: mcp_gate::upstream::settings::UpstreamTransport::Stdio {
            command: raw,
            args: vec![],
            env: vec![],
            cwd: None,
        },
        prefix: true,
        request_timeout: mcp_gate::upstream::settings::DEFAULT_REQUEST_TIMEOUT,
        initialize_timeout: mcp_gate::upstream::settings::DEFAULT_INITIALIZE_TIMEOUT,
    });
    let stream = stdio_proxy(options(vec![server])).await;
    let (read, write) = tokio::io::split(stream);
    let auto = ClientLifecycleMode::Auto {
        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        legacy_version: Some(ProtocolVersion::V_2025_06_18),
    };
    let client =
        within("auto", TestClient::default().serve_with_lifecycle((read, write), auto)).await.expect("auto mode");
    let tools = client.list_all_tools().await.expect("tools");
    assert_eq!(tools[0].name, "raw_tool");
}
