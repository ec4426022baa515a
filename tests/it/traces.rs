//! OpenTelemetry traces, run on the real binary in stdio mode against a real OTLP/HTTP receiver
//! (`POST /v1/traces`, protobuf decoded with `opentelemetry-proto`): one span per `tools/call`
//! with its decision, approval id and outcome, the caller's `traceparent` as parent, nothing
//! exported when traces are off, and a collector that is down costs the calls nothing.

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::binary::{data_dir, gate_in};
use super::common::*;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

/// What the receiver was sent: every export request, decoded.
type Received = Arc<Mutex<Vec<ExportTraceServiceRequest>>>;

/// A collector on a loopback port: its base URL and what it received.
async fn receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let store = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                assert_eq!(headers["content-type"], "application/x-protobuf");
                let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf request");
                store.lock().unwrap().push(request);
                let reply = ExportTraceServiceResponse::default().encode_to_vec();
                ([("content-type", "application/x-protobuf")], reply)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

/// The rules of the runs: `echo` and `test_error_handling` are allowed, `test_simple_text` is
/// denied, everything else waits for approval (and, for this client, fails fast).
fn config(dir: &std::path::Path, tracing: &str) -> std::path::PathBuf {
    let file = dir.join("proxy.toml");
    let text = format!(
        r#"{tracing}
[[rules]]
tool = ["echo", "test_error_handling"]
action = "allow"

[[rules]]
tool = "test_simple_text"
action = "deny"
reason = "not today"
"#
    );
    std::fs::write(&file, text).unwrap();
    file
}

/// Runs `mcp-gate --config FILE -- fixture stdio` as client `tracer`, makes the calls
/// (`(tool, params._meta)`), closes stdin and waits for the exit: the results, in order.
async fn run(file: &std::path::Path, env: &[(&str, &str)], calls: &[(&str, Value)]) -> Vec<Value> {
    let dir = file.parent().unwrap();
    let mut cmd = gate_in(dir);
    for var in ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd
        .arg("--config")
        .arg(file)
        .arg("--")
        .arg(fixture_bin())
        .arg("stdio")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (mut stdin, mut lines) = handshake(&mut child, "tracer").await;
    let mut results = Vec::new();
    for (n, (tool, meta)) in calls.iter().enumerate() {
        let id = 10 + n;
        let mut params = json!({"name": tool, "arguments": {"message": "hi"}});
        if !meta.is_null() {
            params["_meta"] = meta.clone();
        }
        let line = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params});
        stdin.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        loop {
            let line = within("call reply", lines.next_line()).await.unwrap().expect("a reply");
            // stdout carries nothing but JSON-RPC.
            let v: Value = serde_json::from_str(&line).expect("stdout holds only JSON-RPC");
            if v["id"] == id {
                results.push(v["result"].clone());
                break;
            }
        }
    }
    drop(stdin);
    let status = within("exit after stdin closes", child.wait()).await.unwrap();
    assert!(status.success());
    results
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    let kv: &KeyValue = span.attributes.iter().find(|kv| kv.key == key)?;
    match kv.value.as_ref()?.value.as_ref()? {
        AnyValue::StringValue(s) => Some(s.clone()),
        other => Some(format!("{other:?}")),
    }
}

/// Every span received, with the `service.name` of its resource.
fn spans(received: &Received) -> Vec<(String, Span)> {
    let mut out = Vec::new();
    for request in received.lock().unwrap().iter() {
        for rs in &request.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref()?.value.as_ref().cloned());
            let service = match service {
                Some(AnyValue::StringValue(s)) => s,
                other => format!("{other:?}"),
            };
            for ss in &rs.scope_spans {
                out.extend(ss.spans.iter().map(|s| (service.clone(), s.clone())));
            }
        }
    }
    out
}

/// One span per call: the decision, the approval id of the held call, the outcome; the caller's
/// `traceparent` is the parent of its call's span, and the others are roots.
#[tokio::test]
async fn each_call_has_a_span_with_its_decision_and_the_callers_parent() {
    let (url, received) = receiver().await;
    let dir = data_dir("traces");
    let file = config(&dir, &format!("[tracing]\notlp_endpoint = \"{url}\"\n"));
    let traced = json!({"traceparent": format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01"), "tracestate": "vendor=1"});
    let results = run(
        &file,
        &[],
        &[
            ("echo", traced),
            ("test_error_handling", Value::Null),
            ("test_simple_text", Value::Null),
            ("test_image_content", Value::Null),
        ],
    )
    .await;
    assert_eq!(results[0]["isError"], Value::Null, "{}", results[0]);
    let approval_id = results[3]["_meta"]["mcp-gate/approval"]["id"].as_str().expect("held: an approval id");

    // The exporter flushed before the process exited.
    let spans = spans(&received);
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let by_tool = |tool: &str| {
        spans.iter().find(|(_, s)| attribute(s, "mcp_gate.tool").as_deref() == Some(tool)).expect(tool).clone()
    };
    for (service, span) in &spans {
        assert_eq!(service, "mcp-gate");
        assert_eq!(attribute(span, "mcp.method.name").as_deref(), Some("tools/call"));
        assert_eq!(attribute(span, "mcp_gate.agent").as_deref(), Some("tracer"));
        assert!(attribute(span, "mcp_gate.server").is_some_and(|s| !s.is_empty()));
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    }

    let (_, echo) = by_tool("echo");
    assert_eq!(echo.name, "tools/call echo");
    assert_eq!(hex::encode(&echo.trace_id), TRACE_ID, "the traceparent's trace");
    assert_eq!(hex::encode(&echo.parent_span_id), PARENT_SPAN_ID, "the traceparent's span is the parent");
    assert_eq!(echo.trace_state, "vendor=1");
    assert_eq!(attribute(&echo, "mcp_gate.decision").as_deref(), Some("allowed"));
    assert_eq!(attribute(&echo, "mcp_gate.outcome").as_deref(), Some("ok"));
    assert_eq!(attribute(&echo, "mcp_gate.approval_id"), None);

    let (_, failing) = by_tool("test_error_handling");
    assert_eq!(attribute(&failing, "mcp_gate.decision").as_deref(), Some("allowed"));
    assert_eq!(attribute(&failing, "mcp_gate.outcome").as_deref(), Some("tool_error"));

    let (_, denied) = by_tool("test_simple_text");
    assert_eq!(attribute(&denied, "mcp_gate.decision").as_deref(), Some("denied"));
    assert_eq!(attribute(&denied, "mcp_gate.outcome").as_deref(), Some("answered"));

    let (_, held) = by_tool("test_image_content");
    assert_eq!(attribute(&held, "mcp_gate.decision").as_deref(), Some("held"));
    assert_eq!(attribute(&held, "mcp_gate.approval_id").as_deref(), Some(approval_id));
    assert_eq!(attribute(&held, "mcp_gate.outcome").as_deref(), Some("answered"));

    // Calls without a traceparent start traces of their own.
    for span in [&failing, &denied, &held] {
        assert!(span.parent_span_id.is_empty());
        assert_ne!(hex::encode(&span.trace_id), TRACE_ID);
    }
}

/// The standard variable turns traces on as well; without it or `[tracing]`, nothing is sent.
#[tokio::test]
async fn the_standard_variable_turns_traces_on_and_nothing_is_sent_when_off() {
    let (url, received) = receiver().await;
    let dir = data_dir("traces-off");
    let file = config(&dir, "");
    let calls = [("echo", json!({"traceparent": format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01")}))];
    run(&file, &[], &calls).await;
    // The process flushes its spans before it exits: none came.
    assert!(received.lock().unwrap().is_empty(), "nothing exported when traces are off");

    run(&file, &[("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str())], &calls).await;
    let spans = spans(&received);
    assert_eq!(spans.len(), 1);
    assert_eq!(hex::encode(&spans[0].1.trace_id), TRACE_ID);

    run(&file, &[("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()), ("OTEL_SDK_DISABLED", "true")], &calls).await;
    assert_eq!(received.lock().unwrap().len(), 1, "OTEL_SDK_DISABLED turns traces off");
}

/// A collector that is down loses the spans; the calls are answered as usual and the process
/// exits.
#[tokio::test]
async fn a_collector_that_is_down_costs_the_calls_nothing() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let dir = data_dir("traces-down");
    let file = config(&dir, &format!("[tracing]\notlp_endpoint = \"http://{closed}\"\n"));
    let results = run(&file, &[], &[("echo", Value::Null), ("test_simple_text", Value::Null)]).await;
    assert_eq!(results[0]["isError"], Value::Null, "{}", results[0]);
    assert_eq!(results[1]["isError"], true, "{}", results[1]);
}
