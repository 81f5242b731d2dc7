//! TLS termination on the gateway's listener (`[server.tls]`), for deployments without an
//! ingress in front.
//!
//! - [`CertStore`]: the certificate and key from their PEM files, swapped in place by
//!   [`CertStore::reload`] (on SIGHUP in `sluice serve`): new handshakes get the new pair,
//!   open connections keep theirs, and a pair that fails to load leaves the old one serving.
//! - `front`: a TLS connection's HTTP/1.1, served by hyper (the gateway's own server is
//!   plaintext and frozen) into the same request path: the chat POST through the phases on a
//!   `HeadView`, everything else through the router, under the same client limits.

mod front;

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub(crate) use front::serve_connection;

/// `[server.tls]`, checked: where the pair is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the server certificate first, then its intermediates.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why a certificate pair could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate file {}: {reason}", path.display())]
    Cert { path: PathBuf, reason: String },
    #[error("cannot read the private key file {}: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    #[error("the private key in {} does not match the certificate in {}: {reason}", key.display(), cert.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

impl TlsFiles {
    /// Reads and checks the pair: at least one certificate, a key the provider can sign
    /// with, and the key belonging to the first certificate.
    pub fn load(&self) -> Result<CertifiedKey, TlsError> {
        let cert_error = |reason: String| TlsError::Cert {
            path: self.cert.clone(),
            reason,
        };
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| cert_error(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cert_error(e.to_string()))?;
        if chain.is_empty() {
            return Err(cert_error("it holds no CERTIFICATE block".into()));
        }
        let key_error = |reason: String| TlsError::Key {
            path: self.key.clone(),
            reason,
        };
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| key_error(e.to_string()))?;
        let provider = rustls::crypto::ring::default_provider();
        let certified =
            CertifiedKey::from_der(chain, key, &provider).map_err(|e| TlsError::Mismatch {
                cert: self.cert.clone(),
                key: self.key.clone(),
                reason: e.to_string(),
            })?;
        Ok(certified)
    }
}

/// The pair every new handshake is answered with; replaced whole by [`CertStore::reload`].
#[derive(Debug)]
pub struct CertStore {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    pub fn open(files: TlsFiles) -> Result<CertStore, TlsError> {
        let current = RwLock::new(Arc::new(files.load()?));
        Ok(CertStore { files, current })
    }

    /// Reads the files again. On success new handshakes use the new pair; on failure the
    /// old one keeps serving and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(self.files.load()?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// The listener's TLS: the certificate store and the rustls configuration over it.
pub struct TlsTermination {
    store: Arc<CertStore>,
    config: Arc<rustls::ServerConfig>,
}

impl TlsTermination {
    pub fn start(files: &TlsFiles) -> Result<TlsTermination, TlsError> {
        let store = Arc::new(CertStore::open(files.clone())?);
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Cert {
            path: files.cert.clone(),
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(store.clone());
        // HTTP/1.1 only: a client offering h2 alone is refused in the handshake rather than
        // spoken to in a protocol it did not ask for.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsTermination {
            store,
            config: Arc::new(config),
        })
    }

    pub fn store(&self) -> &Arc<CertStore> {
        &self.store
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }

    /// Reloads the pair on every SIGHUP for as long as the process runs, logging the
    /// outcome. Call from within a tokio runtime.
    pub fn reload_on_sighup(self: &Arc<Self>) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = signal(SignalKind::hangup())?;
        let tls = self.clone();
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                match tls.store.reload() {
                    Ok(()) => tracing::info!(
                        cert = %tls.store.files.cert.display(),
                        "SIGHUP: TLS certificate reloaded; new connections use it"
                    ),
                    Err(e) => tracing::error!(
                        error = %e,
                        "SIGHUP: TLS certificate not reloaded; the previous one keeps serving"
                    ),
                }
            }
        });
        Ok(())
    }
}
