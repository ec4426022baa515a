//! Notifications: webhooks told about changes of approval requests, and desktop notifications
//! of new ones ([`desktop`]) and a line on a terminal's stderr ([`terminal`]).
//!
//! [`spawn`] subscribes to the change stream of [`ApprovalService`] and starts one delivery task per
//! configured webhook. Each webhook has a bounded queue: a change is rendered ([`payload`]),
//! signed ([`sign`]) and queued without waiting, so a slow or dead receiver never holds up a
//! tool call; when the queue is full the change is dropped for that webhook and logged. A task
//! delivers its queue in order, retrying network errors, timeouts, `429` and `5xx` with
//! exponential backoff (honouring `Retry-After` up to a limit) and giving up at once on other
//! answers.

pub mod desktop;
pub mod ntfy;
pub mod payload;
pub mod settings;
pub mod sign;
pub mod terminal;

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, warn};

use crate::approval::{ApprovalService, Change, ChangeKind};
use crate::secret::ExposeSecret;
use crate::store::audit::Redactor;

/// Changes a webhook may have waiting before new ones are dropped.
const QUEUE: usize = 256;

/// The event kinds a webhook receives unless it lists its own.
pub const DEFAULT_EVENTS: [ChangeKind; 5] =
    [ChangeKind::Requested, ChangeKind::Approved, ChangeKind::Denied, ChangeKind::Expiring, ChangeKind::Expired];

/// Default time limit of one delivery attempt.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a webhook's body looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The change as JSON, signed with the webhook's secret.
    Generic,
    /// A Slack incoming-webhook message.
    Slack,
    /// A Microsoft Teams Workflows webhook message (Adaptive Card).
    Teams,
    /// An ntfy publish message (JSON), for push notifications on phones and desktops.
    Ntfy,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Generic => "generic",
            Format::Slack => "slack",
            Format::Teams => "teams",
            Format::Ntfy => "ntfy",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "generic" => Ok(Format::Generic),
            "slack" => Ok(Format::Slack),
            "teams" => Ok(Format::Teams),
            "ntfy" => Ok(Format::Ntfy),
            other => Err(format!("unknown format {other:?}; use \"generic\", \"slack\", \"teams\" or \"ntfy\"")),
        }
    }
}

/// A validated `[[webhooks]]` entry.
#[derive(Clone)]
pub struct Webhook {
    /// Names the webhook in logs.
    pub name: String,
    /// Where deliveries are POSTed (after `${VAR}` expansion: may hold a secret).
    pub url: String,
    pub format: Format,
    /// The HMAC key: deliveries carry `X-Mcp-Gate-Signature` when it is set. Wiped when dropped.
    pub secret: Option<crate::secret::SecretSlice<u8>>,
    pub events: HashSet<ChangeKind>,
    /// Time limit of one attempt.
    pub timeout: Duration,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL and the secret stay out of logs and debug output.
        f.debug_struct("Webhook")
            .field("name", &self.name)
            .field("host", &host_of(&self.url))
            .field("format", &self.format)
            .field("signed", &self.secret.is_some())
            .field("events", &self.events)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The host of a URL, for messages that must not show the whole URL.
pub fn host_of(url: &str) -> String {
    reqwest::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default()
}

/// How failed deliveries are retried.
#[derive(Debug, Clone)]
pub struct Retry {
    /// The wait before each retry; its length is the number of retries.
    pub delays: Vec<Duration>,
    /// The longest `Retry-After` honoured; a longer one is cut to this.
    pub max_retry_after: Duration,
}

impl Default for Retry {
    /// Five retries after 1, 2, 4, 8 and 16 seconds; `Retry-After` up to a minute.
    fn default() -> Self {
        Retry {
            delays: (0..5).map(|i| Duration::from_secs(1 << i)).collect(),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// Starts delivering changes to `webhooks` (nothing when there are none). Deliveries stop when
/// `approvals` is dropped.
pub fn spawn(webhooks: &[Webhook], approvals: &Arc<ApprovalService>) {
    spawn_with(webhooks, approvals, Retry::default());
}

/// [`spawn`] with its own retry schedule (tests use short ones).
pub fn spawn_with(webhooks: &[Webhook], approvals: &Arc<ApprovalService>, retry: Retry) {
    if webhooks.is_empty() {
        return;
    }
    // Subscribe before returning, so no change published after this call is missed.
    let changes = approvals.changes.subscribe();
    let redactor = Redactor::new(approvals.settings.redact.clone());
    let mut outlets = Vec::new();
    for hook in webhooks {
        let (tx, rx) = mpsc::channel(QUEUE);
        let client = match reqwest::Client::builder()
            .timeout(hook.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("mcp-gate/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                warn!(webhook = %hook.name, "cannot create the HTTP client; webhook disabled: {e}");
                continue;
            }
        };
        info!(webhook = %hook.name, host = %host_of(&hook.url), format = hook.format.as_str(), "webhook enabled");
        tokio::spawn(deliver_queue(hook.clone(), client, retry.clone(), rx));
        outlets.push((hook.clone(), tx));
    }
    tokio::spawn(dispatch(changes, Arc::downgrade(approvals), redactor, outlets));
}

/// One rendered change on its way to one webhook.
struct Delivery {
    id: String,
    kind: ChangeKind,
    approval_id: String,
    body: Vec<u8>,
}

/// Renders each change for the webhooks that want it and queues it, never waiting.
async fn dispatch(
    mut changes: tokio::sync::broadcast::Receiver<Change>,
    approvals: Weak<ApprovalService>,
    redactor: Redactor,
    outlets: Vec<(Webhook, mpsc::Sender<Delivery>)>,
) {
    loop {
        let change = match changes.recv().await {
            Ok(change) => change,
            Err(RecvError::Lagged(missed)) => {
                warn!(missed, "webhooks fell behind the change stream; some changes were not delivered");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let Some(approvals) = approvals.upgrade() else { return };
        // Replicas sharing a PostgreSQL store each send the webhooks of the changes they made;
        // the changes they hear of from the others were sent there.
        if change.relayed && approvals.store.engine() == crate::store::Engine::Postgres {
            continue;
        }
        let url = approvals.url_for(&change.approval.id);
        drop(approvals);
        for (hook, tx) in &outlets {
            if !hook.events.contains(&change.kind) {
                continue;
            }
            let body = match hook.format {
                Format::Generic => payload::generic(&change, &url, &redactor),
                Format::Slack => payload::slack(&change, &url),
                Format::Teams => payload::teams(&change, &url),
                Format::Ntfy => ntfy::payload(&change, &url, &ntfy::topic_of(&hook.url)),
            };
            let id = match crate::random::hex(16) {
                Ok(id) => id,
                Err(e) => {
                    warn!(webhook = %hook.name, "delivery dropped: {e}");
                    continue;
                }
            };
            let delivery = Delivery {
                id,
                kind: change.kind,
                approval_id: change.approval.id.clone(),
                body: body.to_string().into_bytes(),
            };
            if let Err(mpsc::error::TrySendError::Full(d)) = tx.try_send(delivery) {
                let (name, kind, id) = (&hook.name, d.kind, &d.approval_id);
                warn!(webhook = %name, %kind, approval = %id, "webhook queue full; change dropped");
            }
        }
    }
}

/// Delivers one webhook's queue in order.
async fn deliver_queue(hook: Webhook, client: reqwest::Client, retry: Retry, mut queue: mpsc::Receiver<Delivery>) {
    while let Some(d) = queue.recv().await {
        let span = tracing::warn_span!(
            "webhook",
            webhook = %hook.name,
            kind = %d.kind,
            approval = %d.approval_id,
            delivery = %d.id
        );
        deliver(&hook, &client, &retry, &d).instrument(span).await;
    }
}

/// What one attempt came to.
enum Attempt {
    Delivered(StatusCode),
    /// Worth another try, after at least this long (from `Retry-After`).
    Retry {
        why: String,
        after: Option<Duration>,
    },
    GiveUp(String),
}

async fn deliver(hook: &Webhook, client: &reqwest::Client, retry: &Retry, d: &Delivery) {
    let attempts = retry.delays.len() + 1;
    for attempt in 1..=attempts {
        match attempt_once(hook, client, d).await {
            Attempt::Delivered(status) => {
                debug!(%status, attempt, "webhook delivered");
                return;
            }
            Attempt::GiveUp(why) => {
                warn!(attempt, "webhook delivery refused, not retried: {why}");
                return;
            }
            Attempt::Retry { why, after } => {
                let Some(delay) = retry.delays.get(attempt - 1) else {
                    warn!(attempts, "webhook delivery failed; giving up: {why}");
                    return;
                };
                let wait = after.map_or(*delay, |a| a.min(retry.max_retry_after).max(*delay));
                warn!(attempt, "webhook delivery failed, retrying in {wait:?}: {why}");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

async fn attempt_once(hook: &Webhook, client: &reqwest::Client, d: &Delivery) -> Attempt {
    let target = match hook.format {
        Format::Ntfy => ntfy::publish_url(&hook.url),
        _ => hook.url.clone(),
    };
    let mut request = client
        .post(&target)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header("X-Mcp-Gate-Event", d.kind.as_str())
        .header("X-Mcp-Gate-Delivery", &d.id);
    if let Some(key) = &hook.secret {
        // Signed per attempt: a retry carries a fresh timestamp and the same delivery id.
        request = request
            .header("X-Mcp-Gate-Signature", sign::signature_header(key.expose_secret(), unix_now(), &d.id, &d.body));
    }
    let response = match request.body(d.body.clone()).send().await {
        Ok(r) => r,
        // Without the URL, which may hold a secret.
        Err(e) if e.is_timeout() => return Attempt::Retry { why: "timed out".into(), after: None },
        Err(e) => return Attempt::Retry { why: describe(&e.without_url()), after: None },
    };
    let status = response.status();
    if status.is_success() {
        return Attempt::Delivered(status);
    }
    let why = format!("HTTP {status}");
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        let after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        return Attempt::Retry { why, after };
    }
    Attempt::GiveUp(why)
}

/// An error with its causes, one line.
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
