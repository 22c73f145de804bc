//! TLS on the service's listener (rustls): a certificate chain and key from PEM files, as
//! certbot and most CAs hand them out, re-read when they change so a renewal needs no restart.
//! ALPN offers h2 (gRPC clients require it) and http/1.1 (REST clients).
//!
//! Handshakes run concurrently, each with a deadline, so a client that stalls mid-handshake
//! holds up nobody else; the finished connections are handed to the HTTP server in order.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use anyhow::{Context, bail};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::{ClientHello, ResolvesServerCert},
        sign::CertifiedKey,
    },
    server::TlsStream,
};

/// The PEM files the listener's certificate comes from.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (certbot's `fullchain.pem`).
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// How often the files are checked for a change.
    pub reload_check: Duration,
}

impl TlsFiles {
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> TlsFiles {
        TlsFiles {
            cert: cert.into(),
            key: key.into(),
            reload_check: Duration::from_secs(10),
        }
    }
}

/// A handshake that takes longer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; connections beyond are closed at once.
const MAX_HANDSHAKES: usize = 512;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks the pair: at least one certificate, a key rustls can sign with, and the
/// key belonging to the leaf certificate.
pub fn load(files: &TlsFiles) -> anyhow::Result<Arc<CertifiedKey>> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("read certificate {}", files.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("certificate {} is not PEM", files.cert.display()))?;
    if certs.is_empty() {
        bail!("{} holds no certificate", files.cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("read private key {}", files.key.display()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .with_context(|| format!("private key {}", files.key.display()))?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().with_context(|| {
        format!(
            "{} is not the key of {}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    Ok(Arc::new(certified))
}

/// When each file was last changed, to notice a renewal.
/// When the certificate and the key file were last modified.
type Stamp = (SystemTime, SystemTime);

fn stamp(files: &TlsFiles) -> Option<Stamp> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((modified(&files.cert)?, modified(&files.key)?))
}

/// Hands out the current certificate; `reload_if_changed` replaces it when the files change
/// and read well. A broken renewal keeps the last good certificate in use.
#[derive(Debug)]
struct Reloading {
    files: TlsFiles,
    current: RwLock<(Arc<CertifiedKey>, Option<Stamp>)>,
}

impl Reloading {
    fn reload_if_changed(&self) {
        let now = stamp(&self.files);
        if now.is_none() || now == self.current.read().unwrap_or_else(|e| e.into_inner()).1 {
            return;
        }
        match load(&self.files) {
            Ok(key) => {
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate changed on disk: now serving the new one");
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = (key, now);
            }
            Err(e) => tracing::warn!(
                "TLS certificate changed on disk but is not usable, still serving the previous one: {e:#}"
            ),
        }
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .0
                .clone(),
        )
    }
}

/// The remote address of a connection, plain or TLS (for `ConnectInfo`).
#[derive(Clone, Copy, Debug)]
pub struct RemoteAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TcpListener>>
    for RemoteAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TcpListener>) -> Self {
        RemoteAddr(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for RemoteAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        RemoteAddr(*stream.remote_addr())
    }
}

/// A TCP listener whose connections come out TLS-terminated.
pub struct TlsListener {
    connections: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

impl TlsListener {
    /// Starts accepting on `listener` with the certificate from `files` (which must load now).
    /// Handshakes are counted in `handshakes` by result (ok, failed, timeout, overload).
    pub fn new(
        listener: TcpListener,
        files: &TlsFiles,
        handshakes: prometheus::IntCounterVec,
    ) -> anyhow::Result<TlsListener> {
        let counter = move |result: &str| handshakes.with_label_values(&[result]).inc();
        let resolver = Arc::new(Reloading {
            files: files.clone(),
            current: RwLock::new((load(files)?, stamp(files))),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let local = listener.local_addr()?;
        let (tx, connections) = mpsc::channel(64);
        let period = files.reload_check;
        let reload = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let r = resolver.clone();
                // File reads off the async threads.
                let _ = tokio::task::spawn_blocking(move || r.reload_if_changed()).await;
            }
        });
        let accept = tokio::spawn(async move {
            let pending = Arc::new(Semaphore::new(MAX_HANDSHAKES));
            loop {
                let (tcp, addr) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = pending.clone().try_acquire_owned() else {
                    counter("overload");
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx, counter) = (acceptor.clone(), tx.clone(), counter.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            counter("ok");
                            let _ = tx.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => {
                            counter("failed");
                            tracing::debug!("TLS handshake from {addr}: {e}");
                        }
                        Err(_) => {
                            counter("timeout");
                            tracing::debug!(
                                "TLS handshake from {addr}: no answer in {HANDSHAKE_TIMEOUT:?}"
                            );
                        }
                    }
                });
            }
        });
        Ok(TlsListener {
            connections,
            local,
            tasks: vec![reload, accept],
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(c) => c,
            // The accept task ended (it only does when aborted): no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}
