//! Private keys: generation, PEM import/export, and raw signing for AWS requests.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair, RSA_PKCS1_SHA256,
    RsaKeyPair,
};
use p384::ecdsa::signature::hazmat::PrehashSigner;
use p384::pkcs8::DecodePrivateKey;
use rcgen::{PublicKeyData, SignatureAlgorithm, SigningKey};
use zeroize::Zeroizing;

/// Why a key could not be generated, imported or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key type name is not one attache supports.
    #[error(
        "unknown key type {0:?}: expected one of ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096"
    )]
    UnknownKeyType(String),
    /// The PEM text holds no private key attache can read.
    #[error("private key is not valid PEM: {0}")]
    Pem(String),
    /// The PEM block is a private key of a kind or curve attache does not accept.
    #[error(
        "unsupported private key ({0}); expected an ECDSA P-256/P-384 or RSA >= 2048-bit key in PKCS#8, SEC1 or PKCS#1 form"
    )]
    Unsupported(String),
    /// An RSA key shorter than 2048 bits.
    #[error("RSA key of {0} bits is too weak; at least 2048 bits are required")]
    WeakRsaKey(usize),
    /// The crypto backend failed to generate or use the key.
    #[error("crypto backend error while {0}")]
    Backend(&'static str),
}

/// The key algorithms attache issues and accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum KeyType {
    /// ECDSA on NIST P-256 (the default: small, fast, accepted everywhere).
    #[default]
    EcdsaP256,
    /// ECDSA on NIST P-384.
    EcdsaP384,
    /// RSA with a 2048-bit modulus.
    Rsa2048,
    /// RSA with a 3072-bit modulus.
    Rsa3072,
    /// RSA with a 4096-bit modulus.
    Rsa4096,
}

impl KeyType {
    /// All key types, in the order the CLI lists them.
    pub const ALL: [KeyType; 5] = [
        KeyType::EcdsaP256,
        KeyType::EcdsaP384,
        KeyType::Rsa2048,
        KeyType::Rsa3072,
        KeyType::Rsa4096,
    ];

    /// The CLI / config name, e.g. `ecdsa-p256`.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::EcdsaP384 => "ecdsa-p384",
            KeyType::Rsa2048 => "rsa-2048",
            KeyType::Rsa3072 => "rsa-3072",
            KeyType::Rsa4096 => "rsa-4096",
        }
    }

    /// Whether this is an RSA key type.
    pub fn is_rsa(self) -> bool {
        matches!(self, KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096)
    }

    /// The certificate signature algorithm a key of this type signs with.
    fn rcgen_alg(self) -> &'static SignatureAlgorithm {
        match self {
            KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            _ => &rcgen::PKCS_RSA_SHA256,
        }
    }

    /// The key type for an RSA modulus of `bits` bits (any size >= 2048 is accepted
    /// on import; odd sizes are reported as the next smaller standard size).
    pub(crate) fn rsa_from_bits(bits: usize) -> Result<KeyType, KeyError> {
        match bits {
            b if b < 2048 => Err(KeyError::WeakRsaKey(b)),
            b if b < 3072 => Ok(KeyType::Rsa2048),
            b if b < 4096 => Ok(KeyType::Rsa3072),
            _ => Ok(KeyType::Rsa4096),
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyType {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyType::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| KeyError::UnknownKeyType(s.to_string()))
    }
}

/// The signer used for AWS4-X509 request signatures, which always hash with SHA-256.
enum RequestSigner {
    P256(EcdsaKeyPair),
    /// aws-lc-rs only pairs P-384 with SHA-384, so P-384 over a SHA-256 digest
    /// (what Roles Anywhere's `AWS4-X509-ECDSA-SHA256` needs) uses RustCrypto.
    P384(Box<p384::ecdsa::SigningKey>),
    Rsa(RsaKeyPair),
}

/// A private key held in memory. Its `Debug` output never shows key material, and
/// the PKCS#8 bytes are zeroed when it is dropped.
pub struct PrivateKey {
    key_type: KeyType,
    pkcs8: Zeroizing<Vec<u8>>,
    cert_signer: rcgen::KeyPair,
    request_signer: RequestSigner,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("key_type", &self.key_type)
            .field("material", &"[redacted]")
            .finish()
    }
}

impl PrivateKey {
    /// Generates a fresh key of `key_type` from the system's secure random source.
    pub fn generate(key_type: KeyType) -> Result<Self, KeyError> {
        let pkcs8: Zeroizing<Vec<u8>> = match key_type {
            KeyType::EcdsaP256 | KeyType::EcdsaP384 => {
                let alg = if key_type == KeyType::EcdsaP256 {
                    &ECDSA_P256_SHA256_ASN1_SIGNING
                } else {
                    &ECDSA_P384_SHA384_ASN1_SIGNING
                };
                let doc = EcdsaKeyPair::generate_pkcs8(alg, &SystemRandom::new())
                    .map_err(|_| KeyError::Backend("generating an ECDSA key"))?;
                Zeroizing::new(doc.as_ref().to_vec())
            }
            _ => {
                let size = match key_type {
                    KeyType::Rsa2048 => aws_lc_rs::rsa::KeySize::Rsa2048,
                    KeyType::Rsa3072 => aws_lc_rs::rsa::KeySize::Rsa3072,
                    _ => aws_lc_rs::rsa::KeySize::Rsa4096,
                };
                let pair = RsaKeyPair::generate(size)
                    .map_err(|_| KeyError::Backend("generating an RSA key"))?;
                let der = pair
                    .as_der()
                    .map_err(|_| KeyError::Backend("encoding an RSA key"))?;
                Zeroizing::new(der.as_ref().to_vec())
            }
        };
        Self::from_pkcs8_der(&pkcs8)
    }

    /// Reads a private key from PEM: PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`)
    /// or PKCS#1 (`RSA PRIVATE KEY`). The first private-key block is used, so a file
    /// that also holds certificates is fine.
    pub fn from_pem(pem_text: &str) -> Result<Self, KeyError> {
        let blocks = pem::parse_many(pem_text).map_err(|e| KeyError::Pem(e.to_string()))?;
        let block = blocks
            .iter()
            .find(|b| b.tag().ends_with("PRIVATE KEY"))
            .ok_or_else(|| KeyError::Pem("no PRIVATE KEY block found".into()))?;
        let der = Zeroizing::new(block.contents().to_vec());
        match block.tag() {
            "PRIVATE KEY" => Self::from_pkcs8_der(&der),
            "EC PRIVATE KEY" => {
                for alg in [
                    &ECDSA_P256_SHA256_ASN1_SIGNING,
                    &ECDSA_P384_SHA384_ASN1_SIGNING,
                ] {
                    if let Ok(pair) = EcdsaKeyPair::from_private_key_der(alg, &der) {
                        let doc = pair
                            .to_pkcs8v1()
                            .map_err(|_| KeyError::Backend("converting a SEC1 key"))?;
                        return Self::from_pkcs8_der(doc.as_ref());
                    }
                }
                Err(KeyError::Unsupported(
                    "EC key on a curve other than P-256 or P-384".into(),
                ))
            }
            "RSA PRIVATE KEY" => {
                let pair = RsaKeyPair::from_der(&der)
                    .map_err(|e| KeyError::Unsupported(format!("PKCS#1 RSA key rejected: {e}")))?;
                KeyType::rsa_from_bits(pair.public_modulus_len() * 8)?;
                let doc = pair
                    .as_der()
                    .map_err(|_| KeyError::Backend("converting a PKCS#1 key"))?;
                Self::from_pkcs8_der(doc.as_ref())
            }
            other => Err(KeyError::Unsupported(format!(
                "PEM block {other:?} (encrypted keys are not supported)"
            ))),
        }
    }

    /// Reads a PKCS#8 DER private key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        let (key_type, request_signer) =
            if let Ok(pair) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der) {
                (KeyType::EcdsaP256, RequestSigner::P256(pair))
            } else if EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, der).is_ok() {
                let key = p384::ecdsa::SigningKey::from_pkcs8_der(der)
                    .map_err(|e| KeyError::Unsupported(format!("P-384 key rejected: {e}")))?;
                (KeyType::EcdsaP384, RequestSigner::P384(Box::new(key)))
            } else if let Ok(pair) = RsaKeyPair::from_pkcs8(der) {
                let key_type = KeyType::rsa_from_bits(pair.public_modulus_len() * 8)?;
                (key_type, RequestSigner::Rsa(pair))
            } else {
                return Err(KeyError::Unsupported(
                    "PKCS#8 key is not ECDSA P-256/P-384 or RSA".into(),
                ));
            };
        let cert_signer = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &rustls_pki_types::PrivatePkcs8KeyDer::from(der),
            key_type.rcgen_alg(),
        )
        .map_err(|e| KeyError::Unsupported(format!("certificate signer rejected key: {e}")))?;
        Ok(PrivateKey {
            key_type,
            pkcs8: Zeroizing::new(der.to_vec()),
            cert_signer,
            request_signer,
        })
    }

    /// The key's algorithm and size.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The key as PKCS#8 PEM, for writing to a 0600 file or a Kubernetes Secret.
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(pem::encode(&pem::Pem::new(
            "PRIVATE KEY",
            self.pkcs8.as_slice().to_vec(),
        )))
    }

    /// The key as PKCS#8 DER (for a TLS server configuration), zeroed on drop.
    pub fn to_pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        self.pkcs8.clone()
    }

    /// The public half as a DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.cert_signer.subject_public_key_info()
    }

    /// A PEM PKCS#10 certificate signing request for this key. The subject is a
    /// placeholder: the broker names the certificate from the caller's identity.
    pub fn certificate_signing_request(&self) -> Result<String, KeyError> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "attache-workload");
        let csr = params
            .serialize_request(&self.cert_signer)
            .map_err(|_| KeyError::Backend("signing a CSR"))?;
        csr.pem().map_err(|_| KeyError::Backend("encoding a CSR"))
    }

    /// Signs `message` the way Roles Anywhere's `AWS4-X509-*-SHA256` algorithms
    /// require: a SHA-256 digest, then DER ECDSA or RSA PKCS#1 v1.5.
    pub fn sign_sha256(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.request_signer {
            RequestSigner::P256(pair) => pair
                .sign(&SystemRandom::new(), message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError::Backend("signing with ECDSA P-256")),
            RequestSigner::P384(key) => {
                let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, message);
                let sig: p384::ecdsa::Signature = key
                    .sign_prehash(digest.as_ref())
                    .map_err(|_| KeyError::Backend("signing with ECDSA P-384"))?;
                Ok(sig.to_der().as_bytes().to_vec())
            }
            RequestSigner::Rsa(pair) => {
                let mut sig = vec![0u8; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), message, &mut sig)
                    .map_err(|_| KeyError::Backend("signing with RSA"))?;
                Ok(sig)
            }
        }
    }
}

impl PublicKeyData for PrivateKey {
    fn der_bytes(&self) -> &[u8] {
        self.cert_signer.der_bytes()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.cert_signer.algorithm()
    }
}

impl SigningKey for PrivateKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.cert_signer.sign(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_type_names_round_trip() {
        for k in KeyType::ALL {
            assert_eq!(k.name().parse::<KeyType>().unwrap(), k);
        }
        let err = "dsa-1024".parse::<KeyType>().unwrap_err().to_string();
        assert!(
            err.contains("dsa-1024") && err.contains("ecdsa-p256"),
            "{err}"
        );
    }

    #[test]
    fn generated_keys_survive_a_pem_round_trip() {
        for k in [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Rsa2048] {
            let key = PrivateKey::generate(k).unwrap();
            let again = PrivateKey::from_pem(&key.to_pkcs8_pem()).unwrap();
            assert_eq!(again.key_type(), k);
            assert_eq!(again.public_key_der(), key.public_key_der());
        }
    }

    #[test]
    fn debug_output_hides_key_material() {
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let debug = format!("{key:?}");
        let pem = key.to_pkcs8_pem();
        let body: String = pem.lines().nth(1).unwrap().chars().take(20).collect();
        assert!(debug.contains("redacted"));
        assert!(!debug.contains(&body));
    }

    #[test]
    fn garbage_and_non_key_pem_are_refused_with_a_reason() {
        let err = PrivateKey::from_pem("not pem at all")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no PRIVATE KEY block"), "{err}");
        let cert_only = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = PrivateKey::from_pem(cert_only).unwrap_err().to_string();
        assert!(err.contains("no PRIVATE KEY block"), "{err}");
    }
}
