//! Mutual TLS for the node's own connections (the peer port here, the cluster port in
//! `linkrift-actors`): every node presents a certificate signed by the cluster's CA and
//! accepts only peers that do (`linkrift certs` makes them).
//!
//! The files are read again when they change (checked at most once a second, when a
//! connection is opened or accepted), so certificates are replaced without a restart;
//! connections already open keep the certificate they were made with. A file that no
//! longer loads keeps the last good configuration in use, with a warning and
//! `tls_reload_errors_total`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Where a node's TLS material is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA's certificate (PEM; several for a CA rotation).
    pub ca: PathBuf,
    /// This node's certificate chain (PEM).
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
}

/// The node's TLS configurations, kept up to date with their files.
#[derive(Clone)]
pub struct Tls {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.inner.files)
            .finish()
    }
}

struct Inner {
    files: TlsFiles,
    loaded: Mutex<Loaded>,
}

struct Loaded {
    stamp: Vec<Option<(SystemTime, u64)>>,
    checked: Instant,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

const RECHECK: Duration = Duration::from_secs(1);

impl Tls {
    /// Loads `files`; an error says which file and what is wrong with it.
    pub fn load(files: TlsFiles) -> io::Result<Self> {
        let stamp = stamp(&files);
        let (server, client) = build(&files)?;
        Ok(Self {
            inner: Arc::new(Inner {
                files,
                loaded: Mutex::new(Loaded {
                    stamp,
                    checked: Instant::now(),
                    server: Arc::new(server),
                    client: Arc::new(client),
                }),
            }),
        })
    }

    /// The files it reads.
    pub fn files(&self) -> &TlsFiles {
        &self.inner.files
    }

    fn current(&self) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let mut loaded = self.inner.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.checked.elapsed() >= RECHECK {
            loaded.checked = Instant::now();
            let now = stamp(&self.inner.files);
            if now != loaded.stamp {
                loaded.stamp = now;
                match build(&self.inner.files) {
                    Ok((server, client)) => {
                        loaded.server = Arc::new(server);
                        loaded.client = Arc::new(client);
                        tracing::info!(cert = %self.inner.files.cert.display(), "TLS certificates reloaded");
                    }
                    Err(e) => {
                        metrics::counter!("tls_reload_errors_total").increment(1);
                        tracing::warn!(error = %e, "TLS files changed but do not load; keeping the previous ones");
                    }
                }
            }
        }
        (loaded.server.clone(), loaded.client.clone())
    }

    /// Accepts connections: requires a client certificate signed by the CA.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current().0)
    }

    /// Opens connections: presents this node's certificate, and checks the server's
    /// against the CA and the host (name or address) dialed.
    pub fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.current().1)
    }
}

/// The name to check a peer's certificate against: the host of `addr` (`host:port`).
pub fn server_name(addr: &str) -> io::Result<ServerName<'static>> {
    let host = match addr.rsplit_once(':') {
        Some((host, _port)) => host,
        None => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr:?} names no host a certificate can be checked against: {e}"),
        )
    })
}

fn stamp(files: &TlsFiles) -> Vec<Option<(SystemTime, u64)>> {
    [&files.ca, &files.cert, &files.key]
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

fn bad(path: &Path, what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} ({what}): {e}", path.display()),
    )
}

fn build(files: &TlsFiles) -> io::Result<(ServerConfig, ClientConfig)> {
    let certs = |path: &Path, what: &str| -> io::Result<Vec<CertificateDer<'static>>> {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(path, what, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(path, what, e))?;
        if certs.is_empty() {
            return Err(bad(path, what, "no certificate in it"));
        }
        Ok(certs)
    };
    let mut roots = RootCertStore::empty();
    for ca in certs(&files.ca, "tls_ca")? {
        roots.add(ca).map_err(|e| bad(&files.ca, "tls_ca", e))?;
    }
    let roots = Arc::new(roots);
    let chain = certs(&files.cert, "tls_cert")?;
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|e| bad(&files.key, "tls_key", e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls_err = |e: rustls::Error| bad(&files.cert, "tls_cert and tls_key", e);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| bad(&files.ca, "tls_ca", e))?;
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(tls_err)?;
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(tls_err)?;
    Ok((server, client))
}
