//! Which channel a held call is answered through, and how long its client can wait.
//!
//! A client declares, per request, what it can take instead of a plain result ([`Offered`]); the
//! gate offers the hold through the best of those, in this order: a task (either era) >
//! `input_required` with a URL elicitation (2026-07-28) > `elicitation/create` in URL mode beside
//! the wait (2025-11-25) > a wait with progress > the pending result at once (fail fast).
//!
//! `[[channels]]` entries adjust this per agent (first match wins, key by key): `use` is a
//! ceiling, never a promise (a channel the client did not declare is never used, the protocol
//! forbids it), and `answer_within_secs` is when a call that waits must be answered, before the
//! client gives up on it by itself. Built-in entries for the clients we know follow the user's
//! ([`BUILT_IN`]). [`choose`] is pure: everything it needs is in its arguments.

use std::time::Duration;

pub use crate::gate::Channel;
use crate::gate::Offered;
use crate::policy::Glob;
use crate::wire::era::Era;

/// What the settings allow for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelPrefs {
    /// The best channel the agent's `use` allows (`auto` is [`Channel::Task`]).
    pub ceiling: Channel,
    /// `[approvals] tasks`: whether tasks are offered at all.
    pub tasks: bool,
    /// Whether a held call may wait (its wait, `min(wait_secs, answer_within)`, is not zero).
    /// Without it the wait is the fail-fast answer.
    pub wait: bool,
}

impl ChannelPrefs {
    /// Every channel allowed.
    pub const AUTO: ChannelPrefs = ChannelPrefs { ceiling: Channel::Task, tasks: true, wait: true };
}

/// Whether `channel` can be used for a call that offered `offered`: the client declared it for
/// this request (in its era) and the settings allow it. Waiting and failing fast need nothing.
pub fn usable(channel: Channel, offered: &Offered, prefs: &ChannelPrefs) -> bool {
    match channel {
        Channel::Task => offered.task && prefs.tasks,
        Channel::InputRequired => offered.input_required && offered.era == Era::Modern,
        Channel::Elicitation => offered.url_elicitation && offered.era == Era::Legacy,
        Channel::Wait => prefs.wait,
        Channel::FailFast => true,
    }
}

/// The best usable channel at or below the ceiling.
pub fn choose(offered: &Offered, prefs: &ChannelPrefs) -> Channel {
    Channel::ALL
        .into_iter()
        .filter(|c| *c >= prefs.ceiling)
        .find(|c| usable(*c, offered, prefs))
        .unwrap_or(Channel::FailFast)
}

/// The clients we know, by the name they send as `clientInfo.name`: when each must be answered
/// (a little before its own limit), and what that limit is. Matched after the user's entries.
pub const BUILT_IN: &[(&str, u64, &str)] = &[
    ("claude-ai", 50, "Claude Desktop gives up after about 60 s"),
    ("claude-code", 50, "Claude Code: 60 s over HTTP"),
    ("Visual Studio Code", 300, "VS Code waits for minutes"),
    ("cursor-vscode", 50, "Cursor: about 60 s"),
    ("codex-mcp-client", 50, "Codex CLI: tool_timeout_sec, 60 s by default"),
    ("mcp", 300, "the Python SDK sets no limit"),
    ("*", 50, "unknown clients; the TypeScript SDK's limit is 60 s"),
];

/// One `[[channels]]` entry, validated, or a built-in one.
#[derive(Debug, Clone)]
pub struct ChannelRule {
    /// Where it comes from: `channels[N]`, or `built-in`.
    pub origin: String,
    /// Globs on the agent's name; any may match.
    pub(crate) agents: Vec<Glob>,
    /// `use`: `None` when the entry leaves it to the next matching one; `auto` is `Some(Task)`.
    pub ceiling: Option<Channel>,
    /// `answer_within_secs`, when the entry sets it.
    pub answer_within: Option<Duration>,
    /// Why (built-in entries): the client's own limit.
    pub note: Option<&'static str>,
}

impl ChannelRule {
    /// Whether the entry applies to `agent`. A call of an unknown agent is matched only by
    /// an entry for every agent (`*`).
    pub fn matches(&self, agent: Option<&str>) -> bool {
        match agent {
            Some(name) => self.agents.iter().any(|g| g.is_match(name)),
            None => self.agents.iter().any(Glob::matches_everything),
        }
    }

    /// The agents it matches, as written.
    pub fn agents_text(&self) -> String {
        let names: Vec<String> = self.agents.iter().map(|g| format!("{:?}", g.as_str())).collect();
        names.join(", ")
    }
}

/// What applies to one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentChannel {
    /// The best channel allowed.
    pub ceiling: Channel,
    /// When a call that waits must be answered; `None`: only `wait_secs` bounds it.
    pub answer_within: Option<Duration>,
}

/// The `[[channels]]` entries in order, the built-in ones last.
#[derive(Debug, Clone, Default)]
pub struct ChannelRules {
    rules: Vec<ChannelRule>,
}

impl ChannelRules {
    /// The user's entries followed by the built-in ones ([`BUILT_IN`]).
    pub fn with_built_ins(mut user: Vec<ChannelRule>) -> ChannelRules {
        user.extend(BUILT_IN.iter().map(|&(agent, secs, note)| ChannelRule {
            origin: "built-in".to_owned(),
            agents: vec![Glob::new(agent)],
            ceiling: None,
            answer_within: Some(Duration::from_secs(secs)),
            note: Some(note),
        }));
        ChannelRules { rules: user }
    }

    pub fn rules(&self) -> &[ChannelRule] {
        &self.rules
    }

    /// Each key from the first matching entry that sets it; `use` defaults to `auto`.
    pub fn for_agent(&self, agent: Option<&str>) -> AgentChannel {
        let matching = || self.rules.iter().filter(|r| r.matches(agent));
        AgentChannel {
            ceiling: matching().find_map(|r| r.ceiling).unwrap_or(Channel::Task),
            answer_within: matching().find_map(|r| r.answer_within),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offered(era: Era, task: bool, input_required: bool, url_elicitation: bool) -> Offered {
        Offered { task, input_required, url_elicitation, ..Offered::plain(era) }
    }

    /// Every row of the channel table, in both eras: the best declared channel wins.
    #[test]
    fn the_best_declared_channel_wins_in_both_eras() {
        use Channel::*;
        use Era::*;
        let auto = ChannelPrefs::AUTO;
        let no_wait = ChannelPrefs { wait: false, ..auto };
        // (era, task, input_required, url_elicitation, prefs, channel)
        let rows = [
            (Legacy, true, false, true, auto, Task),
            (Legacy, true, false, false, auto, Task),
            (Legacy, false, false, true, auto, Elicitation),
            (Legacy, false, false, false, auto, Wait),
            (Legacy, false, false, false, no_wait, FailFast),
            (Legacy, false, false, true, no_wait, Elicitation),
            (Modern, true, true, false, auto, Task),
            (Modern, false, true, false, auto, InputRequired),
            (Modern, false, false, false, auto, Wait),
            (Modern, false, false, false, no_wait, FailFast),
            (Modern, false, true, false, no_wait, InputRequired),
            // What an era cannot carry is never chosen, whatever the flags say.
            (Legacy, false, true, false, auto, Wait),
            (Modern, false, false, true, auto, Wait),
            (Modern, false, false, true, no_wait, FailFast),
        ];
        for (era, task, ir, url, prefs, want) in rows {
            let o = offered(era, task, ir, url);
            assert_eq!(choose(&o, &prefs), want, "{o:?} {prefs:?}");
        }
    }

    /// `[approvals] tasks = false`: a client that asked for a task gets the next channel.
    #[test]
    fn tasks_can_be_switched_off() {
        let prefs = ChannelPrefs { tasks: false, ..ChannelPrefs::AUTO };
        assert_eq!(choose(&offered(Era::Legacy, true, false, true), &prefs), Channel::Elicitation);
        assert_eq!(choose(&offered(Era::Modern, true, true, false), &prefs), Channel::InputRequired);
        assert_eq!(choose(&offered(Era::Modern, true, false, false), &prefs), Channel::Wait);
    }

    /// `use` is a ceiling: it lowers the choice, and a channel the client did not declare is
    /// never picked, whatever `use` says.
    #[test]
    fn use_is_a_ceiling_that_never_picks_an_undeclared_channel() {
        let everything = [
            offered(Era::Legacy, true, false, true),
            offered(Era::Modern, true, true, false),
            offered(Era::Legacy, false, false, false),
            offered(Era::Modern, false, false, false),
        ];
        for o in everything {
            for ceiling in Channel::ALL {
                for wait in [true, false] {
                    let prefs = ChannelPrefs { ceiling, tasks: true, wait };
                    let got = choose(&o, &prefs);
                    assert!(got >= ceiling, "{got:?} is above the ceiling {ceiling:?}");
                    assert!(usable(got, &o, &prefs), "{got:?} was not declared: {o:?}");
                }
            }
        }
        let wait_only = ChannelPrefs { ceiling: Channel::Wait, ..ChannelPrefs::AUTO };
        assert_eq!(choose(&offered(Era::Legacy, true, false, true), &wait_only), Channel::Wait);
        let task_only = ChannelPrefs { ceiling: Channel::Task, ..ChannelPrefs::AUTO };
        assert_eq!(choose(&offered(Era::Legacy, false, false, false), &task_only), Channel::Wait);
        let elicit = ChannelPrefs { ceiling: Channel::Elicitation, ..ChannelPrefs::AUTO };
        assert_eq!(choose(&offered(Era::Modern, true, true, false), &elicit), Channel::Wait);
        let fail_fast = ChannelPrefs { ceiling: Channel::FailFast, ..ChannelPrefs::AUTO };
        assert_eq!(choose(&offered(Era::Legacy, true, false, true), &fail_fast), Channel::FailFast);
    }

    /// A call that cannot be a task (tasks off, or not possible for this call) gets the next
    /// channel its client declared.
    #[test]
    fn without_tasks_a_call_gets_the_next_declared_channel() {
        let no_tasks = ChannelPrefs { tasks: false, ..ChannelPrefs::AUTO };
        assert_eq!(choose(&offered(Era::Legacy, true, false, true), &no_tasks), Channel::Elicitation);
        assert_eq!(choose(&offered(Era::Modern, true, true, false), &no_tasks), Channel::InputRequired);
        let no_wait = ChannelPrefs { wait: false, ..no_tasks };
        assert_eq!(choose(&offered(Era::Modern, true, false, false), &no_wait), Channel::FailFast);
    }

    fn rule(agent: &str, ceiling: Option<Channel>, secs: Option<u64>) -> ChannelRule {
        ChannelRule {
            origin: "channels[0]".into(),
            agents: vec![Glob::new(agent)],
            ceiling,
            answer_within: secs.map(Duration::from_secs),
            note: None,
        }
    }

    /// Built-in entries follow the user's; each key comes from the first entry that sets it;
    /// an unknown agent gets what `*` says.
    #[test]
    fn entries_match_agents_first_match_per_key() {
        let rules = ChannelRules::with_built_ins(vec![
            rule("claude-ai", Some(Channel::Wait), None),
            rule("my-*", None, Some(600)),
        ]);
        let claude = rules.for_agent(Some("claude-ai"));
        assert_eq!(claude, AgentChannel { ceiling: Channel::Wait, answer_within: Some(Duration::from_secs(50)) });
        let mine = rules.for_agent(Some("my-bot"));
        assert_eq!(mine, AgentChannel { ceiling: Channel::Task, answer_within: Some(Duration::from_secs(600)) });
        assert_eq!(rules.for_agent(Some("Visual Studio Code")).answer_within, Some(Duration::from_secs(300)));
        assert_eq!(rules.for_agent(Some("mcp")).answer_within, Some(Duration::from_secs(300)));
        assert_eq!(rules.for_agent(Some("someone")).answer_within, Some(Duration::from_secs(50)));
        assert_eq!(rules.for_agent(None).answer_within, Some(Duration::from_secs(50)));
        // No entries at all (settings built without the defaults): nothing caps the wait.
        assert_eq!(ChannelRules::default().for_agent(Some("claude-ai")).answer_within, None);
        let only_named = ChannelRules { rules: vec![rule("bot", None, Some(5))] };
        assert_eq!(only_named.for_agent(None).answer_within, None, "a named entry needs a known agent");
    }
}
