//! Every annotation, label and environment variable attache defines is
//! documented in docs/reference.md (the flags have their own test in the
//! broker and sidecar crates).

use std::path::Path;

/// The string literals of `api/src` that are user-visible names.
fn names() -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for literal in text.split('"').skip(1).step_by(2) {
            if literal.starts_with("attache.dev/") || literal.starts_with("ATTACHE_") {
                names.push(literal.to_string());
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

#[test]
fn every_annotation_and_env_var_is_in_the_reference() {
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/reference.md");
    let reference = std::fs::read_to_string(reference).unwrap();
    let names = names();
    assert!(
        names.iter().any(|n| n == attache_api::names::ANN_IMDS)
            && names.iter().any(|n| n == attache_api::env::IMDS),
        "the scan finds the names: {names:?}"
    );
    let missing: Vec<_> = names
        .iter()
        .filter(|n| !reference.contains(&format!("`{n}`")))
        .collect();
    assert!(missing.is_empty(), "docs/reference.md lacks {missing:?}");
}
