//! A legacy HTTP+SSE (2024-11-05) server for tests: `GET /sse` opens a stream whose first event
//! names the POST endpoint; each stream drives its own fixture server child over stdio.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::common::fixture_bin;

type Sessions = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Bytes>>>>;

pub async fn sse_fixture() -> String {
    let sessions: Sessions = Arc::default();
    let app = Router::new().route("/sse", get(open)).route("/messages", post(message)).with_state(sessions);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/sse")
}

async fn open(State(sessions): State<Sessions>) -> Response {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_string();
    let mut child = tokio::process::Command::new(fixture_bin())
        .arg("stdio")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("fixture child");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let (to_child, mut from_posts) = mpsc::unbounded_channel::<Bytes>();
    sessions.lock().unwrap().insert(id.clone(), to_child);
    tokio::spawn(async move {
        while let Some(body) = from_posts.recv().await {
            if stdin.write_all(&body).await.is_err() || stdin.write_all(b"\n").await.is_err() {
                break;
            }
        }
    });
    let (events_tx, events_rx) = mpsc::unbounded_channel::<Result<Bytes, std::convert::Infallible>>();
    let _ = events_tx.send(Ok(Bytes::from(format!("event: endpoint\ndata: /messages?session_id={id}\n\n"))));
    tokio::spawn(async move {
        let _child = child;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if events_tx.send(Ok(Bytes::from(format!("event: message\ndata: {line}\n\n")))).is_err() {
                break;
            }
        }
    });
    let stream = futures::stream::unfold(events_rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(stream)).expect("response")
}

async fn message(
    State(sessions): State<Sessions>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let tx = query.get("session_id").and_then(|id| sessions.lock().unwrap().get(id).cloned());
    match tx {
        Some(tx) if tx.send(body).is_ok() => (StatusCode::ACCEPTED, "Accepted").into_response(),
        _ => (StatusCode::NOT_FOUND, "unknown session").into_response(),
    }
}
