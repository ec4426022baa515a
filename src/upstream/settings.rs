//! The upstream servers' settings: `[proxy] separator`, `[upstream]` (defaults for every
//! server), `[servers.NAME]`, and the upstream given on the command line after `--`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::settings::{Expand, Invalid, secs};

/// Default separator between a server's name and its tool or prompt names.
pub const DEFAULT_SEPARATOR: &str = "__";

/// Default `[upstream] request_timeout_secs`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Default `[upstream] initialize_timeout_secs`.
pub const DEFAULT_INITIALIZE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    pub separator: Option<String>,
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

/// The validated upstreams: the separator and the servers in name order (the one of the
/// command line last).
#[derive(Debug, Clone)]
pub struct Upstreams {
    pub separator: String,
    pub servers: Vec<ServerConfig>,
}

/// Why the upstreams are not valid.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamsError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The command line after `--` cannot be an upstream.
    #[error("{0}")]
    CommandLine(String),
}

impl Upstreams {
    /// Validates `[proxy]`, `[upstream]`, `[servers.NAME]` and the command line's upstream.
    pub fn validate(
        proxy: RawProxy,
        upstream: RawUpstream,
        raw_servers: BTreeMap<String, RawServer>,
        extra: Option<&CommandLineUpstream>,
        expand: Expand,
    ) -> Result<Upstreams, UpstreamsError> {
        let separator = proxy.separator.unwrap_or_else(|| DEFAULT_SEPARATOR.to_owned());
        if separator.is_empty() || separator.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(Invalid::new("proxy.separator", format!("{separator:?} is not a usable separator")).into());
        }

        let request_timeout =
            secs("upstream.request_timeout_secs", upstream.request_timeout_secs, DEFAULT_REQUEST_TIMEOUT)?;
        let initialize_timeout =
            secs("upstream.initialize_timeout_secs", upstream.initialize_timeout_secs, DEFAULT_INITIALIZE_TIMEOUT)?;
        let mut servers = Vec::new();
        for (name, s) in raw_servers {
            let key = format!("servers.{name}");
            check_server_name(&name, &separator).map_err(|m| Invalid::new(&key, m))?;
            let request_timeout =
                secs(&format!("{key}.request_timeout_secs"), s.request_timeout_secs, request_timeout)?;
            let initialize_timeout =
                secs(&format!("{key}.initialize_timeout_secs"), s.initialize_timeout_secs, initialize_timeout)?;
            let transport =
                server_transport(&key, s.command, s.args, s.env, s.cwd, s.url, s.transport, s.headers, expand)?;
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
                .ok_or_else(|| UpstreamsError::CommandLine("nothing after `--`: give a command or a URL".into()))?;
            let is_url = first.starts_with("http://") || first.starts_with("https://");
            let name = match &cli.name {
                Some(n) => n.clone(),
                None => default_name(first, is_url),
            };
            check_server_name(&name, &separator).map_err(|m| Invalid::new("--name", m))?;
            if servers.iter().any(|s| s.name == name) {
                return Err(Invalid::new(
                    format!("servers.{name}"),
                    "is also the name of the upstream given after `--`; pick another with --name",
                )
                .into());
            }
            let transport = if is_url {
                if !rest.is_empty() {
                    return Err(UpstreamsError::CommandLine(format!("unexpected arguments after the URL {first}")));
                }
                UpstreamTransport::StreamableHttp { url: first.clone(), headers: Vec::new() }
            } else {
                UpstreamTransport::Stdio { command: first.clone(), args: rest.to_vec(), env: Vec::new(), cwd: None }
            };
            servers.push(ServerConfig { name, transport, prefix: true, request_timeout, initialize_timeout });
        }

        check_prefixes_unambiguous(&servers, &separator)?;
        Ok(Upstreams { separator, servers })
    }
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
    expand: Expand,
) -> Result<UpstreamTransport, Invalid> {
    let expand_all = |what: &str, map: BTreeMap<String, String>| -> Result<Vec<(String, String)>, Invalid> {
        map.into_iter()
            .map(|(k, v)| {
                let v = expand(&v).map_err(|m| Invalid::new(format!("{key}.{what}.{k}"), m))?;
                Ok((k, v))
            })
            .collect()
    };
    match (command, url) {
        (Some(_), Some(_)) => Err(Invalid::new(key, "set either `command` or `url`, not both")),
        (None, None) => Err(Invalid::new(key, "needs a `command` (stdio server) or a `url` (HTTP server)")),
        (Some(command), None) => {
            if let Some(t) = transport.filter(|t| t != "stdio") {
                return Err(Invalid::new(
                    format!("{key}.transport"),
                    format!("{t:?} needs a `url`; a `command` is always stdio"),
                ));
            }
            if !headers.is_empty() {
                return Err(Invalid::new(format!("{key}.headers"), "only HTTP servers take headers"));
            }
            let args = args
                .iter()
                .enumerate()
                .map(|(i, a)| expand(a).map_err(|m| Invalid::new(format!("{key}.args[{i}]"), m)))
                .collect::<Result<_, _>>()?;
            Ok(UpstreamTransport::Stdio { command, args, env: expand_all("env", env)?, cwd })
        }
        (None, Some(url)) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Invalid::new(format!("{key}.url"), format!("{url:?} is not an http:// or https:// URL")));
            }
            if !args.is_empty() || !env.is_empty() || cwd.is_some() {
                return Err(Invalid::new(key, "`args`, `env` and `cwd` apply only to a `command`"));
            }
            let headers = expand_all("headers", headers)?;
            match transport.as_deref() {
                None | Some("streamable-http") | Some("http") => Ok(UpstreamTransport::StreamableHttp { url, headers }),
                Some("sse") => Ok(UpstreamTransport::Sse { url, headers }),
                Some(other) => Err(Invalid::new(
                    format!("{key}.transport"),
                    format!("unknown transport {other:?}; use \"streamable-http\" or \"sse\""),
                )),
            }
        }
    }
}

pub(crate) fn check_server_name(name: &str, separator: &str) -> Result<(), String> {
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
fn check_prefixes_unambiguous(servers: &[ServerConfig], separator: &str) -> Result<(), Invalid> {
    let prefixed: Vec<&str> = servers.iter().filter(|s| s.prefix).map(|s| s.name.as_str()).collect();
    for short in &prefixed {
        for long in &prefixed {
            let Some(tail) = long.strip_prefix(short) else { continue };
            if !tail.is_empty() && format!("{tail}{separator}").starts_with(separator) {
                let example = format!("{long}{separator}x");
                return Err(Invalid::new(
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
/// What `check-config` warns about the servers: an HTTP server with configured headers reached
/// over plain `http` on another machine, where the headers (an API key, say) travel unencrypted.
pub fn lint(servers: &[ServerConfig]) -> Vec<String> {
    let mut warnings = Vec::new();
    for server in servers {
        let (UpstreamTransport::StreamableHttp { url, headers } | UpstreamTransport::Sse { url, headers }) =
            &server.transport
        else {
            continue;
        };
        let Ok(parsed) = reqwest::Url::parse(url) else { continue };
        let loopback = super::http::is_loopback_host(parsed.host_str().unwrap_or(""));
        if parsed.scheme() == "http" && !loopback && !headers.is_empty() {
            let names: Vec<&str> = headers.iter().map(|(name, _)| name.as_str()).collect();
            warnings.push(format!(
                "server {}: {url} is plain http to another host: its headers ({}) travel unencrypted",
                server.name,
                names.join(", ")
            ));
        }
    }
    warnings
}

pub(crate) fn default_name(first: &str, is_url: bool) -> String {
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
