//! An HTTPS upstream for tests: a TLS terminator in front of a plain HTTP server (a mock
//! engine, a scripted server), with a certificate from a CA made for the test. The proxy's
//! tests pass its root as `upstream_ca`; the gateway's tests trust it through
//! [`TlsUpstream::client_config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running TLS terminator forwarding every connection to `backend`.
pub struct TlsUpstream {
    pub addr: SocketAddr,
    /// PEM of the root that signed the terminator's certificate.
    pub root_pem: PathBuf,
    root_der: CertificateDer<'static>,
    task: JoinHandle<()>,
}

impl TlsUpstream {
    /// Listens on 127.0.0.1 with a certificate for `localhost` and `127.0.0.1`; writes its
    /// root to `dir/upstream-root.pem`.
    pub async fn start(backend: SocketAddr, dir: &Path) -> TlsUpstream {
        let root_key = KeyPair::generate().unwrap();
        let mut root_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test upstream root");
        let root = root_params.self_signed(&root_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &root, &root_key)
            .unwrap();
        let root_pem = dir.join("upstream-root.pem");
        std::fs::write(&root_pem, root.pem()).unwrap();

        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut plain) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsUpstream {
            addr,
            root_pem,
            root_der: root.der().clone(),
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A client config (ring) that trusts this upstream's root and nothing else.
    pub fn client_config(&self) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.root_der.clone()).unwrap();
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
    }

    /// Stops accepting; open connections end with their copies.
    pub fn stop(&self) {
        self.task.abort();
    }
}
