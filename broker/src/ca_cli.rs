//! `attache-broker ca init|issue|show|crl`: manage a CA kept in a directory as
//! `ca.pem` (the Roles Anywhere trust anchor) and `ca-key.pem` (mode 0600);
//! `ca revoke`: revoke certificates of the broker's in-cluster CA.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use attache_pki::files::write_atomic;
use attache_pki::{
    CaOptions, CertificateAuthority, CertificateInfo, KeyType, VerifiedCsr, WorkloadIdentity,
};
use attache_rt::parse::{duration, key_type};
use clap::{Args, Subcommand};
use time::OffsetDateTime;

/// The CA certificate's file name inside `--dir`.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA private key's file name inside `--dir`.
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// Manage the cluster CA stored as files.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a new CA: writes DIR/ca.pem and DIR/ca-key.pem (0600).
    Init(InitArgs),
    /// Issue a workload certificate for a ServiceAccount from a CSR.
    Issue(IssueArgs),
    /// Print the CA's subject, key type, validity and SHA-256 fingerprint.
    Show(ShowArgs),
    /// Sign a CRL with the CA in a directory (for a CA you manage yourself).
    Crl(CrlArgs),
    /// Revoke certificates of the broker's CA: recorded in the ConfigMap
    /// attache-crl; the broker re-signs its CRL at its next sync and the ECR
    /// controller pushes it to Roles Anywhere.
    Revoke(RevokeArgs),
}

/// Arguments of `ca crl`.
#[derive(Debug, Args)]
pub struct CrlArgs {
    /// Directory holding ca.pem and ca-key.pem.
    #[arg(long, env = "ATTACHE_CA_DIR")]
    pub dir: PathBuf,
    /// A serial to list (decimal, 0x-hex, or aa:bb:… hex); repeatable.
    #[arg(long)]
    pub serial: Vec<String>,
    /// A certificate (PEM file) to list; repeatable. Its own expiry bounds
    /// the entry, so it is left out once expired.
    #[arg(long)]
    pub cert: Vec<PathBuf>,
    /// CRL number (must grow with every CRL; default: the current Unix time).
    #[arg(long)]
    pub number: Option<u64>,
    /// How long the CRL is valid (nextUpdate).
    #[arg(long, default_value = "7d", value_parser = duration)]
    pub validity: Duration,
    /// Output encoding: pem (what `aws rolesanywhere import-crl --crl-data
    /// fileb://crl.pem` and openssl take) or der.
    #[arg(long, default_value = "pem", value_parser = ["pem", "der"])]
    pub format: String,
    /// Write the CRL here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Arguments of `ca revoke`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(true).args(["serial", "cert", "pod", "service_account"])))]
pub struct RevokeArgs {
    /// Namespace the broker runs in (holds the ConfigMap attache-crl).
    #[arg(long, env = "ATTACHE_NAMESPACE", default_value = "attache-system")]
    pub namespace: String,
    /// A serial to revoke (decimal, 0x-hex, or aa:bb:… hex); repeatable.
    #[arg(long)]
    pub serial: Vec<String>,
    /// A certificate (PEM file) to revoke; repeatable.
    #[arg(long)]
    pub cert: Vec<PathBuf>,
    /// Revoke every certificate issued so far to pod NAMESPACE/NAME.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub pod: Option<String>,
    /// Revoke every certificate issued so far to ServiceAccount NAMESPACE/NAME.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub service_account: Option<String>,
    /// Why (kept in the ledger).
    #[arg(long, default_value = "revoked by an operator")]
    pub reason: String,
}

/// Arguments of `ca init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory that receives ca.pem and ca-key.pem (created if missing).
    #[arg(long, env = "ATTACHE_CA_DIR")]
    pub dir: PathBuf,
    /// Key algorithm: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072 or rsa-4096.
    #[arg(long, env = "ATTACHE_CA_KEY_TYPE", default_value = "ecdsa-p256", value_parser = key_type)]
    pub key_type: KeyType,
    /// Subject common name of the CA certificate.
    #[arg(long, env = "ATTACHE_CA_COMMON_NAME", default_value = "attache CA")]
    pub common_name: String,
    /// Subject organization of the CA certificate.
    #[arg(long, env = "ATTACHE_CA_ORGANIZATION", default_value = "attache")]
    pub organization: String,
    /// Lifetime, e.g. 10y, 5y, 90d.
    #[arg(long, env = "ATTACHE_CA_VALIDITY", default_value = "10y", value_parser = duration)]
    pub validity: Duration,
    /// Replace an existing CA in DIR (the old trust anchor stops matching new certificates).
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `ca issue`.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// Directory holding ca.pem and ca-key.pem.
    #[arg(long, env = "ATTACHE_CA_DIR")]
    pub dir: PathBuf,
    /// PKCS#10 request (PEM or DER); its subject is ignored.
    #[arg(long)]
    pub csr: PathBuf,
    /// The ServiceAccount's namespace.
    #[arg(long)]
    pub namespace: String,
    /// The ServiceAccount's name.
    #[arg(long)]
    pub service_account: String,
    /// Trust domain: the cluster's name in certificate subjects and SPIFFE IDs.
    #[arg(long, env = "ATTACHE_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Certificate lifetime, e.g. 24h, 1h.
    #[arg(long, default_value = "24h", value_parser = duration)]
    pub validity: Duration,
    /// Write the certificate here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Arguments of `ca show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Directory holding ca.pem.
    #[arg(long, env = "ATTACHE_CA_DIR")]
    pub dir: PathBuf,
}

/// Runs one `ca` subcommand, writing its normal output to `out`.
pub fn run(cmd: CaCommand, out: &mut dyn std::io::Write) -> Result<()> {
    let now = OffsetDateTime::now_utc();
    match cmd {
        CaCommand::Init(a) => init(a, now, out),
        CaCommand::Issue(a) => issue(a, now, out),
        CaCommand::Show(a) => show(a, out),
        CaCommand::Crl(a) => crl(a, now, out),
        CaCommand::Revoke(_) => bail!("ca revoke needs the cluster: run it through revoke()"),
    }
}

/// The serials (decimal) and expiries named by `--serial` and `--cert`;
/// a bare serial's expiry is unknown (`None`).
fn named_serials(
    serials: &[String],
    certs: &[PathBuf],
) -> Result<Vec<(String, Option<OffsetDateTime>)>> {
    let mut named = Vec::new();
    for s in serials {
        named.push((attache_pki::crl::parse_serial(s)?, None));
    }
    for path in certs {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let (_, info) = attache_pki::cert::parse_certificate_pem(&text)
            .with_context(|| format!("{} is not a certificate", path.display()))?;
        named.push((info.serial, Some(info.not_after)));
    }
    Ok(named)
}

fn crl(a: CrlArgs, now: OffsetDateTime, out: &mut dyn std::io::Write) -> Result<()> {
    let ca = load_ca(&a.dir)?;
    let keep = time::Duration::try_from(a.validity).context("--validity")?;
    let revoked: Vec<attache_pki::Revoked> = named_serials(&a.serial, &a.cert)?
        .into_iter()
        .map(|(serial, not_after)| attache_pki::Revoked {
            serial,
            revoked_at: now,
            // An unknown expiry is listed for the CRL's whole validity.
            not_after: not_after.unwrap_or(now + keep),
        })
        .collect();
    let number = a.number.unwrap_or(now.unix_timestamp().max(1) as u64);
    let signed = ca.sign_crl(&revoked, number, now, a.validity)?;
    let bytes = if a.format == "der" {
        signed.der.clone()
    } else {
        signed.pem.clone().into_bytes()
    };
    match a.out {
        Some(path) => {
            write_atomic(&path, &bytes, 0o644, true)?;
            writeln!(
                out,
                "wrote CRL number {} listing {} certificate(s), next update {}, to {}",
                signed.number,
                signed.serials.len(),
                signed.next_update,
                path.display()
            )?;
        }
        None => out.write_all(&bytes)?,
    }
    Ok(())
}

/// `ca revoke`: records the revocations in the broker's ledger. The broker
/// (which holds the CA key; this command does not need it) re-signs the CRL
/// at its next sync.
pub async fn revoke(
    a: RevokeArgs,
    client: kube::Client,
    out: &mut dyn std::io::Write,
) -> Result<()> {
    use crate::revocation::{Entry, LedgerStore, Request, UNKNOWN_EXPIRY_KEEP};
    let now = OffsetDateTime::now_utc();
    let split = |flag: &str, v: &str| -> Result<(String, String)> {
        match v.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok((ns.to_string(), name.to_string()))
            }
            _ => bail!("--{flag} {v:?}: expected NAMESPACE/NAME"),
        }
    };
    let keep = time::Duration::try_from(UNKNOWN_EXPIRY_KEEP).unwrap_or(time::Duration::WEEK);
    let named = named_serials(&a.serial, &a.cert)?;
    let mut requests = Vec::new();
    if let Some(p) = &a.pod {
        let (namespace, pod) = split("pod", p)?;
        requests.push(Request {
            namespace,
            service_account: None,
            pod: Some(pod),
            before: now,
            reason: a.reason.clone(),
        });
    }
    if let Some(s) = &a.service_account {
        let (namespace, sa) = split("service-account", s)?;
        requests.push(Request {
            namespace,
            service_account: Some(sa),
            pod: None,
            before: now,
            reason: a.reason.clone(),
        });
    }
    let store = LedgerStore::new(client, &a.namespace);
    let mut added = 0;
    store
        .update(|ledger, _| {
            // Each serial once; an expiry not given is the recorded
            // certificate's, else kept for UNKNOWN_EXPIRY_KEEP.
            let mut listed: std::collections::HashSet<String> =
                ledger.revoked.iter().map(|e| e.serial.clone()).collect();
            let entries: Vec<Entry> = named
                .iter()
                .filter(|(serial, _)| listed.insert(serial.clone()))
                .map(|(serial, not_after)| Entry {
                    serial: serial.clone(),
                    revoked_at: now,
                    not_after: not_after
                        .or_else(|| {
                            let issued = ledger.issued.iter().find(|i| i.serial == *serial);
                            issued.map(|i| i.not_after)
                        })
                        .unwrap_or(now + keep),
                    reason: a.reason.clone(),
                })
                .collect();
            added = entries.len();
            ledger.revoked.extend(entries);
            ledger.requests.extend(requests.iter().cloned());
            // Due now: the broker re-signs at its next sync.
            ledger.next_update = None;
            Ok(None)
        })
        .await?;
    writeln!(
        out,
        "recorded {} serial(s) ({} listed already) and {} pod/ServiceAccount revocation(s) in ConfigMap {}/{}; the broker re-signs its CRL at its next sync (--revocation-sync-interval, 30s by default)",
        added,
        named.len() - added,
        requests.len(),
        a.namespace,
        crate::revocation::CRL_CONFIGMAP,
    )?;
    Ok(())
}

fn init(a: InitArgs, now: OffsetDateTime, out: &mut dyn std::io::Write) -> Result<()> {
    let cert_path = a.dir.join(CA_CERT_FILE);
    let key_path = a.dir.join(CA_KEY_FILE);
    if !a.force {
        for p in [&cert_path, &key_path] {
            if p.exists() {
                bail!(
                    "{} already exists; refusing to replace the CA (use --force to replace it)",
                    p.display()
                );
            }
        }
    }
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create {}", a.dir.display()))?;
    let ca = CertificateAuthority::create(
        &CaOptions {
            key_type: a.key_type,
            common_name: a.common_name,
            organization: a.organization,
            validity: a.validity,
        },
        now,
    )?;
    write_atomic(&key_path, ca.private_key_pem().as_bytes(), 0o600, a.force)?;
    write_atomic(&cert_path, ca.trust_anchor_pem().as_bytes(), 0o644, a.force)?;
    writeln!(out, "created CA in {}", a.dir.display())?;
    print_info(ca.info(), out)?;
    writeln!(
        out,
        "register {} as the IAM Roles Anywhere trust anchor (source type CERTIFICATE_BUNDLE)",
        cert_path.display()
    )?;
    Ok(())
}

/// Loads the CA kept in `dir`.
pub fn load_ca(dir: &Path) -> Result<CertificateAuthority> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))
    };
    let cert = read(CA_CERT_FILE)?;
    let key = zeroize::Zeroizing::new(read(CA_KEY_FILE)?);
    CertificateAuthority::from_pem(&cert, &key)
        .with_context(|| format!("CA in {} is not usable", dir.display()))
}

fn issue(a: IssueArgs, now: OffsetDateTime, out: &mut dyn std::io::Write) -> Result<()> {
    let identity = WorkloadIdentity::new(&a.trust_domain, &a.namespace, &a.service_account)?;
    let ca = load_ca(&a.dir)?;
    let csr_bytes =
        std::fs::read(&a.csr).with_context(|| format!("cannot read {}", a.csr.display()))?;
    let csr = VerifiedCsr::parse(&csr_bytes)
        .with_context(|| format!("CSR {} refused", a.csr.display()))?;
    let leaf = ca.issue_workload(&csr, &identity, a.validity, now)?;
    match a.out {
        Some(path) => {
            write_atomic(&path, leaf.pem.as_bytes(), 0o644, true)?;
            writeln!(
                out,
                "wrote certificate for {identity} (serial {}, not after {}) to {}",
                leaf.serial,
                leaf.not_after,
                path.display()
            )?;
        }
        None => out.write_all(leaf.pem.as_bytes())?,
    }
    Ok(())
}

fn show(a: ShowArgs, out: &mut dyn std::io::Write) -> Result<()> {
    let p = a.dir.join(CA_CERT_FILE);
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
    let (_, info) = attache_pki::cert::parse_certificate_pem(&text)
        .with_context(|| format!("{} is not a certificate", p.display()))?;
    print_info(&info, out)
}

fn print_info(info: &CertificateInfo, out: &mut dyn std::io::Write) -> Result<()> {
    writeln!(out, "subject:     {}", info.subject)?;
    writeln!(out, "key type:    {}", info.key_type)?;
    writeln!(out, "serial:      {}", info.serial)?;
    writeln!(out, "not before:  {}", info.not_before)?;
    writeln!(out, "not after:   {}", info.not_after)?;
    writeln!(out, "sha256:      {}", info.sha256_fingerprint)?;
    Ok(())
}
