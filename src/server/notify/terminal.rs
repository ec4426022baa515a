//! One line on this process's stderr for each call it holds, when stderr is a terminal: the
//! person who started mcp-gate by hand sees where to approve. When a client started it, stderr
//! goes to the client's log and stays as it was.

use std::io::IsTerminal;
use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;

use crate::approval::{ApprovalService, Change, ChangeKind};

/// Prints a line for each call this process holds, if stderr is a terminal.
pub fn spawn(approvals: &Arc<ApprovalService>) {
    if std::io::stderr().is_terminal() {
        spawn_with(approvals, |line| crate::logging::announce(&line));
    }
}

/// Calls `out` with the line of each call this process holds (changes relayed from other
/// processes are theirs to show).
pub fn spawn_with(approvals: &Arc<ApprovalService>, out: impl Fn(String) + Send + 'static) {
    let mut changes = approvals.changes.subscribe();
    let approvals = Arc::downgrade(approvals);
    tokio::spawn(async move {
        loop {
            let change = match changes.recv().await {
                Ok(change) => change,
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            };
            if change.kind != ChangeKind::Requested || change.relayed {
                continue;
            }
            let Some(approvals) = approvals.upgrade() else { return };
            out(line(&change, &approvals.url_for(&change.approval.id)));
        }
    });
}

/// `mcp-gate: held files:delete_file (agent claude): approve at URL`.
pub fn line(change: &Change, url: &str) -> String {
    let a = &change.approval;
    let text = |t: &str| -> String {
        let spaced: String = t.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        crate::visible::mark(&spaced).into_owned()
    };
    let agent = a.agent.as_deref().map(|x| format!(" (agent {})", text(x))).unwrap_or_default();
    format!("mcp-gate: held {}:{}{agent}: approve at {url}", text(&a.server), text(&a.tool))
}
