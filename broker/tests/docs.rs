//! Every flag of every broker command is documented in docs/reference.md.

#[test]
fn every_flag_is_in_the_reference() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_attache-broker"));
    let checked = attache_testkit::assert_every_flag_documented(bin, "attache-broker");
    for cmd in [
        "run",
        "ecr-controller",
        "aws-policy",
        "ca init",
        "ca issue",
        "ca show",
        "ca crl",
        "ca revoke",
    ] {
        assert!(
            checked.iter().any(|c| c == cmd),
            "{cmd} not checked: {checked:?}"
        );
    }
}
