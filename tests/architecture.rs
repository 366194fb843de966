//! The layer order of ARCHITECTURE.md, enforced. The order is read from that
//! file's ```` ```layers ```` block, so the document and this test cannot
//! disagree. Every file of `src/` is read (comments and string literals
//! skipped), and the test fails on:
//! - `sqlx` outside `src/store/` (only the store speaks SQL);
//! - `println!`, `print!` or `io::stdout` outside `src/cli/` (only the CLI
//!   writes to stdout);
//! - a path into a module of a higher layer (`use crate::…`, grouped
//!   `use crate::{a, b::c}`, `crate::x::f()` in code, and `super::` paths
//!   that climb to the crate root);
//! - a circle of imports between top-level modules, even within one layer;
//! - a top-level module the block does not place, or a name it places that
//!   is no module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layers, highest first, as the block lists them.
fn parse_layers(markdown: &str) -> Result<Vec<Vec<String>>, String> {
    let start = markdown.find("```layers\n").ok_or("no ```layers block")? + "```layers\n".len();
    let end = markdown[start..].find("```").ok_or("the ```layers block is not closed")? + start;
    let mut layers = Vec::new();
    let mut seen = BTreeSet::new();
    for line in markdown[start..end].lines() {
        let names: Vec<String> = line.split('#').next().unwrap_or("").split_whitespace().map(str::to_owned).collect();
        for name in &names {
            if !seen.insert(name.clone()) {
                return Err(format!("`{name}` is in two layers"));
            }
        }
        if !names.is_empty() {
            layers.push(names);
        }
    }
    Ok(layers)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Punct(char),
}

/// Rust source as identifiers and punctuation with their line numbers:
/// comments, string, byte-string, raw-string and char literals and numbers
/// are dropped, so text about a module is never taken for a path to it.
fn tokens(text: &str) -> Vec<(Token, usize)> {
    let c: Vec<char> = text.chars().collect();
    let (mut i, mut line, mut out) = (0, 1, Vec::new());
    // Skips a quoted literal opening at `i` (`"` or `'`), escapes included.
    let quoted = |mut i: usize, line: &mut usize, close: char| {
        i += 1;
        while i < c.len() && c[i] != close {
            if c[i] == '\\' {
                i += 1;
            }
            if i < c.len() && c[i] == '\n' {
                *line += 1;
            }
            i += 1;
        }
        i + 1
    };
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(c[i] == '\n');
                    i += 1;
                }
            }
        } else if ch == '"' {
            i = quoted(i, &mut line, '"');
        } else if ch == '\'' {
            // A char literal ('x', '\n', '"'), else a lifetime or label.
            if c.get(i + 1) == Some(&'\\') || c.get(i + 2) == Some(&'\'') {
                i = quoted(i, &mut line, '\'');
            } else {
                i += 1;
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let hashes = c[i..].iter().take_while(|&&h| h == '#').count();
            if matches!(word.as_str(), "r" | "br" | "cr") && c.get(i + hashes) == Some(&'"') {
                // A raw string: ends at `"` followed by as many `#`.
                i += hashes + 1;
                while i < c.len() && !(c[i] == '"' && c[i + 1..].iter().take(hashes).filter(|&&h| h == '#').count() == hashes) {
                    line += usize::from(c[i] == '\n');
                    i += 1;
                }
                i += hashes + 1;
            } else if matches!(word.as_str(), "b" | "c") && c.get(i) == Some(&'"') {
                i = quoted(i, &mut line, '"');
            } else if word == "r" && hashes == 1 {
                i += 1; // a raw identifier follows
            } else {
                out.push((Token::Ident(word), line));
            }
        } else if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_' || c[i] == '.') && !(c[i] == '.' && c.get(i + 1) == Some(&'.')) {
                i += 1;
            }
        } else {
            out.push((Token::Punct(ch), line));
            i += 1;
        }
    }
    out
}

/// A path from one file into another top-level module.
#[derive(Debug)]
struct Reference {
    module: String,
    line: usize,
}

/// The module path of a file under `src/`: `stages/params.rs` is
/// `[stages, params]`, `stages/mod.rs` is `[stages]`, `lib.rs` is `[]`.
fn module_path(path: &str) -> Vec<String> {
    let mut parts: Vec<String> = path.trim_end_matches(".rs").split('/').map(str::to_owned).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

/// Every top-level module a file's paths name, by `crate::` or by `super::`
/// climbing to the crate root (inline `mod x { … }` blocks count as a level).
fn references(path: &str, toks: &[(Token, usize)]) -> Vec<Reference> {
    let ident = |i: usize| match toks.get(i) {
        Some((Token::Ident(s), _)) => Some(s.as_str()),
        _ => None,
    };
    let punct = |i: usize, p: char| matches!(toks.get(i), Some((Token::Punct(q), _)) if *q == p);
    let colons = |i: usize| punct(i, ':') && punct(i + 1, ':');
    // The first names of the items of a group opening at `i` (`{a, b::c, self}`).
    let group = |i: usize| {
        let (mut names, mut depth, mut j, mut item_start) = (Vec::new(), 0, i, true);
        while j < toks.len() {
            match &toks[j].0 {
                Token::Punct('{') => {
                    depth += 1;
                    item_start = depth == 1;
                }
                Token::Punct('}') => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                Token::Punct(',') if depth == 1 => item_start = true,
                Token::Ident(name) if item_start => {
                    names.push((name.clone(), toks[j].1));
                    item_start = false;
                }
                _ => item_start = false,
            }
            j += 1;
        }
        names
    };
    let mut here = module_path(path);
    let file_depth = here.len();
    let mut inline: Vec<usize> = Vec::new(); // brace depth at each inline module's opening
    let (mut depth, mut out, mut i) = (0usize, Vec::new(), 0);
    let named = |names: Vec<(String, usize)>, out: &mut Vec<Reference>| {
        out.extend(names.into_iter().filter(|(n, _)| n != "self").map(|(module, line)| Reference { module, line }))
    };
    while i < toks.len() {
        match &toks[i].0 {
            Token::Punct('{') => depth += 1,
            Token::Punct('}') => {
                depth -= 1;
                if inline.last() == Some(&depth) {
                    inline.pop();
                    here.pop();
                }
            }
            Token::Ident(w) if w == "mod" && punct(i + 2, '{') => {
                if let Some(name) = ident(i + 1) {
                    here.push(name.to_owned());
                    inline.push(depth);
                }
            }
            Token::Ident(w) if w == "crate" && colons(i + 1) && !(i > 0 && punct(i - 1, '$')) && !(i > 1 && colons(i - 2)) => {
                let after = i + 3;
                match ident(after) {
                    Some(name) => named(vec![(name.to_owned(), toks[after].1)], &mut out),
                    None if punct(after, '{') => named(group(after), &mut out),
                    None => {}
                }
            }
            Token::Ident(w) if w == "super" && colons(i + 1) && !(i > 1 && colons(i - 2)) => {
                let mut up = 0;
                let mut j = i;
                while ident(j) == Some("super") && colons(j + 1) {
                    up += 1;
                    j += 3;
                }
                // Leaving the file's own module for the crate root crosses folders.
                if up >= here.len() && file_depth > 0 {
                    match ident(j) {
                        Some(name) => named(vec![(name.to_owned(), toks[j].1)], &mut out),
                        None if punct(j, '{') => named(group(j), &mut out),
                        None => {}
                    }
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Everything wrong with `files` (path under `src/`, text) against `layers`
/// (highest first), one message per problem.
fn check(layers: &[Vec<String>], files: &[(String, String)]) -> Vec<String> {
    let height: BTreeMap<&str, usize> =
        layers.iter().enumerate().flat_map(|(i, names)| names.iter().map(move |n| (n.as_str(), layers.len() - i))).collect();
    let top = |path: &str| path.split('/').next().unwrap_or(path).trim_end_matches(".rs").to_owned();
    let modules: BTreeSet<String> = files.iter().map(|(p, _)| top(p)).filter(|m| m != "lib" && m != "main").collect();
    let mut problems = Vec::new();
    for m in &modules {
        if !height.contains_key(m.as_str()) {
            problems.push(format!("src/{m}: a top-level module that no line of the ```layers block places"));
        }
    }
    for name in height.keys() {
        if !modules.contains(*name) {
            problems.push(format!("```layers places `{name}`, which is no module of src/"));
        }
    }
    let mut edges: BTreeMap<(String, String), (String, usize)> = BTreeMap::new();
    for (path, text) in files {
        let toks = tokens(text);
        let from = top(path);
        for (k, (tok, line)) in toks.iter().enumerate() {
            let Token::Ident(w) = tok else { continue };
            let bang = matches!(toks.get(k + 1), Some((Token::Punct('!'), _)));
            let after_io =
                k >= 3 && toks[k - 3].0 == Token::Ident("io".into()) && toks[k - 2..k].iter().all(|(t, _)| *t == Token::Punct(':'));
            if w == "sqlx" && !path.starts_with("store/") {
                problems.push(format!("src/{path}:{line}: `sqlx` outside src/store/ (only the store speaks SQL)"));
            }
            let prints = ((w == "println" || w == "print") && bang) || (w == "stdout" && after_io);
            if prints && !path.starts_with("cli/") {
                problems.push(format!("src/{path}:{line}: `{w}` outside src/cli/ (only the CLI writes to stdout)"));
            }
        }
        if from == "main" || from == "lib" {
            continue; // the binary's `crate` is not the library's; lib.rs only declares
        }
        for r in references(path, &toks) {
            if r.module == from {
                continue;
            }
            let (Some(&h_from), Some(&h_to)) = (height.get(from.as_str()), height.get(r.module.as_str())) else {
                if modules.contains(&r.module) || !height.contains_key(from.as_str()) {
                    continue; // reported above as unplaced
                }
                problems.push(format!("src/{path}:{}: `crate::{}` names no module the ```layers block places", r.line, r.module));
                continue;
            };
            if h_to > h_from {
                problems
                    .push(format!("src/{path}:{}: `{from}` imports `{}`, a higher layer (ARCHITECTURE.md, ```layers)", r.line, r.module));
            }
            edges.entry((from.clone(), r.module)).or_insert((path.clone(), r.line));
        }
    }
    problems.extend(circles(&edges));
    let mut seen = BTreeSet::new();
    problems.retain(|p| seen.insert(p.clone())); // one message for two paths on one line
    problems
}

/// Each circle of imports between top-level modules, with where each of its
/// arrows is written.
fn circles(edges: &BTreeMap<(String, String), (String, usize)>) -> Vec<String> {
    let reaches = |from: &str, to: &str| {
        let (mut seen, mut stack) = (BTreeSet::new(), vec![from.to_owned()]);
        while let Some(m) = stack.pop() {
            if m == to {
                return true;
            }
            if seen.insert(m.clone()) {
                stack.extend(edges.keys().filter(|(a, _)| *a == m).map(|(_, b)| b.clone()));
            }
        }
        false
    };
    let mut groups: Vec<BTreeSet<String>> = Vec::new();
    for (a, b) in edges.keys() {
        if reaches(b, a) && !groups.iter().any(|g| g.contains(a)) {
            let group = edges.keys().flat_map(|(x, y)| [x, y]).filter(|m| reaches(a, m) && reaches(m, a)).cloned().collect();
            groups.push(group);
        }
    }
    groups
        .iter()
        .map(|g| {
            let arrows: Vec<String> = edges
                .iter()
                .filter(|((a, b), _)| g.contains(a) && g.contains(b))
                .map(|((a, b), (path, line))| format!("{a} -> {b} (src/{path}:{line})"))
                .collect();
            format!("a circle between modules: {}", arrows.join(", "))
        })
        .collect()
}

fn src_files(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            src_files(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
            out.push((rel, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

#[test]
fn src_keeps_the_layer_order_of_architecture_md() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let layers = parse_layers(&std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap()).unwrap();
    let mut files = Vec::new();
    src_files(&root.join("src"), &root.join("src"), &mut files);
    assert!(files.len() > 50, "read {} files of src/", files.len());
    let problems = check(&layers, &files);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// The checker on small made-up trees: each rule fires, and only on code.

fn layers(text: &str) -> Vec<Vec<String>> {
    parse_layers(&format!("# Doc\n\n```layers\n{text}\n```\n")).unwrap()
}

fn tree(files: &[(&str, &str)]) -> Vec<(String, String)> {
    files.iter().map(|(p, t)| (p.to_string(), t.to_string())).collect()
}

const LAYERS: &str = "cli      # top\nstore\nstages pipeline\nbase # ground";

#[test]
fn a_clean_tree_passes() {
    let files = tree(&[
        ("lib.rs", "pub mod cli; pub mod store;"),
        ("cli/mod.rs", "use crate::{store, stages::X};\nfn f() { println!(\"hi\"); }"),
        ("store/mod.rs", "use sqlx::Row;\nuse crate::pipeline::Plan;"),
        ("stages/mod.rs", "use crate::base::f; use super::base; mod tests { use super::*; }"),
        ("pipeline/mod.rs", "use crate::stages::Kind; use self::x::Y;"),
        ("base.rs", "pub fn f() {}"),
    ]);
    assert_eq!(check(&layers(LAYERS), &files), Vec::<String>::new());
}

#[test]
fn sqlx_outside_the_store_fails() {
    let files = tree(&[("stages/mod.rs", "fn f() { let q = sqlx::query(\"SELECT 1\"); }"), ("store/mod.rs", "use sqlx::Any;")]);
    let problems = check(&layers("store\nstages"), &files);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with("src/stages/mod.rs:1: `sqlx`"), "{problems:?}");
}

#[test]
fn printing_outside_the_cli_fails() {
    let files = tree(&[
        ("base.rs", "fn f() {\n    print!(\"x\");\n    eprintln!(\"fine\");\n}"),
        ("store/mod.rs", "fn g() { println!(); }\nfn h() { let _ = std::io::stdout(); }"),
        ("cli/mod.rs", "fn g() { println!(); }"),
    ]);
    let problems = check(&layers("cli\nstore\nbase"), &files);
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].starts_with("src/base.rs:2: `print`"), "{problems:?}");
    assert!(problems[1].starts_with("src/store/mod.rs:1: `println`"), "{problems:?}");
    assert!(problems[2].starts_with("src/store/mod.rs:2: `stdout`"), "{problems:?}");
}

#[test]
fn an_import_of_a_higher_layer_fails_in_every_spelling() {
    for (text, line) in [
        ("use crate::store::Row;", 1),
        ("use crate::{base, store::Row};", 1),
        ("use crate::{\n    base::f,\n    store::{self, Row},\n};", 3),
        ("fn f() -> usize {\n    crate::store::count()\n}", 2),
        ("use super::super::store::Row;", 1),
        ("use super::super::{store, base};", 1),
        ("mod tests {\n    mod inner {\n        use super::super::super::super::store;\n    }\n}", 3),
    ] {
        let files = tree(&[("stages/kind.rs", text), ("store/mod.rs", ""), ("base.rs", "")]);
        let problems = check(&layers("store\nstages\nbase"), &files);
        assert_eq!(problems.len(), 1, "{text}: {problems:?}");
        assert!(problems[0].starts_with(&format!("src/stages/kind.rs:{line}: `stages` imports `store`")), "{text}: {problems:?}");
    }
}

#[test]
fn paths_in_comments_and_strings_are_not_imports() {
    let text = r####"
// use crate::store::Row;
/* crate::store /* nested */ crate::store */
/// [`crate::store::Row`]
fn f() -> (&'static str, char, char, &'static str, &'static [u8]) {
    ("use crate::store; println!()", '"', '\'', r#"crate::store "quoted" sqlx"#, b"crate::store")
}
mod tests { use super::*; use super::super::base; }
"####;
    let files = tree(&[("stages/mod.rs", text), ("store/mod.rs", ""), ("base.rs", "")]);
    assert_eq!(check(&layers("store\nstages\nbase"), &files), Vec::<String>::new());
}

#[test]
fn a_circle_between_modules_fails_even_within_one_layer() {
    let files = tree(&[
        ("stages/params.rs", "use crate::pipeline::diag::shorten;"),
        ("pipeline/mod.rs", "use crate::stages::Kind;"),
        ("base.rs", ""),
    ]);
    let problems = check(&layers("stages pipeline\nbase"), &files);
    assert_eq!(
        problems,
        vec!["a circle between modules: pipeline -> stages (src/pipeline/mod.rs:1), stages -> pipeline (src/stages/params.rs:1)"]
    );
    // Across layers, the arrow that runs up is reported as well.
    assert_eq!(check(&layers("pipeline\nstages\nbase"), &files).len(), 2);
}

#[test]
fn every_module_is_placed_once_and_every_placed_name_exists() {
    let files = tree(&[("lib.rs", ""), ("main.rs", "fn main() { println!(); }"), ("store/mod.rs", ""), ("extra.rs", "")]);
    let problems = check(&layers("store\nghost"), &files);
    assert!(problems.iter().any(|p| p.starts_with("src/extra: a top-level module that no line")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("places `ghost`, which is no module")), "{problems:?}");
    assert!(problems.iter().any(|p| p.starts_with("src/main.rs:1: `println`")), "{problems:?}");
    assert_eq!(parse_layers("```layers\na b\nc a\n```"), Err("`a` is in two layers".to_owned()));
    assert!(parse_layers("no block here").is_err());
}
