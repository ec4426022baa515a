//! `[tracing]`: whether spans are exported over OTLP/HTTP, and where to.
//!
//! Off unless `[tracing] otlp_endpoint` is set or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) variable is; the variables win over the file, and
//! `OTEL_SDK_DISABLED=true` turns traces off whatever else says.

use serde::Deserialize;

use crate::settings::Invalid;

/// The collector's base URL, as the OpenTelemetry SDKs read it (`/v1/traces` is appended).
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The full URL of the traces endpoint, used as it is.
pub const TRACES_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// `true` turns every OpenTelemetry signal off.
pub const DISABLED_VAR: &str = "OTEL_SDK_DISABLED";

/// The path of the traces endpoint under a collector's base URL.
const TRACES_PATH: &str = "/v1/traces";

/// `[tracing]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    /// The OTLP/HTTP collector's base URL (`http://127.0.0.1:4318`).
    pub otlp_endpoint: Option<String>,
}

/// Where spans go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `[tracing] otlp_endpoint`: the full URL of the traces endpoint.
    File(String),
    /// The `OTEL_EXPORTER_OTLP_*` variables, read by the exporter as every OpenTelemetry SDK
    /// reads them (the variable's name is kept for messages).
    Environment(&'static str),
}

/// Validated `[tracing]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TracingSettings {
    /// `None`: traces are off.
    pub endpoint: Option<Endpoint>,
}

impl TracingSettings {
    /// Validates `[tracing]` and reads the standard variables of the process's environment.
    pub fn validate(raw: RawTracing) -> Result<TracingSettings, Invalid> {
        Self::validate_with(raw, |name| std::env::var(name).ok())
    }

    /// [`TracingSettings::validate`] with the environment given by `var`.
    pub fn validate_with(raw: RawTracing, var: impl Fn(&str) -> Option<String>) -> Result<TracingSettings, Invalid> {
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let file = match raw.otlp_endpoint.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(url) => Some(traces_url(url).map_err(|m| Invalid::new("tracing.otlp_endpoint", m))?),
        };
        if set(DISABLED_VAR).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(TracingSettings { endpoint: None });
        }
        let endpoint = if set(TRACES_ENDPOINT_VAR).is_some() {
            Some(Endpoint::Environment(TRACES_ENDPOINT_VAR))
        } else if set(ENDPOINT_VAR).is_some() {
            Some(Endpoint::Environment(ENDPOINT_VAR))
        } else {
            file.map(Endpoint::File)
        };
        Ok(TracingSettings { endpoint })
    }

    /// One line for `check-config`.
    pub fn explain(&self) -> String {
        match &self.endpoint {
            None => "traces: off".to_owned(),
            Some(Endpoint::File(url)) => format!("traces: OTLP/HTTP to {url}"),
            Some(Endpoint::Environment(var)) => format!("traces: OTLP/HTTP to the endpoint in {var}"),
        }
    }
}

/// `http[s]://host[:port][/base]` -> the traces endpoint under it.
fn traces_url(base: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(base).map_err(|e| format!("{base:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("{base:?}: use an http:// or https:// URL of the collector"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{base:?}: the collector's base URL takes no query or fragment"));
    }
    Ok(format!("{}{TRACES_PATH}", base.trim_end_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(url: Option<&str>) -> RawTracing {
        RawTracing { otlp_endpoint: url.map(str::to_owned) }
    }

    #[test]
    fn off_by_default_on_with_the_file_or_the_standard_variables() {
        let none = |_: &str| None;
        assert_eq!(TracingSettings::validate_with(raw(None), none).unwrap().endpoint, None);
        let file = TracingSettings::validate_with(raw(Some("http://127.0.0.1:4318/")), none).unwrap();
        assert_eq!(file.endpoint, Some(Endpoint::File("http://127.0.0.1:4318/v1/traces".into())));
        assert_eq!(file.explain(), "traces: OTLP/HTTP to http://127.0.0.1:4318/v1/traces");

        let env = |name: &str| (name == ENDPOINT_VAR).then(|| "http://collector:4318".to_owned());
        let from_env = TracingSettings::validate_with(raw(Some("http://127.0.0.1:4318")), env).unwrap();
        assert_eq!(from_env.endpoint, Some(Endpoint::Environment(ENDPOINT_VAR)));
        let traces = |name: &str| (name != DISABLED_VAR).then(|| "http://collector:4318/v1/traces".to_owned());
        let traces_env = TracingSettings::validate_with(raw(None), traces).unwrap();
        assert_eq!(traces_env.endpoint, Some(Endpoint::Environment(TRACES_ENDPOINT_VAR)));

        let disabled = |name: &str| Some(if name == DISABLED_VAR { "TRUE" } else { "http://c:4318" }.to_owned());
        assert_eq!(TracingSettings::validate_with(raw(Some("http://c:4318")), disabled).unwrap().endpoint, None);
    }

    #[test]
    fn a_wrong_endpoint_is_named_by_its_key() {
        for bad in ["127.0.0.1:4318", "ftp://collector", "http://c:4318/?x=1", "not a url"] {
            let err = TracingSettings::validate_with(raw(Some(bad)), |_| None).unwrap_err();
            assert_eq!(err.key, "tracing.otlp_endpoint", "{bad}");
        }
    }
}
