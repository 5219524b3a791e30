//! Properties of the sidecar's parsers and refresh schedule: durations and
//! ARNs round-trip through their display form, and the refresh time of any
//! credentials under any settings, spread at random or not, lies after a
//! quarter of their lifetime and before they expire.

use std::time::Duration;

use attache_aws::arn::{
    arn_region, validate_region, validate_role_arn, validate_rolesanywhere_arn,
};
use attache_aws::cache::RefreshPolicy;
use attache_sidecar::cli::{Cli, Command};
use clap::Parser as _;
use proptest::prelude::*;
use time::OffsetDateTime;

fn serve_with(flag: &str, value: &str) -> Result<attache_sidecar::cli::ServeArgs, clap::Error> {
    let cli = Cli::try_parse_from([
        "attache-sidecar",
        "serve",
        "--profile-arn",
        "arn:aws:rolesanywhere:eu-west-1:123456789012:profile/p",
        "--role-arn",
        "arn:aws:iam::123456789012:role/r",
        "--trust-anchor-arn",
        "arn:aws:rolesanywhere:eu-west-1:123456789012:trust-anchor/t",
        flag,
        value,
    ])?;
    match cli.command {
        Command::Serve(s) => Ok(s),
        _ => unreachable!("parsed the serve command"),
    }
}

fn region() -> impl Strategy<Value = String> {
    (
        "[a-z]{2}",
        prop::collection::vec("[a-z]{1,9}", 1..3),
        1..20u32,
    )
        .prop_map(|(cc, words, n)| format!("{cc}-{}-{n}", words.join("-")))
}

fn partition() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("aws"), Just("aws-cn"), Just("aws-us-gov")]
}

proptest! {
    /// Every duration flag reads back what `humantime` displays.
    #[test]
    fn durations_round_trip_through_their_display_form(
        secs in 0u64..(200 * 365 * 24 * 3600),
        nanos in 0u32..1_000_000_000,
    ) {
        let d = Duration::new(secs, nanos);
        let shown = humantime::format_duration(d).to_string();
        let args = serve_with("--refresh-before", &shown).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(args.refresh_before, d, "{}", shown);
        let args = serve_with("--request-timeout", &shown).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(args.source.request_timeout, d, "{}", shown);
    }

    /// A role ARN built from valid parts validates; one with a bad account does not.
    #[test]
    fn role_arns_round_trip(
        partition in partition(),
        account in "[0-9]{12}",
        path in prop::collection::vec("[A-Za-z0-9+=,.@_-]{1,8}", 0..3),
        name in "[A-Za-z0-9+=,.@_-]{1,64}",
        short in "[0-9]{1,11}",
    ) {
        let path: String = path.iter().map(|p| format!("{p}/")).collect();
        let arn = format!("arn:{partition}:iam::{account}:role/{path}{name}");
        prop_assert!(validate_role_arn(&arn).is_ok(), "{}", arn);
        let bad = format!("arn:{partition}:iam::{short}:role/{path}{name}");
        prop_assert!(validate_role_arn(&bad).is_err(), "{}", bad);
    }

    /// A Roles Anywhere ARN built from valid parts validates and gives its region back.
    #[test]
    fn rolesanywhere_arns_round_trip(
        partition in partition(),
        region in region(),
        account in "[0-9]{12}",
        id in "[a-f0-9-]{1,36}",
        profile in any::<bool>(),
    ) {
        prop_assert!(validate_region(&region).is_ok(), "{}", region);
        let kind = if profile { "profile" } else { "trust-anchor" };
        let other = if profile { "trust-anchor" } else { "profile" };
        let arn = format!("arn:{partition}:rolesanywhere:{region}:{account}:{kind}/{id}");
        prop_assert!(validate_rolesanywhere_arn(&arn, kind).is_ok(), "{}", arn);
        prop_assert!(validate_rolesanywhere_arn(&arn, other).is_err(), "{}", arn);
        prop_assert_eq!(arn_region(&arn), Some(region.as_str()));
    }

    /// For any lifetime and any settings, credentials are refreshed after a
    /// quarter of their lifetime and before they expire.
    #[test]
    fn refresh_lies_after_a_quarter_of_the_lifetime_and_before_expiry(
        issued in -2_000_000_000i64..8_000_000_000,
        issued_nanos in 0u32..1_000_000_000,
        lifetime_secs in 1i64..(100 * 365 * 24 * 3600),
        fraction in prop_oneof![0.0..=1.0f64, any::<f64>()],
        before_secs in prop_oneof![0u64..100_000, any::<u64>()],
        before_nanos in 0u32..1_000_000_000,
        spread in prop_oneof![0.0..=0.5f64, any::<f64>()],
        unit in prop_oneof![0.0..1.0f64, any::<f64>()],
    ) {
        let issued_at = OffsetDateTime::from_unix_timestamp(issued).unwrap()
            + time::Duration::nanoseconds(i64::from(issued_nanos));
        let lifetime = time::Duration::seconds(lifetime_secs);
        let expiration = issued_at + lifetime;
        let policy = RefreshPolicy {
            fraction,
            min_before_expiry: Duration::new(before_secs, before_nanos),
            spread,
            ..RefreshPolicy::default()
        };
        let at = policy.refresh_at(issued_at, expiration);
        prop_assert!(at >= issued_at + lifetime / 4, "{at} is before a quarter of the lifetime");
        prop_assert!(at < expiration, "{at} is not before expiry {expiration}");
        // Spread at random (what the refresh task does), the same holds.
        let spread_at = policy.spread_refresh_at(issued_at, expiration, unit);
        prop_assert!(spread_at >= issued_at + lifetime / 4, "spread {spread_at} is before a quarter of the lifetime");
        prop_assert!(spread_at < expiration, "spread {spread_at} is not before expiry {expiration}");
    }
}
