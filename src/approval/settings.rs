//! The approval settings: `[approvals]` (the approval server, the store, waiting, expiry,
//! redaction) and `[[workflows]]`, validated together with who may decide (`[[approvers]]`,
//! `[[agents]]`, see [`crate::identity`]) and the reviewer's settings of `ai_driven` workflows
//! (see [`crate::review::settings`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Workflow;
use crate::http::listener::ListenerLimits;
use crate::identity::{Credentials, OPERATOR};
use crate::policy::Policy;
use crate::review::settings::RawAiWorkflow;
use crate::review::{AiWorkflow, ProviderConfig};
use crate::settings::{Invalid, parse_duration};

/// Default address of the approval server.
pub const DEFAULT_APPROVALS_LISTEN: &str = "127.0.0.1:8377";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApprovals {
    pub listen: Option<String>,
    pub public_url: Option<String>,
    pub wait_secs: Option<u64>,
    pub token: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database: Option<String>,
    #[serde(default)]
    pub redact: Vec<String>,
    #[serde(default)]
    pub expiry: RawExpiry,
    /// How long before its deadline a pending request is announced as expiring.
    pub expiry_warning: Option<String>,
    pub max_connections: Option<usize>,
    pub header_timeout_secs: Option<u64>,
    /// Rounds of `input_required` for a pending call before the pending result.
    pub mrtr_rounds: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExpiry {
    pub low: Option<String>,
    pub medium: Option<String>,
    pub high: Option<String>,
    pub critical: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorkflow {
    pub name: String,
    pub required_approvals: Option<u32>,
    /// Who may approve: approver names and `team:NAME` (default: every approver).
    #[serde(default)]
    pub approvers: Vec<String>,
    pub expiry: Option<String>,
    /// `false` (a deny needs a reason, the default), or `true` (approvals need one too).
    pub require_justification: Option<bool>,
    pub grant_secs: Option<u64>,
    /// `"human"` (the default) or `"ai_driven"`.
    pub approval_type: Option<String>,
    /// The rest apply to `ai_driven` workflows only.
    pub ai_model: Option<String>,
    pub ai_guidelines: Option<String>,
    pub ai_confidence_threshold: Option<f64>,
    /// `"escalate"` (the default), `"approve"` or `"deny"`.
    pub ai_fallback_behavior: Option<String>,
    pub escalation_workflow: Option<String>,
    pub ai_provider: Option<String>,
    pub ai_cache_secs: Option<u64>,
}

impl RawWorkflow {
    /// The keys the reviewer reads.
    fn ai(&self) -> RawAiWorkflow {
        RawAiWorkflow {
            name: self.name.clone(),
            ai_model: self.ai_model.clone(),
            ai_guidelines: self.ai_guidelines.clone(),
            ai_confidence_threshold: self.ai_confidence_threshold,
            ai_fallback_behavior: self.ai_fallback_behavior.clone(),
            escalation_workflow: self.escalation_workflow.clone(),
            ai_provider: self.ai_provider.clone(),
            ai_cache_secs: self.ai_cache_secs,
        }
    }
}

/// Validated `[approvals]` and `[[workflows]]`, with who decides.
#[derive(Debug, Clone)]
pub struct ApprovalsConfig {
    /// Where the approval server listens.
    pub listen: String,
    pub public_url: Option<String>,
    pub wait: Duration,
    /// The approver token, when given by the config or `MCP_GATE_TOKEN`.
    pub token: Option<String>,
    /// Where `token` came from (`MCP_GATE_TOKEN` or `approvals.token`), for messages.
    pub token_key: &'static str,
    pub data_dir: PathBuf,
    /// `None` is `:memory:`.
    pub database: Option<PathBuf>,
    pub redact: Vec<String>,
    pub expiry_by_risk: [Duration; 4],
    pub expiry_warning: Duration,
    pub workflows: HashMap<String, Workflow>,
    /// `[[approvers]]`; empty when only the shared approver token is used.
    pub approvers: Credentials,
    /// `[[agents]]`: downstream HTTP clients known by their own tokens.
    pub agents: Credentials,
    /// The `ai_driven` workflows among `workflows`, with their reviewer settings.
    pub ai_workflows: BTreeMap<String, AiWorkflow>,
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Connection limits of the approval server.
    pub limits: ListenerLimits,
    /// Rounds of `input_required` for a pending call (see [`super::ApprovalSettings::mrtr_rounds`]).
    pub mrtr_rounds: u32,
}

impl ApprovalsConfig {
    /// Validates `[approvals]` and `[[workflows]]` against the policy (every workflow a rule
    /// names is defined), the approvers (every name a workflow lists is one) and the providers
    /// (validated by the reviewer's settings).
    pub fn validate(
        raw: RawApprovals,
        workflows: Vec<RawWorkflow>,
        providers: BTreeMap<String, ProviderConfig>,
        policy: &Policy,
        approvers: Credentials,
        agents: Credentials,
    ) -> Result<ApprovalsConfig, Invalid> {
        let duration = |key: &str, v: &Option<String>, default: u64| -> Result<Duration, Invalid> {
            match v {
                None => Ok(Duration::from_secs(default)),
                Some(text) => parse_duration(text).ok_or_else(|| {
                    Invalid::new(key, format!("{text:?} is not a duration (like \"90s\", \"15m\", \"4h\", \"1d\")"))
                }),
            }
        };
        let expiry_by_risk = [
            duration("approvals.expiry.low", &raw.expiry.low, 24 * 3600)?,
            duration("approvals.expiry.medium", &raw.expiry.medium, 12 * 3600)?,
            duration("approvals.expiry.high", &raw.expiry.high, 4 * 3600)?,
            duration("approvals.expiry.critical", &raw.expiry.critical, 3600)?,
        ];
        let mut map = HashMap::new();
        let mut ai_workflows = BTreeMap::new();
        // (index, workflow, escalation target) of each ai_driven workflow, checked once all are known.
        let mut escalations = Vec::new();
        for (i, w) in workflows.into_iter().enumerate() {
            let key = format!("workflows[{i}]");
            if w.name.is_empty() {
                return Err(Invalid::new(format!("{key}.name"), "a workflow needs a name"));
            }
            match w.approval_type.as_deref() {
                None | Some("human") => check_human_workflow(&key, &w)?,
                Some("ai_driven") => {
                    check_ai_workflow(&key, &w)?;
                    let ai = AiWorkflow::validate(&key, &w.ai(), &providers)?;
                    if let Some(to) = &ai.escalation_workflow {
                        escalations.push((i, w.name.clone(), to.clone()));
                    }
                    ai_workflows.insert(w.name.clone(), ai);
                }
                Some(other) => {
                    return Err(Invalid::new(
                        format!("{key}.approval_type"),
                        format!("unknown approval type {other:?}; use \"human\" or \"ai_driven\""),
                    ));
                }
            }
            let required = w.required_approvals.unwrap_or(1);
            if required == 0 {
                return Err(Invalid::new(format!("{key}.required_approvals"), "must be at least 1"));
            }
            let expiry = match &w.expiry {
                Some(_) => Some(duration(&format!("{key}.expiry"), &w.expiry, 0)?),
                None => None,
            };
            for (j, entry) in w.approvers.iter().enumerate() {
                let known = match entry.strip_prefix("team:") {
                    Some(team) => approvers.principals().any(|p| p.teams.iter().any(|t| t == team)),
                    None => entry == OPERATOR || approvers.principals().any(|p| &p.name == entry),
                };
                if !known {
                    return Err(Invalid::new(
                        format!("{key}.approvers[{j}]"),
                        format!("{entry:?} is not an approver name or a team of one in [[approvers]]"),
                    ));
                }
            }
            let workflow = Workflow {
                name: w.name.clone(),
                required_approvals: required,
                approvers: w.approvers.clone(),
                expiry,
                justify_approve: w.require_justification.unwrap_or(false),
                grant_secs: w.grant_secs.unwrap_or(0),
            };
            if map.insert(w.name.clone(), workflow).is_some() {
                return Err(Invalid::new(format!("{key}.name"), format!("workflow {:?} is defined twice", w.name)));
            }
        }
        for name in policy.workflows_used() {
            if name != "default" && !map.contains_key(&name) {
                return Err(Invalid::new(
                    "rules",
                    format!("workflow {name:?} is used by a rule but not defined in [[workflows]]"),
                ));
            }
        }
        map.entry("default".to_owned()).or_insert_with(|| Workflow::default_named("default"));
        for (i, from, to) in escalations {
            let key = format!("workflows[{i}].escalation_workflow");
            if !map.contains_key(&to) {
                return Err(Invalid::new(key, format!("workflow {to:?} is not defined in [[workflows]]")));
            }
            if ai_workflows.contains_key(&to) {
                return Err(Invalid::new(
                    key,
                    format!(
                        "workflow {to:?} is ai_driven; {from:?} must escalate to a human workflow, where people decide"
                    ),
                ));
            }
        }

        for (i, p) in raw.redact.iter().enumerate() {
            if !p.is_empty() && !p.starts_with('/') {
                return Err(Invalid::new(
                    format!("approvals.redact[{i}]"),
                    format!("{p:?} is not a JSON pointer (it must start with '/')"),
                ));
            }
        }
        let wait_secs = match std::env::var("MCP_GATE_WAIT_SECS") {
            Ok(v) => v
                .trim()
                .parse::<u64>()
                .map_err(|_| Invalid::new("MCP_GATE_WAIT_SECS", format!("{v:?} is not a number of seconds")))?,
            Err(_) => raw.wait_secs.unwrap_or(0),
        };
        let mrtr_rounds = raw.mrtr_rounds.unwrap_or(super::DEFAULT_MRTR_ROUNDS);
        if mrtr_rounds > super::DEFAULT_MRTR_ROUNDS {
            return Err(Invalid::new(
                "approvals.mrtr_rounds",
                format!("{mrtr_rounds} is over {}: clients give up after 10 rounds", super::DEFAULT_MRTR_ROUNDS),
            ));
        }
        let listen = std::env::var("MCP_GATE_APPROVALS_LISTEN")
            .ok()
            .or(raw.listen)
            .unwrap_or_else(|| DEFAULT_APPROVALS_LISTEN.to_owned());
        if listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(Invalid::new("approvals.listen", format!("{listen:?} is not an address like 127.0.0.1:8377")));
        }
        if let Some(url) = &raw.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(Invalid::new("approvals.public_url", format!("{url:?} is not an http(s) URL")));
        }
        let (token, token_key) = match std::env::var("MCP_GATE_TOKEN").ok().filter(|t| !t.is_empty()) {
            Some(t) => (Some(t), "MCP_GATE_TOKEN"),
            None => (raw.token, "approvals.token"),
        };
        if let Some(t) = &token
            && t.len() < 16
        {
            return Err(Invalid::new("approvals.token", "use at least 16 characters"));
        }
        let data_dir = raw.data_dir.unwrap_or_else(default_data_dir);
        let database = match raw.database.as_deref() {
            Some(":memory:") => None,
            Some(path) => Some(PathBuf::from(path)),
            None => Some(data_dir.join("mcp-gate.db")),
        };
        Ok(ApprovalsConfig {
            listen,
            public_url: raw.public_url,
            wait: Duration::from_secs(wait_secs),
            token,
            token_key,
            data_dir,
            database,
            redact: raw.redact,
            expiry_by_risk,
            expiry_warning: duration("approvals.expiry_warning", &raw.expiry_warning, 600)?,
            workflows: map,
            approvers,
            agents,
            ai_workflows,
            providers,
            limits: ListenerLimits::validate("approvals", raw.max_connections, raw.header_timeout_secs)?,
            mrtr_rounds,
        })
    }
}

/// `$MCP_GATE_DATA_DIR`, else `$XDG_DATA_HOME/mcp-gate`, else `~/.local/share/mcp-gate`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MCP_GATE_DATA_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(dir).join("mcp-gate");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local").join("share").join("mcp-gate")
}

/// The `ai_*` keys and `escalation_workflow` belong to `ai_driven` workflows.
fn check_human_workflow(key: &str, w: &RawWorkflow) -> Result<(), Invalid> {
    let ai_keys = [
        ("ai_model", w.ai_model.is_some()),
        ("ai_guidelines", w.ai_guidelines.is_some()),
        ("ai_confidence_threshold", w.ai_confidence_threshold.is_some()),
        ("ai_fallback_behavior", w.ai_fallback_behavior.is_some()),
        ("escalation_workflow", w.escalation_workflow.is_some()),
        ("ai_provider", w.ai_provider.is_some()),
        ("ai_cache_secs", w.ai_cache_secs.is_some()),
    ];
    match ai_keys.iter().find(|(_, set)| *set) {
        Some((name, _)) => {
            Err(Invalid::new(format!("{key}.{name}"), "applies only to a workflow with approval_type = \"ai_driven\""))
        }
        None => Ok(()),
    }
}

/// The keys of human workflows do not apply to `ai_driven` ones: the reviewer decides alone.
fn check_ai_workflow(key: &str, w: &RawWorkflow) -> Result<(), Invalid> {
    let human_keys = [
        ("required_approvals", w.required_approvals.is_some()),
        ("approvers", !w.approvers.is_empty()),
        ("require_justification", w.require_justification.is_some()),
        ("grant_secs", w.grant_secs.is_some()),
    ];
    match human_keys.iter().find(|(_, set)| *set) {
        Some((name, _)) => Err(Invalid::new(
            format!("{key}.{name}"),
            "applies only to human workflows; an ai_driven workflow's reviewer decides alone (see ai_cache_secs \
             for reusing decisions)",
        )),
        None => Ok(()),
    }
}
