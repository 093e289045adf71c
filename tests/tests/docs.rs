//! The manual as a reader meets it: the README is a short door with the two commands CI runs,
//! every relative link of README.md and docs/ leads somewhere, the flag tables are what the
//! binaries say (`make docs`), and no paragraph is written twice.

use std::collections::HashMap;

use harness::docker::repo_root;
use harness::docs::{blocks, broken_links, current_block, pages};

const README_MAX_LINES: usize = 250;

fn read(rel: &str) -> String {
    let path = repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn the_flag_tables_are_what_the_binaries_say() {
    for block in blocks() {
        let page = read(block.page);
        let committed = current_block(&page, block.name)
            .unwrap_or_else(|| panic!("{} has no generated block {:?}", block.page, block.name));
        assert!(
            committed == block.content,
            "{}: the {} table differs from the clap definitions: run `make docs` and commit",
            block.page,
            block.name
        );
    }
}

#[test]
fn every_relative_link_of_the_readme_and_docs_resolves() {
    let root = repo_root();
    let broken: Vec<String> = pages(&root)
        .iter()
        .flat_map(|page| broken_links(&root, page))
        .map(|b| format!("{}:{}: ({}) {}", b.page.display(), b.line, b.target, b.why))
        .collect();
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_is_a_door_that_opens_with_the_two_commands() {
    let readme = read("README.md");
    let lines = readme.lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines (at most {README_MAX_LINES}): move the detail to docs/"
    );
    // The first code block that is not a picture.
    let first_block: Vec<&str> = readme
        .split("```")
        .skip(1)
        .step_by(2)
        .find(|block| !block.starts_with("mermaid"))
        .expect("README.md has a code block")
        .lines()
        .skip(1)
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(
        first_block,
        ["make demo", "make test"],
        "the README's first code block is the two commands"
    );
    // CI runs exactly the README's test command.
    let ci = read(".ci/run");
    let runs: Vec<&str> = ci
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("make "))
        .collect();
    assert!(
        runs.contains(&"make test"),
        ".ci/run runs `make test`: {runs:?}"
    );
}

/// Paragraphs of prose (not code, tables, headings or generated blocks), white space folded.
fn paragraphs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    let mut generated = false;
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            fenced = !fenced;
        }
        if t.starts_with("<!-- BEGIN GENERATED") {
            generated = true;
        }
        if t.starts_with("<!-- END GENERATED") {
            generated = false;
        }
        let prose = !fenced && !generated && !t.starts_with('|') && !t.starts_with('#');
        if t.is_empty() || !prose {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            continue;
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(t);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[test]
fn no_paragraph_of_the_manual_is_written_twice() {
    // Long enough to be a statement of its own, not a phrase such as "Defaults: none."
    const MIN_CHARS: usize = 120;
    let root = repo_root();
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut twice = Vec::new();
    for page in pages(&root) {
        let rel = page
            .strip_prefix(&root)
            .unwrap_or(&page)
            .display()
            .to_string();
        let text = std::fs::read_to_string(&page).unwrap_or_default();
        for p in paragraphs(&text) {
            let key = p.split_whitespace().collect::<Vec<_>>().join(" ");
            if key.len() < MIN_CHARS {
                continue;
            }
            if let Some(first) = seen.get(&key) {
                let start: String = key.chars().take(80).collect();
                twice.push(format!("{first} and {rel}: {start}..."));
            } else {
                seen.insert(key, rel.clone());
            }
        }
    }
    assert!(
        twice.is_empty(),
        "paragraphs written twice:\n{}",
        twice.join("\n")
    );
}
