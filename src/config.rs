//! Configuration: `proxy.toml`, `MCP_GATE_*` environment variables and the command line.
//!
//! Loading happens in two steps. [`RawConfig`] is what figment deserializes (defaults, then the
//! file, then `MCP_GATE_SECTION__KEY` environment variables) with unknown keys rejected; it is
//! made of the raw sections each subsystem defines. It is then validated into a [`Config`], made
//! of each subsystem's validated settings: every subsystem checks its own sections and names the
//! key that is wrong ([`crate::settings::Invalid`]); this module adds the file, expands `${VAR}`
//! references for them ([`crate::settings::expand_env`]), and explains the result for `check-config`
//! ([`Config::explain`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

use crate::approval::settings::{ApprovalsConfig, RawApprovals, RawChannel, RawWorkflow};
use crate::downstream::settings::{Listen, RawListen, RawStdio, Stdio};
use crate::identity::{Credentials, RawPrincipal, credentials_apart};
use crate::logging::RawLog;
use crate::metrics::settings::{MetricsSettings, RawMetrics};
use crate::policy::{Policy, RawPolicy, RawRule};
use crate::review::settings::{RawProvider, validate_providers};
use crate::review::{AiWorkflow, Fallback, ProviderConfig};
use crate::server::notify::Webhook;
use crate::server::notify::settings::{RawNotify, RawWebhook, validate_webhooks};
use crate::settings::Invalid;
pub use crate::settings::expand_env;
use crate::store::Location;
use crate::traces::settings::{RawTracing, TracingSettings};
use crate::upstream::settings::{
    CommandLineUpstream, RawProxy, RawServer, RawUpstream, ServerConfig, Upstreams, UpstreamsError,
};

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
    /// `[stdio]`: how stdio mode serves its client.
    #[serde(default)]
    pub stdio: RawStdio,
    #[serde(default)]
    pub upstream: RawUpstream,
    #[serde(default)]
    pub servers: BTreeMap<String, RawServer>,
    #[serde(default)]
    pub policy: RawPolicy,
    #[serde(default)]
    pub rules: Vec<RawRule>,
    /// Named approvers, each with its own token.
    #[serde(default)]
    pub approvers: Vec<RawPrincipal>,
    /// Named agents (downstream HTTP clients), each with its own token.
    #[serde(default)]
    pub agents: Vec<RawPrincipal>,
    #[serde(default)]
    pub workflows: Vec<RawWorkflow>,
    #[serde(default)]
    pub approvals: RawApprovals,
    /// How held calls reach each agent, and when they must be answered.
    #[serde(default)]
    pub channels: Vec<RawChannel>,
    /// Model providers of `ai_driven` workflows, by name.
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    /// Where changes of approval requests are POSTed.
    #[serde(default)]
    pub webhooks: Vec<RawWebhook>,
    /// `[notify]`: notifications on this machine.
    #[serde(default)]
    pub notify: RawNotify,
    /// `[metrics]`: Prometheus metrics on the approval server.
    #[serde(default)]
    pub metrics: RawMetrics,
    /// `[log]`: the format of the log lines.
    #[serde(default)]
    pub log: RawLog,
    /// `[tracing]`: OpenTelemetry traces over OTLP.
    #[serde(default)]
    pub tracing: RawTracing,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, if any (for messages).
    pub source: Option<PathBuf>,
    pub separator: String,
    pub listen: Listen,
    pub stdio: Stdio,
    /// Upstream servers in name order.
    pub servers: Vec<ServerConfig>,
    /// The compiled policy.
    pub policy: std::sync::Arc<Policy>,
    /// Whether the policy is the zero-config default (no rules, no `[policy] default`).
    pub default_policy: bool,
    pub approvals: ApprovalsConfig,
    /// `[[webhooks]]`.
    pub webhooks: Vec<Webhook>,
    /// `[notify] desktop`: show desktop notifications of new held calls (when a graphical
    /// session exists).
    pub desktop_notifications: bool,
    /// `[metrics]`.
    pub metrics: MetricsSettings,
    /// `[tracing]` (and the standard `OTEL_EXPORTER_OTLP_*` variables).
    pub tracing: TracingSettings,
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
        Config::validate(raw, file, extra, true)
    }

    /// `[log] format` as the file (and `MCP_GATE_LOG__FORMAT`) give it, read before logging starts
    /// and without validating the rest; `None` when absent or unreadable (the load then says why).
    pub fn peek_log_format(file: Option<&Path>) -> Option<String> {
        #[derive(Deserialize)]
        struct Peek {
            #[serde(default)]
            log: Option<RawLog>,
        }
        let mut figment = Figment::new();
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(Env::prefixed("MCP_GATE_").split("__").filter(|k| k.as_str().contains('.')));
        figment.extract::<Peek>().ok()?.log?.format
    }

    /// Parses a TOML string (used by tests and `check-config` on examples).
    pub fn from_toml(text: &str, name: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = Figment::new()
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Load(describe_figment_error(e, Some(Path::new(name)))))?;
        Config::validate(raw, Some(Path::new(name)), None, false)
    }

    /// Each subsystem validates its sections; the first error is reported with the file.
    fn validate(
        raw: RawConfig,
        file: Option<&Path>,
        extra: Option<&CommandLineUpstream>,
        from_env: bool,
    ) -> Result<Config, ConfigError> {
        let file_name = file.map_or_else(|| "command line".to_owned(), |f| f.display().to_string());
        // A key an `MCP_GATE_SECTION__KEY` variable sets has its value from there, not the file.
        let invalid = |e: Invalid| {
            let var = env_name(&e.key);
            let file = if from_env && std::env::var_os(&var).is_some() {
                format!("environment variable {var}")
            } else {
                file_name.clone()
            };
            ConfigError::Invalid { file, key: e.key, message: e.message }
        };

        let Upstreams { separator, servers } =
            Upstreams::validate(raw.proxy, raw.upstream, raw.servers, extra, &expand_env).map_err(|e| match e {
                UpstreamsError::Invalid(e) => invalid(e),
                UpstreamsError::CommandLine(message) => ConfigError::Load(message),
            })?;
        let listen = Listen::validate(raw.listen).map_err(invalid)?;
        let stdio = Stdio::validate(raw.stdio).map_err(invalid)?;

        let default_policy = raw.rules.is_empty() && raw.policy.default.is_none();
        let policy = Policy::compile(&raw.policy, &raw.rules).map_err(|e| invalid(Invalid::new(e.key, e.message)))?;
        let approvers =
            Credentials::from_raw("approvers", &raw.approvers).map_err(|(k, m)| invalid(Invalid::new(k, m)))?;
        let agents = Credentials::from_raw("agents", &raw.agents).map_err(|(k, m)| invalid(Invalid::new(k, m)))?;
        let providers = validate_providers(raw.providers).map_err(invalid)?;
        let approvals = ApprovalsConfig::validate(
            raw.approvals,
            raw.workflows,
            raw.channels,
            providers,
            &policy,
            approvers,
            agents,
        )
        .map_err(invalid)?;
        let webhooks = validate_webhooks(raw.webhooks, &expand_env).map_err(invalid)?;
        let metrics = MetricsSettings::validate(raw.metrics).map_err(invalid)?;
        raw.log.validate().map_err(invalid)?;
        let tracing = TracingSettings::validate(raw.tracing).map_err(invalid)?;
        let http = listen.token.as_deref().map(|t| (t, listen.token_key.as_str()));
        let shared = approvals.token.as_deref().map(|t| (t, approvals.token_key));
        credentials_apart(&approvals.agents, &approvals.approvers, http, shared).map_err(invalid)?;

        Ok(Config {
            source: file.map(Path::to_path_buf),
            policy: std::sync::Arc::new(policy),
            default_policy,
            approvals,
            webhooks,
            desktop_notifications: raw.notify.desktop.unwrap_or(true),
            metrics,
            tracing,
            separator,
            listen,
            stdio,
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
        if self.stdio.busy_poll.is_zero() {
            out.push_str("stdio mode sleeps as soon as its pipes are quiet (busy polling off)\n");
        } else {
            out.push_str(&format!(
                "stdio mode polls its pipes for up to {} µs after a message while messages come that close together\n",
                self.stdio.busy_poll.as_micros()
            ));
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
            out.push_str(&format!(
                "held calls wait up to {wait} s for a decision, and are answered pending before their client's \
                 answer_within\n"
            ));
        }
        out.push_str(&explain_channels(&self.approvals.channels, self.approvals.tasks));
        out.push_str(&format!(
            "2026-07-28 clients that declare URL elicitation are answered with input_required \
             (the approval page), for up to {} rounds\n",
            self.approvals.mrtr_rounds
        ));
        out.push_str(&format!("approval server: http://{}/\n", self.approvals.listen));
        let shared = if matches!(self.approvals.database, Location::Postgres(_)) {
            ", shared by every replica that names it"
        } else {
            ""
        };
        out.push_str(&format!("approval store: {}{shared}\n", self.approvals.database));
        match (&self.metrics.enabled, &self.metrics.token_key) {
            (false, _) => out.push_str("metrics: off\n"),
            (true, None) => out.push_str(&format!("metrics: http://{}/metrics, no token\n", self.approvals.listen)),
            (true, Some(key)) => {
                out.push_str(&format!("metrics: http://{}/metrics, bearer token from {key}\n", self.approvals.listen))
            }
        }
        out.push_str(&self.tracing.explain());
        out.push('\n');
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
        for warning in crate::upstream::settings::lint(&self.servers) {
            out.push_str(&format!("warning: {warning}\n"));
        }
        out
    }
}

/// The channel order and each `[[channels]]` entry, the built-in ones last.
fn explain_channels(channels: &crate::approval::channel::ChannelRules, tasks: bool) -> String {
    let order = if tasks {
        "task > input_required > elicitation > wait > fail_fast"
    } else {
        "input_required > elicitation > wait > fail_fast (tasks are off: [approvals] tasks = false)"
    };
    let mut out = format!(
        "held calls reach each client through the best channel it declares: {order}; [[channels]], first match \
         per key:\n"
    );
    for rule in channels.rules() {
        let mut parts = Vec::new();
        if let Some(c) = rule.ceiling {
            parts.push(if c == crate::approval::channel::Channel::Task {
                "use auto".to_owned()
            } else {
                format!("use {c} at best")
            });
        }
        if let Some(w) = rule.answer_within {
            parts.push(format!("answer within {} s", w.as_secs()));
        }
        let note = rule.note.map(|n| format!(" ({n})")).unwrap_or_default();
        out.push_str(&format!("  {} agent {}: {}{note}\n", rule.origin, rule.agents_text(), parts.join(", ")));
    }
    out
}

fn explain_ai_workflow(ai: &AiWorkflow, providers: &BTreeMap<String, ProviderConfig>) -> String {
    let provider = providers.get(&ai.provider).map_or_else(String::new, |p| {
        let key = match &p.api_key_env {
            Some(var) => format!("key from ${var}"),
            None => "no key".to_owned(),
        };
        format!(" ({} {}, {key}, timeout {} s)", p.kind.as_str(), p.endpoint(), p.timeout.as_secs())
    });
    let otherwise = match (ai.fallback, &ai.escalation_workflow) {
        (Fallback::Escalate, Some(to)) => format!("go to people in workflow {to}"),
        (Fallback::Escalate, None) => "go to people".to_owned(),
        (Fallback::Approve, _) => "are approved".to_owned(),
        (Fallback::Deny, _) => "are denied".to_owned(),
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

/// The `MCP_GATE_SECTION__KEY` variable of a key (`listen.max_sessions`).
fn env_name(key: &str) -> String {
    let parts: Vec<String> = key.split('.').map(str::to_ascii_uppercase).collect();
    format!("MCP_GATE_{}", parts.join("__"))
}

fn describe_figment_error(e: figment::Error, file: Option<&Path>) -> String {
    let file = file.map_or_else(|| "configuration".to_owned(), |f| f.display().to_string());
    let mut parts = Vec::new();
    for err in e {
        let key = err.path.join(".");
        // A value from an `MCP_GATE_SECTION__KEY` variable is blamed on the variable.
        let source = match err.metadata.as_ref() {
            Some(m) if m.source.is_none() && m.name.contains("environment variable") && !err.path.is_empty() => {
                format!("environment variable {}", env_name(&key))
            }
            m => m.and_then(|m| m.source.as_ref()).map_or_else(|| file.clone(), |s| s.to_string()),
        };
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
    use std::time::Duration;

    use super::*;
    use crate::downstream::settings::{DEFAULT_MAX_SESSIONS, DEFAULT_SESSION_IDLE};
    use crate::http::listener::ListenerLimits;
    use crate::upstream::settings::{DEFAULT_INITIALIZE_TIMEOUT, UpstreamTransport, check_server_name, default_name};

    #[test]
    fn unknown_key_names_key_and_file() {
        let err = Config::from_toml("[servers.a]\ncommand = \"x\"\ncomand = \"y\"\n", "proxy.toml").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("proxy.toml"), "{text}");
        assert!(text.contains("servers.a"), "{text}");
        assert!(text.contains("comand"), "{text}");
    }

    /// `[stdio] busy_poll_us`: 1 ms unless set, 0 turns it off, at most 0.1 s, and said by
    /// `check-config`.
    #[test]
    fn busy_poll_defaults_to_a_millisecond_and_is_bounded() {
        let base = "[servers.a]\ncommand = \"x\"\n";
        let config = Config::from_toml(base, "p.toml").unwrap();
        assert_eq!(config.stdio.busy_poll, std::time::Duration::from_millis(1));
        assert!(config.explain().contains("polls its pipes for up to 1000 µs"), "{}", config.explain());
        let config = Config::from_toml(&format!("[stdio]\nbusy_poll_us = 0\n{base}"), "p.toml").unwrap();
        assert!(config.stdio.busy_poll.is_zero());
        assert!(config.explain().contains("busy polling off"), "{}", config.explain());
        let config = Config::from_toml(&format!("[stdio]\nbusy_poll_us = 250\n{base}"), "p.toml").unwrap();
        assert_eq!(config.stdio.busy_poll, std::time::Duration::from_micros(250));
        let err = Config::from_toml(&format!("[stdio]\nbusy_poll_us = 100001\n{base}"), "p.toml").unwrap_err();
        assert_eq!(err.to_string(), "p.toml: `stdio.busy_poll_us`: 100001 is more than the most allowed, 100000");
    }

    #[test]
    fn server_needs_command_or_url() {
        let err = Config::from_toml("[servers.a]\nargs = [\"x\"]\n", "p.toml").unwrap_err();
        assert_eq!(err.to_string(), "p.toml: `servers.a`: needs a `command` (stdio server) or a `url` (HTTP server)");
        let err = Config::from_toml("[servers.a]\nurl = \"http://x\"\ntransport = \"ws\"\n", "p.toml").unwrap_err();
        assert!(err.to_string().contains("servers.a.transport"), "{err}");
    }

    /// Rounds of `input_required` stay under the clients' limit of 10; unset is the default.
    #[test]
    fn mrtr_rounds_default_and_limit() {
        let cfg = Config::from_toml("", "p.toml").unwrap();
        assert_eq!(cfg.approvals.mrtr_rounds, crate::approval::DEFAULT_MRTR_ROUNDS);
        let cfg = Config::from_toml("[approvals]\nmrtr_rounds = 2\n", "p.toml").unwrap();
        assert_eq!(cfg.approvals.mrtr_rounds, 2);
        assert!(cfg.explain().contains("input_required (the approval page), for up to 2 rounds"), "{}", cfg.explain());
        let err = Config::from_toml("[approvals]\nmrtr_rounds = 10\n", "p.toml").unwrap_err();
        assert!(err.to_string().contains("approvals.mrtr_rounds"), "{err}");
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

    /// Configured headers sent unencrypted to another machine are worth a warning; to this
    /// machine, over https, or with no headers, they are not.
    #[test]
    fn plain_http_with_headers_to_another_host_is_a_warning() {
        let toml = r#"
[servers.far]
url = "http://10.0.0.7:8000/mcp"
headers = { Authorization = "Bearer x", X-Team = "a" }
[servers.old]
url = "http://mcp.example/sse"
transport = "sse"
headers = { X-Api-Key = "k" }
[servers.tls]
url = "https://mcp.example/mcp"
headers = { Authorization = "Bearer x" }
[servers.local]
url = "http://[::1]:9000/mcp"
headers = { Authorization = "Bearer x" }
[servers.named]
url = "http://LOCALHOST:9000/mcp"
headers = { Authorization = "Bearer x" }
[servers.bare]
url = "http://10.0.0.8/mcp"
"#;
        let text = Config::from_toml(toml, "p.toml").unwrap().explain();
        assert!(
            text.contains(
                "warning: server far: http://10.0.0.7:8000/mcp is plain http to another host: its headers \
                 (Authorization, X-Team) travel unencrypted"
            ),
            "{text}"
        );
        assert!(text.contains("warning: server old: http://mcp.example/sse is plain http"), "{text}");
        for quiet in ["server tls", "server local", "server named", "server bare"] {
            assert!(!text.contains(&format!("warning: {quiet}")), "{quiet}: {text}");
        }
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
    use std::time::Duration;

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
