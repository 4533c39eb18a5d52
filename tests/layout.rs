//! The code's shape, held by a test: no file of a crate imports another that imports it
//! back (a reader can start at the bottom of each crate and go up), and no source file is
//! over 600 lines before its tests. The import graph is read from the `crate::…` paths a
//! file names outside comments and tests: what a reader follows, not what rustc resolves.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 600;

/// Every source directory: the binary's and each crate's.
fn source_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("src")];
    let mut crates: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .expect("crates/")
        .map(|e| e.expect("a crate").path().join("src"))
        .filter(|p| p.is_dir())
        .collect();
    crates.sort();
    dirs.extend(crates);
    dirs
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source directory") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text before the file's unit tests.
fn before_tests(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    }
}

/// Lines with `//` comments cut off (doc links are no imports).
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a piece of code names: `crate::x`, and `crate::{x, y::z}`.
fn named_modules(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// The top-level module a file belongs to (`src/config/mod.rs` and `src/config/x.rs`:
/// `config`), or `None` for the crate root.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next()?.as_os_str().to_string_lossy();
    let name = first.trim_end_matches(".rs").to_string();
    (name != "lib" && name != "main").then_some(name)
}

/// Modules a crate root declares under `#[cfg(test)]`: tests whole, whatever their size.
fn test_only_modules(src: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for root in ["lib.rs", "main.rs"] {
        let Ok(text) = std::fs::read_to_string(src.join(root)) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.windows(2) {
            if pair[0].trim() == "#[cfg(test)]" {
                if let Some(name) = pair[1].trim().strip_prefix("mod ") {
                    out.insert(name.trim_end_matches(';').to_string());
                }
            }
        }
    }
    out
}

/// A cycle in `graph`, if there is one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut c = path[at..].to_vec();
            c.push(node.to_string());
            return Some(c);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if graph.contains_key(next) {
                if let Some(c) = visit(next, graph, path, done) {
                    return Some(c);
                }
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_file_imports_a_file_that_imports_it_back() {
    let mut modules = 0;
    for src in source_dirs() {
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in &files {
            let Some(module) = module_of(&src, file) else {
                continue;
            };
            let text = std::fs::read_to_string(file).expect("readable");
            let names = named_modules(&without_comments(before_tests(&text)));
            let deps = graph.entry(module.clone()).or_default();
            deps.extend(names.into_iter().filter(|n| *n != module));
        }
        modules += graph.len();
        if let Some(c) = cycle(&graph) {
            panic!("{}: {}", src.display(), c.join(" → "));
        }
    }
    assert!(modules > 50, "only {modules} modules found");
}

#[test]
fn no_source_file_is_over_600_lines_before_its_tests() {
    let mut over = Vec::new();
    for src in source_dirs() {
        let tests_only = test_only_modules(&src);
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        for file in files {
            if module_of(&src, &file).is_some_and(|m| tests_only.contains(&m)) {
                continue;
            }
            let text = std::fs::read_to_string(&file).expect("readable");
            let lines = before_tests(&text).lines().count();
            if lines > MAX_LINES {
                over.push(format!("{} ({lines} lines)", file.display()));
            }
        }
    }
    assert!(over.is_empty(), "over {MAX_LINES} lines: {over:?}");
}

#[test]
fn the_checks_see_what_they_look_for() {
    let code =
        "use crate::a::B;\nuse crate::{c, d::E};\n// crate::not_this\nlet x = crate::f::g();";
    let names = named_modules(&without_comments(code));
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["a", "c", "d", "f"]);
    let mut graph = BTreeMap::new();
    graph.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    graph.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    assert_eq!(cycle(&graph), None);
    graph.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(
        cycle(&graph).map(|c| c.join(" ")),
        Some("a b c a".to_string())
    );
}
