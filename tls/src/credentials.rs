//! A process's credentials for the internal plane: the CA it trusts, its certificate and key,
//! read from the files its config names and read again when they change.
//!
//! Each new connection, accepted or opened, first checks the files' size and modification time;
//! when either changed the files are read again and the new certificate serves that connection
//! and every later one. Connections already open keep the session they negotiated. A change that
//! does not load (a key that does not match the certificate, a file half copied) is logged and
//! the credentials loaded last stay in use until the files load again: a rotation never leaves a
//! process without credentials. TLS 1.3 only; both ends present a certificate of the CA.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::Deserialize;

use crate::identity::{Identity, IdentityError};

/// The files of a process's credentials, as its config names them (all PEM):
///
/// ```toml
/// [tls]
/// ca = "/etc/strata/tls/ca.pem"          # the CA(s) whose certificates this process trusts
/// cert = "/etc/strata/tls/storage-1.pem" # this process's certificate (and its chain)
/// key = "/etc/strata/tls/storage-1.key"  # its private key (keep it 0600)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: no {what} in it (PEM expected)")]
    Pem { path: PathBuf, what: &'static str },
    #[error("{path}: {source}")]
    Identity { path: PathBuf, source: IdentityError },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// What identifies one version of the files: each one's inode (a file replaced by a rename
/// is a new one), size and modification time.
type Stamp = Vec<(u64, u64, Option<SystemTime>)>;

fn stamp(files: &TlsFiles) -> Stamp {
    [&files.ca, &files.cert, &files.key]
        .iter()
        .map(|path| std::fs::metadata(path).map(|m| (m.ino(), m.len(), m.modified().ok())).unwrap_or((0, 0, None)))
        .collect()
}

/// One loaded version of the credentials.
pub(crate) struct Loaded {
    pub(crate) identity: Identity,
    pub(crate) server: Arc<ServerConfig>,
    pub(crate) client: Arc<ClientConfig>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io { path: path.to_owned(), source })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.to_owned(), what: "certificate" });
    }
    Ok(certs)
}

fn load(files: &TlsFiles) -> Result<Loaded, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in certificates(&files.ca)? {
        roots.add(ca)?;
    }
    let roots = Arc::new(roots);
    let chain = certificates(&files.cert)?;
    let identity = Identity::of_certificate(&chain[0])
        .map_err(|source| TlsError::Identity { path: files.cert.clone(), source })?;
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?)
        .map_err(|_| TlsError::Pem { path: files.key.clone(), what: "private key" })?;

    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())?;
    server.alpn_protocols = vec![b"h2".to_vec()];

    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded { identity, server: Arc::new(server), client: Arc::new(client) })
}

struct State {
    loaded: Arc<Loaded>,
    /// The files' stamp when `loaded` was read, or when they last failed to load (so a broken
    /// version is reported once, not on every connection).
    seen: Stamp,
}

/// A process's credentials, reloaded when their files change. Cheap to clone.
#[derive(Clone)]
pub struct Credentials {
    files: Arc<TlsFiles>,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("files", &self.files).finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads the credentials `files` name; an error names the file at fault.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let seen = stamp(&files);
        let loaded = Arc::new(load(&files)?);
        Ok(Self { files: Arc::new(files), state: Arc::new(Mutex::new(State { loaded, seen })) })
    }

    /// The identity this process's certificate names (as loaded last).
    pub fn identity(&self) -> Identity {
        self.state.lock().loaded.identity.clone()
    }

    /// The credentials for a new connection: the files again if they changed.
    pub(crate) fn current(&self) -> Arc<Loaded> {
        let now = stamp(&self.files);
        let mut state = self.state.lock();
        if now != state.seen {
            state.seen = now;
            match load(&self.files) {
                Ok(loaded) => {
                    tracing::info!(identity = %loaded.identity, "TLS credentials reloaded");
                    state.loaded = Arc::new(loaded);
                }
                Err(e) => tracing::error!(error = %e, "TLS credentials changed but do not load; keeping the last ones"),
            }
        }
        state.loaded.clone()
    }
}
