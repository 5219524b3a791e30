//! attache's mini certificate authority and AWS certificate-based request signing.
//!
//! - [`ca`]: the cluster CA whose certificate is the Roles Anywhere trust anchor,
//!   and the workload / server certificates it issues.
//! - [`crl`]: revocation lists the CA signs, for Roles Anywhere and `openssl crl`.
//! - [`csr`]: PKCS#10 parsing, signature check and key policy.
//! - [`identity`]: the Kubernetes identity a workload certificate names.
//! - [`cert`]: reading certificates, renewal timing, chain verification.
//! - [`key`]: private keys, kept in memory and never printed.
//! - [`sigv4`] and [`signing`]: SigV4 canonicalisation and the
//!   `AWS4-X509-ECDSA-SHA256` / `AWS4-X509-RSA-SHA256` signers.
//!
//! No network I/O happens here; [`files`] only writes PEM files for the CLI.
//! Depends on no other attache crate: everything else stands on this one.

pub mod ca;
pub mod cert;
pub mod crl;
pub mod csr;
pub mod files;
pub mod identity;
pub mod key;
pub mod signing;
pub mod sigv4;

pub use ca::{CaError, CaOptions, CertificateAuthority, IssuedCertificate};
pub use cert::{CertError, CertificateInfo, should_renew, verify_chain};
pub use crl::{CrlError, Revoked, SignedCrl};
pub use csr::{CsrError, VerifiedCsr};
pub use identity::{IdentityError, WorkloadIdentity};
pub use key::{KeyError, KeyType, PrivateKey};
pub use signing::{SigningError, X509Signer};
