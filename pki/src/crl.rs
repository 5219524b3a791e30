//! Certificate revocation lists: the CA signs one over the serials it revoked,
//! for Roles Anywhere (`ImportCrl` / `UpdateCrl`, one CRL per trust anchor)
//! and for anyone checking with `openssl crl`.
//!
//! An entry is only worth listing until its certificate expires: an expired
//! certificate is refused anyway. [`CertificateAuthority::sign_crl`] drops
//! such entries, which keeps the CRL under Roles Anywhere's size limit.

use std::time::Duration;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use time::OffsetDateTime;
use x509_parser::num_bigint::BigUint;
use x509_parser::prelude::FromDer as _;

use crate::ca::{CaError, CertificateAuthority};

/// The largest CRL Roles Anywhere accepts (`crlData` of `ImportCrl` /
/// `UpdateCrl`, which takes the CRL "in PEM format"), in bytes of PEM.
pub const ROLES_ANYWHERE_MAX_CRL_BYTES: usize = 300_000;

/// One revoked certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    /// Its serial number, decimal (as [`crate::IssuedCertificate::serial`] and
    /// Roles Anywhere's `Credential=` carry it).
    pub serial: String,
    /// When it was revoked.
    pub revoked_at: OffsetDateTime,
    /// When the certificate expires; the entry is dropped after that.
    pub not_after: OffsetDateTime,
}

/// A signed CRL.
#[derive(Clone, Debug)]
pub struct SignedCrl {
    /// DER.
    pub der: Vec<u8>,
    /// PEM (`-----BEGIN X509 CRL-----`): what Roles Anywhere's `ImportCrl`
    /// takes and `openssl crl` reads.
    pub pem: String,
    /// The CRL number (monotonic per CA).
    pub number: u64,
    /// `thisUpdate`.
    pub this_update: OffsetDateTime,
    /// `nextUpdate`.
    pub next_update: OffsetDateTime,
    /// The serials listed (decimal), i.e. the entries not yet expired.
    pub serials: Vec<String>,
}

/// Why a CRL could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    /// A serial is neither decimal nor hex.
    #[error(
        "serial {0:?} is not a certificate serial number (decimal digits, or hex as 0x… or aa:bb:…)"
    )]
    Serial(String),
    /// The signed CRL is over the size limit even without expired entries.
    #[error(
        "the CRL has {entries} unexpired entries and {bytes} bytes of PEM, over Roles Anywhere's limit of {limit} bytes; shorten certificate lifetimes or wait for entries to expire"
    )]
    TooLarge {
        /// Unexpired entries.
        entries: usize,
        /// DER size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The CA could not sign.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The bytes are not a CRL of this CA.
    #[error("not a valid CRL of this CA: {0}")]
    Invalid(String),
}

/// Parses a serial given as decimal (`1234…`), as hex with a `0x` prefix, or
/// as colon-separated hex bytes (`openssl x509 -serial` prints `serial=AB12…`,
/// browsers `ab:12:…`), returning it in decimal.
pub fn parse_serial(text: &str) -> Result<String, CrlError> {
    let t = text.trim();
    let t = t.strip_prefix("serial=").unwrap_or(t);
    let bad = || CrlError::Serial(text.to_string());
    let value = if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        BigUint::parse_bytes(hex.as_bytes(), 16)
    } else if t.contains(':') {
        BigUint::parse_bytes(t.replace(':', "").as_bytes(), 16)
    } else if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        BigUint::parse_bytes(t.as_bytes(), 10)
    } else {
        None
    };
    match value {
        Some(v) if v.bits() > 0 && v.bits() <= 20 * 8 => Ok(v.to_str_radix(10)),
        _ => Err(bad()),
    }
}

fn serial_number(decimal: &str) -> Result<SerialNumber, CrlError> {
    let v = BigUint::parse_bytes(decimal.as_bytes(), 10)
        .ok_or_else(|| CrlError::Serial(decimal.to_string()))?;
    let mut bytes = v.to_bytes_be();
    // A DER INTEGER is signed: a set top bit needs a leading zero to stay positive.
    if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        bytes.insert(0, 0);
    }
    Ok(SerialNumber::from_slice(&bytes))
}

impl CertificateAuthority {
    /// Signs CRL number `number` over `revoked`, valid from `now` for
    /// `validity`. Entries whose certificate expired by `now` are left out;
    /// a CRL still over [`ROLES_ANYWHERE_MAX_CRL_BYTES`] is an error.
    pub fn sign_crl(
        &self,
        revoked: &[Revoked],
        number: u64,
        now: OffsetDateTime,
        validity: Duration,
    ) -> Result<SignedCrl, CrlError> {
        let mut live: Vec<&Revoked> = revoked.iter().filter(|r| r.not_after > now).collect();
        live.sort_by(|a, b| a.serial.cmp(&b.serial));
        live.dedup_by(|a, b| a.serial == b.serial);
        let revoked_certs = live
            .iter()
            .map(|r| {
                Ok(RevokedCertParams {
                    serial_number: serial_number(&r.serial)?,
                    revocation_time: r.revoked_at.min(now),
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, CrlError>>()?;
        let this_update = now - crate::ca::BACKDATE;
        let next_update = now
            + time::Duration::try_from(validity)
                .map_err(|e| CaError::Validity(format!("CRL validity: {e}")))?;
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(self.issuer())
            .map_err(|e| CaError::Encode(e.to_string()))?;
        let der = crl.der().to_vec();
        let pem = crl.pem().map_err(|e| CaError::Encode(e.to_string()))?;
        if pem.len() > ROLES_ANYWHERE_MAX_CRL_BYTES {
            return Err(CrlError::TooLarge {
                entries: live.len(),
                bytes: pem.len(),
                limit: ROLES_ANYWHERE_MAX_CRL_BYTES,
            });
        }
        Ok(SignedCrl {
            der,
            pem,
            number,
            this_update,
            next_update,
            serials: live.iter().map(|r| r.serial.clone()).collect(),
        })
    }

    /// Reads a CRL (PEM or DER) and checks that this CA signed it; returns
    /// the serials it lists, decimal.
    pub fn verify_crl(&self, data: &[u8]) -> Result<Vec<String>, CrlError> {
        let der = crl_der(data)?;
        let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der)
            .map_err(|e| CrlError::Invalid(e.to_string()))?;
        let ca_der = pem::parse(self.certificate_pem())
            .map_err(|e| CrlError::Invalid(e.to_string()))?
            .into_contents();
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der)
            .map_err(|e| CrlError::Invalid(e.to_string()))?;
        crl.verify_signature(ca.public_key())
            .map_err(|e| CrlError::Invalid(format!("signature: {e}")))?;
        Ok(crl
            .iter_revoked_certificates()
            .map(|r| r.serial().to_str_radix(10))
            .collect())
    }
}

/// The DER of a CRL given as PEM (`X509 CRL`) or DER.
fn crl_der(data: &[u8]) -> Result<Vec<u8>, CrlError> {
    match pem::parse(data) {
        Ok(p) if p.tag() == "X509 CRL" => Ok(p.into_contents()),
        Ok(p) => Err(CrlError::Invalid(format!("PEM block is {:?}", p.tag()))),
        Err(_) => Ok(data.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CaOptions, KeyType, PrivateKey, VerifiedCsr, WorkloadIdentity};

    fn ca() -> CertificateAuthority {
        CertificateAuthority::create(&CaOptions::default(), OffsetDateTime::now_utc()).unwrap()
    }

    fn leaf(ca: &CertificateAuthority, now: OffsetDateTime) -> crate::IssuedCertificate {
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let csr =
            VerifiedCsr::parse(key.certificate_signing_request().unwrap().as_bytes()).unwrap();
        let id = WorkloadIdentity::new("cluster.local", "team-a", "app").unwrap();
        ca.issue_workload(&csr, &id, Duration::from_secs(3600), now)
            .unwrap()
    }

    #[test]
    fn serials_parse_from_decimal_and_hex_and_refuse_anything_else() {
        assert_eq!(parse_serial("4660").unwrap(), "4660");
        assert_eq!(parse_serial("0x1234").unwrap(), "4660");
        assert_eq!(parse_serial("12:34").unwrap(), "4660");
        assert_eq!(parse_serial("serial=1234").unwrap(), "1234");
        for bad in ["", "0", "12a", "-5", "0xzz", &"9".repeat(60)] {
            let err = parse_serial(bad).unwrap_err().to_string();
            assert!(err.contains("not a certificate serial"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_crl_lists_unexpired_revocations_and_verifies_against_its_ca_only() {
        let now = OffsetDateTime::now_utc();
        let ca = ca();
        let revoked = leaf(&ca, now);
        let kept = leaf(&ca, now);
        let entries = [
            Revoked {
                serial: revoked.serial.clone(),
                revoked_at: now,
                not_after: revoked.not_after,
            },
            Revoked {
                serial: "12345".into(),
                revoked_at: now - time::Duration::hours(3),
                not_after: now - time::Duration::hours(1),
            },
        ];
        let crl = ca
            .sign_crl(&entries, 7, now, Duration::from_secs(86400))
            .unwrap();
        assert_eq!(crl.serials, vec![revoked.serial.clone()]);
        assert!(crl.pem.starts_with("-----BEGIN X509 CRL-----"));
        let listed = ca.verify_crl(crl.pem.as_bytes()).unwrap();
        assert_eq!(listed, vec![revoked.serial.clone()]);
        assert!(!listed.contains(&kept.serial));
        assert_eq!(ca.verify_crl(&crl.der).unwrap(), listed);
        let err = self::ca().verify_crl(&crl.der).unwrap_err().to_string();
        assert!(err.contains("signature"), "{err}");
    }

    #[test]
    fn serials_with_the_top_bit_set_stay_positive() {
        let now = OffsetDateTime::now_utc();
        let ca = ca();
        let big = "340282366920938463463374607431768211455"; // 2^128 - 1
        let entry = Revoked {
            serial: big.into(),
            revoked_at: now,
            not_after: now + time::Duration::hours(1),
        };
        let crl = ca
            .sign_crl(&[entry], 1, now, Duration::from_secs(3600))
            .unwrap();
        assert_eq!(ca.verify_crl(&crl.der).unwrap(), vec![big.to_string()]);
    }

    #[test]
    fn a_crl_over_the_roles_anywhere_limit_is_refused_with_its_size() {
        let now = OffsetDateTime::now_utc();
        let ca = ca();
        let entries: Vec<Revoked> = (1..=9_000u128)
            .map(|i| Revoked {
                serial: (i << 100).to_string(),
                revoked_at: now,
                not_after: now + time::Duration::hours(1),
            })
            .collect();
        let err = ca
            .sign_crl(&entries, 1, now, Duration::from_secs(3600))
            .unwrap_err();
        assert!(
            matches!(err, CrlError::TooLarge { entries: 9_000, bytes, .. } if bytes > ROLES_ANYWHERE_MAX_CRL_BYTES),
            "{err}"
        );
    }
}
