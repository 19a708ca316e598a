//! `linkrift certs`: the cluster's certificate authority and the node certificates the
//! nodes present to each other on the peer and cluster ports (mutual TLS).
//!
//! `certs init DIR` makes the CA (`ca.pem`, and its key `ca-key.pem`, which only the
//! machine that signs node certificates needs); `certs node DIR --name NAME --host H...`
//! makes `NAME.pem` and `NAME-key.pem`, signed by the CA in DIR, valid for every host
//! name and address the other nodes dial it at. Keys are written readable by their owner
//! only, and never over an existing file.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// `linkrift certs ...`.
#[derive(clap::Subcommand)]
pub enum CertsCommand {
    /// Make a new cluster CA in DIR: ca.pem (give it to every node) and ca-key.pem (keep it
    /// where node certificates are signed).
    Init {
        /// Where to write them.
        dir: PathBuf,
        /// Years the CA is valid.
        #[arg(long, default_value_t = 10)]
        years: i32,
    },
    /// Make a node certificate, signed by the CA in DIR: NAME.pem and NAME-key.pem.
    Node {
        /// The directory holding ca.pem and ca-key.pem; the files are written there too.
        dir: PathBuf,
        /// The node's name (the certificate's common name and file names).
        #[arg(long)]
        name: String,
        /// A host name or IP address other nodes reach this one at (repeatable; every one
        /// its `peer` and `cluster` addresses use).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Years the certificate is valid.
        #[arg(long, default_value_t = 2)]
        years: i32,
    },
}

/// Runs a `certs` command; returns what to print.
pub fn run(command: CertsCommand) -> anyhow::Result<String> {
    match command {
        CertsCommand::Init { dir, years } => init(&dir, years),
        CertsCommand::Node {
            dir,
            name,
            hosts,
            years,
        } => node(&dir, &name, &hosts, years),
    }
}

fn validity(params: &mut CertificateParams, years: i32) -> anyhow::Result<()> {
    if !(1..=50).contains(&years) {
        bail!("--years must be 1 to 50, not {years}");
    }
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now
        .replace_year(now.year() + years)
        .context("computing the end of validity")?;
    Ok(())
}

fn init(dir: &Path, years: i32) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = KeyPair::generate().context("generating the CA key")?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        // A name of its own: clients look a certificate's issuer up by name, and two CAs of
        // one name (another cluster's, an old one) make them check the wrong key.
        .push(
            DnType::CommonName,
            format!("Linkrift cluster CA {:08x}", rand::random::<u32>()),
        );
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, years)?;
    let cert = params.self_signed(&key).context("signing the CA")?;
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    write_new(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_new(&cert_path, cert.pem().as_bytes(), false)?;
    Ok(format!(
        "wrote {} (give it to every node as node_tls_ca) and {} (keep it safe: it signs node certificates)\n",
        cert_path.display(),
        key_path.display()
    ))
}

fn node(dir: &Path, name: &str, hosts: &[String], years: i32) -> anyhow::Result<String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        bail!("--name must be letters, digits, '-', '_' and '.', not {name:?}");
    }
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (make the CA first: linkrift certs init {})",
                path.display(),
                dir.display()
            )
        })
    };
    let ca_key = KeyPair::from_pem(&read("ca-key.pem")?).context("reading the CA key")?;
    let issuer = Issuer::from_ca_cert_pem(&read("ca.pem")?, ca_key).context("reading the CA")?;
    let mut params =
        CertificateParams::new(hosts.to_vec()).context("a --host is not a host name or IP")?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params, years)?;
    let key = KeyPair::generate().context("generating the node key")?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the node certificate")?;
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    write_new(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_new(&cert_path, cert.pem().as_bytes(), false)?;
    Ok(format!(
        "wrote {} and {} (the node's node_tls_cert and node_tls_key), for {}\n",
        cert_path.display(),
        key_path.display(),
        hosts.join(", ")
    ))
}

/// Writes a new file (never over an existing one), synced; `secret` files are 0600.
fn write_new(path: &Path, bytes: &[u8], secret: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}
