//! The approval settings: `[approvals]` (the approval server, the store, waiting, expiry,
//! redaction), `[[workflows]]` and `[[channels]]` (see [`super::channel`]), validated together with who may decide (`[[approvers]]`,
//! `[[agents]]`, see [`crate::identity`]) and the reviewer's settings of `ai_driven` workflows
//! (see [`crate::review::settings`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Workflow;
use super::channel::{Channel, ChannelRule, ChannelRules};
use crate::http::listener::ListenerLimits;
use crate::identity::{Credentials, OPERATOR};
use crate::policy::{Glob, OneOrMany, Policy};
use crate::review::settings::RawAiWorkflow;
use crate::review::{AiWorkflow, ProviderConfig};
use crate::settings::{Invalid, parse_duration};
use crate::store::{DatabaseUrl, Location};

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
    /// Whether held calls may be offered as tasks (default `true`).
    pub tasks: Option<bool>,
    /// Rounds of `input_required` for a pending call before the pending result.
    pub mrtr_rounds: Option<u32>,
}

/// One `[[channels]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChannel {
    /// Glob(s) on the agent's name, as rules match agents.
    pub agent: OneOrMany,
    /// `auto`, or the best channel allowed: `task`, `input_required`, `elicitation`, `wait`,
    /// `fail_fast`.
    #[serde(rename = "use")]
    pub use_: Option<String>,
    /// Answer a call that waits before this many seconds.
    pub answer_within_secs: Option<u64>,
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
    /// The SQLite file, `:memory:`, or a PostgreSQL database shared by replicas.
    pub database: crate::store::Location,
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
    /// `[[channels]]`, then the built-in entries.
    pub channels: ChannelRules,
    /// `[approvals] tasks`.
    pub tasks: bool,
    /// Rounds of `input_required` for a pending call (see [`super::ApprovalSettings::mrtr_rounds`]).
    pub mrtr_rounds: u32,
}

impl ApprovalsConfig {
    /// Validates `[approvals]` and `[[workflows]]` against the policy (every workflow a rule
    /// names is defined), the approvers (every name a workflow lists is one) and the providers
    /// (validated by the reviewer's settings).
    #[allow(clippy::too_many_arguments)]
    pub fn validate(
        raw: RawApprovals,
        workflows: Vec<RawWorkflow>,
        channels: Vec<RawChannel>,
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
                    policy.workflow_key(&name),
                    format!("workflow {name:?} is not defined in [[workflows]]"),
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
        // `MCP_GATE_DATABASE` wins over the file: a replica's container gets its connection
        // string (with the password) from its environment.
        let from_env = std::env::var("MCP_GATE_DATABASE").ok().filter(|d| !d.is_empty());
        let key = if from_env.is_some() { "MCP_GATE_DATABASE" } else { "approvals.database" };
        let database = match from_env.as_deref().or(raw.database.as_deref()) {
            Some(":memory:") => Location::Memory,
            Some(url) if DatabaseUrl::is_postgres(url) => {
                // `${VAR}` keeps the password out of the file.
                let url = crate::settings::expand_env(url).map_err(|e| Invalid::new(key, e))?;
                Location::Postgres(DatabaseUrl::parse(&url).map_err(|e| Invalid::new(key, e))?)
            }
            Some(path) => Location::File(PathBuf::from(path)),
            None => Location::File(data_dir.join("mcp-gate.db")),
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
            channels: validate_channels(channels)?,
            tasks: raw.tasks.unwrap_or(true),
            mrtr_rounds,
        })
    }
}

/// Validates `[[channels]]` and appends the built-in entries.
pub fn validate_channels(raw: Vec<RawChannel>) -> Result<ChannelRules, Invalid> {
    let mut rules = Vec::with_capacity(raw.len());
    for (i, c) in raw.into_iter().enumerate() {
        let key = format!("channels[{i}]");
        let patterns = c.agent.as_slice();
        if patterns.is_empty() {
            return Err(Invalid::new(
                format!("{key}.agent"),
                "an empty list matches no agent; use \"*\" for every agent",
            ));
        }
        let mut agents = Vec::with_capacity(patterns.len());
        for (j, p) in patterns.iter().enumerate() {
            if p.is_empty() {
                let at = if matches!(c.agent, OneOrMany::Many(_)) {
                    format!("{key}.agent[{j}]")
                } else {
                    format!("{key}.agent")
                };
                return Err(Invalid::new(at, "an empty pattern matches no agent"));
            }
            agents.push(Glob::new(p));
        }
        let ceiling = match c.use_.as_deref() {
            None => None,
            Some("auto") => Some(Channel::Task),
            Some(name) => Some(Channel::parse(name).ok_or_else(|| {
                Invalid::new(
                    format!("{key}.use"),
                    format!("unknown channel {name:?}; use auto, task, input_required, elicitation, wait or fail_fast"),
                )
            })?),
        };
        let answer_within = match c.answer_within_secs {
            None => None,
            Some(0) => {
                return Err(Invalid::new(
                    format!("{key}.answer_within_secs"),
                    "must be at least 1; use = \"fail_fast\" answers held calls at once",
                ));
            }
            Some(secs) => Some(Duration::from_secs(secs)),
        };
        rules.push(ChannelRule { origin: key, agents, ceiling, answer_within, note: None });
    }
    Ok(ChannelRules::with_built_ins(rules))
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::{Config, ConfigError};
    use crate::gate::Channel;

    fn error(text: &str) -> (String, String) {
        match Config::from_toml(text, "channels.toml") {
            Err(ConfigError::Invalid { file, key, message }) => {
                assert_eq!(file, "channels.toml");
                (key, message)
            }
            Err(ConfigError::Load(message)) => ("TOML".into(), message),
            Ok(_) => panic!("accepted: {text}"),
        }
    }

    /// `database` names an SQLite file, `:memory:` or a PostgreSQL database; a PostgreSQL
    /// password comes from the environment, and neither a bad URL nor a missing variable starts.
    #[test]
    fn the_database_is_a_file_memory_or_postgres_and_its_password_is_never_shown() {
        use crate::store::Location;
        let db = |v: &str| Config::from_toml(&format!("[approvals]\ndatabase = {v:?}\n"), "db.toml");
        assert!(matches!(db(":memory:").unwrap().approvals.database, Location::Memory));
        assert!(matches!(db("/tmp/x/gate.db").unwrap().approvals.database, Location::File(_)));
        let pg = db("postgres://gate:hunter2-secret@db.internal:6543/gate").unwrap().approvals.database;
        let Location::Postgres(url) = &pg else { panic!("{pg:?}") };
        assert_eq!(url.to_string(), "postgres://db.internal:6543/gate");
        assert!(!format!("{pg:?}").contains("hunter2"), "{pg:?}");
        let (key, message) = error("[approvals]\ndatabase = \"postgres://gate:${MCP_GATE_SURELY_UNSET_PW}@db/gate\"\n");
        assert_eq!(key, "approvals.database");
        assert!(message.contains("MCP_GATE_SURELY_UNSET_PW"), "{message}");
        let (key, message) = error("[approvals]\ndatabase = \"postgres://gate@db:notaport/gate\"\n");
        assert_eq!(key, "approvals.database");
        assert!(message.contains("PostgreSQL"), "{message}");
    }

    /// `[[channels]]` entries come first, the built-in ones after; `use = "auto"` allows every channel.
    #[test]
    fn channels_are_read_and_the_built_in_entries_follow() {
        let config = Config::from_toml(
            "[approvals]\ntasks = false\n\n[[channels]]\nagent = [\"bot-*\", \"helper\"]\nuse = \"wait\"\n\
             answer_within_secs = 20\n\n[[channels]]\nagent = \"claude-ai\"\nuse = \"auto\"\n",
            "channels.toml",
        )
        .unwrap();
        let a = &config.approvals;
        assert!(!a.tasks);
        let origins: Vec<&str> = a.channels.rules().iter().map(|r| r.origin.as_str()).take(3).collect();
        assert_eq!(origins, ["channels[0]", "channels[1]", "built-in"]);
        let bot = a.channels.for_agent(Some("bot-7"));
        assert_eq!((bot.ceiling, bot.answer_within), (Channel::Wait, Some(Duration::from_secs(20))));
        let claude = a.channels.for_agent(Some("claude-ai"));
        assert_eq!((claude.ceiling, claude.answer_within), (Channel::Task, Some(Duration::from_secs(50))));
        assert!(Config::from_toml("", "empty.toml").unwrap().approvals.tasks, "tasks are on by default");
    }

    #[test]
    fn invalid_channels_name_their_key_and_file() {
        let cases = [
            ("[[channels]]\nagent = \"x\"\nuse = \"carrier-pigeon\"\n", "channels[0].use", "carrier-pigeon"),
            ("[[channels]]\nagent = \"x\"\nanswer_within_secs = 0\n", "channels[0].answer_within_secs", "at least 1"),
            ("[[channels]]\nagent = \"\"\n", "channels[0].agent", "empty pattern"),
            ("[[channels]]\nagent = []\n", "channels[0].agent", "empty list"),
            ("[[channels]]\nagent = \"ok\"\n[[channels]]\nagent = [\"a\", \"\"]\n", "channels[1].agent[1]", "empty"),
        ];
        for (text, want_key, want_message) in cases {
            let (key, message) = error(text);
            assert_eq!(key, want_key, "{text}");
            assert!(message.contains(want_message), "{message}");
        }
        let (key, message) = error("[[channels]]\nagent = \"x\"\nanswer_within = 3\n");
        assert_eq!(key, "TOML");
        assert!(message.contains("channels.toml") && message.contains("answer_within"), "{message}");
    }

    /// `check-config` lists the channel order and every entry, the built-in ones with the
    /// client limit they answer before.
    #[test]
    fn check_config_explains_the_channels() {
        let config = Config::from_toml(
            "[approvals]\nwait_secs = 120\n[[channels]]\nagent = \"bot\"\nuse = \"fail_fast\"\n",
            "channels.toml",
        )
        .unwrap();
        let text = config.explain();
        assert!(
            text.contains("best channel it declares: task > input_required > elicitation > wait > fail_fast"),
            "{text}"
        );
        assert!(text.contains("  channels[0] agent \"bot\": use fail_fast at best\n"), "{text}");
        assert!(
            text.contains(
                "  built-in agent \"claude-ai\": answer within 50 s (Claude Desktop gives up after about 60 s)"
            ),
            "{text}"
        );
        assert!(text.contains("  built-in agent \"*\": answer within 50 s"), "{text}");
        assert!(text.contains("wait up to 120 s") && text.contains("answer_within"), "{text}");
    }
}
