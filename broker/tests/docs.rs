//! Every flag of every broker command is documented in docs/reference.md.

use std::process::Command;

#[test]
fn every_flag_is_in_the_reference() {
    let reference =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/reference.md"))
            .unwrap();
    for cmd in [
        &["run"][..],
        &["ecr-controller"],
        &["aws-policy"],
        &["ca", "init"],
        &["ca", "issue"],
        &["ca", "show"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_attache-broker"))
            .args(cmd)
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        let flags: Vec<&str> = help
            .split_whitespace()
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-'))
            .filter(|w| *w != "--help" && *w != "--version")
            .collect();
        assert!(!flags.is_empty(), "{help}");
        for f in flags {
            assert!(
                reference.contains(&format!("`{f}`")),
                "attache-broker {} {f} is not documented in docs/reference.md",
                cmd.join(" ")
            );
        }
    }
}
