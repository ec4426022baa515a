//! Desktop notifications of held calls: through a stand-in notifier, and never in the way of
//! the held call.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use mcp_gate::config::Config;
use mcp_gate::server::notify::desktop::{CommandNotifier, Notice, Notifier, NotifyError, spawn};
use serde_json::json;
use tokio::sync::mpsc;

use super::common::{hold_call, within};
use super::webhooks::approvals;

const BASE: &str = "http://127.0.0.1:8377";

/// Reports each notice it is asked to show; then shows it at once, or never (`hang`).
struct StandIn {
    seen: mpsc::UnboundedSender<Notice>,
    hang: bool,
}

impl Notifier for StandIn {
    fn show(&self, notice: Notice) -> BoxFuture<'static, Result<(), NotifyError>> {
        let _ = self.seen.send(notice);
        if self.hang { Box::pin(std::future::pending()) } else { Box::pin(async { Ok(()) }) }
    }
}

fn stand_in(hang: bool) -> (Arc<dyn Notifier>, mpsc::UnboundedReceiver<Notice>) {
    let (seen, rx) = mpsc::unbounded_channel();
    (Arc::new(StandIn { seen, hang }), rx)
}

#[tokio::test]
async fn a_held_call_is_shown_with_its_page() {
    let approvals = approvals().await;
    let (notifier, mut seen) = stand_in(false);
    spawn(&approvals, Some(notifier));
    let id =
        hold_call(&approvals, "delete_file", "agent-x", json!({"path": "/etc/hosts", "password": "hunter2"})).await;
    let notice = within("the notice", seen.recv()).await.unwrap();
    assert_eq!(notice.summary, "Approval needed: files:delete_file");
    assert_eq!(notice.url, format!("{BASE}/approvals/{id}"));
    assert_eq!(
        notice.body,
        format!(
            "agent-x wants to call it with {{\"path\":\"/etc/hosts\",\"password\":\"[redacted]\"}}\n{BASE}/approvals/{id}"
        )
    );
    // Decisions are not announced on the desktop: only new requests.
    approvals.decide(&id, &mcp_gate::identity::Principal::named("ada"), true, None, None).await.unwrap();
    let other = hold_call(&approvals, "move_file", "agent-x", json!({})).await;
    assert_eq!(within("the next notice", seen.recv()).await.unwrap().url, format!("{BASE}/approvals/{other}"));
}

#[tokio::test(start_paused = true)]
async fn a_hanging_notifier_delays_no_held_call() {
    let approvals = approvals().await;
    let (notifier, mut seen) = stand_in(true);
    spawn(&approvals, Some(notifier));
    // Every call is answered although no notice ever finishes (paused time: a call that waited
    // for its notice would never return, and `within` would fail it long before the notices
    // are abandoned).
    for i in 0..4 {
        let id = hold_call(&approvals, "delete_file", "agent-x", json!({"path": format!("/file-{i}")})).await;
        assert!(within("its notice", seen.recv()).await.unwrap().url.ends_with(&id));
    }
}

#[tokio::test]
async fn a_notifier_program_gets_the_notice_and_a_hanging_one_delays_nothing() {
    let dir = super::binary::data_dir("desktop");
    let out = dir.join("notice.txt");
    let script = format!("printf '%s\\n' \"$@\" > {}.tmp && mv {0}.tmp {0}", out.display());
    let recording = CommandNotifier::command("sh", vec!["-c".into(), script, "notifier".into()]);
    let approvals = approvals().await;
    spawn(&approvals, Some(Arc::new(recording)));
    let id = hold_call(&approvals, "delete_file", "agent-x", json!({"path": "/x"})).await;
    let text = within("the notifier's output", async {
        loop {
            if let Ok(text) = std::fs::read_to_string(&out) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let url = format!("{BASE}/approvals/{id}");
    assert_eq!(
        text,
        format!(
            "Approval needed: files:delete_file\nagent-x wants to call it with {{\"path\":\"/x\"}}\n{url}\n{url}\n"
        )
    );

    // A program that never ends: held calls are answered as fast as without it.
    let approvals = self::approvals().await;
    spawn(&approvals, Some(Arc::new(CommandNotifier::command("sleep", vec!["1000".into()]))));
    let started = std::time::Instant::now();
    for i in 0..20 {
        hold_call(&approvals, "delete_file", "agent-x", json!({"path": format!("/file-{i}")})).await;
    }
    assert!(started.elapsed() < Duration::from_secs(5), "20 held calls took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_terminal_gets_one_line_per_held_call() {
    let approvals = approvals().await;
    let (tx, mut lines) = mpsc::unbounded_channel();
    mcp_gate::server::notify::terminal::spawn_with(&approvals, move |line| {
        let _ = tx.send(line);
    });
    let id = hold_call(&approvals, "delete_file", "agent-x", json!({"path": "/x"})).await;
    let line = within("the line", lines.recv()).await.unwrap();
    assert_eq!(line, format!("mcp-gate: held files:delete_file (agent agent-x): approve at {BASE}/approvals/{id}"));
    approvals.decide(&id, &mcp_gate::identity::Principal::named("ada"), true, None, None).await.unwrap();
    let other = hold_call(&approvals, "move_file", "agent-x", json!({})).await;
    let line = within("the next line", lines.recv()).await.unwrap();
    assert!(line.ends_with(&other), "nothing for the decision: {line}");
}

#[test]
fn notify_and_ntfy_configuration() {
    assert!(Config::from_toml("", "empty.toml").unwrap().desktop_notifications, "on by default");
    let off = Config::from_toml("[notify]\ndesktop = false\n", "off.toml").unwrap();
    assert!(!off.desktop_notifications);
    assert!(off.explain().contains("desktop notifications: off"), "{}", off.explain());
    let hook = |url: &str| format!("[[webhooks]]\nurl = \"{url}\"\nformat = \"ntfy\"\n");
    let e = Config::from_toml(&hook("https://ntfy.sh/"), "ntfy.toml").unwrap_err().to_string();
    assert!(e.contains("ntfy.toml") && e.contains("webhooks[0].url") && e.contains("ntfy topic"), "{e}");
    let ok = Config::from_toml(&hook("https://ntfy.sh/mcp-gate-x1"), "ntfy.toml").unwrap();
    assert!(ok.explain().contains("webhook webhooks[0]: ntfy to ntfy.sh"), "{}", ok.explain());
}
