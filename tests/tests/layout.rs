//! The architecture as a test: inside each crate, dependencies point one way at every level of
//! the module tree. Among the modules of one folder (a subsystem's parts, or the subsystems at
//! the top of `src/`), none reaches, directly or through others, a module that reaches it; a
//! dependency between two modules of different folders counts as one between the folders
//! holding them. A module may use what its ancestors declare (a folder's root file holds the
//! subsystem's shared items and its `Error`), so edges between a module and its ancestors do not
//! count. Read from every `.rs` file under `src/`, tests and comments left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module's path inside its crate, e.g. `["http", "h1"]`.
type ModPath = Vec<String>;

/// Every module file under `src` (not `lib.rs`/`main.rs`): its path and its code without tests
/// and comment lines.
fn modules(src: &Path) -> BTreeMap<ModPath, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read a source folder") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let mut segments: ModPath = rel
                .iter()
                .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            if segments.last().is_some_and(|s| s == "mod") {
                segments.pop();
            }
            if segments == ["lib"] || segments == ["main"] || segments.is_empty() {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read module");
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let code: Vec<&str> = code
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect();
            out.insert(segments, code.join("\n"));
        }
    }
    out
}

/// The `a::b::c` paths written in `code` after `prefix` (`crate::`, `self::`).
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    code.split(prefix).skip(1).map(segments).collect()
}

/// The paths written after a run of `super::` (`super::super::x` is one run of two): how many,
/// and the path after them.
fn super_paths(code: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("super::") {
        let mut after = &rest[at..];
        let mut ups = 0;
        while let Some(r) = after.strip_prefix("super::") {
            ups += 1;
            after = r;
        }
        out.push((ups, segments(after)));
        rest = after;
    }
    out
}

/// The `a::b::c` identifiers at the start of `rest`.
fn segments(rest: &str) -> Vec<String> {
    let mut segments = Vec::new();
    let mut rest = rest;
    loop {
        let ident: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if ident.is_empty() {
            break;
        }
        rest = &rest[ident.len()..];
        segments.push(ident);
        match rest.strip_prefix("::") {
            Some(r) => rest = r,
            None => break,
        }
    }
    segments
}

/// The longest known module that `path` starts with.
fn resolve(known: &BTreeSet<ModPath>, path: &[String]) -> Option<ModPath> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| known.contains(p))
}

/// Module -> the modules it names: `crate::x::y`, `super::x` (also `super::super::x`),
/// `self::x`, and a child module by its bare name (`h1::Pool` in `http`).
fn graph(src: &Path) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let sources = modules(src);
    let known: BTreeSet<ModPath> = sources.keys().cloned().collect();
    let mut out = BTreeMap::new();
    for (module, code) in &sources {
        let mut uses = BTreeSet::new();
        for path in paths_after(code, "crate::") {
            uses.extend(resolve(&known, &path));
        }
        for (ups, path) in super_paths(code) {
            let base = &module[..module.len().saturating_sub(ups)];
            let full: ModPath = base.iter().cloned().chain(path).collect();
            uses.extend(resolve(&known, &full));
        }
        for path in paths_after(code, "self::") {
            let full: ModPath = module.iter().cloned().chain(path).collect();
            uses.extend(resolve(&known, &full));
        }
        for child in known
            .iter()
            .filter(|k| k.len() == module.len() + 1 && k.starts_with(module))
        {
            let name = child.last().expect("a child has a name");
            if code.contains(&format!("{name}::")) {
                uses.insert(child.clone());
            }
        }
        uses.retain(|u| !u.starts_with(module) && !module.starts_with(u));
        out.insert(module.clone(), uses);
    }
    out
}

/// The edges among the children of every folder: `a::x -> b::y` is `a -> b` among the top
/// modules, and `a::x -> a::z::w` is `x -> z` inside `a`.
fn levels(graph: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> BTreeMap<ModPath, Edges> {
    let mut out: BTreeMap<ModPath, Edges> = BTreeMap::new();
    for (from, uses) in graph {
        for to in uses {
            let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
            let folder = from[..common].to_vec();
            let (a, b) = (from[common].clone(), to[common].clone());
            out.entry(folder)
                .or_default()
                .entry(a)
                .or_default()
                .insert(b);
        }
    }
    out
}

type Edges = BTreeMap<String, BTreeSet<String>>;

/// A cycle through `start`, if there is one.
fn cycle_from(graph: &Edges, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_string(), vec![start.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((node, path)) = stack.pop() {
        for next in graph.get(&node).into_iter().flatten() {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(start.to_string());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push((next.clone(), longer));
            }
        }
    }
    None
}

fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn module_dependencies_point_one_way_at_every_level_of_every_crate() {
    for krate in ["shared", "sidecar", "spawner"] {
        let graph = graph(&root().join(krate).join("src"));
        assert!(graph.len() > 3, "{krate}: modules found");
        for (folder, edges) in levels(&graph) {
            for module in edges.keys() {
                if let Some(cycle) = cycle_from(&edges, module) {
                    let at = if folder.is_empty() {
                        "src/".to_string()
                    } else {
                        format!("src/{}/", folder.join("/"))
                    };
                    panic!(
                        "{krate} {at}: modules import each other: {}",
                        cycle.join(" -> ")
                    );
                }
            }
        }
    }
}

#[test]
fn every_module_file_in_every_folder_is_read() {
    // A module moved into a folder must stay under the check: count the files independently.
    for krate in ["shared", "sidecar", "spawner"] {
        let src = root().join(krate).join("src");
        let mut files = 0;
        let mut dirs = vec![src.clone()];
        while let Some(dir) = dirs.pop() {
            for e in std::fs::read_dir(&dir).expect("read folder").flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "rs")
                    && !(dir == src && (p.ends_with("lib.rs") || p.ends_with("main.rs")))
                {
                    files += 1;
                }
            }
        }
        assert_eq!(
            modules(&src).len(),
            files,
            "{krate}: every module file is read"
        );
    }
}

#[test]
fn the_walk_sees_nested_modules_and_their_edges() {
    let dir = harness::tmp::TempDir::new("layout");
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("http/fast")).expect("mkdir");
    let files = [
        ("lib.rs", "mod http; mod tls;"),
        ("tls.rs", "use crate::http::fast::chunked::Scan;"),
        ("http.rs", "mod fast; pub struct Shared; use fast::Pool;"),
        (
            "http/fast.rs",
            "mod chunked; use super::Shared; use super::super::tls::Key; pub struct Pool;",
        ),
        (
            "http/fast/chunked.rs",
            "use super::super::Shared; use crate::tls::Config;",
        ),
    ];
    for (name, code) in files {
        std::fs::write(src.join(name), code).expect("write");
    }
    let graph = graph(&src);
    let http = vec!["http".to_string()];
    let tls = vec!["tls".to_string()];
    let chunked: ModPath = ["http", "fast", "chunked"].map(String::from).to_vec();
    // Ancestors and descendants do not count; across folders they do.
    assert_eq!(graph[&http], BTreeSet::new());
    assert_eq!(graph[&tls], BTreeSet::from([chunked.clone()]));
    assert_eq!(graph[&chunked], BTreeSet::from([tls.clone()]));
    // `super::super::x` climbs two levels: http::fast names tls, not its own parent.
    let fast: ModPath = ["http", "fast"].map(String::from).to_vec();
    assert_eq!(graph[&fast], BTreeSet::from([tls.clone()]));
    // Lifted to the top: http <-> tls, a cycle the test reports.
    let top = &levels(&graph)[&Vec::new()];
    assert!(cycle_from(top, "tls").is_some(), "{top:?}");
}
