//! The reviewer's settings: `[providers.NAME]`, and the `ai_*` keys of an `ai_driven` workflow
//! in `[[workflows]]` (the approval service owns that table and hands them over).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{
    ANTHROPIC_BASE_URL, AiWorkflow, DEFAULT_CACHE_SECS, DEFAULT_THRESHOLD, DEFAULT_TIMEOUT_SECS, Fallback,
    OPENAI_BASE_URL, ProviderConfig, ProviderKind, Secret,
};
use crate::settings::Invalid;

/// `[providers.NAME]`: where `ai_driven` workflows send their reviews.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// `"anthropic"` or `"openai"`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
    pub timeout_secs: Option<u64>,
}

/// The reviewer's keys of an `ai_driven` workflow, as written.
#[derive(Debug, Default, Clone)]
pub struct RawAiWorkflow {
    pub name: String,
    pub ai_model: Option<String>,
    pub ai_guidelines: Option<String>,
    pub ai_confidence_threshold: Option<f64>,
    /// `"escalate"` (the default), `"approve"` or `"deny"`.
    pub ai_fallback_behavior: Option<String>,
    pub escalation_workflow: Option<String>,
    pub ai_provider: Option<String>,
    pub ai_cache_secs: Option<u64>,
}

impl AiWorkflow {
    /// The reviewer settings of the `ai_driven` workflow at `key` (`workflows[N]`).
    pub fn validate(
        key: &str,
        w: &RawAiWorkflow,
        providers: &BTreeMap<String, ProviderConfig>,
    ) -> Result<AiWorkflow, Invalid> {
        let required = |name: &str, value: &Option<String>, what: &str| -> Result<String, Invalid> {
            match value.as_deref().map(str::trim) {
                Some(v) if !v.is_empty() => Ok(v.to_owned()),
                _ => Err(Invalid::new(format!("{key}.{name}"), format!("an ai_driven workflow needs {what}"))),
            }
        };
        let model =
            required("ai_model", &w.ai_model, "the model to ask (e.g. \"claude-sonnet-4-5\", \"llama3.1:8b\")")?;
        let guidelines = required("ai_guidelines", &w.ai_guidelines, "the guidelines the reviewer decides by")?;
        let provider = required("ai_provider", &w.ai_provider, "a provider: the name of a [providers.NAME] table")?;
        if !providers.contains_key(&provider) {
            let known: Vec<&str> = providers.keys().map(String::as_str).collect();
            return Err(Invalid::new(
                format!("{key}.ai_provider"),
                if known.is_empty() {
                    format!("provider {provider:?} is not defined: add a [providers.{provider}] table")
                } else {
                    format!("provider {provider:?} is not defined; defined: {}", known.join(", "))
                },
            ));
        }
        let threshold = w.ai_confidence_threshold.unwrap_or(DEFAULT_THRESHOLD);
        if !(threshold.is_finite() && (0.0..=1.0).contains(&threshold)) {
            return Err(Invalid::new(
                format!("{key}.ai_confidence_threshold"),
                format!("{threshold} is not within 0..=1"),
            ));
        }
        let fallback = match w.ai_fallback_behavior.as_deref() {
            None | Some("escalate") => Fallback::Escalate,
            Some("approve") => Fallback::Approve,
            Some("deny") => Fallback::Deny,
            Some(other) => {
                return Err(Invalid::new(
                    format!("{key}.ai_fallback_behavior"),
                    format!("unknown fallback {other:?}; use \"escalate\", \"approve\" or \"deny\""),
                ));
            }
        };
        let escalation_workflow = w.escalation_workflow.clone().filter(|e| !e.trim().is_empty());
        match (fallback, &escalation_workflow) {
            (Fallback::Escalate, None) => {
                return Err(Invalid::new(
                    format!("{key}.escalation_workflow"),
                    "required when ai_fallback_behavior is \"escalate\" (the default): name the human workflow \
                     that decides the calls the reviewer is unsure of",
                ));
            }
            (Fallback::Approve | Fallback::Deny, Some(_)) => {
                return Err(Invalid::new(
                    format!("{key}.escalation_workflow"),
                    format!("is only used when ai_fallback_behavior is \"escalate\", not {:?}", fallback.as_str()),
                ));
            }
            _ => {}
        }
        Ok(AiWorkflow {
            name: w.name.clone(),
            model,
            guidelines,
            threshold,
            fallback,
            escalation_workflow,
            provider,
            cache: Duration::from_secs(w.ai_cache_secs.unwrap_or(DEFAULT_CACHE_SECS)),
        })
    }
}

/// Validates `[providers.NAME]`; an API key is read from the variable `api_key_env` names.
pub fn validate_providers(raw: BTreeMap<String, RawProvider>) -> Result<BTreeMap<String, ProviderConfig>, Invalid> {
    let mut out = BTreeMap::new();
    for (name, p) in raw {
        let key = format!("providers.{name}");
        let kind = match p.kind.as_deref() {
            Some("anthropic") => ProviderKind::Anthropic,
            Some("openai") => ProviderKind::OpenAi,
            Some(other) => {
                return Err(Invalid::new(
                    format!("{key}.type"),
                    format!(
                        "unknown provider type {other:?}; use \"anthropic\" or \"openai\" (any OpenAI-compatible \
                         server: Ollama, vLLM, LM Studio, llama.cpp)"
                    ),
                ));
            }
            None => return Err(Invalid::new(format!("{key}.type"), "required: \"anthropic\" or \"openai\"")),
        };
        let base_url = p.base_url.unwrap_or_else(|| {
            match kind {
                ProviderKind::Anthropic => ANTHROPIC_BASE_URL,
                ProviderKind::OpenAi => OPENAI_BASE_URL,
            }
            .to_owned()
        });
        if !(base_url.starts_with("http://") || base_url.starts_with("https://"))
            || reqwest::Url::parse(&base_url).is_err()
        {
            return Err(Invalid::new(format!("{key}.base_url"), format!("{base_url:?} is not an http(s) URL")));
        }
        let api_key = match &p.api_key_env {
            Some(var) => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Some(Secret::new(v.trim())),
                _ => {
                    return Err(Invalid::new(
                        format!("{key}.api_key_env"),
                        format!("environment variable {var} is not set (it should hold the provider's API key)"),
                    ));
                }
            },
            None => None,
        };
        let timeout_secs = p.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
        if timeout_secs == 0 {
            return Err(Invalid::new(format!("{key}.timeout_secs"), "must be at least 1"));
        }
        out.insert(
            name.clone(),
            ProviderConfig {
                name,
                kind,
                base_url,
                api_key_env: p.api_key_env,
                api_key,
                timeout: Duration::from_secs(timeout_secs),
            },
        );
    }
    Ok(out)
}
