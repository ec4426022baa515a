//! Configuration: `proxy.toml`, `MCP_GATE_*` environment variables and the command line.
//!
//! Loading happens in two steps. [`RawConfig`] is what figment deserializes (defaults, then the
//! file, then `MCP_GATE_SECTION__KEY` environment variables) with unknown keys rejected. It is
//! then validated into a [`Config`], whose errors name the key and the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

/// Default separator between a server's name and its tool or prompt names.
pub const DEFAULT_SEPARATOR: &str = "__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(String),
    #[error("{file}: `{key}`: {message}")]
    Invalid { file: String, key: String, message: String },
}

/// `proxy.toml` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub proxy: RawProxy,
    #[serde(default)]
    pub listen: RawListen,
    #[serde(default)]
    pub upstream: RawUpstream,
    #[serde(default)]
    pub servers: BTreeMap<String, RawServer>,
    #[serde(default)]
    pub policy: crate::policy::RawPolicy,
    #[serde(default)]
    pub rules: Vec<crate::policy::RawRule>,
    /// Named approvers, each with its own token.
    #[serde(default)]
    pub approvers: Vec<crate::identity::RawPrincipal>,
    /// Named agents (downstream HTTP clients), each with its own token.
    #[serde(default)]
    pub agents: Vec<crate::identity::RawPrincipal>,
    #[serde(default)]
    pub workflows: Vec<RawWorkflow>,
    #[serde(default)]
    pub approvals: RawApprovals,
    /// Model providers of `ai_driven` workflows, by name.
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    /// Where changes of approval requests are POSTed.
    #[serde(default)]
    pub webhooks: Vec<RawWebhook>,
    /// `[notify]`: notifications on this machine.
    #[serde(default)]
    pub notify: RawNotify,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    /// Desktop notifications of new held calls (default `true`; off anyway without a graphical
    /// session).
    pub desktop: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// Names the webhook in logs (default `webhooks[N]`).
    pub name: Option<String>,
    /// `http(s)://...`; `${VAR}` is read from the environment.
    pub url: Option<String>,
    /// `"generic"` (the default), `"slack"`, `"teams"` or `"ntfy"`.
    pub format: Option<String>,
    /// Name of the environment variable holding the signing key (required for `generic`).
    pub secret_env: Option<String>,
    /// Change kinds to send (default: requested, approved, denied, expiring, expired).
    pub events: Option<Vec<String>>,
    pub timeout_secs: Option<u64>,
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

/// `[providers.NAME]`: where `ai_driven` workflows send their reviews.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// `"anthropic"` or `"openai"`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
    pub timeout_secs: Option<u64>,
}

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
pub struct RawProxy {
    pub separator: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub addr: Option<String>,
    pub token_env: Option<String>,
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    pub max_sessions: Option<usize>,
    pub session_idle_secs: Option<u64>,
    pub max_connections: Option<usize>,
    pub header_timeout_secs: Option<u64>,
}

/// `[upstream]`: defaults for every `[servers.NAME]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub request_timeout_secs: Option<u64>,
    pub initialize_timeout_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
    pub url: Option<String>,
    pub transport: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub prefix: Option<bool>,
    pub request_timeout_secs: Option<u64>,
    pub initialize_timeout_secs: Option<u64>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, if any (for messages).
    pub source: Option<PathBuf>,
    pub separator: String,
    pub listen: Listen,
    /// Upstream servers in name order.
    pub servers: Vec<ServerConfig>,
    /// The compiled policy.
    pub policy: std::sync::Arc<crate::policy::Policy>,
    /// Whether the policy is the zero-config default (no rules, no `[policy] default`).
    pub default_policy: bool,
    pub approvals: Approvals,
    /// `[[webhooks]]`.
    pub webhooks: Vec<crate::server::notify::Webhook>,
    /// `[notify] desktop`: show desktop notifications of new held calls (when a graphical
    /// session exists).
    pub desktop_notifications: bool,
}

/// Validated `[approvals]` and `[[workflows]]`.
#[derive(Debug, Clone)]
pub struct Approvals {
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
    pub workflows: std::collections::HashMap<String, crate::approval::Workflow>,
    /// `[[approvers]]`; empty when only the shared approver token is used.
    pub approvers: crate::identity::Credentials,
    /// `[[agents]]`: downstream HTTP clients known by their own tokens.
    pub agents: crate::identity::Credentials,
    /// The `ai_driven` workflows among `workflows`, with their reviewer settings.
    pub ai_workflows: BTreeMap<String, crate::review::AiWorkflow>,
    pub providers: BTreeMap<String, crate::review::ProviderConfig>,
    /// Connection limits of the approval server.
    pub limits: ListenerLimits,
}

/// Default address of the approval server.
pub const DEFAULT_APPROVALS_LISTEN: &str = "127.0.0.1:8377";

#[derive(Debug, Clone)]
pub struct Listen {
    pub addr: Option<SocketAddr>,
    /// Bearer token required from downstream HTTP clients, if set.
    pub token: Option<String>,
    /// Where `token` came from (`listen.token_env (VAR)` or `MCP_GATE_HTTP_TOKEN`), for messages.
    pub token_key: String,
    /// Extra Host header values accepted besides loopback names.
    pub allowed_hosts: Vec<String>,
    /// Extra Origin values accepted besides loopback origins.
    pub allowed_origins: Vec<String>,
    /// Most client sessions of `serve` open at once (each has its own upstream children).
    pub max_sessions: usize,
    /// A session unused this long is closed, with its upstreams.
    pub session_idle: Duration,
    /// Connection limits of the MCP endpoint.
    pub limits: ListenerLimits,
}

/// Default `[listen] max_sessions`.
pub const DEFAULT_MAX_SESSIONS: usize = 64;
/// Default `[listen] session_idle_secs`.
pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(600);
/// Default `[upstream] request_timeout_secs`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Default `[upstream] initialize_timeout_secs`.
pub const DEFAULT_INITIALIZE_TIMEOUT: Duration = Duration::from_secs(30);

/// What one HTTP listener accepts: `max_connections` and `header_timeout_secs` of `[listen]`
/// (the MCP endpoint) and of `[approvals]` (the approval server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Most connections open at once; further ones wait in the kernel's queue.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, and the longest an idle keep-alive
    /// connection stays open between requests.
    pub header_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits { max_connections: 256, header_timeout: Duration::from_secs(10) }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub name: String,
    pub transport: UpstreamTransport,
    /// Whether tools and prompts are exposed as `NAME<sep>tool` when several servers are configured.
    pub prefix: bool,
    /// A request the upstream has not answered in this time is answered with an error.
    pub request_timeout: Duration,
    /// The same for `initialize`.
    pub initialize_timeout: Duration,
}

impl ServerConfig {
    /// A server with the default timeouts.
    pub fn new(name: impl Into<String>, transport: UpstreamTransport, prefix: bool) -> ServerConfig {
        ServerConfig {
            name: name.into(),
            transport,
            prefix,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            initialize_timeout: DEFAULT_INITIALIZE_TIMEOUT,
        }
    }
}

#[derive(Debug, Clone)]
pub enum UpstreamTransport {
    Stdio { command: String, args: Vec<String>, env: Vec<(String, String)>, cwd: Option<PathBuf> },
    StreamableHttp { url: String, headers: Vec<(String, String)> },
    Sse { url: String, headers: Vec<(String, String)> },
}

impl UpstreamTransport {
    pub fn describe(&self) -> String {
        match self {
            UpstreamTransport::Stdio { command, args, .. } => {
                std::iter::once(command.as_str()).chain(args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ")
            }
            UpstreamTransport::StreamableHttp { url, .. } => format!("streamable-http {url}"),
            UpstreamTransport::Sse { url, .. } => format!("sse {url}"),
        }
    }
}

/// An upstream given on the command line after `--`.
#[derive(Debug, Clone)]
pub struct CommandLineUpstream {
    pub name: Option<String>,
    pub argv: Vec<String>,
}

impl Config {
    /// Loads and validates. `file` is the `--config` argument; without it `./proxy.toml` is not
    /// read implicitly: zero-config runs use only the command line.
    pub fn load(file: Option<&Path>, extra: Option<&CommandLineUpstream>) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Load(format!("{}: no such file", file.display())));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(Env::prefixed("MCP_GATE_").split("__").filter(|k| k.as_str().contains('.')));
        let raw: RawConfig = figment.extract().map_err(|e| ConfigError::Load(describe_figment_error(e, file)))?;
        Config::validate(raw, file, extra)
    }

    /// Parses a TOML string (used by tests and `check-config` on examples).
    pub fn from_toml(text: &str, name: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = Figment::new()
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Load(describe_figment_error(e, Some(Path::new(name)))))?;
        Config::validate(raw, Some(Path::new(name)), None)
    }

    fn validate(
        raw: RawConfig,
        file: Option<&Path>,
        extra: Option<&CommandLineUpstream>,
    ) -> Result<Config, ConfigError> {
        let file_name = file.map_or_else(|| "command line".to_owned(), |f| f.display().to_string());
        let invalid =
            |key: &str, message: String| ConfigError::Invalid { file: file_name.clone(), key: key.to_owned(), message };

        let separator = raw.proxy.separator.unwrap_or_else(|| DEFAULT_SEPARATOR.to_owned());
        if separator.is_empty() || separator.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(invalid("proxy.separator", format!("{separator:?} is not a usable separator")));
        }

        let request_timeout =
            secs("upstream.request_timeout_secs", raw.upstream.request_timeout_secs, DEFAULT_REQUEST_TIMEOUT)
                .map_err(|(k, m)| invalid(&k, m))?;
        let initialize_timeout =
            secs("upstream.initialize_timeout_secs", raw.upstream.initialize_timeout_secs, DEFAULT_INITIALIZE_TIMEOUT)
                .map_err(|(k, m)| invalid(&k, m))?;
        let mut servers = Vec::new();
        for (name, s) in raw.servers {
            let key = format!("servers.{name}");
            check_server_name(&name, &separator).map_err(|m| invalid(&key, m))?;
            let request_timeout = secs(&format!("{key}.request_timeout_secs"), s.request_timeout_secs, request_timeout)
                .map_err(|(k, m)| invalid(&k, m))?;
            let initialize_timeout =
                secs(&format!("{key}.initialize_timeout_secs"), s.initialize_timeout_secs, initialize_timeout)
                    .map_err(|(k, m)| invalid(&k, m))?;
            let transport = server_transport(&key, s.command, s.args, s.env, s.cwd, s.url, s.transport, s.headers)
                .map_err(|(k, m)| invalid(&k, m))?;
            servers.push(ServerConfig {
                name,
                transport,
                prefix: s.prefix.unwrap_or(true),
                request_timeout,
                initialize_timeout,
            });
        }

        if let Some(cli) = extra {
            let (first, rest) = cli
                .argv
                .split_first()
                .ok_or_else(|| ConfigError::Load("nothing after `--`: give a command or a URL".into()))?;
            let is_url = first.starts_with("http://") || first.starts_with("https://");
            let name = match &cli.name {
                Some(n) => n.clone(),
                None => default_name(first, is_url),
            };
            check_server_name(&name, &separator).map_err(|m| invalid("--name", m))?;
            if servers.iter().any(|s| s.name == name) {
                return Err(invalid(
                    &format!("servers.{name}"),
                    "is also the name of the upstream given after `--`; pick another with --name".into(),
                ));
            }
            let transport = if is_url {
                if !rest.is_empty() {
                    return Err(ConfigError::Load(format!("unexpected arguments after the URL {first}")));
                }
                UpstreamTransport::StreamableHttp { url: first.clone(), headers: Vec::new() }
            } else {
                UpstreamTransport::Stdio { command: first.clone(), args: rest.to_vec(), env: Vec::new(), cwd: None }
            };
            servers.push(ServerConfig { name, transport, prefix: true, request_timeout, initialize_timeout });
        }

        check_prefixes_unambiguous(&servers, &separator).map_err(|(k, m)| invalid(&k, m))?;

        let addr = match raw.listen.addr {
            Some(a) => Some(a.parse().map_err(|e| invalid("listen.addr", format!("{a:?}: {e}")))?),
            None => None,
        };
        let (token, token_key) = match raw.listen.token_env {
            Some(var) => (
                Some(
                    std::env::var(&var)
                        .map_err(|_| invalid("listen.token_env", format!("environment variable {var} is not set")))?,
                ),
                format!("listen.token_env ({var})"),
            ),
            None => (std::env::var("MCP_GATE_HTTP_TOKEN").ok().filter(|t| !t.is_empty()), "MCP_GATE_HTTP_TOKEN".into()),
        };

        let default_policy = raw.rules.is_empty() && raw.policy.default.is_none();
        let policy =
            crate::policy::Policy::compile(&raw.policy, &raw.rules).map_err(|e| invalid(&e.key, e.message.clone()))?;
        let approvers =
            crate::identity::Credentials::from_raw("approvers", &raw.approvers).map_err(|(k, m)| invalid(&k, m))?;
        let agents = crate::identity::Credentials::from_raw("agents", &raw.agents).map_err(|(k, m)| invalid(&k, m))?;
        let approvals = validate_approvals(raw.approvals, raw.workflows, raw.providers, &policy, approvers, agents)
            .map_err(|(k, m)| invalid(&k, m))?;
        let webhooks = validate_webhooks(raw.webhooks).map_err(|(k, m)| invalid(&k, m))?;
        let max_sessions = raw.listen.max_sessions.unwrap_or(DEFAULT_MAX_SESSIONS);
        if max_sessions == 0 {
            return Err(invalid("listen.max_sessions", "must be at least 1".into()));
        }
        let listen = Listen {
            addr,
            token,
            token_key,
            allowed_hosts: raw.listen.allowed_hosts,
            allowed_origins: raw.listen.allowed_origins,
            max_sessions,
            session_idle: secs("listen.session_idle_secs", raw.listen.session_idle_secs, DEFAULT_SESSION_IDLE)
                .map_err(|(k, m)| invalid(&k, m))?,
            limits: listener_limits("listen", raw.listen.max_connections, raw.listen.header_timeout_secs)
                .map_err(|(k, m)| invalid(&k, m))?,
        };
        let shared = approvals.token.as_deref().map(|t| (t, approvals.token_key));
        credentials_apart(&listen, &approvals, shared).map_err(|(k, m)| invalid(&k, m))?;

        Ok(Config {
            source: file.map(Path::to_path_buf),
            policy: std::sync::Arc::new(policy),
            default_policy,
            approvals,
            webhooks,
            desktop_notifications: raw.notify.desktop.unwrap_or(true),
            separator,
            listen,
            servers,
        })
    }

    /// A human-readable account of what this configuration does (for `check-config`).
    pub fn explain(&self) -> String {
        let mut out = String::new();
        let source = self.source.as_ref().map_or("(no file)".to_owned(), |p| p.display().to_string());
        out.push_str(&format!("configuration: {source}: ok\n"));
        out.push_str(&format!("upstream servers: {}\n", self.servers.len()));
        let several = self.servers.len() > 1;
        for s in &self.servers {
            let naming = if several && s.prefix {
                format!("tools and prompts exposed as {}{}<name>", s.name, self.separator)
            } else {
                "tools and prompts exposed under their own names".to_owned()
            };
            out.push_str(&format!("  {}: {} ({naming})\n", s.name, s.transport.describe()));
        }
        if let Some(addr) = self.listen.addr {
            out.push_str(&format!("serve listens on http://{addr}/mcp\n"));
        }
        let labels = self.policy.rule_labels();
        if self.default_policy {
            out.push_str(
                "policy: none configured: tools annotated readOnlyHint are allowed, every other call needs approval\n",
            );
        } else {
            out.push_str(&format!("policy: {} rule(s), first match wins:\n", labels.len()));
            for (i, label) in labels.iter().enumerate() {
                out.push_str(&format!("  {}. {label}\n", i + 1));
            }
            out.push_str(&format!("  otherwise: {}\n", self.policy.default_action()));
        }
        let mut workflows: Vec<_> = self.approvals.workflows.values().collect();
        workflows.sort_by(|a, b| a.name.cmp(&b.name));
        for w in workflows {
            if let Some(ai) = self.approvals.ai_workflows.get(&w.name) {
                out.push_str(&explain_ai_workflow(ai, &self.approvals.providers));
                continue;
            }
            out.push_str(&format!(
                "workflow {}: {} approval(s), {}\n",
                w.name,
                w.required_approvals,
                if w.grant_secs > 0 {
                    format!("then identical calls run for {} s", w.grant_secs)
                } else {
                    "single use".into()
                }
            ));
            if !w.approvers.is_empty() {
                out.push_str(&format!("  approvers: {}\n", w.approvers.join(", ")));
            }
            // Each vote needs a credential of its own: the shared token (operator) counts once,
            // whatever approver name it decides under, and only when the workflow admits it.
            let operator =
                usize::from(crate::identity::Principal::named(crate::identity::OPERATOR).admitted_by(&w.approvers));
            let eligible =
                self.approvals.approvers.principals().filter(|p| p.admitted_by(&w.approvers)).count() + operator;
            if eligible < w.required_approvals as usize {
                out.push_str(&format!(
                    "warning: workflow {} needs {} approvers but only {eligible} may vote: it can never reach its \
                     quorum (the shared approver token counts once; add [[approvers]] with tokens of their own)\n",
                    w.name, w.required_approvals
                ));
            }
        }
        let names: Vec<&str> = self.approvals.approvers.principals().map(|p| p.name.as_str()).collect();
        if !names.is_empty() {
            out.push_str(&format!("approvers: {}\n", names.join(", ")));
        }
        let agents: Vec<&str> = self.approvals.agents.principals().map(|p| p.name.as_str()).collect();
        if !agents.is_empty() {
            out.push_str(&format!("agents (HTTP tokens): {}\n", agents.join(", ")));
        }
        let wait = self.approvals.wait.as_secs();
        if wait == 0 {
            out.push_str("held calls fail fast with the approval URL (MCP_GATE_WAIT_SECS=0)\n");
        } else {
            out.push_str(&format!("held calls wait up to {wait} s for a decision\n"));
        }
        out.push_str(&format!("approval server: http://{}/\n", self.approvals.listen));
        for hook in &self.webhooks {
            let mut events: Vec<_> = hook.events.iter().map(|k| k.as_str()).collect();
            events.sort_unstable();
            out.push_str(&format!(
                "webhook {}: {} to {}{}, on {}\n",
                hook.name,
                hook.format.as_str(),
                crate::server::notify::host_of(&hook.url),
                if hook.secret.is_some() { ", signed" } else { "" },
                events.join(", ")
            ));
        }
        out.push_str(if self.desktop_notifications {
            "desktop notifications: on, when a graphical session exists\n"
        } else {
            "desktop notifications: off\n"
        });
        for warning in self.policy.lint() {
            out.push_str(&format!("warning: {warning}\n"));
        }
        for warning in crate::review::lint(&self.approvals.ai_workflows, &self.approvals.providers) {
            out.push_str(&format!("warning: {warning}\n"));
        }
        out
    }
}

fn explain_ai_workflow(
    ai: &crate::review::AiWorkflow,
    providers: &BTreeMap<String, crate::review::ProviderConfig>,
) -> String {
    let provider = providers.get(&ai.provider).map_or_else(String::new, |p| {
        let key = match &p.api_key_env {
            Some(var) => format!("key from ${var}"),
            None => "no key".to_owned(),
        };
        format!(" ({} {}, {key}, timeout {} s)", p.kind.as_str(), p.endpoint(), p.timeout.as_secs())
    });
    let otherwise = match (ai.fallback, &ai.escalation_workflow) {
        (crate::review::Fallback::Escalate, Some(to)) => format!("go to people in workflow {to}"),
        (crate::review::Fallback::Escalate, None) => "go to people".to_owned(),
        (crate::review::Fallback::Approve, _) => "are approved".to_owned(),
        (crate::review::Fallback::Deny, _) => "are denied".to_owned(),
    };
    let cache = if ai.cache.is_zero() {
        "every call is reviewed afresh".to_owned()
    } else {
        format!("identical calls reuse a decision for {} s", ai.cache.as_secs())
    };
    format!(
        "workflow {}: AI review by {} via provider {}{provider}; answers with confidence >= {} are final; \
         unsure answers, \"escalate\" answers and failed reviews {otherwise}; {cache}\n",
        ai.name, ai.model, ai.provider, ai.threshold
    )
}

fn validate_approvals(
    raw: RawApprovals,
    workflows: Vec<RawWorkflow>,
    providers: BTreeMap<String, RawProvider>,
    policy: &crate::policy::Policy,
    approvers: crate::identity::Credentials,
    agents: crate::identity::Credentials,
) -> Result<Approvals, (String, String)> {
    let providers = validate_providers(providers)?;
    let duration = |key: &str, v: &Option<String>, default: u64| -> Result<Duration, (String, String)> {
        match v {
            None => Ok(Duration::from_secs(default)),
            Some(text) => parse_duration(text).ok_or_else(|| {
                (key.to_owned(), format!("{text:?} is not a duration (like \"90s\", \"15m\", \"4h\", \"1d\")"))
            }),
        }
    };
    let expiry_by_risk = [
        duration("approvals.expiry.low", &raw.expiry.low, 24 * 3600)?,
        duration("approvals.expiry.medium", &raw.expiry.medium, 12 * 3600)?,
        duration("approvals.expiry.high", &raw.expiry.high, 4 * 3600)?,
        duration("approvals.expiry.critical", &raw.expiry.critical, 3600)?,
    ];
    let mut map = std::collections::HashMap::new();
    let mut ai_workflows = BTreeMap::new();
    // (index, workflow, escalation target) of each ai_driven workflow, checked once all are known.
    let mut escalations = Vec::new();
    for (i, w) in workflows.into_iter().enumerate() {
        let key = format!("workflows[{i}]");
        if w.name.is_empty() {
            return Err((format!("{key}.name"), "a workflow needs a name".into()));
        }
        match w.approval_type.as_deref() {
            None | Some("human") => check_human_workflow(&key, &w)?,
            Some("ai_driven") => {
                let ai = ai_workflow(&key, &w, &providers)?;
                if let Some(to) = &ai.escalation_workflow {
                    escalations.push((i, w.name.clone(), to.clone()));
                }
                ai_workflows.insert(w.name.clone(), ai);
            }
            Some(other) => {
                return Err((
                    format!("{key}.approval_type"),
                    format!("unknown approval type {other:?}; use \"human\" or \"ai_driven\""),
                ));
            }
        }
        let required = w.required_approvals.unwrap_or(1);
        if required == 0 {
            return Err((format!("{key}.required_approvals"), "must be at least 1".into()));
        }
        let expiry = match &w.expiry {
            Some(_) => Some(duration(&format!("{key}.expiry"), &w.expiry, 0)?),
            None => None,
        };
        for (j, entry) in w.approvers.iter().enumerate() {
            let known = match entry.strip_prefix("team:") {
                Some(team) => approvers.principals().any(|p| p.teams.iter().any(|t| t == team)),
                None => entry == crate::identity::OPERATOR || approvers.principals().any(|p| &p.name == entry),
            };
            if !known {
                return Err((
                    format!("{key}.approvers[{j}]"),
                    format!("{entry:?} is not an approver name or a team of one in [[approvers]]"),
                ));
            }
        }
        let workflow = crate::approval::Workflow {
            name: w.name.clone(),
            required_approvals: required,
            approvers: w.approvers.clone(),
            expiry,
            justify_approve: w.require_justification.unwrap_or(false),
            grant_secs: w.grant_secs.unwrap_or(0),
        };
        if map.insert(w.name.clone(), workflow).is_some() {
            return Err((format!("{key}.name"), format!("workflow {:?} is defined twice", w.name)));
        }
    }
    for name in policy.workflows_used() {
        if name != "default" && !map.contains_key(&name) {
            return Err((
                "rules".into(),
                format!("workflow {name:?} is used by a rule but not defined in [[workflows]]"),
            ));
        }
    }
    map.entry("default".to_owned()).or_insert_with(|| crate::approval::Workflow::default_named("default"));
    for (i, from, to) in escalations {
        let key = format!("workflows[{i}].escalation_workflow");
        if !map.contains_key(&to) {
            return Err((key, format!("workflow {to:?} is not defined in [[workflows]]")));
        }
        if ai_workflows.contains_key(&to) {
            return Err((
                key,
                format!(
                    "workflow {to:?} is ai_driven; {from:?} must escalate to a human workflow, where people decide"
                ),
            ));
        }
    }

    for (i, p) in raw.redact.iter().enumerate() {
        if !p.is_empty() && !p.starts_with('/') {
            return Err((
                format!("approvals.redact[{i}]"),
                format!("{p:?} is not a JSON pointer (it must start with '/')"),
            ));
        }
    }
    let wait_secs = match std::env::var("MCP_GATE_WAIT_SECS") {
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .map_err(|_| ("MCP_GATE_WAIT_SECS".to_owned(), format!("{v:?} is not a number of seconds")))?,
        Err(_) => raw.wait_secs.unwrap_or(0),
    };
    let listen = std::env::var("MCP_GATE_APPROVALS_LISTEN")
        .ok()
        .or(raw.listen)
        .unwrap_or_else(|| DEFAULT_APPROVALS_LISTEN.to_owned());
    if listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(("approvals.listen".into(), format!("{listen:?} is not an address like 127.0.0.1:8377")));
    }
    if let Some(url) = &raw.public_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(("approvals.public_url".into(), format!("{url:?} is not an http(s) URL")));
    }
    let (token, token_key) = match std::env::var("MCP_GATE_TOKEN").ok().filter(|t| !t.is_empty()) {
        Some(t) => (Some(t), "MCP_GATE_TOKEN"),
        None => (raw.token, "approvals.token"),
    };
    if let Some(t) = &token
        && t.len() < 16
    {
        return Err(("approvals.token".into(), "use at least 16 characters".into()));
    }
    let data_dir = raw.data_dir.unwrap_or_else(default_data_dir);
    let database = match raw.database.as_deref() {
        Some(":memory:") => None,
        Some(path) => Some(PathBuf::from(path)),
        None => Some(data_dir.join("mcp-gate.db")),
    };
    Ok(Approvals {
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
        limits: listener_limits("approvals", raw.max_connections, raw.header_timeout_secs)?,
    })
}

/// A number of seconds, at least one; `default` when not given.
fn secs(key: &str, value: Option<u64>, default: Duration) -> Result<Duration, (String, String)> {
    match value {
        None => Ok(default),
        Some(0) => Err((key.to_owned(), "must be at least 1 second".into())),
        Some(n) => Ok(Duration::from_secs(n)),
    }
}

/// `max_connections` and `header_timeout_secs` of a listener's section.
fn listener_limits(
    section: &str,
    max_connections: Option<usize>,
    header_timeout_secs: Option<u64>,
) -> Result<ListenerLimits, (String, String)> {
    let default = ListenerLimits::default();
    let max_connections = max_connections.unwrap_or(default.max_connections);
    if max_connections == 0 {
        return Err((format!("{section}.max_connections"), "must be at least 1".into()));
    }
    let header_timeout = secs(&format!("{section}.header_timeout_secs"), header_timeout_secs, default.header_timeout)?;
    Ok(ListenerLimits { max_connections, header_timeout })
}

/// Refuses any configuration in which an agent credential (the HTTP token, `[[agents]]`) is also
/// an approver credential (the shared approver token, `[[approvers]]`): whoever holds it could
/// approve the calls it makes. `shared` is the shared approver token and the key it came from;
/// the error names both keys.
pub fn credentials_apart(
    listen: &Listen,
    approvals: &Approvals,
    shared: Option<(&str, &str)>,
) -> Result<(), (String, String)> {
    let clash = |agent: &str, approver: &str| {
        (
            agent.to_owned(),
            format!(
                "the agent credential `{agent}` is the same as the approver credential `{approver}`; an agent must \
                 never hold an approver's token: give each its own"
            ),
        )
    };
    if let Some((agent, approver)) = approvals.agents.shares_a_token_with(&approvals.approvers) {
        return Err(clash(agent, approver));
    }
    if let Some(http) = listen.token.as_deref() {
        if let Some((shared, shared_key)) = shared
            && crate::http::guard::constant_time_eq(http.as_bytes(), shared.as_bytes())
        {
            return Err(clash(&listen.token_key, shared_key));
        }
        if let Some(approver) = approvals.approvers.key_of(http) {
            return Err(clash(&listen.token_key, approver));
        }
    }
    if let Some((shared, shared_key)) = shared
        && let Some(agent) = approvals.agents.key_of(shared)
    {
        return Err(clash(agent, shared_key));
    }
    Ok(())
}

/// The `ai_*` keys and `escalation_workflow` belong to `ai_driven` workflows.
fn check_human_workflow(key: &str, w: &RawWorkflow) -> Result<(), (String, String)> {
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
            Err((format!("{key}.{name}"), "applies only to a workflow with approval_type = \"ai_driven\"".into()))
        }
        None => Ok(()),
    }
}

/// The reviewer settings of an `ai_driven` workflow.
fn ai_workflow(
    key: &str,
    w: &RawWorkflow,
    providers: &BTreeMap<String, crate::review::ProviderConfig>,
) -> Result<crate::review::AiWorkflow, (String, String)> {
    use crate::review::{AiWorkflow, DEFAULT_CACHE_SECS, DEFAULT_THRESHOLD, Fallback};
    let human_keys = [
        ("required_approvals", w.required_approvals.is_some()),
        ("approvers", !w.approvers.is_empty()),
        ("require_justification", w.require_justification.is_some()),
        ("grant_secs", w.grant_secs.is_some()),
    ];
    if let Some((name, _)) = human_keys.iter().find(|(_, set)| *set) {
        return Err((
            format!("{key}.{name}"),
            "applies only to human workflows; an ai_driven workflow's reviewer decides alone (see ai_cache_secs \
             for reusing decisions)"
                .into(),
        ));
    }
    let required = |name: &str, value: &Option<String>, what: &str| -> Result<String, (String, String)> {
        match value.as_deref().map(str::trim) {
            Some(v) if !v.is_empty() => Ok(v.to_owned()),
            _ => Err((format!("{key}.{name}"), format!("an ai_driven workflow needs {what}"))),
        }
    };
    let model = required("ai_model", &w.ai_model, "the model to ask (e.g. \"claude-sonnet-4-5\", \"llama3.1:8b\")")?;
    let guidelines = required("ai_guidelines", &w.ai_guidelines, "the guidelines the reviewer decides by")?;
    let provider = required("ai_provider", &w.ai_provider, "a provider: the name of a [providers.NAME] table")?;
    if !providers.contains_key(&provider) {
        let known: Vec<&str> = providers.keys().map(String::as_str).collect();
        return Err((
            format!("{key}.ai_provider"),
            if known.is_empty() {
                format!("provider {provider:?} is not defined: add a [providers.{provider}] table")
            } else {
                format!("provider {provider:?} is not defined; defined: {}", known.join(", "))
            },
        ));
    }
    let threshold = w.ai_confidence_threshold.unwrap_or(DEFAULT_THRESHOLD);
    if !(threshold.is_finite() && (0.0..=1.0).contains(&threshold)) {
        return Err((format!("{key}.ai_confidence_threshold"), format!("{threshold} is not within 0..=1")));
    }
    let fallback = match w.ai_fallback_behavior.as_deref() {
        None | Some("escalate") => Fallback::Escalate,
        Some("approve") => Fallback::Approve,
        Some("deny") => Fallback::Deny,
        Some(other) => {
            return Err((
                format!("{key}.ai_fallback_behavior"),
                format!("unknown fallback {other:?}; use \"escalate\", \"approve\" or \"deny\""),
            ));
        }
    };
    let escalation_workflow = w.escalation_workflow.clone().filter(|e| !e.trim().is_empty());
    match (fallback, &escalation_workflow) {
        (Fallback::Escalate, None) => {
            return Err((
                format!("{key}.escalation_workflow"),
                "required when ai_fallback_behavior is \"escalate\" (the default): name the human workflow that \
                 decides the calls the reviewer is unsure of"
                    .into(),
            ));
        }
        (Fallback::Approve | Fallback::Deny, Some(_)) => {
            return Err((
                format!("{key}.escalation_workflow"),
                format!("is only used when ai_fallback_behavior is \"escalate\", not {:?}", fallback.as_str()),
            ));
        }
        _ => {}
    }
    Ok(AiWorkflow {
        name: w.name.clone(),
        model,
        guidelines,
        threshold,
        fallback,
        escalation_workflow,
        provider,
        cache: Duration::from_secs(w.ai_cache_secs.unwrap_or(DEFAULT_CACHE_SECS)),
    })
}

fn validate_providers(
    raw: BTreeMap<String, RawProvider>,
) -> Result<BTreeMap<String, crate::review::ProviderConfig>, (String, String)> {
    use crate::review::{
        ANTHROPIC_BASE_URL, DEFAULT_TIMEOUT_SECS, OPENAI_BASE_URL, ProviderConfig, ProviderKind, Secret,
    };
    let mut out = BTreeMap::new();
    for (name, p) in raw {
        let key = format!("providers.{name}");
        let kind = match p.kind.as_deref() {
            Some("anthropic") => ProviderKind::Anthropic,
            Some("openai") => ProviderKind::OpenAi,
            Some(other) => {
                return Err((
                    format!("{key}.type"),
                    format!(
                        "unknown provider type {other:?}; use \"anthropic\" or \"openai\" (any OpenAI-compatible \
                         server: Ollama, vLLM, LM Studio, llama.cpp)"
                    ),
                ));
            }
            None => return Err((format!("{key}.type"), "required: \"anthropic\" or \"openai\"".into())),
        };
        let base_url = p.base_url.unwrap_or_else(|| {
            match kind {
                ProviderKind::Anthropic => ANTHROPIC_BASE_URL,
                ProviderKind::OpenAi => OPENAI_BASE_URL,
            }
            .to_owned()
        });
        if !(base_url.starts_with("http://") || base_url.starts_with("https://"))
            || reqwest::Url::parse(&base_url).is_err()
        {
            return Err((format!("{key}.base_url"), format!("{base_url:?} is not an http(s) URL")));
        }
        let api_key = match &p.api_key_env {
            Some(var) => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Some(Secret::new(v.trim())),
                _ => {
                    return Err((
                        format!("{key}.api_key_env"),
                        format!("environment variable {var} is not set (it should hold the provider's API key)"),
                    ));
                }
            },
            None => None,
        };
        let timeout_secs = p.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
        if timeout_secs == 0 {
            return Err((format!("{key}.timeout_secs"), "must be at least 1".into()));
        }
        out.insert(
            name.clone(),
            ProviderConfig {
                name,
                kind,
                base_url,
                api_key_env: p.api_key_env,
                api_key,
                timeout: Duration::from_secs(timeout_secs),
            },
        );
    }
    Ok(out)
}

fn validate_webhooks(raw: Vec<RawWebhook>) -> Result<Vec<crate::server::notify::Webhook>, (String, String)> {
    use crate::server::notify::{DEFAULT_EVENTS, DEFAULT_TIMEOUT, Format, Webhook};
    let mut out: Vec<Webhook> = Vec::new();
    for (i, w) in raw.into_iter().enumerate() {
        let key = format!("webhooks[{i}]");
        let name = match w.name {
            Some(n) if n.trim().is_empty() => return Err((format!("{key}.name"), "must not be empty".into())),
            Some(n) => n,
            None => key.clone(),
        };
        if out.iter().any(|o| o.name == name) {
            return Err((format!("{key}.name"), format!("webhook {name:?} is defined twice")));
        }
        let Some(raw_url) = w.url else { return Err((format!("{key}.url"), "a webhook needs a url".into())) };
        let url = expand_env(&raw_url).map_err(|m| (format!("{key}.url"), m))?;
        // The expanded URL may hold a secret: messages quote what the file says.
        let parsed = reqwest::Url::parse(&url).ok().filter(|u| matches!(u.scheme(), "http" | "https"));
        if parsed.as_ref().and_then(|u| u.host_str()).is_none_or(str::is_empty) {
            return Err((format!("{key}.url"), format!("{raw_url:?} is not an http:// or https:// URL")));
        }
        let format = match w.format.as_deref() {
            None => Format::Generic,
            Some(f) => f.parse::<Format>().map_err(|m| (format!("{key}.format"), m))?,
        };
        if format == Format::Ntfy && !crate::server::notify::ntfy::is_topic_url(&url) {
            return Err((
                format!("{key}.url"),
                format!("{raw_url:?} does not end with an ntfy topic, as in \"https://ntfy.sh/TOPIC\""),
            ));
        }
        let secret = match w.secret_env {
            Some(var) => match std::env::var(&var) {
                Ok(v) if !v.is_empty() => Some(v.into_bytes()),
                Ok(_) => return Err((format!("{key}.secret_env"), format!("environment variable {var} is empty"))),
                Err(_) => {
                    return Err((format!("{key}.secret_env"), format!("environment variable {var} is not set")));
                }
            },
            None if format == Format::Generic => {
                return Err((
                    format!("{key}.secret_env"),
                    "a generic webhook needs the name of the environment variable holding its signing key".into(),
                ));
            }
            None => None,
        };
        let events = match w.events {
            None => DEFAULT_EVENTS.into_iter().collect(),
            Some(list) if list.is_empty() => {
                return Err((
                    format!("{key}.events"),
                    "an empty list sends nothing; remove the webhook instead".into(),
                ));
            }
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(j, k)| {
                    k.parse::<crate::approval::ChangeKind>().map_err(|m| {
                        let known = crate::approval::ChangeKind::ALL.map(|k| k.as_str()).join(", ");
                        (format!("{key}.events[{j}]"), format!("{m}; use one of {known}"))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let timeout = match w.timeout_secs {
            None => DEFAULT_TIMEOUT,
            Some(s @ 1..=300) => Duration::from_secs(s),
            Some(s) => return Err((format!("{key}.timeout_secs"), format!("{s} is not between 1 and 300"))),
        };
        out.push(Webhook { name, url, format, secret, events, timeout });
    }
    Ok(out)
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

/// Parses `90s`, `15m`, `4h`, `1d` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().ok()?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return None,
    };
    (secs > 0).then(|| Duration::from_secs(secs))
}

#[allow(clippy::too_many_arguments)]
fn server_transport(
    key: &str,
    command: Option<String>,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    url: Option<String>,
    transport: Option<String>,
    headers: BTreeMap<String, String>,
) -> Result<UpstreamTransport, (String, String)> {
    let expand_all = |what: &str, map: BTreeMap<String, String>| -> Result<Vec<(String, String)>, (String, String)> {
        map.into_iter()
            .map(|(k, v)| {
                let v = expand_env(&v).map_err(|m| (format!("{key}.{what}.{k}"), m))?;
                Ok((k, v))
            })
            .collect()
    };
    match (command, url) {
        (Some(_), Some(_)) => Err((key.to_owned(), "set either `command` or `url`, not both".into())),
        (None, None) => Err((key.to_owned(), "needs a `command` (stdio server) or a `url` (HTTP server)".into())),
        (Some(command), None) => {
            if let Some(t) = transport.filter(|t| t != "stdio") {
                return Err((format!("{key}.transport"), format!("{t:?} needs a `url`; a `command` is always stdio")));
            }
            if !headers.is_empty() {
                return Err((format!("{key}.headers"), "only HTTP servers take headers".into()));
            }
            let args = args
                .iter()
                .enumerate()
                .map(|(i, a)| expand_env(a).map_err(|m| (format!("{key}.args[{i}]"), m)))
                .collect::<Result<_, _>>()?;
            Ok(UpstreamTransport::Stdio { command, args, env: expand_all("env", env)?, cwd })
        }
        (None, Some(url)) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err((format!("{key}.url"), format!("{url:?} is not an http:// or https:// URL")));
            }
            if !args.is_empty() || !env.is_empty() || cwd.is_some() {
                return Err((key.to_owned(), "`args`, `env` and `cwd` apply only to a `command`".into()));
            }
            let headers = expand_all("headers", headers)?;
            match transport.as_deref() {
                None | Some("streamable-http") | Some("http") => Ok(UpstreamTransport::StreamableHttp { url, headers }),
                Some("sse") => Ok(UpstreamTransport::Sse { url, headers }),
                Some(other) => Err((
                    format!("{key}.transport"),
                    format!("unknown transport {other:?}; use \"streamable-http\" or \"sse\""),
                )),
            }
        }
    }
}

fn check_server_name(name: &str, separator: &str) -> Result<(), String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(format!("server name {name:?} may only use letters, digits, '-' and '_'"));
    }
    if name.contains(separator) {
        return Err(format!("server name {name:?} contains the separator {separator:?}"));
    }
    Ok(())
}

/// Refuses two prefixed servers whose exposed names could meet: with separator `__`, `a` and `a_`
/// both could own `a___x` (`a` + `__` + `_x`, or `a_` + `__` + `x`). That happens exactly when one
/// name extends the other by a tail that, followed by the separator, starts with the separator.
fn check_prefixes_unambiguous(servers: &[ServerConfig], separator: &str) -> Result<(), (String, String)> {
    let prefixed: Vec<&str> = servers.iter().filter(|s| s.prefix).map(|s| s.name.as_str()).collect();
    for short in &prefixed {
        for long in &prefixed {
            let Some(tail) = long.strip_prefix(short) else { continue };
            if !tail.is_empty() && format!("{tail}{separator}").starts_with(separator) {
                let example = format!("{long}{separator}x");
                return Err((
                    format!("servers.{long}"),
                    format!(
                        "server names {short:?} and {long:?} are ambiguous with the separator {separator:?}: \
                         {example:?} could be a tool of either; rename one or change `proxy.separator`"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A server name derived from a command (`/usr/bin/mcp-server-x` -> `mcp-server-x`) or a URL host.
fn default_name(first: &str, is_url: bool) -> String {
    let base = if is_url {
        first.split("://").nth(1).unwrap_or(first).split(['/', ':']).next().unwrap_or("upstream")
    } else {
        Path::new(first).file_stem().and_then(|s| s.to_str()).unwrap_or("upstream")
    };
    let name: String = base
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' })
        .collect::<String>()
        .replace("__", "-");
    if name.is_empty() { "upstream".to_owned() } else { name }
}

/// Expands `${VAR}` references from the environment; a missing variable is an error.
pub fn expand_env(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("unterminated ${{ in {value:?}"))?;
        let var = &after[..end];
        let val = std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?;
        out.push_str(&val);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn describe_figment_error(e: figment::Error, file: Option<&Path>) -> String {
    let file = file.map_or_else(|| "configuration".to_owned(), |f| f.display().to_string());
    let mut parts = Vec::new();
    for err in e {
        let key = err.path.join(".");
        let source =
            err.metadata.as_ref().and_then(|m| m.source.as_ref()).map_or_else(|| file.clone(), |s| s.to_string());
        if key.is_empty() {
            parts.push(format!("{source}: {}", err.kind));
        } else {
            parts.push(format!("{source}: `{key}`: {}", err.kind));
        }
    }
    parts.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_key_and_file() {
        let err = Config::from_toml("[servers.a]\ncommand = \"x\"\ncomand = \"y\"\n", "proxy.toml").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("proxy.toml"), "{text}");
        assert!(text.contains("servers.a"), "{text}");
        assert!(text.contains("comand"), "{text}");
    }

    #[test]
    fn server_needs_command_or_url() {
        let err = Config::from_toml("[servers.a]\nargs = [\"x\"]\n", "p.toml").unwrap_err();
        assert_eq!(err.to_string(), "p.toml: `servers.a`: needs a `command` (stdio server) or a `url` (HTTP server)");
        let err = Config::from_toml("[servers.a]\nurl = \"http://x\"\ntransport = \"ws\"\n", "p.toml").unwrap_err();
        assert!(err.to_string().contains("servers.a.transport"), "{err}");
    }

    #[test]
    fn names_and_defaults() {
        assert_eq!(default_name("/usr/bin/mcp-server-x", false), "mcp-server-x");
        assert_eq!(default_name("https://api.example.com:8443/mcp", true), "api-example-com");
        assert!(check_server_name("a__b", "__").is_err());
        assert!(check_server_name("fs-1", "__").is_ok());
        let cfg = Config::from_toml(
            "[servers.b]\nurl = \"https://x/mcp\"\ntransport = \"sse\"\n[servers.a]\ncommand = \"c\"\nprefix = false\n",
            "p.toml",
        )
        .unwrap();
        assert_eq!(cfg.servers.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert!(!cfg.servers[0].prefix);
        assert!(matches!(cfg.servers[1].transport, UpstreamTransport::Sse { .. }));
    }

    #[test]
    fn limits_have_defaults_per_server_overrides_and_name_their_key() {
        let cfg = Config::from_toml(
            "[upstream]\nrequest_timeout_secs = 60\n[servers.a]\ncommand = \"c\"\n[servers.b]\ncommand = \"c\"\ninitialize_timeout_secs = 5\n",
            "p.toml",
        )
        .unwrap();
        assert_eq!(cfg.servers[0].request_timeout, Duration::from_secs(60));
        assert_eq!(cfg.servers[0].initialize_timeout, DEFAULT_INITIALIZE_TIMEOUT);
        assert_eq!(cfg.servers[1].initialize_timeout, Duration::from_secs(5));
        assert_eq!(cfg.listen.max_sessions, DEFAULT_MAX_SESSIONS);
        assert_eq!(cfg.listen.session_idle, DEFAULT_SESSION_IDLE);
        assert_eq!(cfg.listen.limits, ListenerLimits::default());
        assert_eq!(cfg.approvals.limits, ListenerLimits::default());
        for (toml, key) in [
            ("[listen]\nmax_sessions = 0\n", "listen.max_sessions"),
            ("[listen]\nsession_idle_secs = 0\n", "listen.session_idle_secs"),
            ("[listen]\nmax_connections = 0\n", "listen.max_connections"),
            ("[listen]\nheader_timeout_secs = 0\n", "listen.header_timeout_secs"),
            ("[approvals]\nmax_connections = 0\n", "approvals.max_connections"),
            ("[upstream]\nrequest_timeout_secs = 0\n", "upstream.request_timeout_secs"),
            ("[servers.a]\ncommand = \"c\"\ninitialize_timeout_secs = 0\n", "servers.a.initialize_timeout_secs"),
        ] {
            match Config::from_toml(toml, "p.toml") {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{toml}"),
                other => panic!("{toml}: {other:?}"),
            }
        }
    }

    #[test]
    fn server_names_that_make_exposed_names_ambiguous_are_refused() {
        let servers =
            |names: &str| names.split(' ').map(|n| format!("[servers.{n}]\ncommand = \"c\"\n")).collect::<String>();
        let err = Config::from_toml(&servers("a a_"), "p.toml").unwrap_err().to_string();
        assert!(err.starts_with("p.toml: `servers.a_`: "), "{err}");
        assert!(err.contains("\"a\" and \"a_\""), "{err}");
        let err = Config::from_toml(&servers("fs fs__x"), "p.toml");
        assert!(err.is_err(), "a name with the separator is refused on its own");
        let err = Config::from_toml(&format!("[proxy]\nseparator = \"--\"\n{}", servers("a a-")), "p.toml");
        assert!(err.unwrap_err().to_string().contains("servers.a-"));
        // With `_.` no tail of letters, digits, '-' or '_' followed by `_.` starts with `_.`.
        Config::from_toml(&format!("[proxy]\nseparator = \"_.\"\n{}", servers("a a_")), "p.toml").unwrap();
        // A name that merely starts with another is fine when no separator can follow.
        Config::from_toml(&servers("a ab a-b"), "p.toml").unwrap();
        // Unprefixed servers expose bare names and cannot meet this way.
        Config::from_toml("[servers.a]\ncommand = \"c\"\n[servers.a_]\ncommand = \"c\"\nprefix = false\n", "p.toml")
            .unwrap();
    }

    #[test]
    fn env_expansion_reports_missing_variable() {
        assert_eq!(expand_env("Bearer ${PATH}").unwrap(), format!("Bearer {}", std::env::var("PATH").unwrap()));
        let err = expand_env("${MCP_GATE_SURELY_UNSET_VAR}").unwrap_err();
        assert!(err.contains("MCP_GATE_SURELY_UNSET_VAR"));
    }

    fn webhook_error(toml: &str) -> String {
        Config::from_toml(toml, "hooks.toml").unwrap_err().to_string()
    }

    #[test]
    fn webhook_errors_name_the_key_and_the_file() {
        let err = webhook_error(
            "[[webhooks]]\nurl = \"https://example.com/hook\"\nsecret_env = \"MCP_GATE_SURELY_UNSET_SECRET\"\n",
        );
        assert_eq!(
            err,
            "hooks.toml: `webhooks[0].secret_env`: environment variable MCP_GATE_SURELY_UNSET_SECRET is not set"
        );
        let err = webhook_error("[[webhooks]]\nurl = \"https://example.com/hook\"\n");
        assert!(err.starts_with("hooks.toml: `webhooks[0].secret_env`: a generic webhook needs"), "{err}");
        let err = webhook_error("[[webhooks]]\nurl = \"ftp://example.com/hook\"\nformat = \"slack\"\n");
        assert_eq!(err, "hooks.toml: `webhooks[0].url`: \"ftp://example.com/hook\" is not an http:// or https:// URL");
        let err = webhook_error("[[webhooks]]\nurl = \"https://\"\nformat = \"slack\"\n");
        assert!(err.contains("`webhooks[0].url`"), "{err}");
        let err = webhook_error(
            "[[webhooks]]\nurl = \"https://hooks.slack.com/${MCP_GATE_SURELY_UNSET_SLACK}\"\nformat = \"slack\"\n",
        );
        assert_eq!(err, "hooks.toml: `webhooks[0].url`: environment variable MCP_GATE_SURELY_UNSET_SLACK is not set");
        let err = webhook_error(
            "[[webhooks]]\nurl = \"https://x/\"\nformat = \"teams\"\nevents = [\"requested\", \"aproved\"]\n",
        );
        assert!(err.starts_with("hooks.toml: `webhooks[0].events[1]`: unknown change kind \"aproved\""), "{err}");
        assert!(err.contains("requested, voted, approved"), "{err}");
        let err = webhook_error("[[webhooks]]\nurl = \"https://x/\"\nformat = \"discord\"\n");
        assert!(err.contains("`webhooks[0].format`") && err.contains("discord"), "{err}");
        let err = webhook_error("[[webhooks]]\nurl = \"https://x/\"\nformat = \"slack\"\ntimeout_secs = 0\n");
        assert!(err.contains("`webhooks[0].timeout_secs`"), "{err}");
        let err = webhook_error("[[webhooks]]\nurl = \"https://x/\"\nformat = \"slack\"\nsecrets_env = \"X\"\n");
        assert!(err.contains("secrets_env"), "unknown keys are refused: {err}");
    }

    #[test]
    fn webhook_defaults() {
        let cfg = Config::from_toml(
            r#"
[[webhooks]]
url = "https://hooks.example.com/T0/B0/${PATH}"
format = "slack"

[[webhooks]]
name = "ops"
url = "http://127.0.0.1:9/"
format = "teams"
events = ["requested"]
timeout_secs = 3
"#,
            "p.toml",
        )
        .unwrap();
        let [slack, teams] = &cfg.webhooks[..] else { panic!("two webhooks") };
        assert_eq!(slack.name, "webhooks[0]");
        assert_eq!(slack.format, crate::server::notify::Format::Slack);
        assert!(slack.url.ends_with(&std::env::var("PATH").unwrap()), "${{VAR}} is expanded in the url");
        assert!(slack.secret.is_none());
        assert_eq!(slack.events, crate::server::notify::DEFAULT_EVENTS.into_iter().collect());
        assert_eq!(slack.timeout, Duration::from_secs(10));
        assert_eq!(teams.name, "ops");
        assert_eq!(teams.events, [crate::approval::ChangeKind::Requested].into_iter().collect());
        assert_eq!(teams.timeout, Duration::from_secs(3));
        assert!(!format!("{slack:?}").contains("T0/B0"), "debug output hides the url");
        assert!(cfg.explain().contains("webhook ops: teams to 127.0.0.1, on requested"), "{}", cfg.explain());
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The annotated example at the top of the repository must stay valid.
    #[test]
    fn example_config_validates() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml");
        let text = std::fs::read_to_string(path).expect("proxy.toml");
        let config = Config::from_toml(&text, path).expect("proxy.toml is valid");
        assert_eq!(config.servers.len(), 1);
        assert_eq!(config.listen.addr.map(|a| a.to_string()).as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(config.policy.rule_labels().len(), 4);
        assert_eq!(config.approvals.workflows["two-person"].required_approvals, 2);
        assert!(config.policy.lint().is_empty(), "{:?}", config.policy.lint());
        // Denies and approvals come before the rules that match on annotations, and every
        // workflow can reach its quorum: check-config has nothing to warn about.
        let labels = config.policy.rule_labels();
        assert!(labels[0].contains("no environment dumps") && labels[3].contains("read-only tools"), "{labels:?}");
        assert!(!config.explain().contains("warning:"), "{}", config.explain());
        let ai = &config.approvals.ai_workflows["ai-triage"];
        assert_eq!(ai.escalation_workflow.as_deref(), Some("default"));
        assert_eq!(config.approvals.providers["local"].endpoint(), "http://127.0.0.1:11434/v1/chat/completions");
        let ai_lint = crate::review::lint(&config.approvals.ai_workflows, &config.approvals.providers);
        assert!(ai_lint.is_empty(), "{ai_lint:?}");
    }

    /// The TOML examples of the README's "AI reviewer" section are valid (a key variable they
    /// name may be unset here, which is then the only error).
    #[test]
    fn readme_ai_reviewer_examples_validate() {
        let readme = include_str!("../README.md");
        let start = readme.find("\n## AI reviewer\n").expect("the AI reviewer section");
        let section = &readme[start + 1..];
        let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
        let blocks: Vec<&str> =
            section.split("```toml\n").skip(1).map(|b| b.split("```").next().unwrap_or_default()).collect();
        assert!(blocks.len() >= 2, "{} blocks", blocks.len());
        for &block in &blocks {
            match Config::from_toml(block, "README.md") {
                Ok(config) => assert!(!config.approvals.providers.is_empty(), "{block}"),
                Err(ConfigError::Invalid { key, message, .. }) if key.ends_with(".api_key_env") => {
                    assert!(message.contains("is not set"), "{message}")
                }
                Err(e) => panic!("README example does not validate: {e}\n{block}"),
            }
        }
        let first = Config::from_toml(blocks[0], "README.md").unwrap();
        assert_eq!(first.approvals.ai_workflows["ai-triage"].escalation_workflow.as_deref(), Some("people"));
    }
}

#[cfg(test)]
mod ai_config_tests {
    use super::*;
    use crate::review::{Fallback, ProviderKind};

    const PROVIDER: &str = "[providers.local]\ntype = \"openai\"\nbase_url = \"http://127.0.0.1:11434/v1\"\n";

    fn with_ai(workflow_keys: &str, rest: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "[[workflows]]\nname = \"ai\"\napproval_type = \"ai_driven\"\nai_model = \"llama3.1:8b\"\n\
             ai_guidelines = \"Approve reads.\"\nai_provider = \"local\"\n{workflow_keys}\n\
             [[workflows]]\nname = \"people\"\n{rest}\n{PROVIDER}"
        );
        Config::from_toml(&text, "ai.toml")
    }

    fn error(result: Result<Config, ConfigError>) -> (String, String) {
        match result {
            Err(ConfigError::Invalid { file, key, message }) => {
                assert_eq!(file, "ai.toml");
                (key, message)
            }
            other => panic!("expected an invalid-key error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_of_an_ai_workflow_and_a_provider() {
        let config = with_ai("escalation_workflow = \"people\"", "").unwrap();
        let ai = &config.approvals.ai_workflows["ai"];
        assert_eq!(ai.threshold, 0.8);
        assert_eq!(ai.fallback, Fallback::Escalate);
        assert_eq!(ai.escalation_workflow.as_deref(), Some("people"));
        assert_eq!(ai.cache, Duration::from_secs(300));
        let p = &config.approvals.providers["local"];
        assert_eq!(p.kind, ProviderKind::OpenAi);
        assert_eq!(p.timeout, Duration::from_secs(20));
        assert!(p.api_key.is_none());
        assert_eq!(p.endpoint(), "http://127.0.0.1:11434/v1/chat/completions");
        // An ai_driven workflow is also a workflow people can decide (its requests are single use).
        assert_eq!(config.approvals.workflows["ai"].required_approvals, 1);

        let anthropic = Config::from_toml(
            "[providers.claude]\ntype = \"anthropic\"\n[[workflows]]\nname = \"a\"\napproval_type = \"ai_driven\"\n\
             ai_model = \"m\"\nai_guidelines = \"g\"\nai_provider = \"claude\"\nai_fallback_behavior = \"deny\"\n\
             ai_confidence_threshold = 1\nai_cache_secs = 0\n",
            "ai.toml",
        )
        .unwrap();
        assert_eq!(anthropic.approvals.providers["claude"].endpoint(), "https://api.anthropic.com/v1/messages");
        let a = &anthropic.approvals.ai_workflows["a"];
        assert_eq!((a.fallback, a.threshold, a.cache), (Fallback::Deny, 1.0, Duration::ZERO));
    }

    #[test]
    fn escalate_needs_an_escalation_workflow() {
        let (key, message) = error(with_ai("", ""));
        assert_eq!(key, "workflows[0].escalation_workflow");
        assert!(message.contains("required") && message.contains("escalate"), "{message}");
        assert!(message.contains("human workflow"), "{message}");
    }

    #[test]
    fn the_provider_must_exist() {
        let text = "[[workflows]]\nname = \"ai\"\napproval_type = \"ai_driven\"\nai_model = \"m\"\n\
                    ai_guidelines = \"g\"\nai_provider = \"cloud\"\nai_fallback_behavior = \"deny\"\n";
        let (key, message) = error(Config::from_toml(&format!("{text}{PROVIDER}"), "ai.toml"));
        assert_eq!(key, "workflows[0].ai_provider");
        assert!(message.contains("\"cloud\"") && message.contains("local"), "{message}");
        let (key, message) = error(Config::from_toml(text, "ai.toml"));
        assert_eq!(key, "workflows[0].ai_provider");
        assert!(message.contains("[providers.cloud]"), "{message}");
    }

    #[test]
    fn the_threshold_is_within_zero_and_one() {
        for bad in ["1.5", "-0.1", "nan", "inf"] {
            let (key, message) =
                error(with_ai(&format!("escalation_workflow = \"people\"\nai_confidence_threshold = {bad}"), ""));
            assert_eq!(key, "workflows[0].ai_confidence_threshold", "{bad}");
            assert!(message.contains("0..=1"), "{message}");
        }
        assert!(with_ai("escalation_workflow = \"people\"\nai_confidence_threshold = 0", "").is_ok());
    }

    #[test]
    fn escalation_goes_to_a_defined_human_workflow() {
        let (key, message) = error(with_ai("escalation_workflow = \"nobody\"", ""));
        assert_eq!(key, "workflows[0].escalation_workflow");
        assert!(message.contains("not defined"), "{message}");

        let second_ai = "[[workflows]]\nname = \"ai2\"\napproval_type = \"ai_driven\"\nai_model = \"m\"\n\
                         ai_guidelines = \"g\"\nai_provider = \"local\"\nai_fallback_behavior = \"deny\"\n";
        let (key, message) = error(with_ai("escalation_workflow = \"ai2\"", second_ai));
        assert_eq!(key, "workflows[0].escalation_workflow");
        assert!(message.contains("ai_driven") && message.contains("human"), "{message}");
        let (key, _) = error(with_ai("escalation_workflow = \"ai\"", ""));
        assert_eq!(key, "workflows[0].escalation_workflow", "not to itself either");

        // The implicit default workflow is a human one.
        assert!(with_ai("escalation_workflow = \"default\"", "").is_ok());
        // Only the escalate fallback uses it.
        let (key, _) = error(with_ai("escalation_workflow = \"people\"\nai_fallback_behavior = \"approve\"", ""));
        assert_eq!(key, "workflows[0].escalation_workflow");
    }

    #[test]
    fn other_invalid_ai_settings_name_their_key() {
        let cases = [
            (
                "escalation_workflow = \"people\"\nai_fallback_behavior = \"ask\"",
                "",
                "workflows[0].ai_fallback_behavior",
            ),
            ("escalation_workflow = \"people\"\nrequired_approvals = 2", "", "workflows[0].required_approvals"),
            ("escalation_workflow = \"people\"\ngrant_secs = 60", "", "workflows[0].grant_secs"),
            ("escalation_workflow = \"people\"", "ai_model = \"m\"", "workflows[1].ai_model"),
            ("escalation_workflow = \"people\"", "approval_type = \"robot\"", "workflows[1].approval_type"),
        ];
        for (workflow, rest, want) in cases {
            match with_ai(workflow, rest) {
                Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, want, "{workflow} / {rest}"),
                Err(ConfigError::Load(text)) => assert_eq!(want, "TOML", "{text}"),
                Ok(_) => panic!("accepted: {workflow} / {rest}"),
            }
        }
        let missing = "[[workflows]]\nname = \"ai\"\napproval_type = \"ai_driven\"\nai_provider = \"local\"\n\
                       ai_guidelines = \"g\"\nai_fallback_behavior = \"deny\"\n";
        let (key, _) = error(Config::from_toml(&format!("{missing}{PROVIDER}"), "ai.toml"));
        assert_eq!(key, "workflows[0].ai_model");
        let blank = missing.replace("ai_guidelines = \"g\"", "ai_model = \"m\"\nai_guidelines = \"  \"");
        let (key, message) = error(Config::from_toml(&format!("{blank}{PROVIDER}"), "ai.toml"));
        assert_eq!(key, "workflows[0].ai_guidelines");
        assert!(message.contains("guidelines"), "{message}");
    }

    #[test]
    fn providers_are_checked() {
        let wf = "[[workflows]]\nname = \"ai\"\napproval_type = \"ai_driven\"\nai_model = \"m\"\n\
                  ai_guidelines = \"g\"\nai_provider = \"p\"\nai_fallback_behavior = \"deny\"\n";
        let cases = [
            ("[providers.p]\nbase_url = \"http://x\"\n", "providers.p.type"),
            ("[providers.p]\ntype = \"gemini\"\n", "providers.p.type"),
            ("[providers.p]\ntype = \"openai\"\nbase_url = \"ftp://x\"\n", "providers.p.base_url"),
            ("[providers.p]\ntype = \"openai\"\ntimeout_secs = 0\n", "providers.p.timeout_secs"),
            (
                "[providers.p]\ntype = \"anthropic\"\napi_key_env = \"MCP_GATE_SURELY_UNSET_PROVIDER_KEY\"\n",
                "providers.p.api_key_env",
            ),
        ];
        for (provider, want) in cases {
            let (key, message) = error(Config::from_toml(&format!("{wf}{provider}"), "ai.toml"));
            assert_eq!(key, want, "{provider}");
            if want.ends_with("api_key_env") {
                assert!(message.contains("MCP_GATE_SURELY_UNSET_PROVIDER_KEY is not set"), "{message}");
            }
        }
        let unknown =
            Config::from_toml(&format!("{wf}[providers.p]\ntype = \"openai\"\napi_key = \"sk\"\n"), "ai.toml");
        assert!(matches!(unknown, Err(ConfigError::Load(t)) if t.contains("api_key")), "keys are not config values");
    }

    #[test]
    fn check_config_explains_ai_workflows_and_warns() {
        let config = with_ai(
            "ai_fallback_behavior = \"approve\"\nai_confidence_threshold = 0.3",
            "[providers.far]\ntype = \"openai\"\nbase_url = \"http://10.1.2.3:8000/v1\"\n",
        )
        .unwrap();
        let text = config.explain();
        assert!(
            text.contains(
                "workflow ai: AI review by llama3.1:8b via provider local (openai \
                 http://127.0.0.1:11434/v1/chat/completions, no key, timeout 20 s); answers with confidence >= 0.3 \
                 are final; unsure answers, \"escalate\" answers and failed reviews are approved; identical calls \
                 reuse a decision for 300 s"
            ),
            "{text}"
        );
        assert!(text.contains("warning: workflow ai: ai_fallback_behavior = \"approve\""), "{text}");
        assert!(text.contains("warning: workflow ai: ai_confidence_threshold = 0.3"), "{text}");
        assert!(text.contains("warning: provider far is not used"), "{text}");
        assert!(text.contains("warning: provider far: http://10.1.2.3:8000/v1 is plain http"), "{text}");
        assert!(!text.contains("warning: provider local"), "{text}");
    }
}
