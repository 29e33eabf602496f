//! TLS: the certificate a TLS listener presents, read from PEM files and swapped on reload.
//!
//! [`Tls`] holds the rustls server configuration (ring provider, TLS 1.2 and 1.3, ALPN `h2`
//! then `http/1.1`) whose certificate comes from [`Certificate`], a resolver with the current
//! chain and key behind a lock. [`Tls::reload`] reads the files again and swaps them in: only
//! handshakes that start afterwards see the new certificate; connections already open keep
//! their session (TLS never looks at the certificate again after the handshake), so nothing is
//! dropped. A file that does not load (missing, not PEM, a key that does not match the
//! certificate) leaves the old certificate in place and is returned as an error for the caller
//! to log.
//!
//! **Invariant:** the lock is held only to clone or replace an `Arc`, never across I/O or an
//! `.await`; files are read and checked before it is taken.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

/// The ALPN protocols offered, most preferred first (RFC 7301): HTTP/2, then HTTP/1.1 for
/// clients that need it (WebSocket, which Halley does not carry over HTTP/2).
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// What TLS presents (`--tls-cert`, `--tls-key`) and where it is spoken: always on the one
/// port (`HttpConfig::listen`, beside plain HTTP: a connection whose first byte opens a TLS
/// handshake is served as TLS), and on a TLS-only listener too when `listen` is set
/// (`--tls-listen`).
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// A TLS-only listener's address, besides the one port; `None`: the one port only.
    pub listen: Option<SocketAddr>,
    /// PEM file with the certificate chain: the server's certificate first, then the
    /// intermediates.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: PathBuf,
}

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the certificate chain {path}: {error}")]
    Chain {
        path: PathBuf,
        error: rustls::pki_types::pem::Error,
    },
    #[error("{0}: no certificate in it")]
    NoCertificate(PathBuf),
    #[error("reading the private key {path}: {error}")]
    Key {
        path: PathBuf,
        error: rustls::pki_types::pem::Error,
    },
    #[error("the private key {key} does not fit the certificate {cert}: {error}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        error: rustls::Error,
    },
    #[error("building the TLS configuration: {0}")]
    Config(rustls::Error),
}

/// What a loaded certificate is, for the log: its files and the SHA-256 fingerprint of the
/// server's certificate (as `openssl x509 -noout -fingerprint -sha256` prints it).
#[derive(Clone, Debug)]
pub struct Loaded {
    pub cert: PathBuf,
    pub fingerprint: String,
    /// Certificates in the chain, the server's own included.
    pub chain: usize,
}

/// The certificate handshakes are given: the latest that loaded.
#[derive(Debug)]
struct Certificate {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock still holds a whole Arc: a replacement is one assignment.
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        Some(current.clone())
    }
}

/// A TLS listener's configuration, shared by its accept loop and whoever reloads it
/// (SIGHUP in the binary). Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    config: TlsConfig,
    provider: Arc<CryptoProvider>,
    certificate: Arc<Certificate>,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("config", &self.config).finish()
    }
}

impl Tls {
    /// Reads the certificate and key; an error names the file and what is wrong with it.
    pub fn load(config: &TlsConfig) -> Result<(Tls, Loaded), TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (key, loaded) = certified(&config.cert, &config.key, &provider)?;
        let certificate = Arc::new(Certificate {
            current: RwLock::new(Arc::new(key)),
        });
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(certificate.clone());
        server.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        let tls = Tls {
            config: config.clone(),
            provider,
            certificate,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        };
        Ok((tls, loaded))
    }

    /// Reads the files again and, if they load, presents them from the next handshake on.
    /// On an error the certificate in use stays.
    pub fn reload(&self) -> Result<Loaded, TlsError> {
        let (key, loaded) = certified(&self.config.cert, &self.config.key, &self.provider)?;
        let mut current = self
            .certificate
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner());
        *current = Arc::new(key);
        Ok(loaded)
    }

    pub fn config(&self) -> &TlsConfig {
        &self.config
    }

    pub(crate) fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }
}

/// The chain and key of these files, checked to belong together.
fn certified(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, Loaded), TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| TlsError::Chain {
            path: cert.to_owned(),
            error,
        })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate(cert.to_owned()));
    };
    let loaded = Loaded {
        cert: cert.to_owned(),
        fingerprint: fingerprint(leaf),
        chain: chain.len(),
    };
    let private = PrivateKeyDer::from_pem_file(key).map_err(|error| TlsError::Key {
        path: key.to_owned(),
        error,
    })?;
    let mismatch = |error| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        error,
    };
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(mismatch)?;
    let certified = CertifiedKey::new(chain, signing);
    // A key whose public half cannot be compared (rustls says Unknown) is not refused: the
    // handshake would then fail for every client, which the first curl shows at once.
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(error) => return Err(mismatch(error)),
    }
    Ok((certified, loaded))
}

/// `AB:CD:…`, the SHA-256 of a certificate's DER.
fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = Sha256::digest(cert.as_ref());
    let mut text = String::with_capacity(digest.len() * 3);
    for (i, byte) in digest.iter().enumerate() {
        if i > 0 {
            text.push(':');
        }
        text.push_str(&format!("{byte:02X}"));
    }
    text
}
