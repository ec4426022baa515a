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
    if browser && launch(url) {
        print(&format!(
            "Opening your browser, signed in (the link works once, for {secs} s). If nothing opens, go to:\n  {url}\n"
        ))
    } else {
        print(&format!("Open this link to sign in (it works once, for {secs} s):\n  {url}\n"))
    }
}

/// The program that opens a URL in the person's browser on this platform, if there is one to
/// try: `open` on macOS; `xdg-open` elsewhere, only when a graphical session exists.
pub fn opener() -> Option<&'static str> {
    if cfg!(target_os = "macos") {
        return Some("open");
    }
    let has = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    (cfg!(unix) && (has("DISPLAY") || has("WAYLAND_DISPLAY"))).then_some("xdg-open")
}

/// Starts the opener on `url` without waiting for it; whether it could be started.
pub fn launch(url: &str) -> bool {
    let Some(program) = opener() else { return false };
    let started = std::process::Command::new(program)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    match started {
        Ok(mut child) => {
            // Reaped in the background; never waited for here (an opener may run as long as the
            // browser it started).
            std::thread::spawn(move || child.wait());
            true
        }
        Err(_) => false,
    }
}
