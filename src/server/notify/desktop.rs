//! Desktop notifications: a held call pops up on the screen of the person at this machine, and
//! clicking it opens the request's page.
//!
//! Only the hub shows them (like webhooks), for every process's requests. Each notice is shown
//! by a [`Notifier`] in a task of its own, under a time limit ([`SHOW_LIMIT`]), with at most
//! [`MAX_SHOWING`] at once (more are skipped and logged): a notifier that hangs or is slow delays
//! nothing, and cannot pile up.
//!
//! The notifier runs a program rather than speaking D-Bus itself: `notify-send` (libnotify, which
//! speaks to the freedesktop notification service `org.freedesktop.Notifications`) on Linux and
//! the BSDs, `terminal-notifier` or else `osascript` on macOS. A program costs no dependency,
//! uses whatever the desktop ships, and runs in a process that can be killed when it hangs; when
//! it is missing, notifications are simply off. `notify-send` is asked for an "Open" action and
//! waits for it; when clicked, the page opens with the platform's opener.
//!
//! The notice names the agent, the call and its arguments (clipped, redacted like the audit log,
//! hidden characters marked), and the page's URL. Approving still needs a signed-in browser.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tracing::{debug, info, warn};

use crate::approval::{ApprovalService, Change, ChangeKind};
use crate::store::audit::Redactor;

/// The longest a notice may take to show (waiting for a click included); then it is abandoned
/// and its program killed.
pub const SHOW_LIMIT: Duration = Duration::from_secs(300);

/// Most notices showing at once.
pub const MAX_SHOWING: usize = 8;

/// Longest arguments text (in characters) in a notice.
const ARGUMENT_CHARS: usize = 120;

/// One desktop notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The title: what is waiting.
    pub summary: String,
    /// Who asks, the arguments, and the page's URL.
    pub body: String,
    /// The request's page.
    pub url: String,
}

/// Shows notices. [`spawn`] runs each call in a task of its own under [`SHOW_LIMIT`], so an
/// implementation may take as long as it likes.
pub trait Notifier: Send + Sync + 'static {
    fn show(&self, notice: Notice) -> BoxFuture<'static, Result<(), NotifyError>>;
}

/// The notice for a new request.
pub fn notice(change: &Change, url: &str, redactor: &Redactor) -> Notice {
    let a = &change.approval;
    let line = |text: &str| -> String {
        let spaced: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        crate::visible::mark(&spaced).into_owned()
    };
    let mut arguments = line(&redactor.redact(&a.arguments).to_string());
    if arguments.chars().count() > ARGUMENT_CHARS {
        arguments = arguments.chars().take(ARGUMENT_CHARS - 1).collect::<String>() + "…";
    }
    let agent = line(a.agent.as_deref().unwrap_or("an unnamed agent"));
    Notice {
        summary: format!("Approval needed: {}", line(&format!("{}:{}", a.server, a.tool))),
        body: format!("{agent} wants to call it with {arguments}\n{url}"),
        url: url.to_owned(),
    }
}

/// Whether this machine has a graphical session to show notifications in: always on macOS; on
/// other Unix systems when `DISPLAY` or `WAYLAND_DISPLAY` is set (a D-Bus session bus alone is
/// also found in SSH logins, where nobody would see the notice).
pub fn desktop_session() -> bool {
    if cfg!(target_os = "macos") {
        return true;
    }
    let has = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    cfg!(unix) && (has("DISPLAY") || has("WAYLAND_DISPLAY"))
}

/// Starts showing a notice for each new request (nothing when `notifier` is `None`). Stops when
/// `approvals` is dropped.
pub fn spawn(approvals: &Arc<ApprovalService>, notifier: Option<Arc<dyn Notifier>>) {
    let Some(notifier) = notifier else { return };
    // Subscribe before returning, so no request made after this call is missed.
    let changes = approvals.changes.subscribe();
    let approvals = Arc::downgrade(approvals);
    let context = move |id: &str| {
        let approvals = approvals.upgrade()?;
        Some((approvals.url_for(id), Redactor::new(approvals.settings.redact.clone())))
    };
    tokio::spawn(dispatch(changes, context, notifier));
}

/// Shows each new request of `changes`; `context` gives a request's page and the redactor
/// (`None`: stop).
async fn dispatch(
    mut changes: broadcast::Receiver<Change>,
    context: impl Fn(&str) -> Option<(String, Redactor)>,
    notifier: Arc<dyn Notifier>,
) {
    let showing = Arc::new(Semaphore::new(MAX_SHOWING));
    loop {
        let change = match changes.recv().await {
            Ok(change) => change,
            Err(RecvError::Lagged(missed)) => {
                warn!(missed, "desktop notifications fell behind; some were not shown");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        if change.kind != ChangeKind::Requested {
            continue;
        }
        let Some((url, redactor)) = context(&change.approval.id) else { return };
        let Ok(permit) = showing.clone().try_acquire_owned() else {
            warn!(approval = %change.approval.id, "{MAX_SHOWING} desktop notifications still showing; this one skipped");
            continue;
        };
        let shown = notifier.show(notice(&change, &url, &redactor));
        let id = change.approval.id.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(SHOW_LIMIT, shown).await {
                Ok(Ok(())) => debug!(approval = %id, "desktop notification shown"),
                Ok(Err(e)) => warn!(approval = %id, "desktop notification failed: {e}"),
                Err(_) => debug!(approval = %id, "desktop notification abandoned after {SHOW_LIMIT:?}"),
            }
        });
    }
}

/// How a [`CommandNotifier`] passes a notice to its program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    /// `notify-send`: summary and body (markup escaped), an "Open" action it waits for.
    NotifySend,
    /// `terminal-notifier`: clicking opens the URL.
    TerminalNotifier,
    /// `osascript`: `display notification`, the texts passed as arguments (never as script).
    Osascript,
    /// The configured arguments, then summary, body and URL as three more arguments.
    Plain,
}

/// A notifier that runs a program for each notice.
#[derive(Clone)]
pub struct CommandNotifier {
    program: String,
    args: Vec<String>,
    style: Style,
    /// Whether `notify-send` accepted `--action` (older versions do not).
    actions: Arc<AtomicBool>,
}

impl CommandNotifier {
    /// Runs `program ARGS... SUMMARY BODY URL` for each notice.
    pub fn command(program: impl Into<String>, args: Vec<String>) -> CommandNotifier {
        CommandNotifier {
            program: program.into(),
            args,
            style: Style::Plain,
            actions: Arc::new(AtomicBool::new(false)),
        }
    }

    /// This platform's notifier, when there is a desktop session and its program is installed.
    pub fn for_platform() -> Option<CommandNotifier> {
        if !desktop_session() {
            info!("desktop notifications off: no graphical session (DISPLAY, WAYLAND_DISPLAY)");
            return None;
        }
        let candidates: &[(&str, Style)] = if cfg!(target_os = "macos") {
            &[("terminal-notifier", Style::TerminalNotifier), ("osascript", Style::Osascript)]
        } else {
            &[("notify-send", Style::NotifySend)]
        };
        for (program, style) in candidates {
            if let Some(path) = in_path(program) {
                info!("desktop notifications through {}", path.display());
                let program = path.display().to_string();
                let actions = Arc::new(AtomicBool::new(*style == Style::NotifySend));
                return Some(CommandNotifier { program, args: Vec::new(), style: *style, actions });
            }
        }
        let names: Vec<&str> = candidates.iter().map(|(p, _)| *p).collect();
        info!("desktop notifications off: {} not found (on Debian and Ubuntu: libnotify-bin)", names.join(" or "));
        None
    }

    fn build(&self, n: &Notice, actions: bool) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args);
        match self.style {
            Style::NotifySend => {
                cmd.args(["--app-name=mcp-gate", "--urgency=normal", "--icon=dialog-question"]);
                if actions {
                    cmd.args(["--action=default=Open", "--action=open=Open request"]);
                }
                cmd.arg("--").arg(&n.summary).arg(escape_markup(&n.body));
            }
            Style::TerminalNotifier => {
                cmd.args(["-title", "mcp-gate", "-group", "mcp-gate", "-subtitle"])
                    .arg(&n.summary)
                    .arg("-message")
                    .arg(&n.body)
                    .arg("-open")
                    .arg(&n.url);
            }
            Style::Osascript => {
                cmd.args([
                    "-e",
                    "on run argv",
                    "-e",
                    "display notification (item 2 of argv) with title \"mcp-gate\" subtitle (item 1 of argv)",
                    "-e",
                    "end run",
                ])
                .arg(&n.summary)
                .arg(&n.body);
            }
            Style::Plain => {
                cmd.arg(&n.summary).arg(&n.body).arg(&n.url);
            }
        }
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    async fn run(self, notice: Notice) -> Result<(), NotifyError> {
        let actions = self.actions.load(Ordering::Relaxed);
        let start = |source| NotifyError::Start { program: self.program.clone(), source };
        let out = self.build(&notice, actions).output().await.map_err(start)?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if actions && stderr.contains("action") {
                // An older notify-send: no actions, the URL stays in the body.
                self.actions.store(false, Ordering::Relaxed);
                let again = self.build(&notice, false).output().await.map_err(start)?;
                return if again.status.success() {
                    Ok(())
                } else {
                    Err(NotifyError::Failed {
                        program: self.program.clone(),
                        status: again.status,
                        stderr: String::new(),
                    })
                };
            }
            return Err(NotifyError::Failed {
                program: self.program.clone(),
                status: out.status,
                stderr: stderr.trim().to_owned(),
            });
        }
        let chosen = String::from_utf8_lossy(&out.stdout);
        if self.style == Style::NotifySend && matches!(chosen.trim(), "default" | "open") {
            crate::browser::launch(&notice.url);
        }
        Ok(())
    }
}

/// Why a desktop notification was not shown.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The notifier program could not be started.
    #[error("{program}: {source}")]
    Start {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// It ran and failed.
    #[error("{program}: {status}{}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    Failed { program: String, status: std::process::ExitStatus, stderr: String },
}

impl Notifier for CommandNotifier {
    fn show(&self, notice: Notice) -> BoxFuture<'static, Result<(), NotifyError>> {
        Box::pin(self.clone().run(notice))
    }
}

/// The notifier `[notify] desktop` asks for.
pub fn from_config(enabled: bool) -> Option<Arc<dyn Notifier>> {
    if !enabled {
        return None;
    }
    CommandNotifier::for_platform().map(|n| Arc::new(n) as Arc<dyn Notifier>)
}

/// The freedesktop notification body may be markup: untrusted text is escaped.
fn escape_markup(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn in_path(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Approval, ApprovalRequest};

    fn change() -> Change {
        let approval = Approval::pending(ApprovalRequest {
            id: "apr_0123456789abcdef".into(),
            key: "k".into(),
            server: "files".into(),
            tool: "delete_file".into(),
            arguments: serde_json::json!({"path": "/home/u/\u{202e}cod.tropeR", "password": "hunter2", "pad": "x".repeat(300)}),
            agent: Some("claude <b>".into()),
            risk: None,
            rule: None,
            rule_reason: None,
            workflow: "default".into(),
            required_approvals: 1,
            grant_secs: 0,
            trace: serde_json::json!([]),
            created_at: 0,
            expires_at: 1,
            tool_info: None,
            channel: None,
            approvers: None,
        });
        Change { kind: ChangeKind::Requested, approval: Arc::new(approval), actor: None, at: 0, relayed: false }
    }

    /// Reports each notice it is asked to show, and never finishes showing it.
    struct Hanging(tokio::sync::mpsc::UnboundedSender<Notice>);

    impl Notifier for Hanging {
        fn show(&self, notice: Notice) -> BoxFuture<'static, Result<(), NotifyError>> {
            let _ = self.0.send(notice);
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn hanging_notices_are_bounded_then_abandoned() {
        let (tx, changes) = broadcast::channel(64);
        let (seen, mut shown) = tokio::sync::mpsc::unbounded_channel();
        let context = |id: &str| Some((format!("http://127.0.0.1:8377/approvals/{id}"), Redactor::default()));
        tokio::spawn(dispatch(changes, context, Arc::new(Hanging(seen))));
        for _ in 0..MAX_SHOWING + 3 {
            tx.send(change()).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        for _ in 0..MAX_SHOWING {
            assert!(shown.try_recv().is_ok());
        }
        assert!(shown.try_recv().is_err(), "at most {MAX_SHOWING} showing at once; the rest are skipped");
        tokio::time::advance(SHOW_LIMIT).await;
        tx.send(change()).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(shown.try_recv().is_ok(), "abandoned after SHOW_LIMIT, which makes room");
    }

    #[test]
    fn a_notice_summarises_the_call_redacted_clipped_and_marked() {
        let url = "http://127.0.0.1:8377/approvals/apr_0123456789abcdef";
        let n = notice(&change(), url, &Redactor::new(vec!["/password".into()]));
        assert_eq!(n.summary, "Approval needed: files:delete_file");
        assert!(n.body.starts_with("claude <b> wants to call it with {"), "{}", n.body);
        assert!(n.body.contains("⟨U+202E⟩cod.tropeR") && !n.body.contains('\u{202e}'), "{}", n.body);
        assert!(!n.body.contains("hunter2") && n.body.contains("[redacted]"), "{}", n.body);
        assert!(n.body.ends_with(&format!("…\n{url}")), "{}", n.body);
        assert_eq!(n.url, url);
        assert_eq!(escape_markup("a <b>&"), "a &lt;b&gt;&amp;");
    }
}
