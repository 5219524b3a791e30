//! Reading certificates: the facts attache needs, renewal timing, and chain checks.

use std::time::Duration;

use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::csr::key_type_of;
use crate::identity::WorkloadIdentity;
use crate::key::KeyType;

/// Why a certificate could not be read or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// Not PEM with a `CERTIFICATE` block.
    #[error("certificate is not valid PEM: {0}")]
    Pem(String),
    /// Not a DER X.509 certificate.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// A key type attache does not accept.
    #[error("certificate key: {0}")]
    Key(String),
    /// The chain does not lead to any trusted anchor.
    #[error("certificate chain does not verify: {0}")]
    Chain(String),
}

/// What attache needs to know about one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    /// Subject in RFC 4514-like form, e.g. `O=td, OU=ns, CN=sa`.
    pub subject: String,
    /// Issuer in the same form.
    pub issuer: String,
    /// Serial number in decimal.
    pub serial: String,
    /// Key algorithm and size.
    pub key_type: KeyType,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// basicConstraints CA:TRUE.
    pub is_ca: bool,
    /// keyUsage allows keyCertSign.
    pub key_cert_sign: bool,
    /// keyUsage allows digitalSignature (or keyUsage is absent).
    pub digital_signature: bool,
    /// SHA-256 of the DER, upper-case hex with colons (as `openssl x509 -fingerprint -sha256`).
    pub sha256_fingerprint: String,
    /// URI SANs.
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// Subject common name, organizational units and organizations, in order.
    pub common_name: Option<String>,
    /// Subject OU values.
    pub organizational_units: Vec<String>,
    /// Subject O values.
    pub organizations: Vec<String>,
    /// The DER SubjectPublicKeyInfo.
    pub public_key_der: Vec<u8>,
}

impl CertificateInfo {
    /// A `Debug` of `name` that starts with the certificate's subject,
    /// serial and end of validity; the caller adds its own fields (never a
    /// key) and finishes it.
    pub(crate) fn debug_as<'a, 'b>(
        &self,
        f: &'a mut std::fmt::Formatter<'b>,
        name: &str,
    ) -> std::fmt::DebugStruct<'a, 'b> {
        let mut d = f.debug_struct(name);
        d.field("subject", &self.subject)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after);
        d
    }

    /// Reads a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, CertError> {
        let (rest, cert) =
            X509Certificate::from_der(der).map_err(|e| CertError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CertError::Malformed(format!(
                "{} trailing bytes",
                rest.len()
            )));
        }
        let key_type = key_type_of(cert.public_key()).map_err(|e| CertError::Key(e.to_string()))?;
        let ku = cert
            .key_usage()
            .map_err(|e| CertError::Malformed(format!("keyUsage: {e}")))?;
        let (key_cert_sign, digital_signature) = match ku {
            Some(ku) => (ku.value.key_cert_sign(), ku.value.digital_signature()),
            None => (false, true),
        };
        let mut uris = Vec::new();
        let mut dns_names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => uris.push(u.to_string()),
                    GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                    _ => {}
                }
            }
        }
        fn attr<'a>(
            it: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
        ) -> Vec<String> {
            it.filter_map(|a| a.as_str().ok().map(str::to_string))
                .collect()
        }
        let subject = cert.subject();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        Ok(CertificateInfo {
            subject: subject.to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.serial.to_string(),
            key_type,
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            is_ca: cert.is_ca(),
            key_cert_sign,
            digital_signature,
            sha256_fingerprint: digest
                .as_ref()
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join(":"),
            uris,
            dns_names,
            common_name: attr(subject.iter_common_name()).into_iter().next(),
            organizational_units: attr(subject.iter_organizational_unit()),
            organizations: attr(subject.iter_organization()),
            public_key_der: cert.public_key().raw.to_vec(),
        })
    }

    /// The workload identity the certificate names, if it is an attache workload
    /// certificate (a SPIFFE URI SAN of the `/ns/<ns>/sa/<sa>` shape).
    pub fn workload_identity(&self) -> Option<WorkloadIdentity> {
        self.uris
            .iter()
            .find_map(|u| WorkloadIdentity::from_spiffe_uri(u).ok())
    }

    /// Total lifetime.
    pub fn lifetime(&self) -> Duration {
        (self.not_after - self.not_before)
            .try_into()
            .unwrap_or_default()
    }

    /// Whether `now` is inside the validity period.
    pub fn is_valid_at(&self, now: OffsetDateTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

/// Reads the first `CERTIFICATE` block of a PEM text.
pub fn parse_certificate_pem(text: &str) -> Result<(Vec<u8>, CertificateInfo), CertError> {
    let der = parse_pem_chain(text)?
        .into_iter()
        .next()
        .ok_or_else(|| CertError::Pem("no CERTIFICATE block found".into()))?;
    let info = CertificateInfo::from_der(&der)?;
    Ok((der, info))
}

/// Reads every `CERTIFICATE` block of a PEM text, in order, as DER.
pub fn parse_pem_chain(text: &str) -> Result<Vec<Vec<u8>>, CertError> {
    let blocks = pem::parse_many(text).map_err(|e| CertError::Pem(e.to_string()))?;
    Ok(blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect())
}

/// The moment a certificate valid from `not_before` to `not_after` should be
/// renewed when `fraction` of its lifetime has passed (0.5 = half-life).
pub fn renewal_time(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    fraction: f64,
) -> OffsetDateTime {
    let fraction = fraction.clamp(0.0, 1.0);
    not_before + (not_after - not_before) * fraction
}

/// Whether a certificate should be renewed at `now`: at half of its lifetime.
pub fn should_renew(info: &CertificateInfo, now: OffsetDateTime) -> bool {
    now >= renewal_time(info.not_before, info.not_after, 0.5)
}

/// Verifies that `leaf` chains through `intermediates` (leaf-first order is not
/// required) to one of `anchors`, with every certificate valid at `now`, every
/// issuer a CA allowed to sign certificates, every intermediate's
/// `pathLenConstraint` respected, and every signature correct.
/// Returns the index of the anchor that was reached.
pub fn verify_chain(
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    anchors: &[Vec<u8>],
    now: OffsetDateTime,
) -> Result<usize, CertError> {
    fn parse(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
        X509Certificate::from_der(der)
            .map(|(_, c)| c)
            .map_err(|e| CertError::Malformed(e.to_string()))
    }
    let ts = x509_parser::time::ASN1Time::from(now);
    let mut current = parse(leaf)?;
    let pool: Vec<X509Certificate<'_>> = intermediates
        .iter()
        .map(|d| parse(d))
        .collect::<Result<_, _>>()?;
    let anchor_certs: Vec<X509Certificate<'_>> =
        anchors.iter().map(|d| parse(d)).collect::<Result<_, _>>()?;
    if !current.validity().is_valid_at(ts) {
        return Err(CertError::Chain(format!(
            "certificate {} is outside its validity period ({} to {})",
            current.subject(),
            current.validity().not_before,
            current.validity().not_after
        )));
    }
    // Intermediates walked so far (the leaf excluded): an intermediate's
    // basicConstraints pathLenConstraint caps how many non-self-issued
    // intermediates may follow it (RFC 5280 6.1.4 (l)-(m)). The anchor's own
    // constraints are trust-anchor input, not path processing (RFC 5280 6.1.1).
    let mut below = 0u32;
    // Bounded walk: at most every intermediate once, then an anchor.
    for _ in 0..=pool.len() {
        for (i, anchor) in anchor_certs.iter().enumerate() {
            if anchor.subject().as_raw() == current.issuer().as_raw()
                && current.verify_signature(Some(anchor.public_key())).is_ok()
            {
                check_issuer(anchor, ts)?;
                return Ok(i);
            }
        }
        let next = pool.iter().find(|c| {
            c.subject().as_raw() == current.issuer().as_raw()
                && current.verify_signature(Some(c.public_key())).is_ok()
        });
        match next {
            Some(issuer) => {
                check_issuer(issuer, ts)?;
                if let Ok(Some(bc)) = issuer.basic_constraints()
                    && let Some(max) = bc.value.path_len_constraint
                    && below > max
                {
                    return Err(CertError::Chain(format!(
                        "issuer {} allows {max} intermediate(s) below it (pathLenConstraint), the chain has {below}",
                        issuer.subject()
                    )));
                }
                if issuer.subject().as_raw() != issuer.issuer().as_raw() {
                    below += 1;
                }
                current = issuer.clone();
            }
            None => break,
        }
    }
    Err(CertError::Chain(format!(
        "no trusted issuer signed {:?} (issuer {})",
        current.subject().to_string(),
        current.issuer()
    )))
}

fn check_issuer(c: &X509Certificate<'_>, ts: x509_parser::time::ASN1Time) -> Result<(), CertError> {
    if !c.is_ca() {
        return Err(CertError::Chain(format!(
            "issuer {} is not a CA",
            c.subject()
        )));
    }
    if let Ok(Some(ku)) = c.key_usage()
        && !ku.value.key_cert_sign()
    {
        return Err(CertError::Chain(format!(
            "issuer {} may not sign certificates (keyUsage lacks keyCertSign)",
            c.subject()
        )));
    }
    if !c.validity().is_valid_at(ts) {
        return Err(CertError::Chain(format!(
            "issuer {} is outside its validity period",
            c.subject()
        )));
    }
    Ok(())
}
