//! `[[webhooks]]`: where changes of approval requests are POSTed.

use std::time::Duration;

use serde::Deserialize;

use super::{DEFAULT_EVENTS, DEFAULT_TIMEOUT, Format, Webhook};
use crate::approval::ChangeKind;
use crate::settings::{Expand, Invalid};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// Names the webhook in logs (default `webhooks[N]`).
    pub name: Option<String>,
    /// `http(s)://...`; `${VAR}` is read from the environment.
    pub url: Option<String>,
    /// `"generic"` (the default), `"slack"`, `"teams"` or `"ntfy"`.
    pub format: Option<String>,
    /// Name of the environment variable holding the signing key (required for `generic`).
    pub secret_env: Option<String>,
    /// Change kinds to send (default: requested, approved, denied, expiring, expired).
    pub events: Option<Vec<String>>,
    pub timeout_secs: Option<u64>,
}

/// `[notify]`: notifications on this machine.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    /// Desktop notifications of new held calls (default `true`; off anyway without a graphical
    /// session).
    pub desktop: Option<bool>,
}

/// Validates `[[webhooks]]`; `expand` resolves the `${VAR}` of a url.
pub fn validate_webhooks(raw: Vec<RawWebhook>, expand: Expand) -> Result<Vec<Webhook>, Invalid> {
    let mut out: Vec<Webhook> = Vec::new();
    for (i, w) in raw.into_iter().enumerate() {
        let key = format!("webhooks[{i}]");
        let name = match w.name {
            Some(n) if n.trim().is_empty() => return Err(Invalid::new(format!("{key}.name"), "must not be empty")),
            Some(n) => n,
            None => key.clone(),
        };
        if out.iter().any(|o| o.name == name) {
            return Err(Invalid::new(format!("{key}.name"), format!("webhook {name:?} is defined twice")));
        }
        let Some(raw_url) = w.url else { return Err(Invalid::new(format!("{key}.url"), "a webhook needs a url")) };
        let url = expand(&raw_url).map_err(|m| Invalid::new(format!("{key}.url"), m))?;
        // The expanded URL may hold a secret: messages quote what the file says.
        let parsed = reqwest::Url::parse(&url).ok().filter(|u| matches!(u.scheme(), "http" | "https"));
        if parsed.as_ref().and_then(|u| u.host_str()).is_none_or(str::is_empty) {
            return Err(Invalid::new(format!("{key}.url"), format!("{raw_url:?} is not an http:// or https:// URL")));
        }
        let format = match w.format.as_deref() {
            None => Format::Generic,
            Some(f) => f.parse::<Format>().map_err(|m| Invalid::new(format!("{key}.format"), m))?,
        };
        if format == Format::Ntfy && !super::ntfy::is_topic_url(&url) {
            return Err(Invalid::new(
                format!("{key}.url"),
                format!("{raw_url:?} does not end with an ntfy topic, as in \"https://ntfy.sh/TOPIC\""),
            ));
        }
        let secret = match w.secret_env {
            Some(var) => match std::env::var(&var) {
                Ok(v) if !v.is_empty() => Some(v.into_bytes()),
                Ok(_) => {
                    return Err(Invalid::new(
                        format!("{key}.secret_env"),
                        format!("environment variable {var} is empty"),
                    ));
                }
                Err(_) => {
                    return Err(Invalid::new(
                        format!("{key}.secret_env"),
                        format!("environment variable {var} is not set"),
                    ));
                }
            },
            None if format == Format::Generic => {
                return Err(Invalid::new(
                    format!("{key}.secret_env"),
                    "a generic webhook needs the name of the environment variable holding its signing key",
                ));
            }
            None => None,
        };
        let events = match w.events {
            None => DEFAULT_EVENTS.into_iter().collect(),
            Some(list) if list.is_empty() => {
                return Err(Invalid::new(
                    format!("{key}.events"),
                    "an empty list sends nothing; remove the webhook instead",
                ));
            }
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(j, k)| {
                    k.parse::<ChangeKind>().map_err(|m| {
                        let known = ChangeKind::ALL.map(|k| k.as_str()).join(", ");
                        Invalid::new(format!("{key}.events[{j}]"), format!("{m}; use one of {known}"))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let timeout = match w.timeout_secs {
            None => DEFAULT_TIMEOUT,
            Some(s @ 1..=300) => Duration::from_secs(s),
            Some(s) => {
                return Err(Invalid::new(format!("{key}.timeout_secs"), format!("{s} is not between 1 and 300")));
            }
        };
        let secret = secret.map(crate::secret::SecretSlice::from);
        out.push(Webhook { name, url, format, secret, events, timeout });
    }
    Ok(out)
}
