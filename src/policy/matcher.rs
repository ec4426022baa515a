//! The pieces a rule is built from: globs, JSON pointers and argument conditions.
//!
//! Everything here is compiled once by [`Policy::compile`](super::Policy::compile) and then only
//! read; matching never allocates more than a short explanation and never panics.

use regex::Regex;
use serde_json::Value;

use super::{PolicyError, RawCondition};

/// How much of an argument value a trace shows before cutting it short.
const SHOWN_VALUE_CHARS: usize = 80;

/// A glob: `*` matches any run of characters (including none), `?` exactly one character, every
/// other character itself. Anchored at both ends and case-sensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Glob {
    source: String,
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Literal(char),
    One,
    Star,
}

impl Token {
    fn literal(&self) -> Option<char> {
        if let Token::Literal(c) = self { Some(*c) } else { None }
    }
}

impl Glob {
    pub(crate) fn new(source: &str) -> Glob {
        let mut tokens = Vec::with_capacity(source.len());
        for c in source.chars() {
            let token = match c {
                '*' => Token::Star,
                '?' => Token::One,
                c => Token::Literal(c),
            };
            // `**` means the same as `*`; collapsing keeps matching linear in practice.
            if !(token == Token::Star && tokens.last() == Some(&Token::Star)) {
                tokens.push(token);
            }
        }
        Glob { source: source.to_owned(), tokens }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.source
    }

    /// Matches every string (`*`).
    pub(crate) fn matches_everything(&self) -> bool {
        self.tokens == [Token::Star]
    }

    pub(crate) fn is_match(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        let pattern = &self.tokens;
        let (mut p, mut t) = (0, 0);
        // Where to resume after the last `*`: (pattern position after it, text position it covers up to).
        let mut resume: Option<(usize, usize)> = None;
        while let Some(&c) = text.get(t) {
            match pattern.get(p) {
                Some(Token::Star) => {
                    p += 1;
                    resume = Some((p, t));
                    continue;
                }
                Some(Token::One) => {
                    p += 1;
                    t += 1;
                    continue;
                }
                Some(Token::Literal(l)) if *l == c => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
            match resume {
                Some((after_star, covered)) => {
                    p = after_star;
                    t = covered + 1;
                    resume = Some((after_star, covered + 1));
                }
                None => return false,
            }
        }
        pattern.iter().skip(p).all(|t| *t == Token::Star)
    }

    /// Whether every string `other` matches is also matched by `self`. Sound but incomplete: it
    /// answers `true` only in the simple cases (`*`, equal patterns, a literal `other`, and a
    /// `self` of the form `prefix*` or `*suffix`), `false` otherwise.
    pub(crate) fn covers(&self, other: &Glob) -> bool {
        if self.matches_everything() || self.tokens == other.tokens {
            return true;
        }
        if other.tokens.iter().all(|t| matches!(t, Token::Literal(_))) {
            return self.is_match(&other.source);
        }
        let literal = |ts: &[Token]| -> Option<String> { ts.iter().map(Token::literal).collect() };
        match self.tokens.as_slice() {
            [head @ .., Token::Star] => {
                let Some(prefix) = literal(head) else { return false };
                let other_prefix: String = other.tokens.iter().map_while(Token::literal).collect();
                other_prefix.starts_with(&prefix)
            }
            [Token::Star, tail @ ..] => {
                let Some(suffix) = literal(tail) else { return false };
                let mut other_suffix: Vec<char> = other.tokens.iter().rev().map_while(Token::literal).collect();
                other_suffix.reverse();
                other_suffix.into_iter().collect::<String>().ends_with(&suffix)
            }
            _ => false,
        }
    }
}

/// A JSON pointer (RFC 6901), split into unescaped reference tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pointer {
    source: String,
    tokens: Vec<String>,
}

impl Pointer {
    pub(crate) fn parse(source: &str) -> Result<Pointer, String> {
        if source.is_empty() {
            return Ok(Pointer { source: String::new(), tokens: Vec::new() });
        }
        let Some(rest) = source.strip_prefix('/') else {
            return Err(format!(
                "{source:?} is not a JSON pointer: it must start with \"/\" (for example \"/path\"), or be \"\" for \
                 the whole arguments object"
            ));
        };
        let tokens = rest
            .split('/')
            .map(|raw| {
                let mut token = String::with_capacity(raw.len());
                let mut chars = raw.chars();
                while let Some(c) = chars.next() {
                    if c != '~' {
                        token.push(c);
                        continue;
                    }
                    match chars.next() {
                        Some('0') => token.push('~'),
                        Some('1') => token.push('/'),
                        _ => {
                            return Err(format!(
                                "{source:?}: \"~\" must be followed by 0 (for \"~\") or 1 (for \"/\")"
                            ));
                        }
                    }
                }
                Ok(token)
            })
            .collect::<Result<_, _>>()?;
        Ok(Pointer { source: source.to_owned(), tokens })
    }

    pub(crate) fn resolve<'v>(&self, mut value: &'v Value) -> Option<&'v Value> {
        for token in &self.tokens {
            value = match value {
                Value::Object(map) => map.get(token)?,
                Value::Array(items) => items.get(array_index(token)?)?,
                _ => return None,
            };
        }
        Some(value)
    }

    /// How a trace names the argument.
    fn subject(&self) -> String {
        if self.source.is_empty() { "the arguments object".to_owned() } else { format!("argument {}", self.source) }
    }
}

/// An array index as RFC 6901 spells it: "0" or digits without a leading zero.
fn array_index(token: &str) -> Option<usize> {
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    if !digits || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

/// A numeric comparison: the argument, then the bound.
type Compare = fn(f64, f64) -> bool;

/// One `[[rules.when]]` entry, compiled. Every operator present must hold; `not` negates the result.
#[derive(Debug, Clone)]
pub(crate) struct Condition {
    pointer: Pointer,
    exists: Option<bool>,
    equals: Option<Value>,
    one_of: Option<Vec<Value>>,
    regex: Option<Regex>,
    glob: Option<Glob>,
    gt: Option<f64>,
    gte: Option<f64>,
    lt: Option<f64>,
    lte: Option<f64>,
    not: bool,
}

impl Condition {
    /// `key` is the condition's own key, e.g. `rules[1].when[0]`.
    pub(crate) fn compile(raw: &RawCondition, key: &str) -> Result<Condition, PolicyError> {
        let err = |field: &str, message: String| PolicyError::new(format!("{key}.{field}"), message);
        let pointer = Pointer::parse(&raw.pointer).map_err(|m| err("pointer", m))?;
        let regex = match &raw.regex {
            Some(r) => Some(Regex::new(r).map_err(|e| err("regex", format!("invalid regex {r:?}: {e}")))?),
            None => None,
        };
        if raw.one_of.as_ref().is_some_and(Vec::is_empty) {
            return Err(err("one_of", "an empty list matches nothing".into()));
        }
        for (name, bound) in [("gt", raw.gt), ("gte", raw.gte), ("lt", raw.lt), ("lte", raw.lte)] {
            if let Some(b) = bound.filter(|b| !b.is_finite()) {
                return Err(err(name, format!("{b} is not a finite number")));
            }
        }
        let condition = Condition {
            pointer,
            exists: raw.exists,
            equals: raw.equals.clone(),
            one_of: raw.one_of.clone(),
            regex,
            glob: raw.glob.as_deref().map(Glob::new),
            gt: raw.gt,
            gte: raw.gte,
            lt: raw.lt,
            lte: raw.lte,
            not: raw.not,
        };
        let value_operators = condition.equals.is_some()
            || condition.one_of.is_some()
            || condition.regex.is_some()
            || condition.glob.is_some()
            || condition.gt.is_some()
            || condition.gte.is_some()
            || condition.lt.is_some()
            || condition.lte.is_some();
        if !value_operators && condition.exists.is_none() {
            return Err(PolicyError::new(
                key,
                "needs an operator: equals, one_of, regex, glob, gt, gte, lt, lte or exists",
            ));
        }
        if value_operators && condition.exists == Some(false) {
            return Err(err(
                "exists",
                "`exists = false` cannot be combined with other operators: they require the argument to be present"
                    .into(),
            ));
        }
        Ok(condition)
    }

    /// Whether the condition holds for these arguments, and why.
    pub(crate) fn check(&self, arguments: &Value) -> (bool, String) {
        self.judge(arguments, Explain::Yes)
    }

    /// Whether the condition holds for these arguments: [`Condition::check`] without its words.
    pub(crate) fn holds(&self, arguments: &Value) -> bool {
        self.judge(arguments, Explain::No).0
    }

    fn judge(&self, arguments: &Value, explain: Explain) -> (bool, String) {
        let (holds, why) = self.check_plain(self.pointer.resolve(arguments), explain);
        if self.not {
            let verdict = if holds { "fails" } else { "holds" };
            (!holds, explain.say(|| format!("{why}; negated (not = true), so the condition {verdict}")))
        } else {
            (holds, why)
        }
    }

    fn check_plain(&self, found: Option<&Value>, explain: Explain) -> (bool, String) {
        let subject = || self.pointer.subject();
        let Some(value) = found else {
            return (self.exists == Some(false), explain.say(|| format!("{} is absent", subject())));
        };
        if self.exists == Some(false) {
            return (false, explain.say(|| format!("{} is present", subject())));
        }
        let mut passed = Vec::new();
        for (holds, phrase) in self.operators(value, explain) {
            if !holds {
                return (false, explain.say(|| format!("{} = {} {phrase}", subject(), show(value))));
            }
            passed.push(phrase);
        }
        if passed.is_empty() {
            // Only `exists = true`.
            return (true, explain.say(|| format!("{} is present", subject())));
        }
        (true, explain.say(|| format!("{} = {} {}", subject(), show(value), passed.join(" and "))))
    }

    /// Each operator's result on a present value, in a fixed order, with its phrase when asked.
    fn operators(&self, value: &Value, explain: Explain) -> Vec<(bool, String)> {
        let mut out = Vec::new();
        if let Some(expected) = &self.equals {
            let eq = json_eq(value, expected);
            out.push((
                eq,
                explain.say(|| format!("{} {}", if eq { "equals" } else { "does not equal" }, show(expected))),
            ));
        }
        if let Some(options) = &self.one_of {
            let any = options.iter().any(|o| json_eq(value, o));
            out.push((
                any,
                explain.say(|| {
                    let list = show(&Value::Array(options.clone()));
                    format!("{} {list}", if any { "is one of" } else { "is not one of" })
                }),
            ));
        }
        let text = value.as_str();
        if let Some(re) = &self.regex {
            out.push(match text {
                Some(s) if re.is_match(s) => (true, explain.say(|| format!("matches regex {:?}", re.as_str()))),
                Some(_) => (false, explain.say(|| format!("does not match regex {:?}", re.as_str()))),
                None => (
                    false,
                    explain.say(|| format!("is not a string (regex {:?} applies to strings only)", re.as_str())),
                ),
            });
        }
        if let Some(glob) = &self.glob {
            out.push(match text {
                Some(s) if glob.is_match(s) => (true, explain.say(|| format!("matches glob {:?}", glob.as_str()))),
                Some(_) => (false, explain.say(|| format!("does not match glob {:?}", glob.as_str()))),
                None => (
                    false,
                    explain.say(|| format!("is not a string (glob {:?} applies to strings only)", glob.as_str())),
                ),
            });
        }
        let number = value.as_f64().filter(|_| value.is_number());
        let comparisons: [(Option<f64>, &str, Compare); 4] = [
            (self.gt, ">", |a, b| a > b),
            (self.gte, ">=", |a, b| a >= b),
            (self.lt, "<", |a, b| a < b),
            (self.lte, "<=", |a, b| a <= b),
        ];
        for (bound, op, compare) in comparisons {
            let Some(bound) = bound else { continue };
            out.push(match number {
                Some(n) if compare(n, bound) => (true, explain.say(|| format!("{op} {bound}"))),
                Some(_) => (false, explain.say(|| format!("is not {op} {bound}"))),
                None => (false, explain.say(|| format!("is not a number (`{op} {bound}` applies to numbers only)"))),
            });
        }
        out
    }
}

/// Whether a check says why, for a trace, or only decides: the words cost a string per rule
/// and per operator, and showing an argument serializes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Explain {
    Yes,
    No,
}

impl Explain {
    /// The phrase `words` builds, or nothing when not explaining.
    pub(crate) fn say(self, words: impl FnOnce() -> String) -> String {
        match self {
            Explain::Yes => words(),
            Explain::No => String::new(),
        }
    }
}

/// JSON equality where numbers compare by value (`1` equals `1.0`), as JSON itself means them.
pub(crate) fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(i), Some(j)) = (x.as_i64(), y.as_i64()) {
                i == j
            } else if let (Some(i), Some(j)) = (x.as_u64(), y.as_u64()) {
                i == j
            } else {
                matches!((x.as_f64(), y.as_f64()), (Some(i), Some(j)) if i == j)
            }
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(v, w)| json_eq(v, w)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// A value as a trace shows it: compact JSON, cut short when long (arguments are untrusted and
/// may be large).
pub(crate) fn show(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(SHOWN_VALUE_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}
