//! `[metrics]`: whether the approval server serves `GET /metrics`, and with what token.

use serde::Deserialize;

use crate::secret::SecretString;
use crate::settings::Invalid;

/// Shortest metrics token accepted.
const MIN_TOKEN_LEN: usize = 16;

/// `[metrics]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Serve `GET /metrics` on the approval server (off by default).
    pub enabled: Option<bool>,
    /// The environment variable holding a bearer token that scrapes must present.
    pub token_env: Option<String>,
}

/// Validated `[metrics]`.
#[derive(Debug, Clone, Default)]
pub struct MetricsSettings {
    pub enabled: bool,
    /// Bearer token required on `/metrics`, if set.
    pub token: Option<SecretString>,
    /// Where the token came from (`metrics.token_env (VAR)`), for messages.
    pub token_key: Option<String>,
}

impl MetricsSettings {
    pub fn validate(raw: RawMetrics) -> Result<MetricsSettings, Invalid> {
        let enabled = raw.enabled.unwrap_or(false);
        let (token, token_key) = match raw.token_env {
            None => (None, None),
            Some(var) => {
                let key = "metrics.token_env";
                let token = std::env::var(&var)
                    .map_err(|_| Invalid::new(key, format!("environment variable {var} is not set")))?;
                if token.len() < MIN_TOKEN_LEN {
                    return Err(Invalid::new(
                        key,
                        format!("the token in {var} needs at least {MIN_TOKEN_LEN} characters"),
                    ));
                }
                if !enabled {
                    return Err(Invalid::new(key, "a token for metrics that are off: set `metrics.enabled = true`"));
                }
                (Some(SecretString::from(token)), Some(format!("{key} ({var})")))
            }
        };
        Ok(MetricsSettings { enabled, token, token_key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::ExposeSecret;

    #[test]
    fn off_by_default_and_the_token_comes_from_the_environment() {
        let off = MetricsSettings::validate(RawMetrics::default()).unwrap();
        assert!(!off.enabled && off.token.is_none());
        let on = MetricsSettings::validate(RawMetrics { enabled: Some(true), token_env: None }).unwrap();
        assert!(on.enabled && on.token.is_none());
        let raw = |var: &str| RawMetrics { enabled: Some(true), token_env: Some(var.to_owned()) };
        let err = MetricsSettings::validate(raw("MCP_GATE_SURELY_UNSET_METRICS_TOKEN")).unwrap_err();
        assert_eq!(err.key, "metrics.token_env");
        assert!(err.message.contains("MCP_GATE_SURELY_UNSET_METRICS_TOKEN is not set"), "{}", err.message);
        // PATH is set everywhere tests run, and long enough.
        let with = MetricsSettings::validate(raw("PATH")).unwrap();
        assert_eq!(with.token.as_ref().map(|t| t.expose_secret().to_owned()), std::env::var("PATH").ok());
        let off_with_token = RawMetrics { enabled: None, token_env: Some("PATH".into()) };
        assert_eq!(MetricsSettings::validate(off_with_token).unwrap_err().key, "metrics.token_env");
    }
}
