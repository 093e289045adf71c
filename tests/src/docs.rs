//! The manual's generated parts and its links. The flag tables of docs/sidecar.md and
//! docs/spawner.md are made from the binaries' own clap definitions (names, environment
//! variables, defaults, help), so a flag is described in one place: its doc comment. `make docs`
//! writes them (src/bin/flag_docs.rs); a test fails when the committed ones differ.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, Command, CommandFactory};

/// One generated block: where it lives and what it holds today.
pub struct Block {
    /// The page, relative to the repository root.
    pub page: &'static str,
    /// The name in the block's markers.
    pub name: &'static str,
    /// The block's content, as the binaries define it now.
    pub content: String,
}

/// Every generated block of the manual.
pub fn blocks() -> Vec<Block> {
    vec![
        Block {
            page: "docs/sidecar.md",
            name: "sidecar flags",
            content: command_reference(&sidecar::config::Cli::command()),
        },
        Block {
            page: "docs/spawner.md",
            name: "spawner flags",
            content: command_reference(&spawner::Cli::command()),
        },
    ]
}

/// The marker lines around a block (`make docs` replaces what is between them).
pub fn markers(name: &str) -> (String, String) {
    (
        format!("<!-- BEGIN GENERATED: {name} (make docs) -->"),
        format!("<!-- END GENERATED: {name} -->"),
    )
}

/// `page` with the block `name` replaced by `content`; an error names a missing or misordered
/// marker.
pub fn replace_block(page: &str, name: &str, content: &str) -> Result<String, String> {
    let (begin, end) = markers(name);
    let start = page
        .find(&begin)
        .ok_or_else(|| format!("marker line `{begin}` not found"))?;
    let inner = start + begin.len();
    let stop = page[inner..]
        .find(&end)
        .map(|i| inner + i)
        .ok_or_else(|| format!("marker line `{end}` not found after `{begin}`"))?;
    Ok(format!("{}\n{}{}", &page[..inner], content, &page[stop..]))
}

/// What is between a block's markers today.
pub fn current_block(page: &str, name: &str) -> Option<String> {
    let (begin, end) = markers(name);
    let inner = page.find(&begin)? + begin.len();
    let stop = inner + page[inner..].find(&end)?;
    Some(page[inner..stop].trim_start_matches('\n').to_string())
}

/// The reference of a command: its flags, then each subcommand with its own flags.
pub fn command_reference(cmd: &Command) -> String {
    let name = cmd.get_name().to_string();
    let mut out = String::new();
    let subcommands: Vec<&Command> = cmd.get_subcommands().filter(|c| !c.is_hide_set()).collect();
    if !subcommands.is_empty() {
        out.push_str("| command | what it does |\n|---|---|\n");
        walk_subcommands(&name, cmd, &mut |path, sub| {
            let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
            if sub.get_subcommands().next().is_none() {
                out.push_str(&format!("| `{path}` | {} |\n", cell(&about)));
            }
        });
        out.push('\n');
    }
    let global_note = if subcommands.is_empty() {
        String::new()
    } else {
        " (every command)".to_string()
    };
    out.push_str(&format!("Flags of `{name}`{global_note}:\n\n"));
    out.push_str(&flag_table(cmd));
    walk_subcommands(&name, cmd, &mut |path, sub| {
        if flags(sub).next().is_some() {
            out.push_str(&format!("\nFlags of `{path}`:\n\n"));
            out.push_str(&flag_table(sub));
        }
    });
    out
}

fn walk_subcommands(prefix: &str, cmd: &Command, f: &mut dyn FnMut(&str, &Command)) {
    for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
        let path = format!("{prefix} {}", sub.get_name());
        f(&path, sub);
        walk_subcommands(&path, sub, f);
    }
}

/// The documented flags of `cmd` itself (not --help/--version, not hidden, not inherited globals).
fn flags(cmd: &Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments().filter(|a| {
        !a.is_hide_set()
            && !matches!(a.get_action(), ArgAction::Help | ArgAction::Version)
            && a.get_long().is_some()
    })
}

fn flag_table(cmd: &Command) -> String {
    let mut out = String::from("| flag | environment | default | meaning |\n|---|---|---|---|\n");
    for arg in flags(cmd) {
        let help = arg
            .get_long_help()
            .or_else(|| arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        let (help, stated_default) = take_bracket(&help, "[default: ");
        let (help, aliases) = take_bracket(&help, "(alias env: ");
        let mut flag = format!("`--{}", arg.get_long().unwrap_or_default());
        if arg.get_action().takes_values() {
            let value = arg
                .get_value_names()
                .and_then(|v| v.first())
                .map_or_else(|| arg.get_id().as_str().to_uppercase(), |v| v.to_string());
            flag.push(' ');
            flag.push_str(&value);
        }
        flag.push('`');
        if let Some(short) = arg.get_short() {
            flag = format!("`-{short}`, {flag}");
        }
        let mut env: Vec<String> = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .into_iter()
            .collect();
        if let Some(aliases) = aliases {
            env.extend(
                aliases
                    .split(',')
                    .map(|a| format!("`{}` (alias)", a.trim())),
            );
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        let default = if !defaults.is_empty() {
            format!("`{}`", defaults.join(","))
        } else if let Some(d) = stated_default {
            format!("`{d}`")
        } else if matches!(arg.get_action(), ArgAction::SetTrue) {
            "off".to_string()
        } else {
            String::new()
        };
        let mut meaning = help;
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| format!("`{}`", v.get_name()))
            .collect();
        if !values.is_empty() && !matches!(arg.get_action(), ArgAction::SetTrue) {
            meaning.push_str(&format!(" (one of {})", values.join(", ")));
        }
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            flag,
            env.join(", "),
            cell(&default),
            cell(&meaning)
        ));
    }
    out
}

/// Takes the first `open ... ]`/`)` group out of `text`: (the rest, what was inside).
fn take_bracket(text: &str, open: &str) -> (String, Option<String>) {
    let close = if open.starts_with('[') { ']' } else { ')' };
    let Some(start) = text.find(open) else {
        return (text.to_string(), None);
    };
    let inner = start + open.len();
    let Some(len) = text[inner..].find(close) else {
        return (text.to_string(), None);
    };
    let value = text[inner..inner + len].trim().to_string();
    let rest = format!("{}{}", &text[..start], &text[inner + len + 1..]);
    (tidy(&rest), Some(value))
}

/// One line of text: runs of white space folded, no space before punctuation.
fn tidy(text: &str) -> String {
    let folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
    folded
        .replace(" .", ".")
        .replace(" ,", ",")
        .replace(" ;", ";")
        .trim()
        .to_string()
}

/// A table cell: one line, pipes escaped.
fn cell(text: &str) -> String {
    tidy(text).replace('|', "\\|")
}

/// A relative link of a Markdown page that does not lead anywhere.
#[derive(Debug)]
pub struct BrokenLink {
    pub page: PathBuf,
    pub line: usize,
    pub target: String,
    pub why: String,
}

/// The Markdown pages of the manual: README.md and every `.md` under docs/.
pub fn pages(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.join("README.md")];
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "md") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The relative links of `page` (inline `[text](target)` outside code) that lead to no file, or
/// to no heading of it.
pub fn broken_links(root: &Path, page: &Path) -> Vec<BrokenLink> {
    let text = std::fs::read_to_string(page).unwrap_or_default();
    let mut out = Vec::new();
    for (line, target) in links(&text) {
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (path, anchor) = match target.split_once('#') {
            Some((p, a)) => (p, Some(a)),
            None => (target.as_str(), None),
        };
        let file = if path.is_empty() {
            page.to_path_buf()
        } else if let Some(abs) = path.strip_prefix('/') {
            root.join(abs)
        } else {
            page.parent().unwrap_or(root).join(path)
        };
        let broken = |why: String| BrokenLink {
            page: page.strip_prefix(root).unwrap_or(page).to_path_buf(),
            line,
            target: target.clone(),
            why,
        };
        if !file.exists() {
            out.push(broken(format!("{} does not exist", file.display())));
            continue;
        }
        if let Some(anchor) = anchor {
            if file.extension().is_some_and(|x| x == "md") {
                let target_text = std::fs::read_to_string(&file).unwrap_or_default();
                if !anchors(&target_text).contains(anchor) {
                    out.push(broken(format!("no heading with anchor #{anchor}")));
                }
            }
        }
    }
    out
}

/// `(line number, target)` of every inline link outside fenced code and code spans.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let line = strip_code_spans(line);
        let mut rest = line.as_str();
        while let Some(pos) = rest.find("](") {
            let after = &rest[pos + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].split_whitespace().next().unwrap_or("");
            if !target.is_empty() {
                out.push((i + 1, target.trim_matches(['<', '>']).to_string()));
            }
            rest = &after[end..];
        }
    }
    out
}

fn strip_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
        } else if !in_code {
            out.push(c);
        }
    }
    out
}

/// The anchors GitHub makes of a page's headings (and any explicit `<a id=...>`/`name=`).
pub fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        if let Some(heading) = line.strip_prefix('#') {
            let title = heading.trim_start_matches('#');
            if title.starts_with(' ') {
                let base = slug(title.trim());
                let mut candidate = base.clone();
                let mut n = 1;
                while out.contains(&candidate) {
                    candidate = format!("{base}-{n}");
                    n += 1;
                }
                out.insert(candidate);
            }
        }
        for key in ["id=\"", "name=\""] {
            let mut rest = line;
            while let Some(pos) = rest.find(key) {
                let after = &rest[pos + key.len()..];
                if let Some(end) = after.find('"') {
                    out.insert(after[..end].to_string());
                }
                rest = after;
            }
        }
    }
    out
}

/// GitHub's heading slug: lower case, spaces to `-`, and nothing but letters, digits, `-` and `_`.
pub fn slug(title: &str) -> String {
    title
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_follow_github() {
        assert_eq!(
            slug("HTTP to HTTPS redirect and ACME"),
            "http-to-https-redirect-and-acme"
        );
        assert_eq!(slug("`spawner status --json`"), "spawner-status---json");
        assert_eq!(
            slug("Let's Encrypt in one label"),
            "lets-encrypt-in-one-label"
        );
        assert_eq!(slug("Limits & timeouts"), "limits--timeouts");
    }

    #[test]
    fn repeated_headings_get_numbered_anchors() {
        let a = anchors("# A\n## Notes\n```\n# not a heading\n```\n## Notes\n#nope\n");
        let got: Vec<&str> = a.iter().map(String::as_str).collect();
        assert_eq!(got, ["a", "notes", "notes-1"]);
    }

    #[test]
    fn links_outside_code_are_found() {
        let text =
            "see [a](a.md#x) and `[b](b.md)`\n```\n[c](c.md)\n```\n[d](<d e.md>) [f](http://x)";
        let got: Vec<String> = links(text).into_iter().map(|(_, t)| t).collect();
        assert_eq!(got, ["a.md#x", "d", "http://x"]);
    }

    #[test]
    fn a_block_is_replaced_between_its_markers() {
        let page =
            "a\n<!-- BEGIN GENERATED: x (make docs) -->\nold\n<!-- END GENERATED: x -->\nb\n";
        let new = replace_block(page, "x", "new\n").expect("markers");
        assert_eq!(
            new,
            "a\n<!-- BEGIN GENERATED: x (make docs) -->\nnew\n<!-- END GENERATED: x -->\nb\n"
        );
        assert_eq!(current_block(&new, "x").as_deref(), Some("new\n"));
        assert!(replace_block("a", "x", "")
            .expect_err("no marker")
            .contains("BEGIN GENERATED: x"));
    }

    #[test]
    fn defaults_and_aliases_leave_the_help_for_their_columns() {
        let (rest, d) = take_bracket(
            "Where to listen [default: 0.0.0.0:8443] (alias env: A)",
            "[default: ",
        );
        assert_eq!(d.as_deref(), Some("0.0.0.0:8443"));
        let (rest, a) = take_bracket(&rest, "(alias env: ");
        assert_eq!(a.as_deref(), Some("A"));
        assert_eq!(rest, "Where to listen");
    }
}
