//! PKCS#10 certificate signing requests: parsing, signature check and key policy.

use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
};
use x509_parser::prelude::{FromDer, X509CertificationRequest};
use x509_parser::public_key::PublicKey;

use crate::key::KeyType;

/// The largest CSR accepted, PEM or DER. A P-256 CSR is about 400 bytes and an
/// RSA-4096 one about 1.7 KiB, so anything near this is not a CSR.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// Why a CSR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Larger than [`MAX_CSR_BYTES`].
    #[error("CSR is {size} bytes, larger than the {max}-byte limit")]
    TooLarge {
        /// Size received.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// Not a PEM or DER PKCS#10 request.
    #[error("malformed CSR: {0}")]
    Malformed(String),
    /// The request's self-signature does not verify with its own public key.
    #[error("CSR signature does not verify against the CSR's public key")]
    BadSignature,
    /// RSA key below 2048 bits.
    #[error("CSR public key is RSA-{0}, too weak: at least 2048 bits are required")]
    WeakKey(usize),
    /// A key or signature algorithm attache does not accept.
    #[error(
        "unsupported CSR algorithm: {0} (accepted: ECDSA P-256/P-384, RSA >= 2048 bits, with SHA-256 or stronger)"
    )]
    UnsupportedAlgorithm(String),
}

/// A CSR whose signature verified and whose key passed policy. Only the public
/// key is kept: attache ignores the subject and extensions the CSR asks for.
#[derive(Clone, Debug)]
pub struct VerifiedCsr {
    key_type: KeyType,
    spki_der: Vec<u8>,
    public_key_raw: Vec<u8>,
}

impl VerifiedCsr {
    /// Parses `input` (PEM `CERTIFICATE REQUEST` or raw DER) and verifies it.
    pub fn parse(input: &[u8]) -> Result<Self, CsrError> {
        if input.len() > MAX_CSR_BYTES {
            return Err(CsrError::TooLarge {
                size: input.len(),
                max: MAX_CSR_BYTES,
            });
        }
        let der = if looks_like_pem(input) {
            let block =
                pem::parse(input).map_err(|e| CsrError::Malformed(format!("bad PEM: {e}")))?;
            if block.tag() != "CERTIFICATE REQUEST" && block.tag() != "NEW CERTIFICATE REQUEST" {
                return Err(CsrError::Malformed(format!(
                    "PEM block is {:?}, expected \"CERTIFICATE REQUEST\"",
                    block.tag()
                )));
            }
            block.into_contents()
        } else {
            input.to_vec()
        };
        let (rest, csr) = X509CertificationRequest::from_der(&der)
            .map_err(|e| CsrError::Malformed(format!("not a PKCS#10 request: {e}")))?;
        if !rest.is_empty() {
            return Err(CsrError::Malformed(format!(
                "{} trailing bytes after the request",
                rest.len()
            )));
        }
        let info = &csr.certification_request_info;
        let spki = &info.subject_pki;
        let key_type = key_type_of(spki)?;
        let sig_oid = &csr.signature_algorithm.algorithm;
        let sig_name = x509_parser::oid_registry::format_oid(
            sig_oid,
            &x509_parser::oid_registry::OidRegistry::default().with_all_crypto(),
        );
        let weak_hash = [
            x509_parser::oid_registry::OID_PKCS1_SHA1WITHRSA,
            x509_parser::oid_registry::OID_SHA1_WITH_RSA,
            x509_parser::oid_registry::OID_PKCS1_MD5WITHRSAENC,
        ];
        if weak_hash.contains(sig_oid) {
            return Err(CsrError::UnsupportedAlgorithm(format!(
                "signature algorithm {sig_name} uses a broken hash"
            )));
        }
        csr.verify_signature().map_err(|e| match e {
            x509_parser::error::X509Error::SignatureUnsupportedAlgorithm => {
                CsrError::UnsupportedAlgorithm(format!("signature algorithm {sig_name}"))
            }
            _ => CsrError::BadSignature,
        })?;
        Ok(VerifiedCsr {
            key_type,
            spki_der: spki.raw.to_vec(),
            public_key_raw: spki.subject_public_key.data.to_vec(),
        })
    }

    /// The key type of the requested certificate's public key.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The DER SubjectPublicKeyInfo the certificate will carry.
    pub fn public_key_der(&self) -> &[u8] {
        &self.spki_der
    }
}

impl rcgen::PublicKeyData for VerifiedCsr {
    fn der_bytes(&self) -> &[u8] {
        &self.public_key_raw
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match self.key_type {
            KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            _ => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

fn looks_like_pem(input: &[u8]) -> bool {
    let trimmed = input.iter().skip_while(|b| b.is_ascii_whitespace());
    trimmed.take(10).copied().eq(b"-----BEGIN".iter().copied())
}

/// Classifies a public key and applies attache's key policy to it.
pub(crate) fn key_type_of(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> Result<KeyType, CsrError> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| CsrError::UnsupportedAlgorithm("EC key without a named curve".into()))?;
        if curve == OID_EC_P256 {
            Ok(KeyType::EcdsaP256)
        } else if curve == OID_NIST_EC_P384 {
            Ok(KeyType::EcdsaP384)
        } else {
            Err(CsrError::UnsupportedAlgorithm(format!("EC curve {curve}")))
        }
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => return Err(CsrError::Malformed("RSA public key does not parse".into())),
        };
        KeyType::rsa_from_bits(bits).map_err(|_| CsrError::WeakKey(bits))
    } else {
        Err(CsrError::UnsupportedAlgorithm(format!(
            "public key algorithm {alg}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::PrivateKey;

    #[test]
    fn csr_from_our_own_key_verifies() {
        for k in [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Rsa2048] {
            let key = PrivateKey::generate(k).unwrap();
            let csr =
                VerifiedCsr::parse(key.certificate_signing_request().unwrap().as_bytes()).unwrap();
            assert_eq!(csr.key_type(), k);
            assert_eq!(csr.public_key_der(), key.public_key_der().as_slice());
        }
    }

    #[test]
    fn der_input_is_accepted() {
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let der = pem::parse(key.certificate_signing_request().unwrap())
            .unwrap()
            .into_contents();
        assert!(VerifiedCsr::parse(&der).is_ok());
    }

    #[test]
    fn tampered_signature_is_refused() {
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let mut der = pem::parse(key.certificate_signing_request().unwrap())
            .unwrap()
            .into_contents();
        // Flip a bit inside the CN value "attache-workload" (covered by the signature).
        let pos = der.windows(7).position(|w| w == b"attache").unwrap();
        der[pos] ^= 0x01;
        assert_eq!(
            VerifiedCsr::parse(&der).unwrap_err(),
            CsrError::BadSignature
        );
    }

    #[test]
    fn garbage_oversize_and_wrong_pem_are_refused_by_name() {
        assert!(matches!(
            VerifiedCsr::parse(b"hello"),
            Err(CsrError::Malformed(_))
        ));
        assert!(matches!(
            VerifiedCsr::parse(&vec![b'A'; MAX_CSR_BYTES + 1]),
            Err(CsrError::TooLarge { .. })
        ));
        let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = VerifiedCsr::parse(cert.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("CERTIFICATE REQUEST"), "{err}");
    }
}
