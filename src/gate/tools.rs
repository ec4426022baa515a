//! Each upstream's current tool list, as the policy needs it.

use std::collections::HashMap;

use serde_json::Value;
use serde_json::value::RawValue;

use crate::wire::jsonrpc::strict;

/// What the proxy knows of one tool: read with rmcp's model type where the tool parses, and
/// by name only where it does not (an upstream's malformed schema must not hide the tool from
/// the policy, which then treats it as unannotated).
#[derive(Debug, Clone)]
pub struct ToolInfo {
    pub name: String,
    pub tool: Option<rmcp::model::Tool>,
    /// `execution.taskSupport` as the upstream listed it (`forbidden`, `optional`, `required`).
    pub task_support: Option<String>,
}

impl ToolInfo {
    pub fn annotations(&self) -> Option<&rmcp::model::ToolAnnotations> {
        self.tool.as_ref().and_then(|t| t.annotations.as_ref())
    }

    pub fn description(&self) -> Option<&str> {
        self.tool.as_ref().and_then(|t| t.description.as_deref())
    }

    /// A top-level key of a call's `arguments` that is no property the tool's `inputSchema`
    /// declares but differs from one only by case (as [`strict::Keys::Folded`] folds it), with
    /// that property: the policy's conditions on `/path` do not see `"PATH"`, a server that matches
    /// keys loosely reads it as `path`. `None` when the schema declares no properties. Only the
    /// top level: nested objects are the tool's own business, and their schemas may be anything.
    pub fn case_variant_argument<'a>(&'a self, arguments: &'a Value) -> Option<(&'a str, &'a str)> {
        let properties = self.tool.as_ref()?.input_schema.get("properties")?.as_object()?;
        let arguments = arguments.as_object()?;
        arguments.keys().filter(|key| !properties.contains_key(*key)).find_map(|key| {
            let property = properties.keys().find(|p| strict::same_but_case(key.as_bytes(), p.as_bytes()))?;
            Some((key.as_str(), property.as_str()))
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct ToolList {
    tools: Vec<ToolInfo>,
    by_name: HashMap<String, usize>,
}

impl ToolList {
    /// Reads the `tools` array of one `tools/list` result.
    pub fn from_result(result: &RawValue) -> Result<ToolList, serde_json::Error> {
        let mut list = ToolList::default();
        list.add_page(result)?;
        Ok(list)
    }

    /// Reads every page of a paginated listing; unreadable pages are skipped.
    pub fn from_pages(pages: &[Box<RawValue>]) -> ToolList {
        let mut list = ToolList::default();
        for page in pages {
            if let Err(e) = list.add_page(page) {
                tracing::warn!("unreadable tools/list page: {e}");
            }
        }
        list
    }

    fn add_page(&mut self, result: &RawValue) -> Result<(), serde_json::Error> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            tools: Vec<Box<RawValue>>,
        }
        #[derive(serde::Deserialize)]
        struct Named {
            name: String,
            #[serde(default)]
            execution: Option<Execution>,
        }
        #[derive(serde::Deserialize)]
        struct Execution {
            #[serde(default, rename = "taskSupport")]
            task_support: Option<String>,
        }
        let page: Page = serde_json::from_str(result.get())?;
        for raw in page.tools {
            let Ok(Named { name, execution }) = serde_json::from_str::<Named>(raw.get()) else { continue };
            let task_support = execution.and_then(|e| e.task_support);
            let tool = serde_json::from_str::<rmcp::model::Tool>(raw.get()).ok();
            self.by_name.insert(name.clone(), self.tools.len());
            self.tools.push(ToolInfo { name, tool, task_support });
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&ToolInfo> {
        self.by_name.get(name).map(|&i| &self.tools[i])
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tools.iter().map(|t| t.name.as_str())
    }

    pub fn len(&self) -> usize {
        self.tools.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_annotations_and_keeps_unparseable_tools_by_name() {
        let raw = RawValue::from_string(
            r#"{"tools":[{"name":"read","inputSchema":{"type":"object"},"annotations":{"readOnlyHint":true}},
                         {"name":"odd","inputSchema":"not an object"}]}"#
                .into(),
        )
        .unwrap();
        let list = ToolList::from_result(&raw).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list.get("read").unwrap().annotations().unwrap().read_only_hint, Some(true));
        assert!(list.get("odd").unwrap().tool.is_none());
        assert!(list.get("missing").is_none());
    }

    #[test]
    fn an_argument_that_differs_from_a_declared_property_only_by_case_is_found() {
        let raw = RawValue::from_string(
            r#"{"tools":[{"name":"write_file","inputSchema":{"type":"object","properties":{"path":{},"content":{},"size":{},"Mode":{},"mode":{}}}},
                         {"name":"free","inputSchema":{"type":"object"}},
                         {"name":"odd","inputSchema":"not an object"}]}"#
                .into(),
        )
        .unwrap();
        let list = ToolList::from_result(&raw).unwrap();
        let tool = list.get("write_file").unwrap();
        let found = |args: Value| tool.case_variant_argument(&args).map(|(k, p)| (k.to_owned(), p.to_owned()));
        assert_eq!(found(serde_json::json!({"PATH": "/etc/passwd"})), Some(("PATH".into(), "path".into())));
        assert_eq!(
            found(serde_json::json!({"path": "/tmp/a", "Content": "x"})),
            Some(("Content".into(), "content".into()))
        );
        assert_eq!(found(serde_json::json!({"\u{17f}IZE": 1})), Some(("\u{17f}IZE".into(), "size".into())));
        assert_eq!(found(serde_json::json!({"pat\u{17f}h": 1, "Paths": 2})), None, "other words");
        // Declared as written (both `Mode` and `mode` are), undeclared, nested, or not an object.
        assert_eq!(found(serde_json::json!({"path": "/a", "Mode": 1, "mode": 2, "extra": 3})), None);
        assert_eq!(found(serde_json::json!({"path": {"PATH": 1}, "opts": {"Content": 2}})), None);
        assert_eq!(found(serde_json::json!(["PATH"])), None);
        // No properties declared, or no schema the proxy could read: nothing to compare with.
        let args = serde_json::json!({"PATH": "/etc/passwd"});
        assert!(list.get("free").unwrap().case_variant_argument(&args).is_none());
        assert!(list.get("odd").unwrap().case_variant_argument(&args).is_none());
    }
}
