//! `mcp-gate approvals open [ID]`: signs the browser of the person at this machine in to the
//! dashboard without the token being pasted.
//!
//! The command reads the approver token like the other `approvals` commands, has the listener
//! prove it knows the token ([`crate::server::handshake`]) before sending it, and asks for a one-time
//! sign-in link ([`crate::server::web::signin`]). It starts the platform's opener on the link (`xdg-open`
//! when a desktop session exists, `open` on macOS) without waiting for it, and prints the link
//! either way, so it also works over SSH or with no browser at all.

use anyhow::Context;

use super::client::ApiClient;
use super::{print, print_json};

pub async fn open(client: &ApiClient, id: Option<&str>, browser: bool, json: bool) -> anyhow::Result<()> {
    let link = client.sign_in_link(id).await.context("asking the approval server for a sign-in link")?;
    if json {
        return print_json(&link);
    }
    let url = link["url"].as_str().context("the approval server's answer has no url")?;
    let secs = link["expires_in_secs"].as_u64().unwrap_or(60);
    if browser && crate::browser::launch(url) {
        print(&format!(
            "Opening your browser, signed in (the link works once, for {secs} s). If nothing opens, go to:\n  {url}\n"
        ))
    } else {
        print(&format!("Open this link to sign in (it works once, for {secs} s):\n  {url}\n"))
    }
}
