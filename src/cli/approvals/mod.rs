//! The command-line approver: `mcp-gate approvals list|show|approve|deny|watch|open`.
//!
//! It talks to a running approval server over the JSON API ([`client`]) with an approver's
//! token, prints tables and blocks for people or the API's JSON for scripts ([`render`]), and
//! follows the change stream, asking about each new request when interactive ([`watch`]).
//! `open` signs a browser in through a one-time link and opens it ([`open`]).
//!
//! Where the server is: `--url`, else `MCP_GATE_URL`, else `http://` + `[approvals] listen` (or
//! `MCP_GATE_APPROVALS_LISTEN`). The token: `MCP_GATE_TOKEN`, else `[approvals] token`, else the
//! `approver-token` file in the data directory, as the server resolves it.

pub mod client;
pub mod open;
pub mod render;
pub mod watch;

use std::io::Write;

use anyhow::Context;
use serde_json::Value;

use crate::config::Config;
use client::{ApiClient, Target};

/// What `mcp-gate approvals` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    List {
        status: String,
        server: Option<String>,
        tool: Option<String>,
        agent: Option<String>,
        limit: Option<u32>,
    },
    Show {
        id: String,
    },
    Decide {
        id: String,
        approve: bool,
        notes: Option<String>,
        reason: Option<String>,
        approver: Option<String>,
    },
    Watch {
        interactive: bool,
    },
    /// Sign a browser in, at request `id` or the queue; `browser: false` only prints the link.
    Open {
        id: Option<String>,
        browser: bool,
    },
}

/// Finds the server and the token. `config` is loaded only when the environment and `--url` do
/// not already say both.
pub fn resolve_target(url: Option<&str>, config: impl FnOnce() -> anyhow::Result<Config>) -> anyhow::Result<Target> {
    let from_env = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let url = url.map(str::to_owned).or_else(|| from_env("MCP_GATE_URL"));
    let token = from_env("MCP_GATE_TOKEN");
    let (base, token) = match (url, token) {
        (Some(url), Some(token)) => (url, token),
        (url, token) => {
            let config = config()?;
            let base = match url {
                Some(url) => url,
                None => client::base_from_listen(&config.approvals.listen).map_err(anyhow::Error::msg)?,
            };
            let token = match token.or_else(|| config.approvals.token.clone()) {
                Some(t) => t,
                None => client::token_from_file(&config.approvals.data_dir).map_err(anyhow::Error::msg)?,
            };
            (base, token)
        }
    };
    let base = base.trim_end_matches('/').to_owned();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        anyhow::bail!("{base:?} is not an http:// or https:// URL of the approval server");
    }
    Ok(Target { base, token: token.into() })
}

/// Runs one request against the server at `target`; `json` prints the API's JSON instead of
/// the human form.
pub async fn run(target: Target, request: Request, json: bool) -> anyhow::Result<()> {
    let client = ApiClient::new(target)?;
    let now = crate::store::now_ms();
    match request {
        Request::List { status, server, tool, agent, limit } => {
            let mut query = vec![("status", status.clone())];
            for (key, value) in [("server", server), ("tool", tool), ("agent", agent)] {
                if let Some(v) = value {
                    query.push((key, v));
                }
            }
            if let Some(limit) = limit {
                query.push(("limit", limit.to_string()));
            }
            let listed = client.list(&query).await?;
            if json {
                return print_json(&listed);
            }
            let items = listed["approvals"].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                let which = if status == "all" { String::new() } else { format!("{status} ") };
                return print(&format!("no {which}approval requests\n"));
            }
            print(&render::table(&items, now))
        }
        Request::Show { id } => {
            let a = client.show(&id).await?;
            if json { print_json(&a) } else { print(&render::block(&a, now)) }
        }
        Request::Decide { id, approve, notes, reason, approver } => {
            let a = client
                .decide(&id, approve, notes.as_deref(), reason.as_deref(), approver.as_deref())
                .await
                .with_context(|| format!("{} {id}", if approve { "approving" } else { "denying" }))?;
            if json { print_json(&a) } else { print(&format!("{}\n", render::decision_line(&a))) }
        }
        Request::Watch { interactive } => watch::watch(&client, interactive).await,
        Request::Open { id, browser } => open::open(&client, id.as_deref(), browser, json).await,
    }
}

/// Writes the command's output to stdout.
pub fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?; // stdout-ok: CLI output
    out.flush()?;
    Ok(())
}

pub fn print_json(v: &Value) -> anyhow::Result<()> {
    print(&format!("{}\n", render::json_for_terminal(&serde_json::to_string_pretty(v)?)))
}
