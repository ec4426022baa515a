//! `mcp-gate approvals watch`: one line per change, and with `--interactive` a question for each
//! new request.
//!
//! A reader task follows `GET /api/v1/events` and reconnects with backoff (1 s doubling to 30 s)
//! when the stream ends, for example while the server restarts. After a reconnection or a
//! `resync` event (this client fell behind), pending requests not seen yet are listed and handled
//! as new ones, so none is missed. Questions go to stderr and answers come from stdin; the event
//! lines and the outcome of each decision go to stdout.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};
use tokio::sync::mpsc;

use super::client::{ApiClient, ClientError};
use super::{print, render};
use crate::wire::sse::EventReader;

/// A connection that stays silent this long is lost (the server sends a comment every 15 s).
const READ_TIMEOUT: Duration = Duration::from_secs(45);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Pending requests looked at when catching up.
const CATCH_UP_LIMIT: u32 = 1000;

/// What the reader task reports.
enum Item {
    Event {
        kind: String,
        data: String,
    },
    /// This client fell behind and missed changes.
    Resync,
    Lost {
        why: String,
        retry_in: Duration,
    },
    Reconnected,
    Fatal(ClientError),
}

type Input = Option<Lines<BufReader<Stdin>>>;

/// What this watch has shown and asked about.
#[derive(Default)]
struct Seen {
    /// Requests shown (or pending when the watch started).
    shown: HashSet<String>,
    /// Requests asked about.
    asked: HashSet<String>,
}

pub async fn watch(client: &ApiClient, interactive: bool) -> anyhow::Result<()> {
    let first = client.events(READ_TIMEOUT).await?;
    eprintln!("watching {} for approval requests (Ctrl-C to stop)", client.target.base);
    // Listed after subscribing, so no request falls between the two; a request created in
    // between is in the list and also gets its `requested` event, which is what counts.
    let pending = pending_oldest_first(client).await?;
    if !pending.is_empty() {
        eprintln!("{} request(s) already pending: see `mcp-gate approvals list`", pending.len());
    }
    let mut seen = Seen::default();
    seen.shown.extend(pending.iter().map(|a| a["id"].as_str().unwrap_or_default().to_owned()));

    let (tx, mut rx) = mpsc::unbounded_channel();
    let reader = ApiClient::new(client.target.clone())?;
    tokio::spawn(read_events(reader, first, tx));
    let mut input: Input = interactive.then(|| BufReader::new(tokio::io::stdin()).lines());

    while let Some(item) = rx.recv().await {
        match item {
            Item::Event { kind, data } => {
                let Ok(change) = serde_json::from_str::<Value>(&data) else {
                    eprintln!("warning: an event that is not JSON was skipped");
                    continue;
                };
                print(&format!("{}\n", render::event_line(&kind, &change)))?;
                let id = change["approval"]["id"].as_str().unwrap_or_default().to_owned();
                seen.shown.insert(id.clone());
                if kind == "requested" && seen.asked.insert(id.clone()) {
                    ask(client, &id, &mut input).await?;
                }
            }
            Item::Resync => {
                eprintln!("fell behind the change stream; catching up");
                catch_up(client, &mut seen, &mut input).await?;
            }
            Item::Lost { why, retry_in } => {
                eprintln!("connection lost ({why}); reconnecting in {} s", retry_in.as_secs());
            }
            Item::Reconnected => {
                eprintln!("reconnected");
                catch_up(client, &mut seen, &mut input).await?;
            }
            Item::Fatal(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn pending_oldest_first(client: &ApiClient) -> Result<Vec<Value>, ClientError> {
    let listed = client.list(&[("status", "pending".into()), ("limit", CATCH_UP_LIMIT.to_string())]).await?;
    let mut items = listed["approvals"].as_array().cloned().unwrap_or_default();
    items.reverse();
    Ok(items)
}

/// Handles pending requests this watch has not shown, as if their `requested` events had come.
async fn catch_up(client: &ApiClient, seen: &mut Seen, input: &mut Input) -> anyhow::Result<()> {
    let pending = match pending_oldest_first(client).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: listing pending requests: {e}");
            return Ok(());
        }
    };
    for a in pending {
        let id = a["id"].as_str().unwrap_or_default().to_owned();
        if seen.shown.insert(id.clone()) {
            let change = json!({ "at": a["created_at"], "actor": a["agent"], "approval": a });
            print(&format!("{}\n", render::event_line("requested", &change)))?;
            if seen.asked.insert(id.clone()) {
                ask(client, &id, input).await?;
            }
        }
    }
    Ok(())
}

/// Asks whether to approve, deny or skip a request, and records the answer.
async fn ask(client: &ApiClient, id: &str, input: &mut Input) -> anyhow::Result<()> {
    if input.is_none() {
        return Ok(());
    }
    let a = match client.show(id).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(());
        }
    };
    if a["status"] != "pending" {
        eprintln!("{} is already {}", render::clean(id), render::clean(a["status"].as_str().unwrap_or("?")));
        return Ok(());
    }
    eprint!("\n{}", render::block(&a, crate::store::now_ms()));
    loop {
        eprint!("approve / deny / skip {}? [a/d/s] ", render::clean(id));
        let Some(answer) = read_line(input).await else { return Ok(()) };
        match answer.trim().to_ascii_lowercase().as_str() {
            "a" | "approve" => return decide(client, id, true, None).await,
            "d" | "deny" => loop {
                eprint!("reason: ");
                let Some(reason) = read_line(input).await else { return Ok(()) };
                if reason.trim().is_empty() {
                    eprintln!("a denial needs a reason (the agent is told it)");
                    continue;
                }
                return decide(client, id, false, Some(reason.trim().to_owned())).await;
            },
            "s" | "skip" | "" => {
                eprintln!("skipped {}", render::clean(id));
                return Ok(());
            }
            _ => eprintln!("answer a (approve), d (deny) or s (skip)"),
        }
    }
}

/// A line from stdin; at its end the questions stop (the watch goes on).
async fn read_line(input: &mut Input) -> Option<String> {
    let lines = input.as_mut()?;
    match lines.next_line().await {
        Ok(Some(line)) => Some(line),
        _ => {
            eprintln!("\nstdin closed: no more questions");
            *input = None;
            None
        }
    }
}

async fn decide(client: &ApiClient, id: &str, approve: bool, reason: Option<String>) -> anyhow::Result<()> {
    match client.decide(id, approve, None, reason.as_deref(), None).await {
        Ok(a) => print(&format!("{}\n", render::decision_line(&a))),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(())
        }
    }
}

/// Follows the event stream, reconnecting after it ends, until the receiving side goes away or
/// the server refuses the token.
async fn read_events(client: ApiClient, first: reqwest::Response, tx: mpsc::UnboundedSender<Item>) {
    let mut response = Some(first);
    let mut backoff = Duration::from_secs(1);
    loop {
        let current = match response.take() {
            Some(r) => r,
            None => match client.events(READ_TIMEOUT).await {
                Ok(r) => {
                    backoff = Duration::from_secs(1);
                    if tx.send(Item::Reconnected).is_err() {
                        return;
                    }
                    r
                }
                Err(e @ ClientError::Api { status: 401 | 403, .. }) => {
                    let _ = tx.send(Item::Fatal(e));
                    return;
                }
                Err(e) => {
                    if !lost(&tx, e.to_string(), &mut backoff).await {
                        return;
                    }
                    continue;
                }
            },
        };
        let why = follow(current, &tx).await;
        if tx.is_closed() || !lost(&tx, why, &mut backoff).await {
            return;
        }
    }
}

/// Reports a lost connection and waits before the next attempt; false when nobody listens.
async fn lost(tx: &mpsc::UnboundedSender<Item>, why: String, backoff: &mut Duration) -> bool {
    if tx.send(Item::Lost { why, retry_in: *backoff }).is_err() {
        return false;
    }
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    true
}

/// Forwards the events of one connection; returns why it ended.
async fn follow(response: reqwest::Response, tx: &mpsc::UnboundedSender<Item>) -> String {
    let stream: std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>> =
        Box::pin(response.bytes_stream());
    let mut events = EventReader::new(stream);
    loop {
        let item = match events.next_event().await {
            Some(Ok(event)) if event.data.is_empty() => continue,
            Some(Ok(event)) if event.event_type() == "resync" => Item::Resync,
            Some(Ok(event)) => Item::Event { kind: event.event_type().to_owned(), data: event.data },
            Some(Err(e)) => return format!("reading the stream failed: {}", e.without_url()),
            None => return "the server closed the stream".into(),
        };
        if tx.send(item).is_err() {
            return "stopped".into();
        }
    }
}
