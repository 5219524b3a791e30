//! The credentials-file editor `attache-sidecar update` runs on a file users
//! edit (INI with comments, odd line endings, duplicate sections, huge files).
//! Promise: no panic; the profile ends up with exactly one of each key, with
//! the new values; every other line is kept byte for byte, in order; editing
//! twice equals editing once.
#![no_main]

use attache_sidecar::update::set_profile;
use libfuzzer_sys::fuzz_target;

const KEYS: [&str; 3] = [
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
];

fn header(line: &str) -> Option<&str> {
    let t = line.trim();
    (t.starts_with('[') && t.ends_with(']') && t.len() >= 2).then(|| t[1..t.len() - 1].trim())
}

/// Lines outside `profile`'s sections, and the key lines inside them.
fn split<'a>(text: &'a str, profile: &str) -> (Vec<&'a str>, Vec<&'a str>) {
    let (mut other, mut keys) = (Vec::new(), Vec::new());
    let mut inside = false;
    // Lines without their `\n` (a `\r` before it is content the editor keeps).
    for line in text
        .split_inclusive('\n')
        .map(|l| l.strip_suffix('\n').unwrap_or(l))
    {
        if let Some(name) = header(line) {
            inside = name == profile;
            if !inside {
                other.push(line);
            }
            continue;
        }
        let key = line.trim().split('=').next().unwrap_or("").trim();
        if inside && KEYS.contains(&key) {
            keys.push(line.strip_suffix('\r').unwrap_or(line));
        } else if !inside {
            other.push(line);
        }
    }
    (other, keys)
}

fuzz_target!(|data: &[u8]| {
    let Ok(existing) = std::str::from_utf8(data) else {
        return;
    };
    // The editor ends an unterminated last line: a `\r` it ends with becomes
    // a CRLF, otherwise it gets the first line's ending.
    let first = existing.split('\n').next().unwrap_or("");
    let eol = if first.ends_with('\r') { "\r\n" } else { "\n" };
    let terminated = if existing.is_empty() || existing.ends_with('\n') {
        existing.to_string()
    } else if existing.ends_with('\r') {
        format!("{existing}\n")
    } else {
        format!("{existing}{eol}")
    };
    let creds = attache_fuzz::credentials();
    for profile in ["default", "attache"] {
        let out = set_profile(existing, profile, &creds);
        let again = set_profile(&out, profile, &creds);
        assert_eq!(*again, *out, "editing twice differs from once");
        let (other_before, _) = split(&terminated, profile);
        let (other_after, keys) = split(&out, profile);
        let kept: Vec<&str> = other_after
            .iter()
            .copied()
            .filter(|l| !l.is_empty() && *l != "\r")
            .collect();
        let before: Vec<&str> = other_before
            .iter()
            .copied()
            .filter(|l| !l.is_empty() && *l != "\r")
            .collect();
        assert_eq!(kept, before, "lines outside the profile changed");
        let want = [
            format!("aws_access_key_id = {}", creds.access_key_id),
            format!(
                "aws_secret_access_key = {}",
                creds.secret_access_key.as_str()
            ),
            format!("aws_session_token = {}", creds.session_token.as_str()),
        ];
        assert_eq!(
            keys, want,
            "the profile's keys are not exactly the new ones"
        );
    }
});
