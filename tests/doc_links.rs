//! Every relative link in the Markdown files (README.md, docs/*.md,
//! BENCHMARKS.md, RELEASING.md) reaches a file that exists, relative to the
//! linking file, and every `#anchor` (`path#anchor` or a bare `#anchor`
//! within a file) names a heading of the target file by its GitHub slug.
//! External links (`http://`, `https://`, `mailto:`) are not checked.
//! Links inside code (fenced blocks, code spans) are not links.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The files whose links are checked.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ["README.md", "BENCHMARKS.md", "RELEASING.md"].iter().map(|f| root.join(f)).collect();
    let mut docs: Vec<PathBuf> = fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|e| e.expect("a readable docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The text with fenced code blocks blanked out (their lines kept empty).
fn blank_fences(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut fence: Option<char> = None;
    for line in text.lines() {
        let t = line.trim_start();
        let opens = t.starts_with("```") || t.starts_with("~~~");
        match fence {
            Some(c) if opens && t.starts_with(c) => fence = None,
            Some(_) => {}
            None if opens => fence = t.chars().next(),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The text with fenced code blocks and code spans blanked out (newlines
/// kept, so that what remains keeps its lines).
fn without_code(text: &str) -> String {
    let out = blank_fences(text);
    // Code spans: a run of n backticks up to the next run of exactly n.
    let b: Vec<char> = out.chars().collect();
    let mut res = String::with_capacity(out.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != '`' {
            res.push(b[i]);
            i += 1;
            continue;
        }
        let n = b[i..].iter().take_while(|&&c| c == '`').count();
        let mut j = i + n;
        let mut close = None;
        while j < b.len() {
            if b[j] == '`' {
                let m = b[j..].iter().take_while(|&&c| c == '`').count();
                if m == n {
                    close = Some(j);
                    break;
                }
                j += m;
            } else {
                j += 1;
            }
        }
        match close {
            Some(j) => {
                res.extend(b[i..j + n].iter().map(|&c| if c == '\n' { '\n' } else { ' ' }));
                i = j + n;
            }
            None => {
                res.extend(&b[i..i + n]);
                i += n;
            }
        }
    }
    res
}

/// GitHub's anchor for a heading: lowercase, spaces to `-`, every other
/// character but letters, digits, `-` and `_` removed.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a file's headings (ATX headings outside fenced code, code
/// spans kept: their text is part of the slug; a repeated
/// slug gets `-1`, `-2`, ... as on GitHub).
fn anchors(text: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for line in blank_fences(text).lines() {
        let t = line.trim_start();
        let level = t.chars().take_while(|&c| c == '#').count();
        if (1..=6).contains(&level) && (t.len() == level || t[level..].starts_with(' ')) {
            let title = t[level..].trim().trim_end_matches('#').trim();
            let s = slug(title);
            let n = seen.entry(s.clone()).or_insert(0);
            out.push(if *n == 0 { s } else { format!("{s}-{n}") });
            *n += 1;
        }
    }
    out
}

/// Every link target in the text: inline links `[text](target)` (and
/// images), and reference definitions `[label]: target`.
fn links(text: &str) -> Vec<String> {
    let text = without_code(text);
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let end = after.find([')', '\n']).unwrap_or(after.len());
        let target = after[..end].split_whitespace().next().unwrap_or("");
        let target = target.trim_start_matches('<').trim_end_matches('>');
        out.push(target.to_string());
        rest = &after[end..];
    }
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(close) = t.strip_prefix('[').and_then(|r| r.find("]:")) {
            if let Some(target) = t[close + 3..].split_whitespace().next() {
                out.push(target.trim_start_matches('<').trim_end_matches('>').to_string());
            }
        }
    }
    out
}

fn external(target: &str) -> bool {
    let t = target.to_ascii_lowercase();
    t.starts_with("http://") || t.starts_with("https://") || t.starts_with("mailto:")
}

/// The broken links of `file`, as messages.
fn broken_links(file: &Path, text: &str) -> Vec<String> {
    let mut broken = Vec::new();
    for target in links(text) {
        if external(&target) {
            continue;
        }
        if target.is_empty() {
            broken.push(format!("{}: an empty link", file.display()));
            continue;
        }
        let (path, anchor) = match target.split_once('#') {
            Some((p, a)) => (p, Some(a)),
            None => (target.as_str(), None),
        };
        let dest =
            if path.is_empty() { file.to_path_buf() } else { file.parent().expect("a file in a folder").join(path) };
        if !dest.exists() {
            broken.push(format!("{}: ({target}): {} does not exist", file.display(), dest.display()));
            continue;
        }
        if let Some(anchor) = anchor {
            let dest_text = match fs::read_to_string(&dest) {
                Ok(t) => t,
                Err(e) => {
                    broken.push(format!(
                        "{}: ({target}): cannot read {} for its anchors: {e}",
                        file.display(),
                        dest.display()
                    ));
                    continue;
                }
            };
            let found = anchors(&dest_text);
            if !found.iter().any(|a| a == anchor) {
                broken.push(format!(
                    "{}: ({target}): {} has no heading with the anchor #{anchor} (its anchors: {})",
                    file.display(),
                    dest.display(),
                    found.join(", ")
                ));
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_reaches_a_file_and_heading() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in markdown_files(root) {
        let text = fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        checked += links(&text).iter().filter(|t| !external(t)).count();
        broken.extend(broken_links(&file, &text));
    }
    assert!(checked > 0, "only {checked} relative links found: the link parser is broken");
    assert!(broken.is_empty(), "{} broken links:\n{}", broken.len(), broken.join("\n"));
}

#[test]
fn the_checker_catches_broken_links() {
    let dir = std::env::temp_dir().join(format!("static_call_doc_links_{}", std::process::id()));
    fs::create_dir_all(dir.join("docs")).unwrap();
    fs::write(dir.join("docs/b.md"), "# B\n\n## What `update` does (x86-64)\n\n## B\n").unwrap();
    let a = dir.join("a.md");
    let text = "# Top: one\n\n\
        [ok](docs/b.md) [ok](docs/b.md#what-update-does-x86-64) [ok](docs/b.md#b-1) [ok](#top-one)\n\
        [ok](https://example.com/x) [ok](mailto:a@b.c) `[not a link](nowhere.md)`\n\
        ```text\n[not a link](nowhere.md)\n```\n\
        [bad](docs/missing.md) [bad](docs/b.md#nope) [bad](#nope) [bad\ntext](c.md)\n\
        [ref]: docs/gone.md\n";
    fs::write(&a, text).unwrap();
    let broken = broken_links(&a, text);
    fs::remove_dir_all(&dir).unwrap();
    let targets: Vec<&str> =
        broken.iter().map(|m| m.split(": (").nth(1).unwrap_or(m).split(')').next().unwrap()).collect();
    assert_eq!(targets, ["docs/missing.md", "docs/b.md#nope", "#nope", "c.md", "docs/gone.md"], "{broken:#?}");
}

#[test]
fn slugs_are_githubs() {
    assert_eq!(slug("Hardened processes (W^X) and memory cost"), "hardened-processes-wx-and-memory-cost");
    assert_eq!(slug("What `update` guarantees about running code"), "what-update-guarantees-about-running-code");
    assert_eq!(slug("fork()"), "fork");
    assert_eq!(slug("Exit: when a copy shuts down"), "exit-when-a-copy-shuts-down");
    assert_eq!(slug("snake_case and-dash"), "snake_case-and-dash");
}
