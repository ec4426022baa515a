//! What the settings of every subsystem share. Each subsystem owns its sections of
//! `proxy.toml`: the raw form as written and the validation into what it runs with
//! (`upstream::settings`, `downstream::settings`, `approval::settings`, `review::settings`, ...).
//! A validator names the offending key in an [`Invalid`]; [`crate::config`] adds the file.

use std::time::Duration;

/// A setting that is not valid: its key (`servers.a.url`, `webhooks[0].events[1]`) and what
/// is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct Invalid {
    pub key: String,
    pub message: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid { key: key.into(), message: message.into() }
    }
}

/// Expands the `${VAR}` references of a value (given by the loader, which reads the
/// environment); the error says which variable is missing.
pub type Expand<'a> = &'a dyn Fn(&str) -> Result<String, String>;

/// A number of seconds, at least one; `default` when not given.
pub fn secs(key: &str, value: Option<u64>, default: Duration) -> Result<Duration, Invalid> {
    match value {
        None => Ok(default),
        Some(0) => Err(Invalid::new(key, "must be at least 1 second")),
        Some(n) => Ok(Duration::from_secs(n)),
    }
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
