//! Who is asking: named approvers (`[[approvers]]`) and named agents (`[[agents]]`), each known
//! by a bearer token of which only the SHA-256 is kept in memory.
//!
//! A token is looked up by hashing what was presented and comparing it with every known hash
//! in constant time, so neither the plaintext nor the timing of a comparison tells anything.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::settings::Invalid;

/// The identity of the shared approver token (from `MCP_GATE_TOKEN`, the config or the data
/// directory).
pub const OPERATOR: &str = "operator";

/// The name of the system's own actions (expiry, failures) in the audit log.
pub const SYSTEM: &str = "system";

/// The prefix of the AI reviewer's names (`ai:MODEL`).
pub const AI_PREFIX: &str = "ai:";

/// Why a person may not decide under `name`: it passes for the system, the AI reviewer or the
/// shared approver token. Compared on the normalised name (see [`crate::visible::normalise_name`]).
pub fn impersonates(name: &str) -> Option<String> {
    let n = crate::visible::normalise_name(name);
    if n.starts_with(AI_PREFIX) {
        Some(format!("{name:?} passes for the AI reviewer (names starting with {AI_PREFIX:?} are its own)"))
    } else if n == SYSTEM {
        Some(format!("{name:?} is the name of mcp-gate's own actions"))
    } else if n == OPERATOR {
        Some(format!("{name:?} is the name of the shared approver token"))
    } else {
        None
    }
}

/// `[[approvers]]` or `[[agents]]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrincipal {
    pub name: String,
    /// Approvers only: the teams a workflow can name as `team:NAME`.
    #[serde(default)]
    pub teams: Vec<String>,
    /// The token's SHA-256, hex (`printf %s "$TOKEN" | sha256sum`).
    pub token_sha256: Option<String>,
    /// The name of an environment variable holding the token itself.
    pub token_env: Option<String>,
}

/// A named approver or agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub teams: Vec<String>,
    /// The credential that speaks for this principal: one vote per credential. The shared
    /// approver token is one credential ([`OPERATOR`]) whatever name it decides under.
    pub credential: String,
}

impl Principal {
    /// A principal with a credential of its own.
    pub fn named(name: &str) -> Principal {
        Principal { name: name.to_owned(), teams: Vec::new(), credential: name.to_owned() }
    }

    /// The holder of the shared approver token, deciding as `name`.
    pub fn shared_token_as(name: &str) -> Principal {
        Principal { name: name.to_owned(), teams: Vec::new(), credential: OPERATOR.to_owned() }
    }

    /// Whether a workflow's `approvers` list (names and `team:NAME`) admits this principal.
    /// An empty list admits everyone.
    pub fn admitted_by(&self, list: &[String]) -> bool {
        list.is_empty()
            || list.iter().any(|entry| match entry.strip_prefix("team:") {
                Some(team) => self.teams.iter().any(|t| t == team),
                None => *entry == self.name,
            })
    }
}

/// Token hashes and whom they belong to.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Hash, principal, and the configuration key it came from (`approvers[0]`).
    entries: Vec<([u8; 32], Principal, String)>,
}

impl Credentials {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn principals(&self) -> impl Iterator<Item = &Principal> {
        self.entries.iter().map(|(_, p, _)| p)
    }

    /// The SHA-256 of every token.
    pub fn hashes(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.entries.iter().map(|(h, _, _)| h)
    }

    pub fn add(&mut self, token: &str, principal: Principal) {
        let key = principal.name.clone();
        self.entries.push((sha256(token), principal, key));
    }

    /// The principal whose token this is. Every entry is compared, in constant time each.
    pub fn authenticate(&self, token: &str) -> Option<&Principal> {
        let presented = sha256(token);
        let mut found = None;
        for (hash, principal, _) in &self.entries {
            if crate::secret::constant_time_eq(hash, &presented) && found.is_none() {
                found = Some(principal);
            }
        }
        found
    }

    /// Validates `[[approvers]]` or `[[agents]]` (`section` names the table in errors).
    pub fn from_raw(section: &str, raw: &[RawPrincipal]) -> Result<Credentials, (String, String)> {
        let mut out = Credentials::default();
        for (i, p) in raw.iter().enumerate() {
            let key = format!("{section}[{i}]");
            if p.name.trim().is_empty() || p.name.starts_with("team:") || p.name.contains(char::is_whitespace) {
                return Err((format!("{key}.name"), format!("{:?} is not a usable name", p.name)));
            }
            let normalised = crate::visible::normalise_name(&p.name);
            if out.principals().any(|q| crate::visible::normalise_name(&q.name) == normalised) {
                return Err((format!("{key}.name"), format!("{:?} is defined twice", p.name)));
            }
            if let Some(why) = impersonates(&p.name) {
                return Err((format!("{key}.name"), why));
            }
            let hash = match (&p.token_sha256, &p.token_env) {
                (Some(hex), None) => parse_hash(hex).ok_or_else(|| {
                    (format!("{key}.token_sha256"), "expected 64 hex digits (printf %s TOKEN | sha256sum)".to_owned())
                })?,
                (None, Some(var)) => {
                    let token = std::env::var(var)
                        .map_err(|_| (format!("{key}.token_env"), format!("environment variable {var} is not set")))?;
                    if token.len() < 16 {
                        return Err((
                            format!("{key}.token_env"),
                            format!("the token in {var} is shorter than 16 characters"),
                        ));
                    }
                    sha256(&token)
                }
                _ => {
                    return Err((key, "give exactly one of token_sha256 and token_env".to_owned()));
                }
            };
            if out.entries.iter().any(|(h, _, _)| *h == hash) {
                return Err((key, format!("{:?} has the same token as another entry", p.name)));
            }
            let principal = Principal { name: p.name.clone(), teams: p.teams.clone(), credential: p.name.clone() };
            out.entries.push((hash, principal, key));
        }
        Ok(out)
    }

    /// The configuration keys of a token that appears in both sets (an agent must never hold an
    /// approver's token).
    pub fn shares_a_token_with<'a>(&'a self, other: &'a Credentials) -> Option<(&'a str, &'a str)> {
        self.entries.iter().find_map(|(h, _, key)| {
            other.entries.iter().find(|(h2, _, _)| h2 == h).map(|(_, _, key2)| (key.as_str(), key2.as_str()))
        })
    }

    /// The configuration key of the entry whose token this is (`agents[1]`).
    pub fn key_of(&self, token: &str) -> Option<&str> {
        let presented = sha256(token);
        let mut found = None;
        for (hash, _, key) in &self.entries {
            if crate::secret::constant_time_eq(hash, &presented) && found.is_none() {
                found = Some(key.as_str());
            }
        }
        found
    }

    /// Whether `token` is one of these.
    pub fn contains_token(&self, token: &str) -> bool {
        self.authenticate(token).is_some()
    }
}

pub fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Refuses any configuration in which an agent credential (the HTTP token `http`, `agents`) is
/// also an approver credential (the shared approver token `shared`, `approvers`): whoever holds
/// it could approve the calls it makes. `http` and `shared` come with the key they came from;
/// the error names both keys.
pub fn credentials_apart(
    agents: &Credentials,
    approvers: &Credentials,
    http: Option<(&str, &str)>,
    shared: Option<(&str, &str)>,
) -> Result<(), Invalid> {
    let clash = |agent: &str, approver: &str| {
        Invalid::new(
            agent,
            format!(
                "the agent credential `{agent}` is the same as the approver credential `{approver}`; an agent must \
                 never hold an approver's token: give each its own"
            ),
        )
    };
    if let Some((agent, approver)) = agents.shares_a_token_with(approvers) {
        return Err(clash(agent, approver));
    }
    if let Some((http, http_key)) = http {
        if let Some((shared, shared_key)) = shared
            && crate::secret::constant_time_eq(http.as_bytes(), shared.as_bytes())
        {
            return Err(clash(http_key, shared_key));
        }
        if let Some(approver) = approvers.key_of(http) {
            return Err(clash(http_key, approver));
        }
    }
    if let Some((shared, shared_key)) = shared
        && let Some(agent) = agents.key_of(shared)
    {
        return Err(clash(agent, shared_key));
    }
    Ok(())
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(name: &str, token: &str, teams: &[&str]) -> RawPrincipal {
        let hash = hex::encode(sha256(token));
        RawPrincipal {
            name: name.into(),
            teams: teams.iter().map(|t| (*t).to_owned()).collect(),
            token_sha256: Some(hash),
            token_env: None,
        }
    }

    #[test]
    fn tokens_are_matched_by_hash() {
        let creds = Credentials::from_raw(
            "approvers",
            &[raw("alice", "alice-token-0123456789", &["sre"]), raw("bob", "bob-token-0123456789", &[])],
        )
        .unwrap();
        assert_eq!(creds.authenticate("alice-token-0123456789").unwrap().name, "alice");
        assert_eq!(creds.authenticate("bob-token-0123456789").unwrap().name, "bob");
        assert!(creds.authenticate("alice-token-012345678").is_none());
        assert!(creds.authenticate("").is_none());
    }

    #[test]
    fn workflow_lists_admit_names_and_teams() {
        let alice = Principal { name: "alice".into(), teams: vec!["sre".into()], credential: "alice".into() };
        assert!(alice.admitted_by(&[]));
        assert!(alice.admitted_by(&["alice".into()]));
        assert!(alice.admitted_by(&["bob".into(), "team:sre".into()]));
        assert!(!alice.admitted_by(&["bob".into(), "team:dba".into()]));
        assert!(!Principal::named("sre").admitted_by(&["team:sre".into()]));
    }

    #[test]
    fn bad_entries_name_their_key() {
        let mut bad = raw("alice", "alice-token-0123456789", &[]);
        bad.token_sha256 = Some("abc".into());
        assert_eq!(Credentials::from_raw("approvers", &[bad]).unwrap_err().0, "approvers[0].token_sha256");
        // 64 characters that only a lenient parser reads as hex ("+f" is 15 to `from_str_radix`).
        let mut signed = raw("alice", "alice-token-0123456789", &[]);
        signed.token_sha256 = Some("+f".repeat(32));
        assert_eq!(Credentials::from_raw("approvers", &[signed]).unwrap_err().0, "approvers[0].token_sha256");

        let dup = [raw("alice", "t-0123456789abcdef", &[]), raw("alice", "u-0123456789abcdef", &[])];
        assert_eq!(Credentials::from_raw("approvers", &dup).unwrap_err().0, "approvers[1].name");

        let same = [raw("alice", "t-0123456789abcdef", &[]), raw("bob", "t-0123456789abcdef", &[])];
        assert_eq!(Credentials::from_raw("agents", &same).unwrap_err().0, "agents[1]");

        let neither = RawPrincipal { name: "carol".into(), ..RawPrincipal::default() };
        assert_eq!(Credentials::from_raw("approvers", &[neither]).unwrap_err().0, "approvers[0]");

        let env = RawPrincipal {
            name: "dave".into(),
            token_env: Some("MCP_GATE_TEST_SURELY_UNSET_VAR".into()),
            ..RawPrincipal::default()
        };
        let err = Credentials::from_raw("approvers", &[env]).unwrap_err();
        assert_eq!(err.0, "approvers[0].token_env");
        assert!(err.1.contains("MCP_GATE_TEST_SURELY_UNSET_VAR"));
    }
}
