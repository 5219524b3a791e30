//! Signing AWS requests with a certificate's private key: IAM Roles Anywhere's
//! `AWS4-X509-ECDSA-SHA256` and `AWS4-X509-RSA-SHA256` algorithms.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use time::OffsetDateTime;

use crate::cert::{CertError, CertificateInfo};
use crate::key::{KeyError, PrivateKey};
use crate::sigv4::{self, RequestParts, SigV4Error};

/// `AWS4-X509-ECDSA-SHA256`: ECDSA (P-256 or P-384) over SHA-256, DER signature.
pub const ALGORITHM_ECDSA: &str = "AWS4-X509-ECDSA-SHA256";
/// `AWS4-X509-RSA-SHA256`: RSA PKCS#1 v1.5 over SHA-256.
pub const ALGORITHM_RSA: &str = "AWS4-X509-RSA-SHA256";
/// The signing name of IAM Roles Anywhere.
pub const SERVICE_ROLESANYWHERE: &str = "rolesanywhere";

/// Headers never signed (as AWS's own credential helper does).
const UNSIGNED_HEADERS: [&str; 3] = ["authorization", "user-agent", "x-amzn-trace-id"];

/// Why a request could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// The certificate could not be read.
    #[error(transparent)]
    Certificate(#[from] CertError),
    /// The key could not sign.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Canonicalisation failed.
    #[error(transparent)]
    SigV4(#[from] SigV4Error),
    /// The private key is not the one the certificate certifies.
    #[error("private key does not match the certificate's public key")]
    KeyMismatch,
}

/// A certificate, its chain and its private key, ready to sign requests.
/// `Debug` shows the certificate's serial and subject, never the key.
pub struct X509Signer {
    cert_der: Vec<u8>,
    chain_der: Vec<Vec<u8>>,
    /// `X-Amz-X509` and `X-Amz-X509-Chain` values, encoded once.
    cert_b64: String,
    chain_b64: Option<String>,
    info: CertificateInfo,
    key: PrivateKey,
}

impl std::fmt::Debug for X509Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.info
            .debug_as(f, "X509Signer")
            .field("chain_len", &self.chain_der.len())
            .field("key", &self.key)
            .finish()
    }
}

/// The headers a signed request must carry, in the order they were produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedHeaders {
    /// `(name, value)` pairs to add: `Host`, `X-Amz-Date`, `X-Amz-X509`,
    /// optionally `X-Amz-X509-Chain`, then `Authorization`.
    pub headers: Vec<(String, String)>,
}

impl SignedHeaders {
    /// The value of a header by case-insensitive name.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl X509Signer {
    /// Pairs a certificate (DER) and its intermediates (DER, leaf's issuer first)
    /// with the private key, checking that the key belongs to the certificate.
    pub fn new(
        cert_der: Vec<u8>,
        chain_der: Vec<Vec<u8>>,
        key: PrivateKey,
    ) -> Result<Self, SigningError> {
        let info = CertificateInfo::from_der(&cert_der)?;
        if info.public_key_der != key.public_key_der() {
            return Err(SigningError::KeyMismatch);
        }
        for c in &chain_der {
            CertificateInfo::from_der(c)?;
        }
        let cert_b64 = B64.encode(&cert_der);
        let chain_b64 = (!chain_der.is_empty()).then(|| {
            chain_der
                .iter()
                .map(|c| B64.encode(c))
                .collect::<Vec<_>>()
                .join(",")
        });
        Ok(X509Signer {
            cert_der,
            chain_der,
            cert_b64,
            chain_b64,
            info,
            key,
        })
    }

    /// Facts about the signing certificate.
    pub fn certificate(&self) -> &CertificateInfo {
        &self.info
    }

    /// The signing certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The algorithm name this key signs with.
    pub fn algorithm(&self) -> &'static str {
        if self.key.key_type().is_rsa() {
            ALGORITHM_RSA
        } else {
            ALGORITHM_ECDSA
        }
    }

    /// Signs a request to `host` for `service` in `region` at `now`.
    /// `headers` are the request's other headers (e.g. `Content-Type`); every
    /// one of them is signed, as AWS's credential helper does, except
    /// `Authorization`, `User-Agent` and `X-Amzn-Trace-Id`. `host` must be what
    /// the HTTP client sends as `Host` (with `:port` when not the default).
    #[allow(clippy::too_many_arguments)]
    pub fn sign(
        &self,
        method: &str,
        host: &str,
        path: &str,
        query: &str,
        headers: &[(String, String)],
        body: &[u8],
        region: &str,
        service: &str,
        now: OffsetDateTime,
    ) -> Result<SignedHeaders, SigningError> {
        let amz_date = sigv4::format_amz_date(now);
        let mut added = vec![
            ("Host".to_string(), host.to_string()),
            ("X-Amz-Date".to_string(), amz_date.clone()),
            ("X-Amz-X509".to_string(), self.cert_b64.clone()),
        ];
        if let Some(chain) = &self.chain_b64 {
            added.push(("X-Amz-X509-Chain".to_string(), chain.clone()));
        }
        // The caller's headers, then ours (moved in, not copied: X-Amz-X509 is large).
        let mut all: Vec<(String, String)> = headers
            .iter()
            .filter(|(k, _)| !added.iter().any(|(a, _)| a.eq_ignore_ascii_case(k)))
            .cloned()
            .collect();
        let ours = all.len();
        all.append(&mut added);
        let signed: Vec<String> = all
            .iter()
            .map(|(k, _)| k.to_ascii_lowercase())
            .filter(|k| !UNSIGNED_HEADERS.contains(&k.as_str()))
            .collect();
        let payload_hash = sigv4::sha256_hex(body);
        let parts = RequestParts {
            method,
            path,
            query,
            headers: &all,
            payload_hash: &payload_hash,
        };
        let (canonical, signed_list) = sigv4::canonical_request(&parts, &signed)?;
        let scope = sigv4::credential_scope(&amz_date, region, service);
        let to_sign = sigv4::string_to_sign(self.algorithm(), &amz_date, &scope, &canonical);
        let signature = hex::encode(self.key.sign_sha256(to_sign.as_bytes())?);
        let mut added = all.split_off(ours);
        added.push((
            "Authorization".to_string(),
            sigv4::authorization_header(
                self.algorithm(),
                &self.info.serial,
                &scope,
                &signed_list,
                &signature,
            ),
        ));
        Ok(SignedHeaders { headers: added })
    }
}
