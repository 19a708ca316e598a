//! HTTPS on the public listener, for a node with no proxy in front (`tls_cert`, `tls_key`).
//!
//! TLS handshakes run in their own tasks, at most [`MAX_HANDSHAKES`] at once and each for at
//! most [`HANDSHAKE_TIMEOUT`], so a slow or silent client holds up nobody else's; only
//! finished handshakes reach axum, which serves them like plain connections. The PEM files
//! are read again on SIGHUP: new connections get the new certificate, and files that do not
//! load leave the last good ones in use (logged, counted in
//! `http_tls_reloads_total{result="failed"}`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// TLS handshakes in progress at once; more connections wait in the kernel's backlog.
pub const MAX_HANDSHAKES: usize = 256;
/// How long a client has to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate chain and key of the public listener.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// The certificate chain (PEM), the server's own certificate first.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

impl CertFiles {
    /// Reads both files; an error names the file and what is wrong with it (never the key).
    pub fn load(&self) -> anyhow::Result<Arc<ServerConfig>> {
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("tls_cert {}", self.cert.display()))?;
        if chain.is_empty() {
            anyhow::bail!("tls_cert {} holds no certificate", self.cert.display());
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .with_context(|| format!("tls_key {}", self.key.display()))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .with_context(|| {
                format!(
                    "tls_cert {} and tls_key {} do not make a pair",
                    self.cert.display(),
                    self.key.display()
                )
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// An [`axum::serve::Listener`] that hands over connections once their TLS handshake is done.
pub struct TlsListener {
    done: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    /// The accept loop (which owns the handshakes) and the SIGHUP reloader: both end when
    /// the listener is dropped.
    _tasks: tokio::task::JoinSet<()>,
}

impl TlsListener {
    /// Serves TLS with `files` on `listener`; the files are loaded now (an error if they do
    /// not load) and again on every SIGHUP.
    pub fn new(listener: TcpListener, files: CertFiles) -> anyhow::Result<Self> {
        let local = listener.local_addr()?;
        let current = Arc::new(RwLock::new(files.load()?));
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        let (tx, done) = mpsc::channel(MAX_HANDSHAKES);
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(accept(listener, current.clone(), tx));
        tasks.spawn(async move {
            while hangups.recv().await.is_some() {
                reload(&files, &current);
            }
        });
        Ok(Self {
            done,
            local,
            _tasks: tasks,
        })
    }
}

/// Swaps in newly loaded files, or keeps the old ones when they do not load.
fn reload(files: &CertFiles, current: &RwLock<Arc<ServerConfig>>) {
    match files.load() {
        Ok(config) => {
            *current.write().unwrap_or_else(|p| p.into_inner()) = config;
            metrics::counter!("http_tls_reloads_total", "result" => "ok").increment(1);
            tracing::info!(cert = %files.cert.display(), "HTTPS certificate reloaded");
        }
        Err(e) => {
            metrics::counter!("http_tls_reloads_total", "result" => "failed").increment(1);
            tracing::error!(
                error = format!("{e:#}"),
                "HTTPS certificate files do not load; keeping the previous ones"
            );
        }
    }
}

async fn accept(
    listener: TcpListener,
    current: Arc<RwLock<Arc<ServerConfig>>>,
    done: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let mut handshakes = tokio::task::JoinSet::new();
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accepting an HTTPS connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // Server gone: stop accepting.
            _ = done.closed() => return,
        };
        // Reap finished handshakes so the set does not grow.
        while handshakes.try_join_next().is_some() {}
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(current.read().unwrap_or_else(|p| p.into_inner()).clone());
        let done = done.clone();
        handshakes.spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = done.send((tls, peer)).await;
                }
                Ok(Err(e)) => {
                    metrics::counter!("http_tls_handshakes_failed_total", "reason" => "error")
                        .increment(1);
                    tracing::debug!(%peer, error = %e, "HTTPS handshake failed");
                }
                Err(_) => {
                    metrics::counter!("http_tls_handshakes_failed_total", "reason" => "timeout")
                        .increment(1);
                    tracing::debug!(%peer, "HTTPS handshake timed out");
                }
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.done.recv().await {
            Some(accepted) => accepted,
            // The accept task ended, which it does only when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
