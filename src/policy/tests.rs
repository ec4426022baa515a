use figment::Figment;
use figment::providers::{Format, Toml};
use rmcp::model::ToolAnnotations;
use serde::Deserialize;
use serde_json::{Value, json};

use super::matcher::{Glob, Pointer, json_eq, show};
use super::*;

/// The two tables of proxy.toml the policy reads, parsed the way the configuration parses them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    rules: Vec<RawRule>,
}

fn parse(toml: &str) -> Result<Doc, String> {
    Figment::from(Toml::string(toml)).extract().map_err(|e| e.to_string())
}

fn policy(toml: &str) -> Policy {
    let doc = parse(toml).unwrap_or_else(|e| panic!("{toml}\n{e}"));
    Policy::compile(&doc.policy, &doc.rules).unwrap_or_else(|e| panic!("{toml}\n{e}"))
}

fn compile_error(toml: &str) -> PolicyError {
    let doc = parse(toml).unwrap_or_else(|e| panic!("{toml}\n{e}"));
    Policy::compile(&doc.policy, &doc.rules).expect_err(toml)
}

fn ann(
    read_only: Option<bool>,
    destructive: Option<bool>,
    idempotent: Option<bool>,
    open_world: Option<bool>,
) -> ToolAnnotations {
    ToolAnnotations::from_raw(None, read_only, destructive, idempotent, open_world)
}

/// An owned call, turned into [`CallFacts`] for evaluation.
#[derive(Debug, Clone)]
struct Call {
    server: &'static str,
    tool: &'static str,
    agent: Option<&'static str>,
    annotations: Option<ToolAnnotations>,
    arguments: Value,
}

fn call(server: &'static str, tool: &'static str) -> Call {
    Call { server, tool, agent: None, annotations: None, arguments: json!({}) }
}

impl Call {
    fn agent(mut self, agent: &'static str) -> Call {
        self.agent = Some(agent);
        self
    }
    fn ann(mut self, annotations: ToolAnnotations) -> Call {
        self.annotations = Some(annotations);
        self
    }
    fn args(mut self, arguments: Value) -> Call {
        self.arguments = arguments;
        self
    }
    fn facts(&self) -> CallFacts<'_> {
        CallFacts {
            server: self.server,
            tool: self.tool,
            agent: self.agent,
            annotations: self.annotations.as_ref(),
            arguments: &self.arguments,
        }
    }
    /// The traced decision, checked against the untraced one: every test of the policy also
    /// tests that [`Policy::decide`] reaches what [`Policy::evaluate`] does.
    fn decide(&self, policy: &Policy) -> Decision {
        let traced = policy.evaluate(&self.facts());
        let quick = policy.decide(&self.facts());
        assert_eq!(quick, Decision { trace: Vec::new(), ..traced.clone() }, "decide and evaluate differ on {self:?}");
        traced
    }
    fn hidden(&self, policy: &Policy) -> bool {
        policy.hides_tool(self.server, self.tool, self.agent, self.annotations.as_ref())
    }
}

/// One rule named "r" with the given restrictions; `true` when it decides the call.
fn rule_matches(restrictions: &str, c: &Call) -> bool {
    let p = policy(&format!("[[rules]]\nname = \"r\"\naction = \"allow\"\n{restrictions}\n"));
    let d = c.decide(&p);
    assert_eq!(d.trace.first().map(|s| s.matched), Some(d.rule.is_some()), "{restrictions}: {d:?}");
    d.rule.as_deref() == Some("r")
}

fn check_table(table: &[(&str, Call, bool)]) {
    let mut failures = Vec::new();
    for (restrictions, c, expected) in table {
        if rule_matches(restrictions, c) != *expected {
            failures.push(format!("{restrictions} on {c:?}: expected match = {expected}"));
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Matchers
// ---------------------------------------------------------------------------------------------

#[test]
fn server_glob() {
    check_table(&[
        ("server = \"fs\"", call("fs", "t"), true),
        ("server = \"fs\"", call("fs2", "t"), false),
        ("server = \"fs\"", call("FS", "t"), false),
        ("server = \"fs*\"", call("fs", "t"), true),
        ("server = \"fs*\"", call("fs-home", "t"), true),
        ("server = \"fs*\"", call("git", "t"), false),
        ("server = \"*fs\"", call("my-fs", "t"), true),
        ("server = \"f?\"", call("fs", "t"), true),
        ("server = \"f?\"", call("f", "t"), false),
        ("server = \"f?\"", call("fss", "t"), false),
        ("server = \"*\"", call("anything", "t"), true),
        // Regex metacharacters are literal.
        ("server = \"a.b\"", call("axb", "t"), false),
        ("server = \"a.b\"", call("a.b", "t"), true),
        ("server = \"a+[b]\"", call("a+[b]", "t"), true),
        ("server = \"^fs$\"", call("fs", "t"), false),
    ]);
}

#[test]
fn tool_glob_and_list() {
    check_table(&[
        ("tool = \"delete_*\"", call("fs", "delete_file"), true),
        ("tool = \"delete_*\"", call("fs", "read_file"), false),
        ("tool = \"delete_*\"", call("fs", "xdelete_file"), false),
        ("tool = \"*_file\"", call("fs", "read_file"), true),
        ("tool = \"a*b*c\"", call("fs", "abc"), true),
        ("tool = \"a*b*c\"", call("fs", "aXXbYYc"), true),
        ("tool = \"a*b*c\"", call("fs", "acb"), false),
        ("tool = \"a**c\"", call("fs", "ac"), true),
        ("tool = \"caf?\"", call("fs", "café"), true),
        ("tool = \"read_file\"", call("fs", "read_file"), true),
        ("tool = \"read_file\"", call("fs", "read_files"), false),
        ("tool = [\"read_*\", \"list_*\"]", call("fs", "list_dir"), true),
        ("tool = [\"read_*\", \"list_*\"]", call("fs", "read_file"), true),
        ("tool = [\"read_*\", \"list_*\"]", call("fs", "write_file"), false),
        ("server = \"fs\"\ntool = \"write_*\"", call("fs", "write_file"), true),
        ("server = \"fs\"\ntool = \"write_*\"", call("git", "write_file"), false),
    ]);
}

#[test]
fn agent_glob() {
    check_table(&[
        ("agent = \"claude*\"", call("fs", "t").agent("claude-code"), true),
        ("agent = \"claude*\"", call("fs", "t").agent("cursor"), false),
        ("agent = [\"cursor\", \"claude*\"]", call("fs", "t").agent("cursor"), true),
        ("agent = [\"cursor\", \"claude*\"]", call("fs", "t").agent("zed"), false),
        // An agent restriction never matches an unknown agent, not even `*`.
        ("agent = \"claude*\"", call("fs", "t"), false),
        ("agent = \"*\"", call("fs", "t"), false),
        ("agent = \"*\"", call("fs", "t").agent(""), true),
    ]);
}

#[test]
fn annotations_with_known_and_unknown_tools() {
    let t = Some(true);
    let f = Some(false);
    let unset = ann(None, None, None, None);
    check_table(&[
        // readOnlyHint: default false.
        ("annotations = { readOnlyHint = true }", call("s", "t").ann(ann(t, None, None, None)), true),
        ("annotations = { readOnlyHint = true }", call("s", "t").ann(ann(f, None, None, None)), false),
        ("annotations = { readOnlyHint = true }", call("s", "t").ann(unset.clone()), false),
        ("annotations = { readOnlyHint = true }", call("s", "t"), false),
        ("annotations = { readOnlyHint = false }", call("s", "t").ann(ann(f, None, None, None)), true),
        ("annotations = { readOnlyHint = false }", call("s", "t").ann(unset.clone()), true),
        ("annotations = { readOnlyHint = false }", call("s", "t"), true),
        // destructiveHint: default true.
        ("annotations = { destructiveHint = true }", call("s", "t").ann(ann(None, t, None, None)), true),
        ("annotations = { destructiveHint = true }", call("s", "t").ann(ann(None, f, None, None)), false),
        ("annotations = { destructiveHint = true }", call("s", "t").ann(unset.clone()), true),
        ("annotations = { destructiveHint = true }", call("s", "t"), true),
        ("annotations = { destructiveHint = false }", call("s", "t").ann(ann(None, f, None, None)), true),
        ("annotations = { destructiveHint = false }", call("s", "t").ann(unset.clone()), false),
        ("annotations = { destructiveHint = false }", call("s", "t"), false),
        // idempotentHint: default false.
        ("annotations = { idempotentHint = true }", call("s", "t").ann(ann(None, None, t, None)), true),
        ("annotations = { idempotentHint = true }", call("s", "t").ann(ann(None, None, f, None)), false),
        ("annotations = { idempotentHint = true }", call("s", "t").ann(unset.clone()), false),
        ("annotations = { idempotentHint = true }", call("s", "t"), false),
        ("annotations = { idempotentHint = false }", call("s", "t").ann(unset.clone()), true),
        ("annotations = { idempotentHint = false }", call("s", "t"), true),
        // openWorldHint: default true.
        ("annotations = { openWorldHint = false }", call("s", "t").ann(ann(None, None, None, f)), true),
        ("annotations = { openWorldHint = false }", call("s", "t").ann(ann(None, None, None, t)), false),
        ("annotations = { openWorldHint = false }", call("s", "t").ann(unset.clone()), false),
        ("annotations = { openWorldHint = false }", call("s", "t"), false),
        ("annotations = { openWorldHint = true }", call("s", "t").ann(unset.clone()), true),
        ("annotations = { openWorldHint = true }", call("s", "t"), true),
        // Several hints: all must hold.
        (
            "annotations = { readOnlyHint = false, destructiveHint = false }",
            call("s", "t").ann(ann(f, f, None, None)),
            true,
        ),
        (
            "annotations = { readOnlyHint = false, destructiveHint = false }",
            call("s", "t").ann(ann(f, None, None, None)),
            false,
        ),
        // An empty table restricts nothing.
        ("annotations = {}", call("s", "t"), true),
    ]);
}

#[test]
fn condition_operators() {
    let c = |args: Value| call("s", "t").args(args);
    check_table(&[
        // equals: JSON equality, numbers by value.
        ("when = [{ pointer = \"/path\", equals = \"/etc\" }]", c(json!({"path": "/etc"})), true),
        ("when = [{ pointer = \"/path\", equals = \"/etc\" }]", c(json!({"path": "/etc/x"})), false),
        ("when = [{ pointer = \"/n\", equals = 1 }]", c(json!({"n": 1})), true),
        ("when = [{ pointer = \"/n\", equals = 1 }]", c(json!({"n": 1.0})), true),
        ("when = [{ pointer = \"/n\", equals = 1 }]", c(json!({"n": "1"})), false),
        ("when = [{ pointer = \"/o\", equals = { a = 1, b = [true] } }]", c(json!({"o": {"b": [true], "a": 1}})), true),
        ("when = [{ pointer = \"/o\", equals = { a = 1 } }]", c(json!({"o": {"a": 1, "b": 2}})), false),
        ("when = [{ pointer = \"/b\", equals = false }]", c(json!({"b": false})), true),
        // one_of: any equal.
        ("when = [{ pointer = \"/m\", one_of = [\"GET\", \"HEAD\"] }]", c(json!({"m": "HEAD"})), true),
        ("when = [{ pointer = \"/m\", one_of = [\"GET\", \"HEAD\"] }]", c(json!({"m": "POST"})), false),
        ("when = [{ pointer = \"/m\", one_of = [1, \"x\"] }]", c(json!({"m": 1})), true),
        // regex: strings only, unanchored.
        ("when = [{ pointer = \"/path\", regex = \"^/etc/\" }]", c(json!({"path": "/etc/passwd"})), true),
        ("when = [{ pointer = \"/path\", regex = \"^/etc/\" }]", c(json!({"path": "/home/etc/"})), false),
        ("when = [{ pointer = \"/path\", regex = \"etc\" }]", c(json!({"path": "/home/etc/"})), true),
        ("when = [{ pointer = \"/n\", regex = \"^1$\" }]", c(json!({"n": 1})), false),
        ("when = [{ pointer = \"/n\", regex = \".*\" }]", c(json!({"n": null})), false),
        // glob: strings only, anchored.
        ("when = [{ pointer = \"/path\", glob = \"/tmp/*\" }]", c(json!({"path": "/tmp/a/b"})), true),
        ("when = [{ pointer = \"/path\", glob = \"/tmp/*\" }]", c(json!({"path": "/var/tmp/a"})), false),
        ("when = [{ pointer = \"/path\", glob = \"*\" }]", c(json!({"path": ["x"]})), false),
        // Numeric comparisons: numbers only.
        ("when = [{ pointer = \"/n\", gt = 3 }]", c(json!({"n": 4})), true),
        ("when = [{ pointer = \"/n\", gt = 3 }]", c(json!({"n": 3})), false),
        ("when = [{ pointer = \"/n\", gte = 3 }]", c(json!({"n": 3})), true),
        ("when = [{ pointer = \"/n\", gte = 3 }]", c(json!({"n": 2.99})), false),
        ("when = [{ pointer = \"/n\", lt = 3 }]", c(json!({"n": 2.5})), true),
        ("when = [{ pointer = \"/n\", lt = 3 }]", c(json!({"n": 3})), false),
        ("when = [{ pointer = \"/n\", lte = 3 }]", c(json!({"n": 3})), true),
        ("when = [{ pointer = \"/n\", lte = 3 }]", c(json!({"n": 4})), false),
        ("when = [{ pointer = \"/n\", lte = -1.5 }]", c(json!({"n": -2})), true),
        ("when = [{ pointer = \"/n\", gt = 3 }]", c(json!({"n": "5"})), false),
        ("when = [{ pointer = \"/n\", lt = 3 }]", c(json!({"n": true})), false),
        ("when = [{ pointer = \"/n\", gt = 100 }]", c(json!({"n": u64::MAX})), true),
        // Several operators in one condition: all must hold.
        ("when = [{ pointer = \"/n\", gt = 0, lte = 100 }]", c(json!({"n": 100})), true),
        ("when = [{ pointer = \"/n\", gt = 0, lte = 100 }]", c(json!({"n": 101})), false),
        ("when = [{ pointer = \"/n\", gt = 0, lte = 100 }]", c(json!({"n": 0})), false),
        ("when = [{ pointer = \"/s\", regex = \"^a\", glob = \"*z\" }]", c(json!({"s": "abcz"})), true),
        ("when = [{ pointer = \"/s\", regex = \"^a\", glob = \"*z\" }]", c(json!({"s": "abc"})), false),
        // exists.
        ("when = [{ pointer = \"/x\", exists = true }]", c(json!({"x": null})), true),
        ("when = [{ pointer = \"/x\", exists = true }]", c(json!({"y": 1})), false),
        ("when = [{ pointer = \"/x\", exists = false }]", c(json!({"y": 1})), true),
        ("when = [{ pointer = \"/x\", exists = false }]", c(json!({"x": 0})), false),
        ("when = [{ pointer = \"/x\", exists = true, equals = 0 }]", c(json!({"x": 0})), true),
        // Absent: every operator but exists = false fails.
        ("when = [{ pointer = \"/path\", equals = \"/etc\" }]", c(json!({})), false),
        ("when = [{ pointer = \"/path\", regex = \".*\" }]", c(json!({})), false),
        ("when = [{ pointer = \"/n\", lt = 10 }]", c(json!({})), false),
        ("when = [{ pointer = \"/path\", equals = \"/etc\" }]", c(Value::Null), false),
        // not: negates the whole condition, absence included.
        ("when = [{ pointer = \"/path\", glob = \"/tmp/*\", not = true }]", c(json!({"path": "/etc/x"})), true),
        ("when = [{ pointer = \"/path\", glob = \"/tmp/*\", not = true }]", c(json!({"path": "/tmp/x"})), false),
        ("when = [{ pointer = \"/path\", glob = \"/tmp/*\", not = true }]", c(json!({})), true),
        ("when = [{ pointer = \"/n\", gt = 3, not = true }]", c(json!({"n": "9"})), true),
        ("when = [{ pointer = \"/x\", exists = true, not = true }]", c(json!({})), true),
        ("when = [{ pointer = \"/x\", exists = false, not = true }]", c(json!({})), false),
        ("when = [{ pointer = \"/n\", gt = 0, lte = 100, not = true }]", c(json!({"n": 101})), true),
        // Several conditions: all must hold.
        (
            "when = [{ pointer = \"/a\", equals = 1 }, { pointer = \"/b\", equals = 2 }]",
            c(json!({"a": 1, "b": 2})),
            true,
        ),
        (
            "when = [{ pointer = \"/a\", equals = 1 }, { pointer = \"/b\", equals = 2 }]",
            c(json!({"a": 1, "b": 3})),
            false,
        ),
        // Pointers: nesting, arrays, escapes, the whole document.
        ("when = [{ pointer = \"/a/b/1\", equals = \"y\" }]", c(json!({"a": {"b": ["x", "y"]}})), true),
        ("when = [{ pointer = \"/a/b/01\", exists = true }]", c(json!({"a": {"b": ["x", "y"]}})), false),
        ("when = [{ pointer = \"/a/b/-\", exists = true }]", c(json!({"a": {"b": ["x"]}})), false),
        ("when = [{ pointer = \"/a/b/5\", exists = true }]", c(json!({"a": {"b": ["x"]}})), false),
        ("when = [{ pointer = \"/a/0\", exists = true }]", c(json!({"a": {"0": 1}})), true),
        ("when = [{ pointer = \"/a/x\", exists = true }]", c(json!({"a": "string"})), false),
        ("when = [{ pointer = \"/a~1b\", equals = 1 }]", c(json!({"a/b": 1})), true),
        ("when = [{ pointer = \"/m~0n\", equals = 1 }]", c(json!({"m~n": 1})), true),
        ("when = [{ pointer = \"/\", equals = 1 }]", c(json!({"": 1})), true),
        ("when = [{ pointer = \"\", equals = { a = 1 } }]", c(json!({"a": 1})), true),
        ("when = [{ pointer = \"\", exists = true }]", c(Value::Null), true),
    ]);
}

// ---------------------------------------------------------------------------------------------
// Compile errors
// ---------------------------------------------------------------------------------------------

#[test]
fn compile_errors_name_the_key() {
    let ok = "[[rules]]\naction = \"allow\"\n";
    let cases: &[(&str, &str, &str)] = &[
        (
            "[[rules]]\naction = \"allow\"\n[[rules]]\naction = \"deny\"\nwhen = [{ pointer = \"/a\", regex = \"(\" }]",
            "rules[1].when[0].regex",
            "invalid regex \"(\"",
        ),
        (
            "[[rules]]\naction = \"allow\"\nwhen = [{ pointer = \"path\", equals = 1 }]",
            "rules[0].when[0].pointer",
            "must start with \"/\"",
        ),
        (
            "[[rules]]\naction = \"allow\"\nwhen = [{ pointer = \"/a~2\", equals = 1 }]",
            "rules[0].when[0].pointer",
            "\"~\" must be followed by 0",
        ),
        (
            "[[rules]]\naction = \"allow\"\nwhen = [{ pointer = \"/a~\", equals = 1 }]",
            "rules[0].when[0].pointer",
            "\"~\" must be followed by 0",
        ),
        ("[[rules]]\naction = \"allow\"\nwhen = [{ pointer = \"/a\" }]", "rules[0].when[0]", "needs an operator"),
        (
            "[[rules]]\naction = \"allow\"\nwhen = [{ pointer = \"/a\", not = true }]",
            "rules[0].when[0]",
            "needs an operator",
        ),
        (
            "[[rules]]\naction = \"allow\"\nwhen = [{ pointer = \"/a\", exists = false, equals = 1 }]",
            "rules[0].when[0].exists",
            "cannot be combined",
        ),
        (
            "[[rules]]\naction = \"allow\"\nwhen = [{ pointer = \"/a\", one_of = [] }]",
            "rules[0].when[0].one_of",
            "empty list",
        ),
        (
            "[[rules]]\naction = \"allow\"\nwhen = [{ pointer = \"/a\", gt = nan }]",
            "rules[0].when[0].gt",
            "not a finite number",
        ),
        (
            "[[rules]]\naction = \"allow\"\nwhen = [{ pointer = \"/a\", lte = inf }]",
            "rules[0].when[0].lte",
            "not a finite number",
        ),
        ("[[rules]]\naction = \"permit\"", "rules[0].action", "unknown action \"permit\""),
        ("[[rules]]\naction = \"Allow\"", "rules[0].action", "unknown action"),
        ("[[rules]]\naction = \"approve\"\nrisk = \"severe\"", "rules[0].risk", "unknown risk \"severe\""),
        ("[policy]\ndefault = \"block\"", "policy.default", "unknown action \"block\""),
        ("[policy]\ndefault_workflow = \"\"", "policy.default_workflow", "must not be empty"),
        ("[[rules]]\naction = \"allow\"\nhide = true", "rules[0].hide", "only deny rules"),
        ("[[rules]]\naction = \"approve\"\nhide = true", "rules[0].hide", "only deny rules"),
        (
            "[[rules]]\naction = \"deny\"\nhide = true\nwhen = [{ pointer = \"/a\", exists = true }]",
            "rules[0].hide",
            "arguments are unknown when tools are listed",
        ),
        ("[[rules]]\naction = \"deny\"\nworkflow = \"ops\"", "rules[0].workflow", "only approve rules"),
        ("[[rules]]\naction = \"approve\"\nworkflow = \"\"", "rules[0].workflow", "must not be empty"),
        ("[[rules]]\naction = \"deny\"\nreason = \" \"", "rules[0].reason", "must not be empty"),
        ("[[rules]]\naction = \"allow\"\ntool = []", "rules[0].tool", "empty list matches no tool"),
        ("[[rules]]\naction = \"allow\"\ntool = [\"a\", \"\"]", "rules[0].tool[1]", "empty pattern"),
        ("[[rules]]\naction = \"allow\"\ntool = \"\"", "rules[0].tool", "empty pattern"),
        ("[[rules]]\naction = \"allow\"\nagent = []", "rules[0].agent", "empty list matches no agent"),
        ("[[rules]]\naction = \"allow\"\nserver = \"\"", "rules[0].server", "empty pattern"),
        ("[[rules]]\naction = \"allow\"\nname = \"\"", "rules[0].name", "must not be empty"),
        (
            "[[rules]]\nname = \"x\"\naction = \"allow\"\n[[rules]]\nname = \"x\"\naction = \"deny\"",
            "rules[1].name",
            "rules[0]",
        ),
        (
            "[[rules]]\naction = \"allow\"\n[[rules]]\nname = \"rules[0]\"\naction = \"deny\"",
            "rules[1].name",
            "must be unique",
        ),
    ];
    let mut failures = Vec::new();
    for (toml, key, message) in cases {
        let err = compile_error(&format!("{toml}\n"));
        if err.key != *key || !err.message.contains(message) {
            failures.push(format!("{toml:?}: got {err}, expected `{key}` with {message:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(Policy::compile(&RawPolicy::default(), &parse(ok).unwrap().rules).is_ok());
}

#[test]
fn error_display_names_the_key() {
    let err = compile_error(
        "[[rules]]\naction = \"allow\"\n[[rules]]\naction = \"deny\"\nwhen = [{ pointer = \"/a\", regex = \"a(\" }]\n",
    );
    let text = err.to_string();
    assert!(text.starts_with("`rules[1].when[0].regex`: invalid regex \"a(\": "), "{text}");
    assert_eq!(PolicyError::new("policy.default", "x").to_string(), "`policy.default`: x");
}

#[test]
fn unknown_keys_are_rejected_when_deserializing() {
    for toml in [
        "[[rules]]\naction = \"allow\"\ntools = \"x\"\n",
        "[[rules]]\naction = \"allow\"\nannotations = { readonlyHint = true }\n",
        "[[rules]]\naction = \"allow\"\nannotations = { read_only_hint = true }\n",
        "[[rules]]\naction = \"allow\"\nwhen = [{ pointer = \"/a\", matches = \"x\" }]\n",
        "[policy]\ndefault = \"allow\"\nworkflow = \"x\"\n",
        "[[rules]]\ntool = \"x\"\n",
    ] {
        assert!(parse(toml).is_err(), "{toml}");
    }
    let doc = parse("[[rules]]\naction = \"allow\"\ntool = [\"a\", \"b\"]\nagent = \"c\"\n").unwrap();
    assert_eq!(doc.rules[0].tool, Some(OneOrMany::Many(vec!["a".into(), "b".into()])));
    assert_eq!(doc.rules[0].agent, Some(OneOrMany::One("c".into())));
}

// ---------------------------------------------------------------------------------------------
// Decisions
// ---------------------------------------------------------------------------------------------

#[test]
fn first_match_wins_and_trace_lists_rules_considered() {
    let p = policy(
        r#"
        [[rules]]
        name = "git only"
        server = "git*"
        action = "allow"

        [[rules]]
        name = "no deletes"
        tool = "delete_*"
        action = "deny"
        reason = "deleting is not allowed"

        [[rules]]
        tool = "*"
        action = "allow"
        "#,
    );
    let d = call("fs", "delete_file").decide(&p);
    assert_eq!(d.action, Action::Deny { reason: "deleting is not allowed".into() });
    assert_eq!(d.rule.as_deref(), Some("no deletes"));
    assert_eq!(
        d.trace,
        vec![
            TraceStep { rule: "git only".into(), matched: false, why: "server \"fs\" does not match \"git*\"".into() },
            TraceStep {
                rule: "no deletes".into(),
                matched: true,
                why: "tool \"delete_file\" matches \"delete_*\"".into()
            },
        ]
    );
    // The third rule would also match; it is never considered.
    let d = call("fs", "read_file").decide(&p);
    assert_eq!(d.action, Action::Allow);
    assert_eq!(d.rule.as_deref(), Some("rules[2]"));
    assert_eq!(d.trace.len(), 3);
    assert_eq!(d.trace[1].why, "tool \"read_file\" does not match \"delete_*\"");
    assert_eq!(d.trace[2].why, "tool \"read_file\" matches \"*\"");
    // Order matters: the first matching rule decides even when a later one is stricter.
    let d = call("git", "delete_branch").decide(&p);
    assert_eq!((d.action, d.rule.as_deref()), (Action::Allow, Some("git only")));
}

#[test]
fn trace_explains_conditions_and_annotations() {
    let p = policy(
        r#"
        [[rules]]
        name = "system files"
        tool = ["write_*", "delete_*"]
        when = [{ pointer = "/path", regex = "^/etc/" }, { pointer = "/force", exists = false }]
        action = "deny"

        [[rules]]
        name = "reads"
        annotations = { readOnlyHint = true }
        action = "allow"

        [[rules]]
        name = "ops"
        agent = "ops-*"
        action = "allow"
        "#,
    );
    let d = call("fs", "delete_file").args(json!({"path": "/etc/passwd"})).decide(&p);
    assert_eq!(d.rule.as_deref(), Some("system files"));
    assert_eq!(
        d.trace[0].why,
        "tool \"delete_file\" matches \"delete_*\" (of [\"write_*\", \"delete_*\"]); \
         argument /path = \"/etc/passwd\" matches regex \"^/etc/\"; argument /force is absent"
    );
    assert_eq!(d.action, Action::Deny { reason: "denied by policy rule system files".into() });

    let d = call("fs", "delete_file").args(json!({"path": "/home/x"})).decide(&p);
    assert_eq!(d.rule, None);
    let whys: Vec<(&str, bool, &str)> = d.trace.iter().map(|s| (s.rule.as_str(), s.matched, s.why.as_str())).collect();
    assert_eq!(
        whys,
        vec![
            ("system files", false, "argument /path = \"/home/x\" does not match regex \"^/etc/\""),
            (
                "reads",
                false,
                "tool readOnlyHint is false (MCP default: the tool sets no annotations or is unknown), rule requires true"
            ),
            ("ops", false, "the calling agent is unknown; rule requires an agent matching [\"ops-*\"]"),
            ("policy.default", true, "no rule matched; default: approve (workflow \"default\")"),
        ]
    );

    let d = call("fs", "read").ann(ann(Some(true), None, None, None)).decide(&p);
    assert_eq!(d.trace[0].why, "tool \"read\" matches none of [\"write_*\", \"delete_*\"]");
    assert_eq!(d.trace[1].why, "tool readOnlyHint is true (set by the tool)");

    let d = call("fs", "t").ann(ann(None, None, None, None)).agent("ops-1").decide(&p);
    assert_eq!(
        d.trace[1].why,
        "tool readOnlyHint is false (MCP default: the tool does not set it), rule requires true"
    );
    assert_eq!(d.trace[2].why, "agent \"ops-1\" matches \"ops-*\"");

    let d = call("fs", "write_x").args(json!({"path": 7})).decide(&p);
    assert_eq!(d.trace[0].why, "argument /path = 7 is not a string (regex \"^/etc/\" applies to strings only)");
}

#[test]
fn trace_explains_operators_and_negation() {
    let why = |cond: &str, args: Value| {
        let p = policy(&format!("[[rules]]\nname = \"r\"\naction = \"allow\"\nwhen = [{cond}]\n"));
        call("s", "t").args(args).decide(&p).trace[0].why.clone()
    };
    assert_eq!(why("{ pointer = \"/n\", gt = 0, lt = 10 }", json!({"n": 5})), "argument /n = 5 > 0 and < 10");
    assert_eq!(why("{ pointer = \"/n\", gt = 0, lt = 10 }", json!({"n": 50})), "argument /n = 50 is not < 10");
    assert_eq!(
        why("{ pointer = \"/n\", gte = 1.5 }", json!({"n": "2"})),
        "argument /n = \"2\" is not a number (`>= 1.5` applies to numbers only)"
    );
    assert_eq!(
        why("{ pointer = \"/m\", one_of = [\"a\", 1] }", json!({"m": 1})),
        "argument /m = 1 is one of [\"a\",1]"
    );
    assert_eq!(
        why("{ pointer = \"/m\", equals = \"a\" }", json!({"m": "b"})),
        "argument /m = \"b\" does not equal \"a\""
    );
    assert_eq!(why("{ pointer = \"/x\", exists = true }", json!({"x": 1})), "argument /x is present");
    assert_eq!(why("{ pointer = \"/x\", exists = false }", json!({"x": 1})), "argument /x is present");
    assert_eq!(
        why("{ pointer = \"/p\", glob = \"/tmp/*\", not = true }", json!({"p": "/etc"})),
        "argument /p = \"/etc\" does not match glob \"/tmp/*\"; negated (not = true), so the condition holds"
    );
    assert_eq!(
        why("{ pointer = \"/p\", glob = \"/tmp/*\", not = true }", json!({"p": "/tmp/a"})),
        "argument /p = \"/tmp/a\" matches glob \"/tmp/*\"; negated (not = true), so the condition fails"
    );
    assert_eq!(why("{ pointer = \"\", exists = true }", json!({})), "the arguments object is present");
    // Long values are cut short.
    let long = "x".repeat(500);
    let text = why("{ pointer = \"/s\", equals = \"y\" }", json!({ "s": long }));
    assert!(text.chars().count() < 150 && text.contains('…'), "{text}");
}

#[test]
fn rule_without_restrictions_matches_every_call() {
    let p = policy("[[rules]]\naction = \"deny\"\nreason = \"closed\"\n");
    let d = call("any", "thing").decide(&p);
    assert_eq!(d.action, Action::Deny { reason: "closed".into() });
    assert_eq!(d.trace[0].why, "the rule has no restrictions: it matches every call");
}

#[test]
fn default_action_when_no_rule_matches() {
    let nothing = "[[rules]]\ntool = \"never\"\naction = \"allow\"\n";
    let cases = [
        ("", Action::Approve { workflow: "default".into() }),
        ("[policy]\ndefault = \"approve\"\n", Action::Approve { workflow: "default".into() }),
        ("[policy]\ndefault = \"approve\"\ndefault_workflow = \"ops\"\n", Action::Approve { workflow: "ops".into() }),
        ("[policy]\ndefault = \"allow\"\n", Action::Allow),
        (
            "[policy]\ndefault = \"deny\"\n",
            Action::Deny { reason: "denied by policy: no rule allows this call".into() },
        ),
    ];
    for (table, expected) in cases {
        let p = policy(&format!("{table}{nothing}"));
        let d = call("s", "t").decide(&p);
        assert_eq!(d.action, expected, "{table}");
        assert_eq!(d.rule, None);
        assert_eq!(d.risk, None);
        assert!(!d.hide);
        let last = d.trace.last().unwrap();
        assert_eq!((last.rule.as_str(), last.matched), (DEFAULT_LABEL, true));
        assert!(last.why.starts_with("no rule matched; default: "), "{}", last.why);
        assert_eq!(p.default_action(), &expected);
    }
    // `policy.default` with no rules: no built-in rule, just the default.
    let p = policy("[policy]\ndefault = \"deny\"\n");
    let d = call("s", "t").ann(ann(Some(true), None, None, None)).decide(&p);
    assert!(matches!(d.action, Action::Deny { .. }));
    assert_eq!(d.trace.len(), 1);
    assert!(d.trace[0].why.starts_with("no rules are configured"), "{}", d.trace[0].why);
}

#[test]
fn zero_config_allows_read_only_tools_and_approves_the_rest() {
    let compiled = Policy::compile(&RawPolicy::default(), &[]).unwrap();
    let with_workflow =
        Policy::compile(&RawPolicy { default: None, default_workflow: Some("ops".into()) }, &[]).unwrap();
    for p in [&compiled, &Policy::zero_config()] {
        assert_eq!(p.rule_labels(), vec![READ_ONLY_RULE]);
        assert!(p.lint().is_empty(), "{:?}", p.lint());
        assert_eq!(p.workflows_used(), vec!["default"]);

        let d = call("fs", "read").ann(ann(Some(true), None, None, None)).decide(p);
        assert_eq!(d.action, Action::Allow);
        assert_eq!(d.rule.as_deref(), Some("read-only tools"));
        assert_eq!(
            d.trace,
            vec![TraceStep {
                rule: "read-only tools".into(),
                matched: true,
                why: "tool readOnlyHint is true (set by the tool)".into()
            }]
        );

        let approve = Action::Approve { workflow: "default".into() };
        for c in [
            call("fs", "write").ann(ann(Some(false), None, None, None)),
            call("fs", "write").ann(ann(None, Some(false), Some(true), Some(false))),
            call("fs", "unknown"),
        ] {
            let d = c.decide(p);
            assert_eq!(d.action, approve, "{c:?}");
            assert_eq!(d.rule, None);
            assert_eq!(d.trace.len(), 2);
            assert_eq!((d.trace[0].rule.as_str(), d.trace[0].matched), ("read-only tools", false));
            assert_eq!(d.trace[1].rule, "policy.default");
        }
    }
    let d = call("fs", "write").decide(&with_workflow);
    assert_eq!(d.action, Action::Approve { workflow: "ops".into() });
    let d = call("fs", "read").ann(ann(Some(true), None, None, None)).decide(&with_workflow);
    assert_eq!(d.action, Action::Allow);
    // Writing any rule replaces the built-in one.
    let p = policy("[[rules]]\ntool = \"x\"\naction = \"deny\"\nreason = \"no\"\n");
    assert_eq!(p.rule_labels(), vec!["rules[0]"]);
    let d = call("fs", "read").ann(ann(Some(true), None, None, None)).decide(&p);
    assert_eq!((d.action, d.rule), (Action::Approve { workflow: "default".into() }, None));
}

#[test]
fn deny_reasons_workflows_and_risk() {
    let p = policy(
        r#"
        [policy]
        default = "deny"
        default_workflow = "humans"

        [[rules]]
        tool = "rm"
        action = "deny"

        [[rules]]
        name = "no-kill"
        tool = "kill"
        action = "deny"
        risk = "critical"

        [[rules]]
        tool = "deploy"
        action = "approve"
        workflow = "release"
        risk = "high"

        [[rules]]
        tool = "write"
        action = "approve"

        [[rules]]
        tool = "read"
        action = "allow"
        risk = "low"
        "#,
    );
    let cases = [
        ("rm", Action::Deny { reason: "denied by policy rule rules[0]".into() }, None),
        ("kill", Action::Deny { reason: "denied by policy rule no-kill".into() }, Some(Risk::Critical)),
        ("deploy", Action::Approve { workflow: "release".into() }, Some(Risk::High)),
        ("write", Action::Approve { workflow: "humans".into() }, None),
        ("read", Action::Allow, Some(Risk::Low)),
    ];
    for (tool, action, risk) in cases {
        let d = call("s", tool).decide(&p);
        assert_eq!((&d.action, d.risk), (&action, risk), "{tool}");
    }
    assert_eq!(p.workflows_used(), vec!["release", "humans"]);
}

#[test]
fn workflows_used() {
    assert_eq!(policy("[policy]\ndefault = \"deny\"\n").workflows_used(), Vec::<String>::new());
    assert_eq!(policy("[policy]\ndefault = \"allow\"\ndefault_workflow = \"w\"\n").workflows_used(), vec!["w"]);
    assert_eq!(
        policy("[[rules]]\naction = \"approve\"\nworkflow = \"a\"\ntool = \"x\"\n[[rules]]\naction = \"approve\"\nworkflow = \"a\"\n")
            .workflows_used(),
        vec!["a", "default"]
    );
}

#[test]
fn risk_names_order_and_timeouts() {
    for (risk, name, hours) in
        [(Risk::Low, "low", 24), (Risk::Medium, "medium", 12), (Risk::High, "high", 4), (Risk::Critical, "critical", 1)]
    {
        assert_eq!(risk.to_string(), name);
        assert_eq!(name.parse::<Risk>(), Ok(risk));
        assert_eq!(serde_json::to_value(risk).unwrap(), json!(name));
        assert_eq!(serde_json::from_value::<Risk>(json!(name)).unwrap(), risk);
        assert_eq!(risk.default_timeout().as_secs(), hours * 3600);
    }
    assert!(Risk::Low < Risk::Medium && Risk::High < Risk::Critical);
    assert!("High".parse::<Risk>().is_err());
    assert!(serde_json::from_value::<Risk>(json!("High")).is_err());
}

#[test]
fn decision_serializes_for_audit() {
    let p = policy("[[rules]]\nname = \"n\"\naction = \"approve\"\nrisk = \"medium\"\n");
    let d = call("s", "t").decide(&p);
    assert_eq!(
        serde_json::to_value(&d).unwrap(),
        json!({
            "action": {"action": "approve", "workflow": "default"},
            "rule": "n",
            "risk": "medium",
            "trace": [{"rule": "n", "matched": true, "why": "the rule has no restrictions: it matches every call"}],
            "hide": false,
        })
    );
}

// ---------------------------------------------------------------------------------------------
// Hiding
// ---------------------------------------------------------------------------------------------

#[test]
fn hide_removes_tools_only_when_every_call_would_be_denied() {
    let p = policy(
        r#"
        [[rules]]
        name = "admin may delete in tmp"
        agent = "admin"
        tool = "delete_*"
        when = [{ pointer = "/path", glob = "/tmp/*" }]
        action = "allow"

        [[rules]]
        name = "no deletes"
        tool = "delete_*"
        action = "deny"
        hide = true

        [[rules]]
        name = "no shell"
        server = "shell"
        action = "deny"
        reason = "no shell"

        [[rules]]
        name = "hide destructive"
        annotations = { destructiveHint = true }
        action = "deny"
        reason = "destructive"
        hide = true
        "#,
    );
    let cases = [
        (call("fs", "delete_file"), true),
        // An earlier rule could allow some calls for this agent, so the tool stays listed.
        (call("fs", "delete_file").agent("admin"), false),
        (call("fs", "delete_file").agent("bob"), true),
        (call("fs", "read_file").ann(ann(Some(true), Some(false), None, None)), false),
        // Denied, but without hide.
        (call("shell", "run").ann(ann(None, Some(true), None, None)), false),
        // Annotations are known at list time: an unknown or destructive tool is hidden.
        (call("fs", "write_file"), true),
        (call("fs", "write_file").ann(ann(None, Some(false), None, None)), false),
    ];
    for (c, hidden) in &cases {
        assert_eq!(c.hidden(&p), *hidden, "{c:?}");
    }
    let d = call("fs", "delete_file").decide(&p);
    assert!(d.hide);
    assert_eq!(d.action, Action::Deny { reason: "denied by policy rule no deletes".into() });
    let d = call("fs", "delete_file").agent("admin").args(json!({"path": "/tmp/x"})).decide(&p);
    assert!(!d.hide);
    assert_eq!(d.action, Action::Allow);
    assert!(!Policy::zero_config().hides_tool("s", "t", None, None));
}

// ---------------------------------------------------------------------------------------------
// Lint
// ---------------------------------------------------------------------------------------------

fn lint(toml: &str) -> Vec<String> {
    policy(toml).lint()
}

#[test]
fn lint_finds_unreachable_rules() {
    let unreachable =
        |toml: &str| -> Vec<String> { lint(toml).into_iter().filter(|w| w.contains("unreachable")).collect() };
    // After a rule with no restriction at all.
    assert_eq!(
        unreachable("[[rules]]\nname = \"all\"\naction = \"approve\"\n[[rules]]\ntool = \"x\"\naction = \"allow\"\n"),
        vec!["rules[1] is unreachable: rule \"all\" before it matches every call"]
    );
    let covered = [
        // Tool globs covered by an earlier unconditional rule with the same server.
        "[[rules]]\nserver = \"fs\"\ntool = \"*\"\naction = \"allow\"\n[[rules]]\nserver = \"fs\"\ntool = \"x\"\naction = \"deny\"\nreason = \"r\"\n",
        "[[rules]]\ntool = \"delete_*\"\naction = \"allow\"\n[[rules]]\ntool = [\"delete_a\", \"delete_b*\"]\naction = \"deny\"\nreason = \"r\"\n",
        "[[rules]]\ntool = [\"a\", \"b\"]\naction = \"allow\"\n[[rules]]\ntool = \"b\"\naction = \"deny\"\nreason = \"r\"\n",
        "[[rules]]\ntool = \"*_file\"\naction = \"allow\"\n[[rules]]\ntool = \"read_*_file\"\naction = \"deny\"\nreason = \"r\"\n",
        // Server glob covers.
        "[[rules]]\nserver = \"fs*\"\naction = \"allow\"\n[[rules]]\nserver = \"fs-home\"\ntool = \"x\"\naction = \"deny\"\nreason = \"r\"\n",
        // Same agent constraint.
        "[[rules]]\nagent = \"a\"\naction = \"allow\"\n[[rules]]\nagent = \"a\"\ntool = \"x\"\naction = \"deny\"\nreason = \"r\"\n",
        // Annotations: the later rule is at least as strict.
        "[[rules]]\nannotations = { readOnlyHint = true }\naction = \"allow\"\n[[rules]]\nannotations = { readOnlyHint = true, destructiveHint = false }\naction = \"deny\"\nreason = \"r\"\n",
        // The later rule has conditions, the earlier none.
        "[[rules]]\ntool = \"x\"\naction = \"allow\"\n[[rules]]\ntool = \"x\"\nwhen = [{ pointer = \"/a\", exists = true }]\naction = \"deny\"\nreason = \"r\"\n",
    ];
    for toml in covered {
        assert_eq!(
            unreachable(toml),
            vec!["rules[1] is unreachable: rules[0] before it matches every call rules[1] would"],
            "{toml}"
        );
    }
    let reachable = [
        "[[rules]]\ntool = \"x\"\nwhen = [{ pointer = \"/a\", exists = true }]\naction = \"allow\"\n[[rules]]\ntool = \"x\"\naction = \"deny\"\nreason = \"r\"\n",
        "[[rules]]\nserver = \"fs\"\ntool = \"*\"\naction = \"allow\"\n[[rules]]\ntool = \"x\"\naction = \"deny\"\nreason = \"r\"\n",
        "[[rules]]\nserver = \"fs\"\naction = \"allow\"\n[[rules]]\nserver = \"git\"\naction = \"deny\"\nreason = \"r\"\n",
        "[[rules]]\ntool = \"delete_*\"\naction = \"allow\"\n[[rules]]\ntool = [\"delete_a\", \"rm\"]\naction = \"deny\"\nreason = \"r\"\n",
        "[[rules]]\ntool = \"a*\"\naction = \"allow\"\n[[rules]]\ntool = \"?a\"\naction = \"deny\"\nreason = \"r\"\n",
        // An agent restriction (even `*`) does not cover calls from unknown agents.
        "[[rules]]\nagent = \"*\"\naction = \"allow\"\n[[rules]]\ntool = \"x\"\naction = \"deny\"\nreason = \"r\"\n",
        "[[rules]]\nagent = \"a\"\naction = \"allow\"\n[[rules]]\nagent = \"b\"\naction = \"deny\"\nreason = \"r\"\n",
        "[[rules]]\nannotations = { readOnlyHint = true }\naction = \"allow\"\n[[rules]]\ntool = \"x\"\naction = \"deny\"\nreason = \"r\"\n",
        "[[rules]]\nannotations = { readOnlyHint = true }\naction = \"allow\"\n[[rules]]\nannotations = { readOnlyHint = false }\naction = \"deny\"\nreason = \"r\"\n",
    ];
    for toml in reachable {
        assert_eq!(unreachable(toml), Vec::<String>::new(), "{toml}");
    }
}

#[test]
fn lint_other_warnings() {
    assert_eq!(
        lint("[[rules]]\nname = \"x\"\ntool = \"rm\"\naction = \"deny\"\n"),
        vec!["rule \"x\" denies without a `reason`; the model will only be told \"denied by policy rule x\""]
    );
    assert_eq!(
        lint("[[rules]]\ntool = \"rm\"\naction = \"approve\"\nreason = \"r\"\n"),
        vec!["rules[0]: `reason` is only shown on deny; it has no effect with action = \"approve\""]
    );
    assert_eq!(
        lint("[[rules]]\ntool = \"rm\"\nannotations = {}\naction = \"approve\"\n"),
        vec!["rules[0]: `annotations` is empty and restricts nothing"]
    );
    assert_eq!(
        lint("[policy]\ndefault = \"deny\"\n[[rules]]\naction = \"approve\"\n"),
        vec!["policy.default is never used: rules[0] matches every call"]
    );
    assert_eq!(
        lint("[policy]\ndefault = \"allow\"\n[[rules]]\ntool = \"rm\"\naction = \"deny\"\nreason = \"r\"\n"),
        vec!["policy.default = \"allow\": every call no rule matches goes through without approval"]
    );
    assert_eq!(lint("[[rules]]\ntool = \"rm\"\naction = \"deny\"\nreason = \"r\"\n"), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// Pieces
// ---------------------------------------------------------------------------------------------

#[test]
fn glob_matching_edge_cases() {
    let cases: &[(&str, &str, bool)] = &[
        ("", "", true),
        ("", "a", false),
        ("*", "", true),
        ("?", "", false),
        ("a*", "a", true),
        ("*a", "ba", true),
        ("*a*", "bab", true),
        ("*a*", "bbb", false),
        ("a*a*a", "aaa", true),
        ("a*a*a", "aa", false),
        ("*?", "x", true),
        ("??", "é!", true),
        ("a\\*", "a\\b", true),
        ("a\\*", "a*", false),
    ];
    for (pattern, text, expected) in cases {
        assert_eq!(Glob::new(pattern).is_match(text), *expected, "{pattern:?} on {text:?}");
    }
    // Pathological patterns stay fast.
    let long = "a".repeat(5000);
    assert!(!Glob::new("*a*a*a*a*a*a*a*b").is_match(&long));
}

#[test]
fn glob_coverage_is_sound() {
    let cases: &[(&str, &str, bool)] = &[
        ("*", "anything?*", true),
        ("a*", "a*", true),
        ("a*", "ab", true),
        ("a*", "abc*", true),
        ("a*", "a?c", true),
        ("ab*", "a*", false),
        ("*c", "a*bc", true),
        ("*c", "a*b", false),
        ("a?", "ab", true),
        ("a?", "a?", true),
        ("a?", "a*", false),
        ("*a*", "bab", true),
        ("*a*", "b*a", false),
    ];
    for (broad, narrow, expected) in cases {
        assert_eq!(Glob::new(broad).covers(&Glob::new(narrow)), *expected, "{broad:?} covers {narrow:?}");
    }
}

#[test]
fn pointers() {
    let doc = json!({"a": {"b/c": [10, {"m~n": true}]}, "": 0});
    let cases: &[(&str, Option<Value>)] = &[
        ("", Some(doc.clone())),
        ("/", Some(json!(0))),
        ("/a/b~1c/0", Some(json!(10))),
        ("/a/b~1c/1/m~0n", Some(json!(true))),
        ("/a/b~1c/2", None),
        ("/a/b~1c/00", None),
        ("/a/b~1c/+1", None),
        ("/a/missing", None),
        ("/a/b~1c/0/deeper", None),
    ];
    for (pointer, expected) in cases {
        let p = Pointer::parse(pointer).unwrap();
        assert_eq!(p.resolve(&doc), expected.as_ref(), "{pointer}");
    }
    assert!(Pointer::parse("a").is_err());
    assert!(Pointer::parse("/~").is_err());
    assert!(Pointer::parse("/~x").is_err());
}

#[test]
fn json_equality_and_display() {
    assert!(json_eq(&json!(1), &json!(1.0)));
    assert!(json_eq(&json!([1, {"a": 2.0}]), &json!([1.0, {"a": 2}])));
    assert!(!json_eq(&json!(-1), &json!(u64::MAX)));
    assert!(!json_eq(&json!("1"), &json!(1)));
    assert!(!json_eq(&json!(null), &json!(false)));
    assert!(!json_eq(&json!({"a": 1}), &json!({"b": 1})));
    assert_eq!(show(&json!("é".repeat(100))).chars().count(), 81);
    assert_eq!(show(&json!({"a": [1, "x"]})), "{\"a\":[1,\"x\"]}");
}

#[test]
fn evaluate_never_panics_on_odd_arguments() {
    let p = policy(
        r#"
        [[rules]]
        when = [
          { pointer = "/a/0/b", regex = "x" },
          { pointer = "/n", gt = 1, lt = 2, not = true },
          { pointer = "", equals = [1] },
          { pointer = "/s", glob = "*?*", one_of = ["", "é"] },
        ]
        action = "allow"
        "#,
    );
    let args = [
        Value::Null,
        json!(true),
        json!("string"),
        json!([1]),
        json!({"a": "x"}),
        json!({"a": [{"b": 1}]}),
        json!({"n": f64::MAX, "s": "é"}),
        json!({"s": "\u{0}\u{10FFFF}".repeat(1000)}),
    ];
    for a in args {
        let d = call("", "").args(a).decide(&p);
        assert!(!d.trace.is_empty());
    }
}

#[test]
fn policy_is_shareable() {
    fn assert_traits<T: Clone + Send + Sync + 'static>() {}
    assert_traits::<Policy>();
    assert_traits::<Decision>();
}

/// The example at the top of the module compiles and does what it says.
#[test]
fn module_doc_example() {
    let p = policy(
        r#"
        [policy]
        default = "approve"
        default_workflow = "default"

        [[rules]]
        name = "no system files"
        server = "fs*"
        tool = ["write_*", "delete_*"]
        when = [{ pointer = "/path", regex = "^/(etc|usr)/" }]
        action = "deny"
        reason = "system files are off limits"

        [[rules]]
        annotations = { readOnlyHint = true }
        action = "allow"
        "#,
    );
    assert!(p.lint().is_empty(), "{:?}", p.lint());
    let d = call("fs", "write_file").args(json!({"path": "/usr/bin/x"})).decide(&p);
    assert_eq!(d.action, Action::Deny { reason: "system files are off limits".into() });
}

#[test]
fn lint_finds_deny_and_approve_rules_shadowed_by_annotations() {
    let shadowed =
        |toml: &str| -> Vec<String> { lint(toml).into_iter().filter(|w| w.contains("may never fire")).collect() };
    // The shipped example's old order: the server annotates get-env read-only, so it is allowed.
    let warnings = shadowed(
        "[[rules]]\nname = \"read-only tools\"\nannotations = { readOnlyHint = true }\naction = \"allow\"\n\
         [[rules]]\nname = \"no environment dumps\"\ntool = \"get-env\"\naction = \"deny\"\nreason = \"r\"\n",
    );
    assert_eq!(
        warnings,
        vec![
            "rule \"no environment dumps\" may never fire: rule \"read-only tools\" before it allows every tool \
             annotated readOnlyHint = true, and servers declare their own annotations (a server that annotates a \
             tool rule \"no environment dumps\" names that way gets it allowed); put deny and approve rules before \
             rules that match on annotations"
        ]
    );
    let approve = "[[rules]]\nserver = \"fs\"\nannotations = { destructiveHint = false }\naction = \"allow\"\n\
                   [[rules]]\nserver = \"fs\"\ntool = [\"write_*\"]\naction = \"approve\"\n";
    assert_eq!(shadowed(approve).len(), 1, "approve rules too");
    let fine = [
        // Denies first.
        "[[rules]]\ntool = \"get-env\"\naction = \"deny\"\nreason = \"r\"\n\
         [[rules]]\nannotations = { readOnlyHint = true }\naction = \"allow\"\n",
        // The earlier rule names tools, or has conditions, or is for another server or agent.
        "[[rules]]\ntool = \"read_*\"\nannotations = { readOnlyHint = true }\naction = \"allow\"\n\
         [[rules]]\ntool = \"get-env\"\naction = \"deny\"\nreason = \"r\"\n",
        "[[rules]]\nannotations = { readOnlyHint = true }\nwhen = [{ pointer = \"/a\", exists = true }]\naction = \"allow\"\n\
         [[rules]]\ntool = \"get-env\"\naction = \"deny\"\nreason = \"r\"\n",
        "[[rules]]\nserver = \"fs\"\nannotations = { readOnlyHint = true }\naction = \"allow\"\n\
         [[rules]]\nserver = \"git\"\ntool = \"x\"\naction = \"deny\"\nreason = \"r\"\n",
        // An earlier annotation deny only makes things stricter.
        "[[rules]]\nannotations = { destructiveHint = true }\naction = \"deny\"\nreason = \"r\"\n\
         [[rules]]\ntool = \"x\"\naction = \"approve\"\n",
    ];
    for toml in fine {
        assert_eq!(shadowed(toml), Vec::<String>::new(), "{toml}");
    }
}

#[test]
fn could_hold_follows_the_first_sure_rule_and_the_default() {
    let p = policy(
        r#"
[policy]
default = "allow"

[[rules]]
tool = "read_*"
action = "allow"

[[rules]]
tool = "rm"
action = "deny"
when = [{ pointer = "/path", equals = "/tmp/x" }]

[[rules]]
tool = "rm"
action = "approve"

[[rules]]
tool = "rm*"
agent = "ops"
action = "approve"
"#,
    );
    assert!(p.holds_any());
    assert!(!p.could_hold("fs", "read_file", None, None), "allowed before any approve rule");
    assert!(p.could_hold("fs", "rm", None, None), "a conditional deny does not decide it surely");
    assert!(!p.could_hold("fs", "rmdir", None, None), "only ops is asked");
    assert!(p.could_hold("fs", "rmdir", Some("ops"), None));
    assert!(!p.could_hold("fs", "ls", None, None), "the default allows");
    let relay = policy("[policy]\ndefault = \"allow\"\n[[rules]]\ntool = \"rm\"\naction = \"deny\"\n");
    assert!(!relay.holds_any());
    let all_allowed = policy("[[rules]]\ntool = \"*\"\naction = \"allow\"\n");
    assert!(!all_allowed.holds_any(), "the default (approve) is never reached");
    assert!(policy("[[rules]]\ntool = \"rm\"\naction = \"allow\"\n").holds_any(), "the default approves");
}
