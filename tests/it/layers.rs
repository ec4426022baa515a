//! The modules form layers: no module uses, directly or through others, a module that uses it.
//!
//! Read from the source itself: every `crate::a::b` path (and `super::` path) in a file's code (comments and the
//! `#[cfg(test)]` part at the end of a file are not code the module depends on) is an edge from
//! the file's module to `a` (and, inside one folder, from one sibling to another). The checks fail
//! with the cycle they found.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `src/a/b/c.rs` -> `["a", "b", "c"]`; `src/a/mod.rs` -> `["a"]`; `src/lib.rs` -> `[]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file: without comments, and without what follows a `#[cfg(test)]` at the start
/// of a line (the tests module) or a whole file of tests.
fn code_of(file: &Path) -> String {
    if file.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(file).unwrap();
    let mut code = String::new();
    for line in text.lines() {
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        let line = match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        code.push_str(line);
        code.push('\n');
    }
    code
}

/// Every `crate::x::y::...` path in `code`, including those inside `use crate::{x, y::z}`.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(inner) = rest.strip_prefix('{') {
            // Top-level items of the group.
            let mut depth = 0;
            let mut item = String::new();
            for c in inner.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        paths.push(segments(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            paths.push(segments(&item));
        } else {
            paths.push(segments(rest));
        }
    }
    paths.retain(|p| !p.is_empty());
    paths
}

fn segments(text: &str) -> Vec<String> {
    let text = text.trim_start();
    let end = text.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(text.len());
    text[..end].split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// A cycle in `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = stack.iter().position(|n| n == node).unwrap();
                let mut cycle = stack[start..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_owned(), Mark::Open);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

/// Edges between the modules of one level: `parent` is the folder (empty for the crate root);
/// an edge goes from the child of `parent` a file belongs to, to the child of `parent` it names.
/// Files of the folder's own `mod.rs` are left out: a parent and its children share items both ways.
fn graph_under(parent: &[String]) -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let module = module_of(&src, &file);
        if module.len() <= parent.len() || module[..parent.len()] != *parent {
            continue;
        }
        let from = module[parent.len()].clone();
        graph.entry(from.clone()).or_default();
        // `super::x` in a file of module `a::b::c` names `a::b::x`.
        let parent_path: String = module[..module.len() - 1].iter().map(|m| format!("{m}::")).collect();
        let code = code_of(&file).replace("super::", &format!("crate::{parent_path}"));
        for path in crate_paths(&code) {
            if path.len() > parent.len() && path[..parent.len()] == *parent {
                let to = path[parent.len()].clone();
                if to != from && to.chars().all(|c| c.is_lowercase() || c == '_' || c.is_ascii_digit()) {
                    graph.entry(from.clone()).or_default().insert(to);
                }
            }
        }
    }
    graph
}

#[test]
fn the_top_level_modules_have_no_cycle() {
    let graph = graph_under(&[]);
    assert!(graph.len() > 10, "the source tree was not found: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("modules that use each other: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_modules_inside_each_folder_have_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let folders: BTreeSet<Vec<String>> =
        files.iter().map(|f| module_of(&src, f)).filter(|m| m.len() >= 2).map(|m| m[..m.len() - 1].to_vec()).collect();
    for folder in folders {
        if let Some(cycle) = find_cycle(&graph_under(&folder)) {
            panic!("modules of {} that use each other: {}", folder.join("::"), cycle.join(" -> "));
        }
    }
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&graph), None);
    graph.entry("c".into()).or_default().insert("a".into());
    assert_eq!(find_cycle(&graph).map(|c| c.join(" -> ")).as_deref(), Some("a -> b -> c -> a"));
    let code = "use crate::{alpha, beta::{x, y}};\nfn f() { crate::gamma::run(); notcrate::delta::x(); }";
    let found: Vec<String> = crate_paths(code).into_iter().map(|p| p[0].clone()).collect();
    assert_eq!(found, ["alpha", "beta", "gamma"]);
}
