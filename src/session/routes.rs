//! Which upstream a prompt, resource, template or completion belongs to when there are several:
//! by the server prefix of a name, or by the URIs the upstreams listed.

use serde_json::Value;

use super::calls::rename_param;
use super::{Session, SessionError, merge};
use crate::wire::jsonrpc::{self, Message};

impl Session {
    pub(super) fn route_prompt(&self, msg: &Message) -> Result<(usize, Message), SessionError> {
        let name = msg
            .params
            .as_deref()
            .and_then(|p| jsonrpc::string_field(p, "name"))
            .ok_or(SessionError::BadParams("prompts/get needs a name"))?;
        let (index, original) = self.route_named(&name)?;
        let mut out = Message {
            id: msg.id.clone(),
            method: msg.method.clone(),
            params: msg.params.clone(),
            result: None,
            error: None,
            extra: msg.extra.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        };
        if original != name {
            rename_param(&mut out, &original);
        }
        Ok((index, out))
    }

    /// Routes a prefixed name to its server; an unprefixed one to the first unprefixed server.
    pub(super) fn route_named(&self, name: &str) -> Result<(usize, String), SessionError> {
        if let Some((server, rest)) = merge::split_prefixed(name, &self.opts.separator)
            && let Some(index) = self.upstreams.iter().position(|u| u.cfg.prefix && u.cfg.name == server)
        {
            return Ok((index, rest.to_owned()));
        }
        self.upstreams
            .iter()
            .position(|u| !u.cfg.prefix)
            .map(|i| (i, name.to_owned()))
            .ok_or_else(|| SessionError::UnknownName { name: name.to_owned(), separator: self.opts.separator.clone() })
    }

    pub(super) fn route_uri(&self, uri: &str) -> Option<usize> {
        if let Some(&index) = self.resource_routes.get(uri) {
            return Some(index);
        }
        self.template_routes
            .iter()
            .filter(|(prefix, _)| uri.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, index)| *index)
    }

    pub(super) fn route_completion(&self, msg: &Message) -> Result<(usize, Message), SessionError> {
        let params: Value = msg
            .params
            .as_deref()
            .and_then(|p| serde_json::from_str(p.get()).ok())
            .ok_or(SessionError::BadParams("completion/complete needs params"))?;
        let reference = params.get("ref").ok_or(SessionError::BadParams("completion/complete needs a ref"))?;
        match reference.get("type").and_then(Value::as_str) {
            Some("ref/prompt") => {
                let name = reference
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or(SessionError::BadParams("ref/prompt needs a name"))?;
                let (index, original) = self.route_named(name)?;
                let mut params = params.clone();
                params["ref"]["name"] = Value::String(original);
                let out = Message {
                    id: msg.id.clone(),
                    method: msg.method.clone(),
                    params: Some(jsonrpc::to_raw(&params)),
                    ..Message::default()
                };
                Ok((index, out))
            }
            Some("ref/resource") => {
                let uri = reference
                    .get("uri")
                    .and_then(Value::as_str)
                    .ok_or(SessionError::BadParams("ref/resource needs a uri"))?;
                let index = self.route_uri(uri).ok_or(SessionError::UnknownResource)?;
                let out = Message {
                    id: msg.id.clone(),
                    method: msg.method.clone(),
                    params: msg.params.clone(),
                    ..Message::default()
                };
                Ok((index, out))
            }
            _ => Err(SessionError::BadParams("unknown completion ref type")),
        }
    }
}
