//! The policy: which tool calls go through, which are refused and which wait for approval.
//!
//! A policy is an ordered list of rules from `proxy.toml` plus a default action:
//!
//! ```toml
//! [policy]
//! default = "approve"            # "allow" | "deny" | "approve"; used when no rule matches
//! default_workflow = "default"   # the approval workflow for approve without `workflow`
//!
//! [[rules]]
//! name = "no system files"
//! server = "fs*"                 # glob on the upstream server's configured name
//! tool = ["write_*", "delete_*"] # glob or list of globs on the tool's name at the upstream
//! when = [{ pointer = "/path", regex = "^/(etc|usr)/" }]
//! action = "deny"
//! reason = "system files are off limits"
//!
//! [[rules]]
//! annotations = { readOnlyHint = true }
//! action = "allow"
//! ```
//!
//! It is read in two steps, like the rest of the configuration: the `Raw*` types are what serde
//! deserializes (unknown keys rejected); [`Policy::compile`] checks them once, turning globs into
//! matchers and compiling regexes, with errors that name the key (`rules[1].when[0].regex`).
//! [`Policy::evaluate`] is then pure and synchronous: the first rule that matches decides, and
//! the [`Decision`] carries a trace of every rule considered.
//!
//! # Matching
//!
//! A rule matches a call when every restriction it has holds:
//!
//! - `server`, `tool`, `agent`: globs (`*` any run of characters, `?` one character, anything else
//!   literal; anchored, case-sensitive). `tool` and `agent` take one glob or a list (any may
//!   match). A rule with an `agent` restriction never matches a call whose agent is unknown.
//! - `annotations`: each hint given must equal the tool's. A hint the tool does not set, or any
//!   hint of a tool the proxy does not know, takes its MCP default (readOnlyHint false,
//!   destructiveHint true, idempotentHint false, openWorldHint true): an unknown tool is never
//!   read-only. Note that a read-only tool that does not set destructiveHint counts as destructive.
//! - `when`: conditions on the call's `arguments`, addressed by JSON pointer (RFC 6901); all
//!   must hold. `exists` tests presence; every other operator needs the value to be present and
//!   of the right type: `regex` (unanchored, Rust syntax) and `glob` apply to strings only, `gt`,
//!   `gte`, `lt`, `lte` to numbers only (the string `"5"` is not a number). `equals` and `one_of`
//!   compare JSON values, numbers by value. `not = true` negates the whole condition.
//!
//! # Zero configuration
//!
//! With no `[[rules]]` and no `policy.default`, the policy is a built-in rule named
//! `read-only tools` (allow tools annotated `readOnlyHint: true`) followed by the default
//! `approve`. Writing any rule, or setting `policy.default`, replaces it.

mod matcher;
#[cfg(test)]
mod tests;

/// The globs of rules, also used by the settings that match agents as rules do.
pub(crate) use matcher::Glob;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use matcher::{Condition, Explain};

/// The name of the built-in rule of the zero-config policy.
pub const READ_ONLY_RULE: &str = "read-only tools";
/// The approval workflow used when neither the rule nor `policy.default_workflow` names one.
pub const DEFAULT_WORKFLOW: &str = "default";
/// The trace label of the default action.
pub const DEFAULT_LABEL: &str = "policy.default";

// ---------------------------------------------------------------------------------------------
// As written in proxy.toml
// ---------------------------------------------------------------------------------------------

/// The `[policy]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// "allow", "deny" or "approve" (the default).
    pub default: Option<String>,
    /// The approval workflow for approve actions that do not name one; "default" if unset.
    pub default_workflow: Option<String>,
}

/// One `[[rules]]` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Option<String>,
    /// Glob on the upstream server's configured name.
    pub server: Option<String>,
    /// Glob(s) on the tool's name at the upstream.
    pub tool: Option<OneOrMany>,
    /// Glob(s) on the calling agent's name.
    pub agent: Option<OneOrMany>,
    pub annotations: Option<RawAnnotations>,
    /// Conditions on the arguments; all must hold.
    #[serde(default)]
    pub when: Vec<RawCondition>,
    /// "allow", "deny" or "approve".
    pub action: String,
    /// Shown to the model on deny.
    pub reason: Option<String>,
    /// For approve; defaults to `policy.default_workflow`.
    pub workflow: Option<String>,
    /// "low", "medium", "high" or "critical".
    pub risk: Option<String>,
    /// Only with `action = "deny"`: also remove matching tools from `tools/list`.
    #[serde(default)]
    pub hide: bool,
}

/// One glob or a list of globs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn as_slice(&self) -> &[String] {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }
}

/// Required tool annotations, with MCP's camelCase keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawAnnotations {
    pub read_only_hint: Option<bool>,
    pub destructive_hint: Option<bool>,
    pub idempotent_hint: Option<bool>,
    pub open_world_hint: Option<bool>,
}

/// A condition on the call's arguments, addressed by a JSON pointer (RFC 6901).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCondition {
    pub pointer: String,
    pub equals: Option<Value>,
    pub one_of: Option<Vec<Value>>,
    pub regex: Option<String>,
    pub glob: Option<String>,
    pub gt: Option<f64>,
    pub gte: Option<f64>,
    pub lt: Option<f64>,
    pub lte: Option<f64>,
    pub exists: Option<bool>,
    /// Negates the whole condition.
    #[serde(default)]
    pub not: bool,
}

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

/// A policy that failed to compile: the offending key (`rules[2].when[0].regex`,
/// `policy.default`) and what is wrong with it. The caller adds the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct PolicyError {
    pub key: String,
    pub message: String,
}

impl PolicyError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> PolicyError {
        PolicyError { key: key.into(), message: message.into() }
    }
}

/// What happens to a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Action {
    Allow,
    /// Refused; `reason` is shown to the model.
    Deny {
        reason: String,
    },
    /// Held until the named approval workflow decides.
    Approve {
        workflow: String,
    },
}

impl Action {
    /// "allow", "deny" or "approve".
    pub fn name(&self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny { .. } => "deny",
            Action::Approve { .. } => "approve",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Allow => f.write_str("allow"),
            Action::Deny { reason } => write!(f, "deny ({reason})"),
            Action::Approve { workflow } => write!(f, "approve (workflow {workflow:?})"),
        }
    }
}

/// How risky a call is, as a rule declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    Low,
    Medium,
    High,
    Critical,
}

impl Risk {
    pub const ALL: [Risk; 4] = [Risk::Low, Risk::Medium, Risk::High, Risk::Critical];

    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
            Risk::Critical => "critical",
        }
    }

    /// How long an approval request at this level waits before it expires as rejected:
    /// 24 hours for low, 12 for medium, 4 for high, 1 for critical.
    pub fn default_timeout(self) -> Duration {
        let hours = match self {
            Risk::Low => 24,
            Risk::Medium => 12,
            Risk::High => 4,
            Risk::Critical => 1,
        };
        Duration::from_secs(hours * 3600)
    }
}

impl fmt::Display for Risk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Risk {
    type Err = String;

    fn from_str(s: &str) -> Result<Risk, String> {
        Risk::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown risk {s:?}; use \"low\", \"medium\", \"high\" or \"critical\""))
    }
}

/// The outcome of [`Policy::evaluate`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub action: Action,
    /// The deciding rule's label: its `name`, else `rules[N]` (0-based). `None`: the default.
    pub rule: Option<String>,
    /// The deciding rule's `risk`, if it declares one (on any action; approvals use it for
    /// their timeout and display).
    pub risk: Option<Risk>,
    /// Every rule considered, in order, up to the deciding one; when no rule matched, a last
    /// step labelled `policy.default`.
    pub trace: Vec<TraceStep>,
    /// The deciding rule hides its tools from `tools/list`.
    pub hide: bool,
}

/// One rule considered during evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceStep {
    pub rule: String,
    pub matched: bool,
    /// For a miss, the first restriction that failed; for a match, every restriction that held.
    pub why: String,
}

/// What the policy knows of a call.
#[derive(Debug, Clone, Copy)]
pub struct CallFacts<'a> {
    /// The upstream server's configured name.
    pub server: &'a str,
    /// The tool's name at the upstream (without the proxy's server prefix).
    pub tool: &'a str,
    /// The calling agent, when known.
    pub agent: Option<&'a str>,
    /// The tool's annotations as the upstream listed them; `None` when the tool sets none or is
    /// unknown (both mean MCP defaults).
    pub annotations: Option<&'a rmcp::model::ToolAnnotations>,
    /// The call's `arguments` (`Value::Null` or an empty object when the call has none).
    pub arguments: &'a Value,
}

// ---------------------------------------------------------------------------------------------
// Compiled
// ---------------------------------------------------------------------------------------------

/// A compiled policy: cheap to clone, shared between sessions.
#[derive(Debug, Clone)]
pub struct Policy {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    rules: Vec<Rule>,
    default: Action,
    /// `policy.default` was written (so a lint can say it is unreachable).
    default_explicit: bool,
    default_workflow: String,
    default_workflow_explicit: bool,
}

#[derive(Debug)]
struct Rule {
    label: String,
    /// Has a `name` (traces and lints quote it).
    named: bool,
    server: Option<Glob>,
    tool: Option<Vec<Glob>>,
    agent: Option<Vec<Glob>>,
    annotations: Hints,
    when: Vec<Condition>,
    action: Action,
    risk: Option<Risk>,
    hide: bool,
    /// `reason` was written (deny rules without one get a generated reason and a lint).
    reason_given: bool,
    has_annotations_table: bool,
}

/// Required hints: read-only, destructive, idempotent, open-world.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Hints {
    read_only: Option<bool>,
    destructive: Option<bool>,
    idempotent: Option<bool>,
    open_world: Option<bool>,
}

/// MCP's defaults for absent hints: not read-only, destructive, not idempotent, open world.
const HINT_DEFAULTS: [bool; 4] = [false, true, false, true];
const HINT_NAMES: [&str; 4] = ["readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint"];

impl Hints {
    fn as_array(&self) -> [Option<bool>; 4] {
        [self.read_only, self.destructive, self.idempotent, self.open_world]
    }

    fn is_empty(&self) -> bool {
        self.as_array().iter().all(Option::is_none)
    }

    /// `readOnlyHint = true, destructiveHint = false`.
    fn describe(&self) -> String {
        const NAMES: [&str; 4] = ["readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint"];
        NAMES
            .iter()
            .zip(self.as_array())
            .filter_map(|(name, v)| v.map(|v| format!("{name} = {v}")))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether every required hint holds for a tool with these annotations; Ok lists why,
    /// Err says which hint failed.
    fn check(
        &self,
        annotations: Option<&rmcp::model::ToolAnnotations>,
        explain: Explain,
    ) -> Result<Vec<String>, Mismatch> {
        let actual = annotations.map(|a| [a.read_only_hint, a.destructive_hint, a.idempotent_hint, a.open_world_hint]);
        let mut reasons = Vec::new();
        for (i, required) in self.as_array().into_iter().enumerate() {
            let Some(required) = required else { continue };
            let set = actual.and_then(|a| a.get(i).copied().flatten());
            let default = HINT_DEFAULTS.get(i).copied().unwrap_or(false);
            let name = HINT_NAMES.get(i).copied().unwrap_or("hint");
            let (value, source) = match (set, annotations) {
                (Some(v), _) => (v, "set by the tool"),
                (None, Some(_)) => (default, "MCP default: the tool does not set it"),
                (None, None) => (default, "MCP default: the tool sets no annotations or is unknown"),
            };
            if value != required {
                return Err(Mismatch(
                    explain.say(|| format!("tool {name} is {value} ({source}), rule requires {required}")),
                ));
            }
            reasons.push(explain.say(|| format!("tool {name} is {value} ({source})")));
        }
        Ok(reasons)
    }
}

impl Rule {
    /// The built-in rule of the zero-config policy: tools annotated read-only are allowed.
    fn read_only_tools() -> Rule {
        Rule {
            label: READ_ONLY_RULE.to_owned(),
            named: true,
            server: None,
            tool: None,
            agent: None,
            annotations: Hints { read_only: Some(true), ..Hints::default() },
            when: Vec::new(),
            action: Action::Allow,
            risk: None,
            hide: false,
            reason_given: false,
            has_annotations_table: true,
        }
    }

    /// The restrictions known without the arguments (server, tool, agent, annotations).
    fn check_static(
        &self,
        server: &str,
        tool: &str,
        agent: Option<&str>,
        annotations: Option<&rmcp::model::ToolAnnotations>,
        explain: Explain,
    ) -> Result<Vec<String>, Mismatch> {
        let mut reasons = Vec::new();
        if let Some(glob) = &self.server {
            if !glob.is_match(server) {
                return Err(Mismatch(explain.say(|| format!("server {server:?} does not match {:?}", glob.as_str()))));
            }
            reasons.push(explain.say(|| format!("server {server:?} matches {:?}", glob.as_str())));
        }
        if let Some(globs) = &self.tool {
            reasons.push(match_any("tool", tool, globs, explain)?);
        }
        if let Some(globs) = &self.agent {
            let Some(agent) = agent else {
                return Err(Mismatch(explain.say(|| {
                    format!("the calling agent is unknown; rule requires an agent matching {}", list(globs))
                })));
            };
            reasons.push(match_any("agent", agent, globs, explain)?);
        }
        reasons.extend(self.annotations.check(annotations, explain)?);
        Ok(reasons)
    }

    /// Whether the rule matches the call: Ok says why, Err why not (both empty when not
    /// explaining).
    fn check(&self, call: &CallFacts<'_>, explain: Explain) -> Result<String, Mismatch> {
        let mut reasons = self.check_static(call.server, call.tool, call.agent, call.annotations, explain)?;
        for condition in &self.when {
            match explain {
                Explain::Yes => {
                    let (holds, why) = condition.check(call.arguments);
                    if !holds {
                        return Err(Mismatch(why));
                    }
                    reasons.push(why);
                }
                Explain::No if condition.holds(call.arguments) => {}
                Explain::No => return Err(Mismatch(String::new())),
            }
        }
        if explain == Explain::No {
            return Ok(String::new());
        }
        if reasons.is_empty() {
            return Ok("the rule has no restrictions: it matches every call".to_owned());
        }
        Ok(reasons.join("; "))
    }

    /// The rule matches every call (no restriction at all).
    /// Matches every call: no condition, or only `*` for the server and the tool.
    fn matches_every_call(&self) -> bool {
        let any = |g: &Glob| g.as_str() == "*";
        self.server.as_ref().is_none_or(any)
            && self.tool.as_ref().is_none_or(|globs| globs.iter().any(any))
            && self.agent.is_none()
            && self.annotations.is_empty()
            && self.when.is_empty()
    }

    fn is_catch_all(&self) -> bool {
        self.server.is_none()
            && self.tool.is_none()
            && self.agent.is_none()
            && self.annotations.is_empty()
            && self.when.is_empty()
    }

    /// Every call `later` matches is also matched by `self` (sound, not complete).
    fn covers(&self, later: &Rule) -> bool {
        if !self.when.is_empty() {
            return false;
        }
        let server = match (&self.server, &later.server) {
            (None, _) => true,
            (Some(g), None) => g.matches_everything(),
            (Some(g), Some(h)) => g.covers(h),
        };
        let globs_cover = |gs: &[Glob], hs: &[Glob]| hs.iter().all(|h| gs.iter().any(|g| g.covers(h)));
        let tool = match (&self.tool, &later.tool) {
            (None, _) => true,
            (Some(gs), None) => gs.iter().any(Glob::matches_everything),
            (Some(gs), Some(hs)) => globs_cover(gs, hs),
        };
        // An agent restriction, even `*`, excludes calls from an unknown agent.
        let agent = match (&self.agent, &later.agent) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(gs), Some(hs)) => globs_cover(gs, hs),
        };
        let hints = self
            .annotations
            .as_array()
            .into_iter()
            .zip(later.annotations.as_array())
            .all(|(mine, theirs)| mine.is_none() || mine == theirs);
        server && tool && agent && hints
    }

    /// Whether `self` is an allow rule matching on annotations alone (any tool with those hints,
    /// which the server itself declares) that comes into play for the calls of `later`, a deny or
    /// approve rule naming specific tools. Static: whether the server annotates those tools that
    /// way is not known here, so a rule it covers entirely (unreachable) is left to that lint.
    fn shadows_by_annotations(&self, later: &Rule) -> bool {
        let server = match (&self.server, &later.server) {
            (None, _) => true,
            (Some(g), None) => g.matches_everything(),
            (Some(g), Some(h)) => g.covers(h),
        };
        self.action == Action::Allow
            && !matches!(later.action, Action::Allow)
            && later.tool.is_some()
            && self.tool.is_none()
            && self.agent.is_none()
            && self.when.is_empty()
            && !self.annotations.is_empty()
            && server
            && !self.covers(later)
    }

    /// How lints name the rule.
    fn display(&self) -> String {
        if self.named { format!("rule {:?}", self.label) } else { self.label.clone() }
    }
}

/// Why a rule does not match a call: the restriction that failed, in words (empty when not
/// explaining). Not an error: most rules do not match most calls.
#[derive(Debug)]
struct Mismatch(String);

fn match_any(what: &str, value: &str, globs: &[Glob], explain: Explain) -> Result<String, Mismatch> {
    let hit = globs.iter().find(|g| g.is_match(value));
    if explain == Explain::No {
        return if hit.is_some() { Ok(String::new()) } else { Err(Mismatch(String::new())) };
    }
    match (hit, globs) {
        (Some(g), [_]) => Ok(format!("{what} {value:?} matches {:?}", g.as_str())),
        (Some(g), _) => Ok(format!("{what} {value:?} matches {:?} (of {})", g.as_str(), list(globs))),
        (None, [g]) => Err(Mismatch(format!("{what} {value:?} does not match {:?}", g.as_str()))),
        (None, _) => Err(Mismatch(format!("{what} {value:?} matches none of {}", list(globs)))),
    }
}

fn list(globs: &[Glob]) -> String {
    let items: Vec<String> = globs.iter().map(|g| format!("{:?}", g.as_str())).collect();
    format!("[{}]", items.join(", "))
}

fn parse_action(text: &str, key: &str) -> Result<fn(String) -> Action, PolicyError> {
    match text {
        "allow" => Ok(|_| Action::Allow),
        "deny" => Ok(|reason| Action::Deny { reason }),
        "approve" => Ok(|workflow| Action::Approve { workflow }),
        other => {
            Err(PolicyError::new(key, format!("unknown action {other:?}; use \"allow\", \"deny\" or \"approve\"")))
        }
    }
}

fn compile_globs(globs: &OneOrMany, key: &str, what: &str) -> Result<Vec<Glob>, PolicyError> {
    let patterns = globs.as_slice();
    if patterns.is_empty() {
        return Err(PolicyError::new(
            key,
            format!("an empty list matches no {what}; leave the key out to match every {what}"),
        ));
    }
    patterns
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if p.is_empty() {
                let key = if matches!(globs, OneOrMany::Many(_)) { format!("{key}[{i}]") } else { key.to_owned() };
                return Err(PolicyError::new(key, format!("an empty pattern matches no {what}")));
            }
            Ok(Glob::new(p))
        })
        .collect()
}

impl Policy {
    /// Checks and compiles the `[policy]` table and the `[[rules]]` list.
    pub fn compile(policy: &RawPolicy, rules: &[RawRule]) -> Result<Policy, PolicyError> {
        let default_workflow = match &policy.default_workflow {
            Some(w) if w.is_empty() => {
                return Err(PolicyError::new("policy.default_workflow", "must not be empty"));
            }
            Some(w) => w.clone(),
            None => DEFAULT_WORKFLOW.to_owned(),
        };
        let default = match &policy.default {
            Some(text) => parse_action(text, "policy.default")?(match text.as_str() {
                "deny" => "denied by policy: no rule allows this call".to_owned(),
                _ => default_workflow.clone(),
            }),
            None => Action::Approve { workflow: default_workflow.clone() },
        };

        let mut compiled: Vec<Rule> = Vec::with_capacity(rules.len().max(1));
        for (index, raw) in rules.iter().enumerate() {
            let rule = compile_rule(raw, index, &default_workflow)?;
            if let Some(earlier) = compiled.iter().position(|r| r.label == rule.label) {
                return Err(PolicyError::new(
                    format!("rules[{index}].name"),
                    format!("{:?} is already the label of rules[{earlier}]; rule names must be unique", rule.label),
                ));
            }
            compiled.push(rule);
        }
        if rules.is_empty() && policy.default.is_none() {
            compiled.push(Rule::read_only_tools());
        }
        Ok(Policy {
            inner: Arc::new(Inner {
                rules: compiled,
                default,
                default_explicit: policy.default.is_some(),
                default_workflow,
                default_workflow_explicit: policy.default_workflow.is_some(),
            }),
        })
    }

    /// The zero-config policy, as [`Policy::compile`] builds it from an empty `[policy]` and no
    /// rules: the built-in `read-only tools` rule, then approve with the default workflow.
    pub fn zero_config() -> Policy {
        Policy {
            inner: Arc::new(Inner {
                rules: vec![Rule::read_only_tools()],
                default: Action::Approve { workflow: DEFAULT_WORKFLOW.to_owned() },
                default_explicit: false,
                default_workflow: DEFAULT_WORKFLOW.to_owned(),
                default_workflow_explicit: false,
            }),
        }
    }

    /// Decides a call: the first matching rule, else the default, with the trace of every rule
    /// considered. Pure and deterministic.
    pub fn evaluate(&self, call: &CallFacts<'_>) -> Decision {
        self.judge(call, Explain::Yes)
    }

    /// [`Policy::evaluate`] without the trace (left empty): the same action, rule, risk and
    /// hiding, with no text built per rule considered. For the calls whose trace nobody reads:
    /// those let through or denied, audited with their rule.
    pub fn decide(&self, call: &CallFacts<'_>) -> Decision {
        self.judge(call, Explain::No)
    }

    fn judge(&self, call: &CallFacts<'_>, explain: Explain) -> Decision {
        let mut trace = Vec::new();
        let mut step = |rule: &str, matched: bool, why: String| {
            if explain == Explain::Yes {
                trace.push(TraceStep { rule: rule.to_owned(), matched, why });
            }
        };
        for rule in &self.inner.rules {
            match rule.check(call, explain) {
                Ok(why) => {
                    step(&rule.label, true, why);
                    return Decision {
                        action: rule.action.clone(),
                        rule: Some(rule.label.clone()),
                        risk: rule.risk,
                        trace,
                        hide: rule.hide,
                    };
                }
                Err(Mismatch(why)) => step(&rule.label, false, why),
            }
        }
        let why = explain.say(|| {
            if self.inner.rules.is_empty() {
                format!("no rules are configured; default: {}", self.inner.default)
            } else {
                format!("no rule matched; default: {}", self.inner.default)
            }
        });
        step(DEFAULT_LABEL, true, why);
        Decision { action: self.inner.default.clone(), rule: None, risk: None, trace, hide: false }
    }

    /// Whether `tools/list` should leave this tool out: the first rule that could match a call
    /// of it (whatever the arguments) is a deny rule with `hide = true`.
    pub fn hides_tool(
        &self,
        server: &str,
        tool: &str,
        agent: Option<&str>,
        annotations: Option<&rmcp::model::ToolAnnotations>,
    ) -> bool {
        self.inner
            .rules
            .iter()
            .find(|r| r.check_static(server, tool, agent, annotations, Explain::No).is_ok())
            .is_some_and(|r| r.hide && r.when.is_empty())
    }

    /// Whether a call of this tool could be held for approval for this agent: a rule that
    /// matches it statically asks for approval before a rule that surely decides it otherwise
    /// (one without `when` conditions), or the default does.
    pub fn could_hold(
        &self,
        server: &str,
        tool: &str,
        agent: Option<&str>,
        annotations: Option<&rmcp::model::ToolAnnotations>,
    ) -> bool {
        for rule in
            self.inner.rules.iter().filter(|r| r.check_static(server, tool, agent, annotations, Explain::No).is_ok())
        {
            if matches!(rule.action, Action::Approve { .. }) {
                return true;
            }
            if rule.when.is_empty() {
                return false;
            }
        }
        matches!(self.inner.default, Action::Approve { .. })
    }

    /// Whether any call at all could be held: a rule asks for approval, or the default does and
    /// no rule before it decides every call.
    pub fn holds_any(&self) -> bool {
        for rule in &self.inner.rules {
            if matches!(rule.action, Action::Approve { .. }) {
                return true;
            }
            if rule.matches_every_call() {
                return false;
            }
        }
        matches!(self.inner.default, Action::Approve { .. })
    }

    /// Whether any rule hides tools (so listing can skip the check when none does).
    pub fn hides_any(&self) -> bool {
        self.inner.rules.iter().any(|r| r.hide)
    }

    /// Warnings about a policy that compiles but probably does not do what was meant.
    pub fn lint(&self) -> Vec<String> {
        let rules = &self.inner.rules;
        let mut warnings = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            if let Some(earlier) = rules.iter().take(i).find(|e| e.covers(rule)) {
                let what = if earlier.is_catch_all() {
                    "matches every call".to_owned()
                } else {
                    format!("matches every call {} would", rule.display())
                };
                warnings.push(format!("{} is unreachable: {} before it {what}", rule.display(), earlier.display()));
            }
            if let Some(earlier) = rules.iter().take(i).find(|e| e.shadows_by_annotations(rule)) {
                warnings.push(format!(
                    "{} may never fire: {} before it allows every tool annotated {}, and servers declare their \
                     own annotations (a server that annotates a tool {} names that way gets it allowed); put \
                     deny and approve rules before rules that match on annotations",
                    rule.display(),
                    earlier.display(),
                    earlier.annotations.describe(),
                    rule.display(),
                ));
            }
            if let Action::Deny { reason } = &rule.action
                && !rule.reason_given
            {
                warnings.push(format!(
                    "{} denies without a `reason`; the model will only be told \"{reason}\"",
                    rule.display()
                ));
            }
            if rule.reason_given && !matches!(rule.action, Action::Deny { .. }) {
                warnings.push(format!(
                    "{}: `reason` is only shown on deny; it has no effect with action = \"{}\"",
                    rule.display(),
                    rule.action.name()
                ));
            }
            if rule.has_annotations_table && rule.annotations.is_empty() {
                warnings.push(format!("{}: `annotations` is empty and restricts nothing", rule.display()));
            }
        }
        if self.inner.default_explicit
            && let Some(catch_all) = rules.iter().find(|r| r.is_catch_all())
        {
            warnings.push(format!("policy.default is never used: {} matches every call", catch_all.display()));
        }
        if self.inner.default == Action::Allow && !rules.iter().any(Rule::is_catch_all) {
            warnings.push(
                "policy.default = \"allow\": every call no rule matches goes through without approval".to_owned(),
            );
        }
        warnings
    }

    /// The approval workflows this policy can send calls to, each once, in order of first use
    /// (including `policy.default_workflow` when it is set explicitly).
    pub fn workflows_used(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        let mut add = |name: &str| {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
        };
        for rule in &self.inner.rules {
            if let Action::Approve { workflow } = &rule.action {
                add(workflow);
            }
        }
        if let Action::Approve { workflow } = &self.inner.default {
            add(workflow);
        }
        if self.inner.default_workflow_explicit {
            add(&self.inner.default_workflow);
        }
        names
    }

    /// The configuration key that sends calls to workflow `name` (one of [`Policy::workflows_used`]),
    /// for errors about it: `policy.default_workflow` when it is set to `name` (rules without a
    /// `workflow` use it), else the first rule naming it (`rules[N].workflow`), else `policy.default`.
    pub fn workflow_key(&self, name: &str) -> String {
        if self.inner.default_workflow_explicit && self.inner.default_workflow == name {
            return "policy.default_workflow".to_owned();
        }
        self.inner
            .rules
            .iter()
            .position(|r| matches!(&r.action, Action::Approve { workflow } if workflow == name))
            .map_or_else(|| "policy.default".to_owned(), |i| format!("rules[{i}].workflow"))
    }

    /// The labels of the rules, in order (the built-in rule's in the zero-config policy).
    pub fn rule_labels(&self) -> Vec<&str> {
        self.inner.rules.iter().map(|r| r.label.as_str()).collect()
    }

    /// The action when no rule matches.
    pub fn default_action(&self) -> &Action {
        &self.inner.default
    }
}

fn compile_rule(raw: &RawRule, index: usize, default_workflow: &str) -> Result<Rule, PolicyError> {
    let key = format!("rules[{index}]");
    let err = |field: &str, message: String| PolicyError::new(format!("{key}.{field}"), message);

    let label = match &raw.name {
        Some(n) if n.trim().is_empty() => return Err(err("name", "must not be empty".into())),
        Some(n) => n.clone(),
        None => key.clone(),
    };
    let make_action = parse_action(&raw.action, &format!("{key}.action"))?;
    let is_deny = raw.action == "deny";
    let is_approve = raw.action == "approve";

    let server = match &raw.server {
        Some(s) if s.is_empty() => return Err(err("server", "an empty pattern matches no server".into())),
        Some(s) => Some(Glob::new(s)),
        None => None,
    };
    let tool = raw.tool.as_ref().map(|t| compile_globs(t, &format!("{key}.tool"), "tool")).transpose()?;
    let agent = raw.agent.as_ref().map(|a| compile_globs(a, &format!("{key}.agent"), "agent")).transpose()?;
    let annotations = raw.annotations.as_ref().map_or_else(Hints::default, |a| Hints {
        read_only: a.read_only_hint,
        destructive: a.destructive_hint,
        idempotent: a.idempotent_hint,
        open_world: a.open_world_hint,
    });
    let when = raw
        .when
        .iter()
        .enumerate()
        .map(|(i, c)| Condition::compile(c, &format!("{key}.when[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;

    if raw.reason.as_deref().is_some_and(|r| r.trim().is_empty()) {
        return Err(err("reason", "must not be empty".into()));
    }
    let workflow = match &raw.workflow {
        Some(_) if !is_approve => {
            return Err(err("workflow", format!("only approve rules take a workflow, not {:?}", raw.action)));
        }
        Some(w) if w.is_empty() => return Err(err("workflow", "must not be empty".into())),
        Some(w) => w.clone(),
        None => default_workflow.to_owned(),
    };
    if raw.hide && !is_deny {
        return Err(err("hide", format!("only deny rules can hide tools, not {:?}", raw.action)));
    }
    if raw.hide && !when.is_empty() {
        return Err(err(
            "hide",
            "a rule with `when` conditions cannot hide tools: the arguments are unknown when tools are listed".into(),
        ));
    }
    let risk = raw.risk.as_deref().map(str::parse::<Risk>).transpose().map_err(|m| err("risk", m))?;

    let action = make_action(if is_deny {
        raw.reason.clone().unwrap_or_else(|| format!("denied by policy rule {label}"))
    } else {
        workflow
    });
    Ok(Rule {
        named: raw.name.is_some(),
        label,
        server,
        tool,
        agent,
        annotations,
        when,
        action,
        risk,
        hide: raw.hide,
        reason_given: raw.reason.is_some(),
        has_annotations_table: raw.annotations.is_some(),
    })
}
