//! The AI reviewer: a model decides held calls of `ai_driven` workflows against written
//! guidelines.
//!
//! A review is one request to a provider ([`anthropic`] Messages API or any [`openai`]
//! chat-completions endpoint) built by [`prompt`]: the workflow's guidelines as the system prompt,
//! and the call (server, tool with its description and annotations, redacted arguments, agent,
//! the agent's recent decisions) as a data block between random boundary lines. The model must
//! answer through the provider's structured mode with `{decision, confidence, reasoning}`, which is
//! parsed strictly. [`AiWorkflow::apply`] turns the answer, or the failure to get one, into what
//! happens to the call; the approval service ([`crate::approval`]) carries it out and audits it.
//!
//! Fail closed: a provider error, an HTTP error status, a timeout, a refusal or an answer that does
//! not parse counts as an unsure answer, and the workflow's fallback applies.

pub mod anthropic;
pub mod openai;
pub mod prompt;
pub mod settings;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::gate::tools::ToolInfo;
use crate::secret::{ExposeSecret, SecretString};
use crate::store::{Store, StoreError};
use crate::upstream::http::is_loopback_host;

/// Default `ai_confidence_threshold`.
pub const DEFAULT_THRESHOLD: f64 = 0.8;
/// Default `ai_cache_secs`: identical calls reuse a decision for this long.
pub const DEFAULT_CACHE_SECS: u64 = 300;
/// Default `timeout_secs` of a provider.
pub const DEFAULT_TIMEOUT_SECS: u64 = 20;
/// Default `base_url` of an `anthropic` provider.
pub const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";
/// Default `base_url` of an `openai` provider.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
/// The largest provider response read.
const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// How many of the agent's recent decisions the reviewer is shown.
pub const RECENT_DECISIONS: u32 = 10;
/// Decisions cached at most (the oldest are dropped first).
const MAX_CACHED: usize = 10_000;

/// An API key read from the environment at start-up. It is only ever written into a request
/// header: wiped from memory when dropped, its `Debug` shows nothing, and it has no `Display`.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(crate::secret::secret(value))
    }

    fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        crate::secret::constant_time_eq(self.expose().as_bytes(), other.expose().as_bytes())
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([hidden])")
    }
}

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// Anthropic's Messages API (`POST {base_url}/v1/messages`), with forced tool use.
    Anthropic,
    /// An OpenAI-compatible chat-completions endpoint (`POST {base_url}/chat/completions`):
    /// OpenAI, Ollama, vLLM, LM Studio, llama.cpp's server. Uses `response_format: json_schema`.
    OpenAi,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::OpenAi => "openai",
        }
    }
}

/// A validated `[providers.NAME]` table.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    /// Without the provider's path, e.g. `http://127.0.0.1:11434/v1`.
    pub base_url: String,
    /// The environment variable the key was read from.
    pub api_key_env: Option<String>,
    pub api_key: Option<Secret>,
    pub timeout: Duration,
}

impl ProviderConfig {
    /// Whether the server is on this machine (it is then reached without any proxy).
    pub fn is_local(&self) -> bool {
        let rest = self.base_url.split_once("://").map_or(self.base_url.as_str(), |(_, r)| r);
        is_loopback_host(host_of(rest))
    }

    /// The URL requests are posted to.
    pub fn endpoint(&self) -> String {
        let base = self.base_url.trim_end_matches('/');
        match self.kind {
            ProviderKind::Anthropic => format!("{base}/v1/messages"),
            ProviderKind::OpenAi => format!("{base}/chat/completions"),
        }
    }
}

/// What an `ai_driven` workflow does when the reviewer is unsure or could not review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// A person decides, in the escalation workflow.
    Escalate,
    Approve,
    Deny,
}

impl Fallback {
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Escalate => "escalate",
            Fallback::Approve => "approve",
            Fallback::Deny => "deny",
        }
    }
}

/// A validated `ai_driven` workflow.
#[derive(Debug, Clone)]
pub struct AiWorkflow {
    pub name: String,
    pub model: String,
    /// The reviewer's system prompt.
    pub guidelines: String,
    /// Answers at or above this confidence are final.
    pub threshold: f64,
    pub fallback: Fallback,
    /// The human workflow uncertain calls go to (set when the fallback is `Escalate`).
    pub escalation_workflow: Option<String>,
    /// The `[providers.NAME]` asked.
    pub provider: String,
    /// How long identical calls reuse a decision; zero asks every time.
    pub cache: Duration,
}

/// The reviewer's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReviewDecision {
    Approve,
    Deny,
    Escalate,
}

impl ReviewDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewDecision::Approve => "approve",
            ReviewDecision::Deny => "deny",
            ReviewDecision::Escalate => "escalate",
        }
    }
}

/// A parsed answer: `{"decision", "confidence", "reasoning"}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    pub decision: ReviewDecision,
    /// Within 0..=1.
    pub confidence: f64,
    pub reasoning: String,
}

/// Why no usable answer came back. None of these texts holds the API key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReviewError {
    #[error("timed out after {0} s")]
    Timeout(u64),
    #[error("request failed: {0}")]
    Transport(String),
    #[error("HTTP {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    Status { status: u16, body: String },
    #[error("the model refused: {0}")]
    Refused(String),
    #[error("unparseable answer: {0}")]
    Unparseable(String),
    #[error("no provider {0:?}")]
    NoProvider(String),
    #[error("{0}")]
    Random(#[from] crate::random::RandomError),
}

impl ReviewError {
    /// A short account for the agent, without provider details.
    pub fn summary(&self) -> &'static str {
        match self {
            ReviewError::Timeout(_) => "timed out",
            ReviewError::Transport(_) | ReviewError::NoProvider(_) => "could not be reached",
            ReviewError::Status { .. } => "returned an error",
            ReviewError::Refused(_) => "refused to review the call",
            ReviewError::Unparseable(_) => "gave an answer that could not be read",
            ReviewError::Random(_) => "could not be asked safely",
        }
    }
}

/// What the workflow does with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Approve,
    Deny,
    Escalate,
}

impl Applied {
    pub fn as_str(self) -> &'static str {
        match self {
            Applied::Approve => "approve",
            Applied::Deny => "deny",
            Applied::Escalate => "escalate",
        }
    }
}

/// What decided the call: the reviewer's answer, or the fallback (see [`AiWorkflow::apply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecidedBy {
    /// A confident approve or deny, applied as is.
    Final,
    /// Unsure, `escalate`, or no usable answer: the fallback approved or denied.
    Fallback,
    /// Unsure, `escalate`, or no usable answer: handed to people.
    Escalated,
}

impl DecidedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            DecidedBy::Final => "final",
            DecidedBy::Fallback => "fallback",
            DecidedBy::Escalated => "escalated",
        }
    }
}

impl AiWorkflow {
    /// The actor recorded for the reviewer's decisions: `ai:MODEL`.
    pub fn actor(&self) -> String {
        format!("ai:{}", self.model)
    }

    /// What happens to the call given the review.
    pub fn apply(&self, answer: &Result<Answer, ReviewError>) -> (Applied, DecidedBy) {
        if let Ok(a) = answer
            && a.confidence >= self.threshold
        {
            match a.decision {
                ReviewDecision::Approve => return (Applied::Approve, DecidedBy::Final),
                ReviewDecision::Deny => return (Applied::Deny, DecidedBy::Final),
                ReviewDecision::Escalate => {}
            }
        }
        match self.fallback {
            Fallback::Approve => (Applied::Approve, DecidedBy::Fallback),
            Fallback::Deny => (Applied::Deny, DecidedBy::Fallback),
            Fallback::Escalate => (Applied::Escalate, DecidedBy::Escalated),
        }
    }

    /// The sha256 of the guidelines, in lowercase hex.
    pub fn guidelines_sha256(&self) -> String {
        hex::encode(Sha256::digest(self.guidelines.as_bytes()))
    }
}

/// One of the agent's earlier requests, as the reviewer sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecentDecision {
    pub at: String,
    pub server: String,
    pub tool: String,
    pub status: String,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
}

/// The call under review. Arguments are already redacted.
#[derive(Debug, Clone)]
pub struct Subject {
    pub server: String,
    pub tool: String,
    pub tool_info: Option<ToolInfo>,
    pub arguments: Value,
    pub agent: Option<String>,
    pub recent: Vec<RecentDecision>,
}

/// A review's result.
#[derive(Debug, Clone)]
pub struct Review {
    pub answer: Result<Answer, ReviewError>,
    /// The answer is an earlier one for an identical call.
    pub cached: bool,
}

struct Provider {
    config: ProviderConfig,
    client: reqwest::Client,
}

/// The providers and `ai_driven` workflows of a configuration, and the decision cache.
pub struct Reviewer {
    workflows: HashMap<String, Arc<AiWorkflow>>,
    providers: HashMap<String, Provider>,
    /// Kept by hand rather than with `moka`'s `try_get_with`: each workflow has its own window
    /// (`ai_cache_secs`, a per-entry expiry there), a failed review is neither kept nor handed to
    /// the identical calls waiting on it (each then asks the model itself, where moka gives every
    /// waiter the first one's error), and the whole is some forty lines where moka would bring its
    /// dependencies into the binary and a clock of its own that paused tokio time does not move.
    cache: Mutex<HashMap<String, (Answer, Instant)>>,
    /// One turn per cache key: identical calls arriving together wait for the first one's
    /// review instead of each asking the model.
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl fmt::Debug for Reviewer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reviewer")
            .field("workflows", &self.workflows.keys().collect::<Vec<_>>())
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Reviewer {
    pub fn new(
        workflows: impl IntoIterator<Item = AiWorkflow>,
        providers: impl IntoIterator<Item = ProviderConfig>,
    ) -> Result<Reviewer, reqwest::Error> {
        let mut built = HashMap::new();
        for config in providers {
            // No redirects: a redirected request would carry the key header to wherever it points.
            let mut builder =
                reqwest::Client::builder().timeout(config.timeout).redirect(reqwest::redirect::Policy::none());
            if config.is_local() {
                builder = builder.no_proxy();
            }
            let client = builder.build()?;
            built.insert(config.name.clone(), Provider { config, client });
        }
        Ok(Reviewer {
            workflows: workflows.into_iter().map(|w| (w.name.clone(), Arc::new(w))).collect(),
            providers: built,
            cache: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    /// The reviewer of the `ai_driven` workflows and their providers, or `None` when there is no
    /// such workflow.
    pub fn from_config(
        workflows: &BTreeMap<String, AiWorkflow>,
        providers: &BTreeMap<String, ProviderConfig>,
    ) -> Result<Option<Arc<Reviewer>>, reqwest::Error> {
        if workflows.is_empty() {
            return Ok(None);
        }
        let reviewer = Reviewer::new(workflows.values().cloned(), providers.values().cloned())?;
        Ok(Some(Arc::new(reviewer)))
    }

    /// The `ai_driven` workflow of this name, if it is one.
    pub fn workflow(&self, name: &str) -> Option<Arc<AiWorkflow>> {
        self.workflows.get(name).cloned()
    }

    /// Reviews a call, reusing an answer given for an identical call (same `call_key`,
    /// workflow, provider, model and guidelines) within the workflow's cache window.
    /// Identical calls that arrive while one is being reviewed wait for that review.
    pub async fn review(&self, workflow: &AiWorkflow, call_key: &str, subject: &Subject) -> Review {
        let key = cache_key(workflow, call_key);
        if workflow.cache.is_zero() {
            return self.review_now(workflow, subject, None).await;
        }
        if let Some(answer) = self.cached(&key, workflow.cache) {
            info!(workflow = %workflow.name, tool = %subject.tool, "reusing the reviewer's decision on an identical call");
            return Review { answer: Ok(answer), cached: true };
        }
        let turn = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            in_flight.entry(key.clone()).or_default().clone()
        };
        let review = {
            let _mine = turn.lock().await;
            // The call ahead in line may have just answered for this one.
            match self.cached(&key, workflow.cache) {
                Some(answer) => {
                    info!(workflow = %workflow.name, tool = %subject.tool, "an identical call was reviewed meanwhile; reusing its decision");
                    Review { answer: Ok(answer), cached: true }
                }
                None => self.review_now(workflow, subject, Some(key.clone())).await,
            }
        };
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        // The map's handle and ours: nobody else is waiting.
        if in_flight.get(&key).is_some_and(|t| Arc::strong_count(t) <= 2) {
            in_flight.remove(&key);
        }
        review
    }

    /// Asks the model now and remembers a usable answer under `remember_as`.
    async fn review_now(&self, workflow: &AiWorkflow, subject: &Subject, remember_as: Option<String>) -> Review {
        let answer = self.ask(workflow, subject).await;
        match &answer {
            Ok(a) => {
                info!(
                    workflow = %workflow.name,
                    model = %workflow.model,
                    tool = %subject.tool,
                    decision = a.decision.as_str(),
                    confidence = a.confidence,
                    "reviewer answered"
                );
                if let Some(key) = remember_as {
                    self.remember(key, a.clone());
                }
            }
            Err(e) => warn!(
                workflow = %workflow.name,
                provider = %workflow.provider,
                model = %workflow.model,
                tool = %subject.tool,
                "AI review failed; the fallback applies: {e}"
            ),
        }
        Review { answer, cached: false }
    }

    /// Asks the workflow's provider, without the cache.
    pub async fn ask(&self, workflow: &AiWorkflow, subject: &Subject) -> Result<Answer, ReviewError> {
        let provider =
            self.providers.get(&workflow.provider).ok_or_else(|| ReviewError::NoProvider(workflow.provider.clone()))?;
        let prompt = prompt::build(&workflow.guidelines, subject)?;
        let body = match provider.config.kind {
            ProviderKind::Anthropic => anthropic::request_body(&workflow.model, &prompt),
            ProviderKind::OpenAi => openai::request_body(&workflow.model, &prompt),
        };
        let timeout = provider.config.timeout;
        let response = tokio::time::timeout(timeout, post(provider, &body))
            .await
            .map_err(|_| ReviewError::Timeout(timeout.as_secs()))??;
        match provider.config.kind {
            ProviderKind::Anthropic => anthropic::read_answer(&response),
            ProviderKind::OpenAi => openai::read_answer(&response),
        }
    }

    fn cached(&self, key: &str, window: Duration) -> Option<Answer> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(key).filter(|(_, at)| at.elapsed() < window).map(|(a, _)| a.clone())
    }

    fn remember(&self, key: String, answer: Answer) {
        let longest = self.workflows.values().map(|w| w.cache).max().unwrap_or_default();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (_, at)| at.elapsed() < longest);
            if cache.len() >= MAX_CACHED
                && let Some(oldest) = cache.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| k.clone())
            {
                cache.remove(&oldest);
            }
        }
        cache.insert(key, (answer, Instant::now()));
    }
}

fn cache_key(workflow: &AiWorkflow, call_key: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [call_key, &workflow.name, &workflow.provider, &workflow.model, &workflow.guidelines] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())
}

/// Posts a request body and reads the JSON answer (at most 1 MiB).
async fn post(provider: &Provider, body: &Value) -> Result<Value, ReviewError> {
    let config = &provider.config;
    let mut request = provider.client.post(config.endpoint()).json(body);
    match config.kind {
        ProviderKind::Anthropic => {
            request = request.header("anthropic-version", anthropic::API_VERSION);
            if let Some(key) = &config.api_key {
                request = request.header("x-api-key", key.expose());
            }
        }
        ProviderKind::OpenAi => {
            if let Some(key) = &config.api_key {
                request = request.bearer_auth(key.expose());
            }
        }
    }
    let timeout_secs = config.timeout.as_secs();
    let classify = |e: reqwest::Error| {
        if e.is_timeout() {
            ReviewError::Timeout(timeout_secs)
        } else {
            ReviewError::Transport(scrub(&crate::upstream::http::describe(&e), config))
        }
    };
    let mut response = request.send().await.map_err(classify)?;
    let status = response.status();
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(classify)? {
        if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(ReviewError::Unparseable("the response is larger than 1 MiB".into()));
        }
        bytes.extend_from_slice(&chunk);
    }
    if !status.is_success() {
        // An authentication error's body may quote part of the key: leave it out.
        let body = if matches!(status.as_u16(), 401 | 403) {
            "check the provider's API key".to_owned()
        } else {
            let text = String::from_utf8_lossy(&bytes);
            scrub(&text.chars().take(300).collect::<String>(), config)
        };
        return Err(ReviewError::Status { status: status.as_u16(), body });
    }
    // Strict: a key given twice (a second `decision` in a tool input) is refused, not overwritten.
    prompt::strict_json(&bytes).map_err(|e| ReviewError::Unparseable(format!("the response is not JSON: {e}")))
}

/// Removes the key from a text that is about to be logged or audited.
fn scrub(text: &str, config: &ProviderConfig) -> String {
    match &config.api_key {
        Some(key) if !key.expose().is_empty() => text.replace(key.expose(), "[key]"),
        _ => text.to_owned(),
    }
}

/// The reviewer's opinion on each of these approval requests that has one: the latest
/// `ai_decision` record of the audit log, without the guidelines and arguments.
pub async fn opinions(store: &Store, ids: Vec<String>) -> Result<HashMap<String, Value>, StoreError> {
    let latest = crate::store::audit::latest_of(store, crate::store::audit::Event::AiDecision, ids).await?;
    Ok(latest.into_iter().map(|(id, (at, detail))| (id, opinion_view(at, &detail))).collect())
}

/// The fields of an `ai_decision` record shown with an approval request.
fn opinion_view(at: i64, detail: &Value) -> Value {
    let mut view = serde_json::Map::new();
    for field in ["decision", "confidence", "reasoning", "model", "provider", "workflow", "outcome", "applied", "error"]
    {
        view.insert(field.to_owned(), detail.get(field).cloned().unwrap_or(Value::Null));
    }
    view.insert("cached".into(), detail.get("cached").cloned().unwrap_or(Value::Bool(false)));
    view.insert("at".into(), Value::from(at));
    Value::Object(view)
}

/// Warnings about AI settings that are valid but probably not what was meant.
pub fn lint(workflows: &BTreeMap<String, AiWorkflow>, providers: &BTreeMap<String, ProviderConfig>) -> Vec<String> {
    let mut warnings = Vec::new();
    for w in workflows.values() {
        if w.fallback == Fallback::Approve {
            warnings.push(format!(
                "workflow {}: ai_fallback_behavior = \"approve\" runs every call the reviewer is unsure of, answers \
                 `escalate` for (which a call's own data can talk it into) or could not review (provider down, \
                 timeout, refusal)",
                w.name
            ));
        }
        if w.threshold < 0.5 {
            warnings.push(format!(
                "workflow {}: ai_confidence_threshold = {} makes even unsure answers final",
                w.name, w.threshold
            ));
        }
    }
    for p in providers.values() {
        if !workflows.values().any(|w| w.provider == p.name) {
            warnings.push(format!("provider {} is not used by any workflow", p.name));
        }
        if p.kind == ProviderKind::Anthropic && p.api_key.is_none() {
            warnings.push(format!(
                "provider {}: type \"anthropic\" without api_key_env: the API will refuse every request and each \
                 review will fall back",
                p.name
            ));
        }
        if let Some(rest) = p.base_url.strip_prefix("http://") {
            if !is_loopback_host(host_of(rest)) {
                warnings.push(format!(
                    "provider {}: {} is plain http to another host: call arguments{} travel unencrypted",
                    p.name,
                    p.base_url,
                    if p.api_key.is_some() { " and the API key" } else { "" }
                ));
            }
        }
    }
    warnings
}

/// The host of what follows `http://`: `[::1]:8000/v1` -> `[::1]`, `localhost:11434/v1` -> `localhost`.
fn host_of(rest: &str) -> &str {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if authority.starts_with('[') {
        return authority.split_inclusive(']').next().unwrap_or(authority);
    }
    authority.split(':').next().unwrap_or(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workflow(threshold: f64, fallback: Fallback) -> AiWorkflow {
        AiWorkflow {
            name: "ai".into(),
            model: "m".into(),
            guidelines: "g".into(),
            threshold,
            fallback,
            escalation_workflow: Some("people".into()),
            provider: "p".into(),
            cache: Duration::from_secs(60),
        }
    }

    fn answer(decision: ReviewDecision, confidence: f64) -> Result<Answer, ReviewError> {
        Ok(Answer { decision, confidence, reasoning: "r".into() })
    }

    #[test]
    fn confident_answers_are_final_and_the_rest_falls_back() {
        let w = workflow(0.8, Fallback::Escalate);
        assert_eq!(w.apply(&answer(ReviewDecision::Approve, 0.8)), (Applied::Approve, DecidedBy::Final));
        assert_eq!(w.apply(&answer(ReviewDecision::Deny, 0.99)), (Applied::Deny, DecidedBy::Final));
        assert_eq!(w.apply(&answer(ReviewDecision::Approve, 0.79)), (Applied::Escalate, DecidedBy::Escalated));
        assert_eq!(w.apply(&answer(ReviewDecision::Escalate, 1.0)), (Applied::Escalate, DecidedBy::Escalated));
        assert_eq!(w.apply(&Err(ReviewError::Timeout(1))), (Applied::Escalate, DecidedBy::Escalated));

        let deny = workflow(0.8, Fallback::Deny);
        assert_eq!(deny.apply(&answer(ReviewDecision::Approve, 0.5)), (Applied::Deny, DecidedBy::Fallback));
        assert_eq!(deny.apply(&Err(ReviewError::Refused("no".into()))), (Applied::Deny, DecidedBy::Fallback));
        let approve = workflow(0.8, Fallback::Approve);
        assert_eq!(approve.apply(&answer(ReviewDecision::Deny, 0.5)), (Applied::Approve, DecidedBy::Fallback));
        assert_eq!(approve.apply(&answer(ReviewDecision::Deny, 0.9)), (Applied::Deny, DecidedBy::Final));
    }

    #[test]
    fn endpoints_append_the_provider_path() {
        let mut p = ProviderConfig {
            name: "p".into(),
            kind: ProviderKind::OpenAi,
            base_url: "http://127.0.0.1:11434/v1/".into(),
            api_key_env: None,
            api_key: None,
            timeout: Duration::from_secs(20),
        };
        assert_eq!(p.endpoint(), "http://127.0.0.1:11434/v1/chat/completions");
        assert!(p.is_local());
        p.kind = ProviderKind::Anthropic;
        p.base_url = ANTHROPIC_BASE_URL.into();
        assert_eq!(p.endpoint(), "https://api.anthropic.com/v1/messages");
        assert!(!p.is_local());
    }

    #[test]
    fn the_key_is_hidden_from_debug_and_scrubbed_from_errors() {
        let p = ProviderConfig {
            name: "p".into(),
            kind: ProviderKind::OpenAi,
            base_url: "http://10.0.0.1/v1".into(),
            api_key_env: Some("K".into()),
            api_key: Some(Secret::new("sk-very-secret")),
            timeout: Duration::from_secs(20),
        };
        assert!(!format!("{p:?}").contains("sk-very-secret"));
        assert_eq!(scrub("bad key sk-very-secret here", &p), "bad key [key] here");
        let warnings = lint(&BTreeMap::new(), &BTreeMap::from([("p".to_owned(), p)]));
        assert!(warnings.iter().any(|w| w.contains("unencrypted") && w.contains("API key")), "{warnings:?}");
        assert!(warnings.iter().any(|w| w.contains("not used")), "{warnings:?}");
    }

    #[test]
    fn loopback_hosts() {
        for h in ["localhost", "127.0.0.1", "[::1]", "127.1.2.3"] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in ["10.0.0.1", "example.com", "[2001:db8::1]"] {
            assert!(!is_loopback_host(h), "{h}");
        }
        assert_eq!(host_of("[::1]:8000/v1"), "[::1]");
        assert_eq!(host_of("[::1]/v1"), "[::1]");
        assert_eq!(host_of("localhost:11434/v1"), "localhost");
        assert_eq!(host_of("user@127.0.0.1:8000"), "127.0.0.1");
    }
}
