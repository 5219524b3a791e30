//! `attache-broker ca init|issue|show`: manage the cluster CA kept in a directory
//! as `ca.pem` (the Roles Anywhere trust anchor) and `ca-key.pem` (mode 0600).

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
    }
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
