//! The documentation kept honest: the README stays a newcomer's page
//! (under 350 lines, nothing linked outside the repository), every
//! relative link in it and in docs/ resolves to a file and, with an
//! anchor, to a heading of that file, and its test command is the one CI
//! runs.

use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The markdown files checked: the README, docs/, the Kubernetes notes.
fn pages() -> Vec<PathBuf> {
    let root = Path::new(ROOT);
    let mut pages = vec![
        root.join("README.md"),
        root.join("example/kubernetes/README.md"),
    ];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// Every `[text](target)` link outside code blocks and code spans.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Drop code spans: `[x](y)` inside backticks is not a link.
        let mut plain = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                plain.push_str(part);
            }
        }
        let mut rest = plain.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, punctuation dropped but `-`
/// and `_`, spaces as `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.push(slug(line.trim_start_matches('#')));
        }
    }
    out
}

#[test]
fn the_readme_is_short_and_links_nothing_outside_the_repository() {
    let readme = read(&Path::new(ROOT).join("README.md"));
    let lines = readme.lines().count();
    assert!(
        lines < 350,
        "README.md has {lines} lines: move details to docs/"
    );
    for link in links(&readme) {
        assert!(
            !link.contains("://") && !link.starts_with("mailto:"),
            "README.md links outside the repository: {link}"
        );
    }
}

#[test]
fn every_relative_link_resolves_to_a_file_and_a_heading() {
    let mut checked = 0;
    for page in pages() {
        let text = read(&page);
        let dir = page.parent().expect("a directory");
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (file, anchor) = match link.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (link.as_str(), None),
            };
            let target = if file.is_empty() {
                page.clone()
            } else {
                dir.join(file)
            };
            assert!(
                target.exists(),
                "{}: the link {link} names {}, which does not exist",
                page.display(),
                target.display()
            );
            if let Some(anchor) = anchor {
                let headings = anchors(&read(&target));
                assert!(
                    headings.iter().any(|h| h == anchor),
                    "{}: the link {link} names no heading of {} (it has {headings:?})",
                    page.display(),
                    target.display()
                );
            }
            checked += 1;
        }
    }
    assert!(
        checked > 10,
        "only {checked} links found: is the parser broken?"
    );
}

#[test]
fn the_readme_test_command_is_the_one_ci_runs() {
    let readme = read(&Path::new(ROOT).join("README.md"));
    let ci = read(&Path::new(ROOT).join(".ci/run"));
    let command = readme
        .lines()
        .find(|l| l.contains("# the test command"))
        .and_then(|l| l.split('#').next())
        .map(str::trim)
        .expect("the README's quick start names the test command");
    assert!(
        ci.lines().any(|l| l.trim() == command),
        ".ci/run does not run the README's test command {command:?}"
    );
}
