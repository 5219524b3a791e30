//! Every flag the sidecar accepts is documented in docs/reference.md.

#[test]
fn every_flag_is_in_the_reference() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_attache-sidecar"));
    let checked = attache_testkit::assert_every_flag_documented(bin, "attache-sidecar");
    for cmd in ["serve", "credential-process", "update", "probe"] {
        assert!(
            checked.iter().any(|c| c == cmd),
            "{cmd} not checked: {checked:?}"
        );
    }
}
