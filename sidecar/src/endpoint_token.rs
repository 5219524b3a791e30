//! The endpoint's authorization token: 256 random bits in a file that the
//! app's SDK reads through `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`.

use std::path::Path;

use zeroize::Zeroizing;

/// Why the token could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EndpointTokenError {
    /// The file exists but cannot be read, or is empty.
    #[error("cannot use token file {path}: {reason}")]
    Unusable {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Reads the token in `path`, or, when the file is absent, writes a fresh one
/// (64 hex characters, mode 0644 so app containers running as another user can
/// read it from the shared in-memory volume) and returns it.
pub fn load_or_create(path: &Path) -> Result<Zeroizing<String>, EndpointTokenError> {
    let err = |reason: String| EndpointTokenError::Unusable {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = Zeroizing::new(text.trim().to_string());
            if token.is_empty() {
                return Err(err("file is empty".into()));
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = Zeroizing::new([0u8; 32]);
            aws_lc_rs::rand::fill(bytes.as_mut()).map_err(|_| err("no randomness".into()))?;
            let token = Zeroizing::new(hex::encode(bytes.as_ref()));
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            }
            attache_pki::files::write_atomic(path, token.as_bytes(), 0o644, false)
                .map_err(|e| err(e.to_string()))?;
            Ok(token)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/token");
        let a = load_or_create(&p).unwrap();
        assert_eq!(a.len(), 64);
        let b = load_or_create(&p).unwrap();
        assert_eq!(*a, *b);
        std::fs::write(&p, "\n").unwrap();
        assert!(
            load_or_create(&p)
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
    }
}
