//! Keeping one profile of an AWS shared credentials file fresh, for tools that
//! read only that file. Other profiles and comments are kept as they are.

use std::path::Path;

use zeroize::Zeroizing;

use attache_aws::credentials::Credentials;

/// Returns `existing` with profile `profile` set to `creds` (its other keys,
/// other sections and comments untouched, byte for byte, line endings
/// included; the section is added if missing). Editing twice equals editing
/// once.
pub fn set_profile(existing: &str, profile: &str, creds: &Credentials) -> Zeroizing<String> {
    let keys = [
        ("aws_access_key_id", creds.access_key_id.as_str()),
        ("aws_secret_access_key", creds.secret_access_key.as_str()),
        ("aws_session_token", creds.session_token.as_str()),
    ];
    // Lines attache writes end like the file's first line (CRLF files stay
    // CRLF), also when that line is the file's last and lacks its `\n`.
    let first = existing.split('\n').next().unwrap_or("");
    let eol = if first.ends_with('\r') { "\r\n" } else { "\n" };
    let mut out = Zeroizing::new(String::with_capacity(existing.len() + 1024));
    let mut in_section = false;
    let mut found = false;
    let mut written = false;
    let write_keys = |out: &mut String| {
        for (k, v) in keys {
            out.push_str(&format!("{k} = {v}{eol}"));
        }
    };
    // Each line is copied with its own ending, so stray `\r`s survive as they
    // are; an unterminated last line is ended (a `\r` it ends with already
    // begins a CRLF, so editing twice gives what editing once gave).
    let keep = |out: &mut String, raw: &str| {
        out.push_str(raw);
        if raw.ends_with('\r') && !raw.ends_with('\n') {
            out.push('\n');
        } else if !raw.ends_with('\n') {
            out.push_str(eol);
        }
    };
    for raw in existing.split_inclusive('\n') {
        let trimmed = raw.trim();
        if trimmed.starts_with('[') && trimmed.ends_with(']') {
            if in_section && !written {
                write_keys(&mut out);
                written = true;
            }
            in_section = trimmed[1..trimmed.len() - 1].trim() == profile;
            found |= in_section;
            keep(&mut out, raw);
            continue;
        }
        if in_section {
            let key = trimmed.split('=').next().unwrap_or("").trim();
            if keys.iter().any(|(k, _)| *k == key) {
                continue;
            }
        }
        keep(&mut out, raw);
    }
    if in_section && !written {
        write_keys(&mut out);
    }
    if !found {
        if !out.is_empty() && !out.ends_with(&format!("{eol}{eol}")) {
            out.push_str(eol);
        }
        out.push_str(&format!("[{profile}]{eol}"));
        write_keys(&mut out);
    }
    out
}

/// Writes `creds` into `profile` of the credentials file at `path`, atomically
/// and with mode 0600.
pub fn update_file(path: &Path, profile: &str, creds: &Credentials) -> std::io::Result<()> {
    let existing = match std::fs::read_to_string(path) {
        Ok(s) => Zeroizing::new(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Zeroizing::new(String::new()),
        Err(e) => return Err(e),
    };
    let text = set_profile(&existing, profile, creds);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    attache_pki::files::write_atomic(path, text.as_bytes(), 0o600, true)
        .map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_the_named_profile() {
        let creds = attache_aws::credentials::sample(
            time::OffsetDateTime::now_utc(),
            time::Duration::hours(1),
        );
        let before = "# keep me\n[default]\naws_access_key_id = OLD\nregion = eu-west-1\naws_session_token = OLDTOKEN\n\n[other]\naws_access_key_id = KEEP\n";
        let after = set_profile(before, "default", &creds);
        assert!(after.contains("# keep me"));
        assert!(after.contains("region = eu-west-1"));
        assert!(after.contains("[other]\naws_access_key_id = KEEP"));
        assert!(!after.contains("OLD"));
        assert!(after.contains("aws_access_key_id = ASIAEXAMPLE"));
        assert_eq!(after.matches("aws_session_token").count(), 1);
        let added = set_profile(&after, "attache", &creds);
        assert!(added.contains("[attache]\naws_access_key_id = ASIAEXAMPLE"));
        assert!(added.contains("[other]\naws_access_key_id = KEEP"));
        assert_eq!(set_profile("", "p", &creds).lines().next(), Some("[p]"));
    }

    /// Found by fuzzing (credentials_file target): a line ending in `\r\r\n`
    /// lost one `\r` per edit, so editing twice differed from editing once.
    /// Lines are now copied with their own endings, and CRLF files stay CRLF.
    #[test]
    fn odd_line_endings_are_kept_and_editing_is_idempotent() {
        let creds = attache_aws::credentials::sample(
            time::OffsetDateTime::now_utc(),
            time::Duration::hours(1),
        );
        for before in [
            "[other]\r\nk = v\r\r\n\r\n[default]\r\naws_access_key_id = OLD\r\n",
            "[a]\nx = 1\r\r\n[b]\ny = 2\r",
            "no newline at the end",
            // Found by fuzzing too: a one-line file ending in a lone `\r`
            // became CRLF on the first edit and LF-plus-CRLF on the second.
            "[\0t\0eep mlt];\0comm\r",
            "# keep;  me\r\n[dcomefaum",
        ] {
            let once = set_profile(before, "default", &creds);
            assert_eq!(*set_profile(&once, "default", &creds), *once, "{before:?}");
            for line in before.split_inclusive('\n') {
                if !line.contains("aws_access_key_id") && line.ends_with('\n') {
                    assert!(once.contains(line), "{line:?} not kept in {once:?}");
                }
            }
        }
        let crlf = set_profile("[default]\r\nregion = x\r\n", "default", &creds);
        assert!(!crlf.replace("\r\n", "").contains('\n'), "{crlf:?}");
    }
}
