//! Logs: `tracing` to stderr only (stdout is the MCP channel of stdio mode), as text for a
//! person or, with `MCP_GATE_LOG_FORMAT=json` or `[log] format = "json"`, as one JSON object per
//! line for a log pipeline (the variable wins over the file). `MCP_GATE_LOG` sets the filter
//! (`info` by default).
//!
//! The few lines mcp-gate writes for the person who started it (the addresses it listens on)
//! go through [`announce`], so that in JSON mode they are JSON too (`INFO` events).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

use crate::settings::Invalid;

/// The variable that chooses the format: `text` (the default) or `json`.
pub const FORMAT_VAR: &str = "MCP_GATE_LOG_FORMAT";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Human-readable lines, coloured when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message`, the event's fields, `target`
    /// and the spans it happened in.
    Json,
}

/// `MCP_GATE_LOG_FORMAT` holds neither `text` nor `json`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{FORMAT_VAR}={0:?}: use `text` or `json`")]
pub struct UnknownFormat(pub String);

/// `[log]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `text` (default) or `json`.
    pub format: Option<String>,
}

impl RawLog {
    /// Validates `[log]` (the format is applied before the configuration is loaded, by `main`
    /// through [`Format::choose`]; this is where a wrong value is reported with its key).
    pub fn validate(&self) -> Result<Format, Invalid> {
        Format::parse(self.format.as_deref())
            .map_err(|e| Invalid::new("log.format", format!("{:?}: use `text` or `json`", e.0)))
    }
}

impl Format {
    /// `MCP_GATE_LOG_FORMAT` when set, else `[log] format` of the configuration (`from_file`,
    /// read before the rest is validated: a wrong value there is reported by the load).
    pub fn choose(from_file: Option<&str>) -> Result<Format, UnknownFormat> {
        match std::env::var(FORMAT_VAR).ok().filter(|v| !v.trim().is_empty()) {
            Some(v) => Format::parse(Some(&v)),
            None => Ok(Format::parse(from_file).unwrap_or_default()),
        }
    }

    fn parse(value: Option<&str>) -> Result<Format, UnknownFormat> {
        match value.map(str::trim) {
            None | Some("") => Ok(Format::Text),
            Some(v) if v.eq_ignore_ascii_case("text") => Ok(Format::Text),
            Some(v) if v.eq_ignore_ascii_case("json") => Ok(Format::Json),
            Some(v) => Err(UnknownFormat(v.to_owned())),
        }
    }
}

/// Whether the JSON format was installed ([`announce`] follows it).
static JSON: AtomicBool = AtomicBool::new(false);

/// Installs the process's subscriber: `format`, to stderr, filtered by `MCP_GATE_LOG` (else
/// `default_filter`).
pub fn init(format: Format, default_filter: &str) {
    let filter = EnvFilter::try_from_env("MCP_GATE_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    match format {
        Format::Text => tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_env_filter(filter)
            .init(),
        Format::Json => {
            JSON.store(true, Ordering::Relaxed);
            tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .with_env_filter(filter)
                .init();
        }
    }
}

/// A line for the person who started mcp-gate (`listening on ...`): as written on stderr, or
/// an `INFO` event in JSON mode.
pub fn announce(line: &str) {
    if JSON.load(Ordering::Relaxed) {
        tracing::info!(target: "mcp_gate", "{line}");
    } else {
        eprintln!("{line}");
    }
}

/// The error that ends the process: `error: ...` on stderr, or an `ERROR` event in JSON mode.
pub fn fatal(message: &str) {
    if JSON.load(Ordering::Relaxed) {
        tracing::error!(target: "mcp_gate", "{message}");
    } else {
        eprintln!("error: {message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_is_text_unless_json_is_asked_for() {
        assert_eq!(Format::parse(None), Ok(Format::Text));
        assert_eq!(Format::parse(Some("")), Ok(Format::Text));
        assert_eq!(Format::parse(Some("text")), Ok(Format::Text));
        assert_eq!(Format::parse(Some("JSON")), Ok(Format::Json));
        let err = Format::parse(Some("xml")).unwrap_err();
        assert_eq!(err.to_string(), "MCP_GATE_LOG_FORMAT=\"xml\": use `text` or `json`");
        let err = RawLog { format: Some("xml".into()) }.validate().unwrap_err();
        assert_eq!((err.key.as_str(), err.message.as_str()), ("log.format", "\"xml\": use `text` or `json`"));
        assert_eq!(RawLog { format: Some("json".into()) }.validate(), Ok(Format::Json));
    }
}
