//! The server's modules form layers: each uses only the ones listed before it. A reference
//! upward (`crate::control` from `peer`, say) fails this test, naming the file and line, so the
//! drawing in ARCHITECTURE.md stays true.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bottom to top. Modules on one line may not use each other either: each line is one layer
/// of leaves that need nothing but the standard library and other crates.
const LAYERS: &[&[&str]] = &[
    &["error", "stats", "env", "units", "drain"],
    &["access"],
    &["origin"],
    &["cache"],
    &["cluster"],
    &["service"],
    &["peer"],
    &["node"],
    &["transport"],
    &["metrics"],
    &["admin"],
    &["control", "s3"],
    &["config"],
    &["listen"],
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
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

/// The top-level module a source file belongs to (`peer` for `src/peer/chain.rs`); `None` for
/// the crate root and the binaries.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.trim_end_matches(".rs").to_string();
    (name != "lib" && name != "main" && name != "bin").then_some(name)
}

/// `crate::NAME` references outside comments: `(line, NAME)`.
fn references(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push((n + 1, name));
            }
            rest = after;
        }
    }
    out
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let Some(mine) = rank(&module) else {
            wrong.push(format!(
                "{}: module `{module}` is in no layer; add it to LAYERS (and ARCHITECTURE.md)",
                file.display()
            ));
            continue;
        };
        *seen.entry(module.clone()).or_default() += 1;
        let text = std::fs::read_to_string(file).unwrap();
        for (line, used) in references(&text) {
            if used == module {
                continue;
            }
            match rank(&used) {
                Some(theirs) if theirs < mine => {}
                Some(_) => wrong.push(format!(
                    "{}:{line}: `{module}` uses `crate::{used}`, which is not below it",
                    file.display()
                )),
                None => wrong.push(format!(
                    "{}:{line}: `crate::{used}` is in no layer",
                    file.display()
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
    // Every layer names modules that exist, so the list cannot rot.
    for module in LAYERS.iter().flat_map(|l| l.iter()) {
        assert!(
            seen.contains_key(*module),
            "LAYERS names `{module}`, which has no source file"
        );
    }
}

#[test]
fn references_in_comments_are_not_uses() {
    let refs = references("use crate::cache::Block; // see crate::control\n/// crate::peer\n");
    assert_eq!(refs, [(1, "cache".to_string())]);
}
