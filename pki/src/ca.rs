//! The cluster's certificate authority: creation, loading, and certificate issuance.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::cert::{CertificateInfo, parse_certificate_pem};
use crate::csr::VerifiedCsr;
use crate::identity::{WorkloadIdentity, is_dns_subdomain};
use crate::key::{KeyError, KeyType, PrivateKey};

/// Default CA lifetime: 10 years.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Default workload certificate lifetime: 24 hours.
pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// How far `notBefore` is back-dated to tolerate clock skew between nodes.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Why the CA could not be created, loaded or could not issue.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Key generation or import failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A certificate could not be read.
    #[error(transparent)]
    Certificate(#[from] crate::cert::CertError),
    /// The loaded certificate is not usable as a CA.
    #[error("CA certificate is not usable: {0}")]
    NotACa(String),
    /// The private key does not belong to the CA certificate.
    #[error("CA private key does not match the CA certificate's public key")]
    KeyMismatch,
    /// A requested validity that cannot be honoured.
    #[error("invalid validity: {0}")]
    Validity(String),
    /// A DNS name for a server certificate is not valid.
    #[error("invalid DNS name {0:?} for a server certificate")]
    DnsName(String),
    /// The CA has expired (or is not yet valid) and cannot issue.
    #[error("CA certificate is outside its validity period (not after {0})")]
    Expired(OffsetDateTime),
    /// rcgen refused the parameters.
    #[error("certificate encoding failed: {0}")]
    Encode(String),
}

/// How to create a new CA.
#[derive(Clone, Debug)]
pub struct CaOptions {
    /// Key algorithm (default ECDSA P-256).
    pub key_type: KeyType,
    /// Subject common name (default `attache CA`).
    pub common_name: String,
    /// Subject organization (default `attache`).
    pub organization: String,
    /// Lifetime (default 10 years).
    pub validity: Duration,
}

impl Default for CaOptions {
    fn default() -> Self {
        CaOptions {
            key_type: KeyType::EcdsaP256,
            common_name: "attache CA".into(),
            organization: "attache".into(),
            validity: DEFAULT_CA_VALIDITY,
        }
    }
}

/// A certificate the CA issued.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    /// PEM of the certificate alone.
    pub pem: String,
    /// DER of the certificate.
    pub der: Vec<u8>,
    /// Serial number in decimal (what Roles Anywhere's `Credential=` carries).
    pub serial: String,
    /// Start of validity (back-dated by [`BACKDATE`]).
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

/// The in-cluster CA. Its certificate is the Roles Anywhere trust anchor.
pub struct CertificateAuthority {
    issuer: Issuer<'static, PrivateKey>,
    cert_pem: String,
    info: CertificateInfo,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.info
            .debug_as(f, "CertificateAuthority")
            .field("key", &"[redacted]")
            .finish()
    }
}

impl CertificateAuthority {
    /// Creates a new self-signed CA valid from now.
    pub fn create(options: &CaOptions, now: OffsetDateTime) -> Result<Self, CaError> {
        if options.validity < Duration::from_secs(24 * 3600) {
            return Err(CaError::Validity(
                "a CA must be valid for at least 1 day".into(),
            ));
        }
        if options.common_name.trim().is_empty() {
            return Err(CaError::Validity("CA common name must not be empty".into()));
        }
        let key = PrivateKey::generate(options.key_type)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if !options.organization.is_empty() {
            params
                .distinguished_name
                .push(DnType::OrganizationName, options.organization.as_str());
        }
        params
            .distinguished_name
            .push(DnType::CommonName, options.common_name.as_str());
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial()?);
        params.not_before = now - BACKDATE;
        params.not_after = now + options.validity;
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Encode(e.to_string()))?;
        let cert_pem = cert.pem();
        Self::from_parts(&cert_pem, key)
    }

    /// Loads a CA from its certificate and key PEM, checking that the certificate
    /// is a CA that may sign certificates and that the key belongs to it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let key = PrivateKey::from_pem(key_pem)?;
        Self::from_parts(cert_pem, key)
    }

    fn from_parts(cert_pem: &str, key: PrivateKey) -> Result<Self, CaError> {
        let (der, info) = parse_certificate_pem(cert_pem)?;
        if !info.is_ca {
            return Err(CaError::NotACa(
                "basicConstraints CA:TRUE is missing".into(),
            ));
        }
        if !info.key_cert_sign {
            return Err(CaError::NotACa(
                "keyUsage does not allow keyCertSign".into(),
            ));
        }
        if info.public_key_der != key.public_key_der() {
            return Err(CaError::KeyMismatch);
        }
        let issuer = Issuer::from_ca_cert_der(&der.as_slice().into(), key)
            .map_err(|e| CaError::NotACa(e.to_string()))?;
        Ok(CertificateAuthority {
            issuer,
            cert_pem: pem::encode(&pem::Pem::new("CERTIFICATE", der)),
            info,
        })
    }

    /// The CA certificate as PEM: register exactly this as a Roles Anywhere
    /// `CERTIFICATE_BUNDLE` trust anchor, and mount it as the pods' CA bundle.
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The trust-anchor bundle for Roles Anywhere: the CA certificate PEM with a
    /// trailing newline and nothing else (no key, no comments).
    pub fn trust_anchor_pem(&self) -> String {
        let mut out = self.cert_pem.trim_end().to_string();
        out.push('\n');
        out
    }

    /// The CA's private key as PKCS#8 PEM, for persisting the CA.
    pub fn private_key_pem(&self) -> zeroize::Zeroizing<String> {
        self.issuer.key().to_pkcs8_pem()
    }

    /// Facts about the CA certificate.
    pub fn info(&self) -> &CertificateInfo {
        &self.info
    }

    /// Issues a workload certificate for `identity` carrying the CSR's public key.
    /// Subject `CN=<sa>, OU=<ns>, O=<trust domain>`, URI SAN the SPIFFE ID; the
    /// CSR's own subject and extensions are ignored. The lifetime is cut short at
    /// the CA's own `notAfter`.
    pub fn issue_workload(
        &self,
        csr: &VerifiedCsr,
        identity: &WorkloadIdentity,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCertificate, CaError> {
        let mut params = self.leaf_params(lifetime, now)?;
        params
            .distinguished_name
            .push(DnType::OrganizationName, identity.trust_domain());
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, identity.namespace());
        params
            .distinguished_name
            .push(DnType::CommonName, identity.service_account());
        let uri = identity
            .spiffe_uri()
            .try_into()
            .map_err(|e: rcgen::Error| CaError::Encode(e.to_string()))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(&params, csr)
    }

    /// Issues a TLS server certificate for `dns_names` (the broker's Service names)
    /// with a fresh key of `key_type`, returning both.
    pub fn issue_server(
        &self,
        dns_names: &[String],
        key_type: KeyType,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<(IssuedCertificate, PrivateKey), CaError> {
        let first = dns_names
            .first()
            .ok_or_else(|| CaError::DnsName(String::new()))?;
        let mut params = self.leaf_params(lifetime, now)?;
        params
            .distinguished_name
            .push(DnType::CommonName, first.as_str());
        for name in dns_names {
            params.subject_alt_names.push(match name.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) if is_dns_subdomain(name) => SanType::DnsName(
                    name.as_str()
                        .try_into()
                        .map_err(|_| CaError::DnsName(name.clone()))?,
                ),
                Err(_) => return Err(CaError::DnsName(name.clone())),
            });
        }
        params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = PrivateKey::generate(key_type)?;
        let cert = self.sign(&params, &key)?;
        Ok((cert, key))
    }

    fn leaf_params(
        &self,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<CertificateParams, CaError> {
        if lifetime < Duration::from_secs(60) {
            return Err(CaError::Validity(
                "certificate lifetime must be at least 1 minute".into(),
            ));
        }
        if now >= self.info.not_after || now < self.info.not_before {
            return Err(CaError::Expired(self.info.not_after));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        params.not_before = (now - BACKDATE).max(self.info.not_before);
        params.not_after = (now + lifetime).min(self.info.not_after);
        Ok(params)
    }

    pub(crate) fn issuer(&self) -> &Issuer<'static, PrivateKey> {
        &self.issuer
    }

    fn sign(
        &self,
        params: &CertificateParams,
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<IssuedCertificate, CaError> {
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(|e| CaError::Encode(e.to_string()))?;
        let der = cert.der().to_vec();
        let info = crate::cert::CertificateInfo::from_der(&der)?;
        Ok(IssuedCertificate {
            pem: cert.pem(),
            der,
            serial: info.serial,
            not_before: info.not_before,
            not_after: info.not_after,
        })
    }
}

/// A 16-byte positive serial: the top bit is cleared (positive INTEGER) and the
/// next set (so DER never drops a leading zero byte), leaving 126 random bits.
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| CaError::Encode("no randomness".into()))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}
