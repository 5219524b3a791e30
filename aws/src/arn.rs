//! Validation of the ARNs and region the sidecar is configured with, so a typo
//! fails at start with one clear line instead of an AccessDenied later.

/// A configuration value that cannot be right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not an ARN of the expected kind.
    #[error("invalid {what} {value:?}: expected {expected}")]
    Arn {
        /// Which setting.
        what: &'static str,
        /// The value given.
        value: String,
        /// The shape expected.
        expected: &'static str,
    },
    /// Not an AWS region name.
    #[error("unknown region {0:?}: expected a region name such as us-east-1 or eu-central-1")]
    Region(String),
}

const PARTITIONS: [&str; 3] = ["aws", "aws-cn", "aws-us-gov"];

/// Checks a region name's shape (`xx-name-N`, `us-gov-west-1`, ...).
pub fn validate_region(region: &str) -> Result<(), ConfigError> {
    let parts: Vec<&str> = region.split('-').collect();
    let ok = parts.len() >= 3
        && parts[0].len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Region(region.to_string()))
    }
}

fn arn_parts(arn: &str) -> Option<[&str; 6]> {
    let mut it = arn.splitn(6, ':');
    let p = [
        it.next()?,
        it.next()?,
        it.next()?,
        it.next()?,
        it.next()?,
        it.next()?,
    ];
    (p[0] == "arn" && PARTITIONS.contains(&p[1])).then_some(p)
}

fn is_account(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// `arn:<partition>:iam::<12 digits>:role/<path/>name`.
pub fn validate_role_arn(arn: &str) -> Result<(), ConfigError> {
    let err = || ConfigError::Arn {
        what: "role ARN",
        value: arn.to_string(),
        expected: "arn:aws:iam::<12-digit account>:role/<name>",
    };
    let p = arn_parts(arn).ok_or_else(err)?;
    let name = p[5].strip_prefix("role/").ok_or_else(err)?;
    if p[2] != "iam"
        || !p[3].is_empty()
        || !is_account(p[4])
        || name.is_empty()
        || name.ends_with('/')
    {
        return Err(err());
    }
    Ok(())
}

/// `arn:<partition>:rolesanywhere:<region>:<12 digits>:<kind>/<id>` for kind
/// `profile` or `trust-anchor`.
pub fn validate_rolesanywhere_arn(arn: &str, kind: &'static str) -> Result<(), ConfigError> {
    let (what, expected) = match kind {
        "profile" => (
            "profile ARN",
            "arn:aws:rolesanywhere:<region>:<account>:profile/<id>",
        ),
        _ => (
            "trust anchor ARN",
            "arn:aws:rolesanywhere:<region>:<account>:trust-anchor/<id>",
        ),
    };
    let err = || ConfigError::Arn {
        what,
        value: arn.to_string(),
        expected,
    };
    let p = arn_parts(arn).ok_or_else(err)?;
    let id = p[5]
        .strip_prefix(kind)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(err)?;
    if p[2] != "rolesanywhere"
        || validate_region(p[3]).is_err()
        || !is_account(p[4])
        || id.is_empty()
    {
        return Err(err());
    }
    Ok(())
}

/// The region inside a Roles Anywhere ARN.
pub fn arn_region(arn: &str) -> Option<&str> {
    arn.split(':').nth(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_real_shapes_and_names_what_is_wrong() {
        assert!(validate_region("us-east-1").is_ok());
        assert!(validate_region("us-gov-west-1").is_ok());
        assert!(validate_region("useast1").is_err());
        assert!(validate_region("US-EAST-1").is_err());
        assert!(validate_role_arn("arn:aws:iam::123456789012:role/app/reader").is_ok());
        assert!(validate_role_arn("arn:aws:iam::123456789012:user/x").is_err());
        assert!(validate_role_arn("arn:aws:iam::12345:role/x").is_err());
        let ta = "arn:aws:rolesanywhere:eu-west-1:123456789012:trust-anchor/abc";
        assert!(validate_rolesanywhere_arn(ta, "trust-anchor").is_ok());
        let err = validate_rolesanywhere_arn(ta, "profile")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("invalid profile ARN") && err.contains("trust-anchor/abc"),
            "{err}"
        );
        assert_eq!(arn_region(ta), Some("eu-west-1"));
    }
}
