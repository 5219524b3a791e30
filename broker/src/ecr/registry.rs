//! ECR registry hosts (`<account>.dkr.ecr.<region>.amazonaws.com[.cn]`): parsing
//! the `attache.dev/ecr-registries` annotation and the regional API endpoints.

use std::collections::BTreeSet;

/// One private ECR registry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Registry {
    /// The host as written in image references, lower case.
    pub host: String,
    /// 12-digit AWS account id.
    pub account: String,
    /// AWS region, e.g. `eu-west-1`.
    pub region: String,
}

/// Why an annotation value is not a list of registries.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// One entry is not a registry host.
    #[error(
        "{entry:?} is not an ECR registry host: {reason} (expected <12-digit account>.dkr.ecr.<region>.amazonaws.com)"
    )]
    Invalid {
        /// The offending entry, as written.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The list names no registry at all.
    #[error("the list is empty (expected comma-separated registry hosts)")]
    Empty,
}

fn valid_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
}

/// Parses one registry host. A scheme (`https://`) or a trailing `/` is
/// tolerated, a path is not.
pub fn parse_registry(entry: &str) -> Result<Registry, RegistryError> {
    let invalid = |reason| RegistryError::Invalid {
        entry: entry.to_string(),
        reason,
    };
    let host = entry.trim();
    let host = host.strip_prefix("https://").unwrap_or(host);
    let host = host.strip_suffix('/').unwrap_or(host).to_ascii_lowercase();
    if host.contains('/') || host.contains(':') {
        return Err(invalid("a registry host has no path, port or scheme"));
    }
    let (rest, cn) = if let Some(r) = host.strip_suffix(".amazonaws.com.cn") {
        (r, true)
    } else if let Some(r) = host.strip_suffix(".amazonaws.com") {
        (r, false)
    } else {
        return Err(invalid(
            "it does not end in .amazonaws.com or .amazonaws.com.cn",
        ));
    };
    let Some((account, rest)) = rest.split_once('.') else {
        return Err(invalid("no account id"));
    };
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("the account id must be 12 digits"));
    }
    let Some(region) = rest.strip_prefix("dkr.ecr.") else {
        return Err(invalid("the account id must be followed by .dkr.ecr."));
    };
    if !valid_region(region) {
        return Err(invalid("the region is not a valid AWS region name"));
    }
    if cn != region.starts_with("cn-") {
        return Err(invalid(
            "China regions use .amazonaws.com.cn and only they do",
        ));
    }
    Ok(Registry {
        account: account.to_string(),
        region: region.to_string(),
        host,
    })
}

/// Parses a comma-separated annotation value into a sorted, de-duplicated
/// list; the first bad entry is named in the error.
pub fn parse_registries(value: &str) -> Result<Vec<Registry>, RegistryError> {
    let mut out = BTreeSet::new();
    for entry in value.split(',') {
        if entry.trim().is_empty() {
            continue;
        }
        out.insert(parse_registry(entry)?);
    }
    if out.is_empty() {
        return Err(RegistryError::Empty);
    }
    Ok(out.into_iter().collect())
}

/// The regions of `registries`, sorted and unique.
pub fn regions(registries: &[Registry]) -> Vec<String> {
    let set: BTreeSet<&str> = registries.iter().map(|r| r.region.as_str()).collect();
    set.into_iter().map(str::to_string).collect()
}

pub use attache_aws::ecr::default_endpoint;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_hosts_parse_with_account_and_region() {
        let r = parse_registry(" 123456789012.dkr.ecr.eu-west-1.amazonaws.com ").unwrap();
        assert_eq!(r.account, "123456789012");
        assert_eq!(r.region, "eu-west-1");
        assert_eq!(r.host, "123456789012.dkr.ecr.eu-west-1.amazonaws.com");
        let cn = parse_registry("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn").unwrap();
        assert_eq!(cn.region, "cn-north-1");
        assert_eq!(
            default_endpoint("cn-north-1"),
            "https://api.ecr.cn-north-1.amazonaws.com.cn"
        );
        assert_eq!(
            default_endpoint("us-east-1"),
            "https://api.ecr.us-east-1.amazonaws.com"
        );
        assert!(parse_registry("https://123456789012.dkr.ecr.us-east-1.amazonaws.com/").is_ok());
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in [
            "12345.dkr.ecr.us-east-1.amazonaws.com",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com.cn",
            "123456789012.dkr.ecr.cn-north-1.amazonaws.com",
            "123456789012.dkr.ecr.useast1.amazonaws.com",
            "123456789012.ecr.us-east-1.amazonaws.com",
            "docker.io",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/repo",
        ] {
            let err = parse_registries(&format!(
                "123456789012.dkr.ecr.us-east-1.amazonaws.com,{bad}"
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains(bad), "{err}");
        }
        assert_eq!(parse_registries(" , "), Err(RegistryError::Empty));
    }

    #[test]
    fn lists_are_sorted_and_deduplicated() {
        let l = parse_registries(
            "123456789012.dkr.ecr.us-east-1.amazonaws.com,210987654321.dkr.ecr.eu-west-1.amazonaws.com,123456789012.DKR.ecr.us-east-1.amazonaws.com",
        )
        .unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(regions(&l), vec!["eu-west-1", "us-east-1"]);
    }
}
