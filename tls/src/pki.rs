//! A local certificate authority for the internal plane, for `strata dev`, `strata certs`
//! (which `infra/local-cluster.sh` calls) and tests: a CA key and certificate in a directory, and
//! leaf certificates naming one [`Identity`] each, signed by it.
//!
//! Every file is written 0600 from creation, to a temporary name first and then renamed over the
//! old one, so a process reloading its credentials (see [`crate::Credentials`]) reads either
//! the old file or the new one, never half of one. A production deployment may use its own CA
//! instead: any certificate whose URI SAN names the identity (see [`crate::identity`]) serves.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use strata_fs as private_fs;
use time::{Duration, OffsetDateTime};

use crate::identity::{Identity, Role};
use crate::{Credentials, TlsFiles};

/// The CA's certificate and key, in the CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
/// How long a local CA is valid.
pub const CA_VALIDITY_DAYS: i64 = 10 * 365;
/// How long a leaf certificate is valid.
pub const LEAF_VALIDITY_DAYS: i64 = 365;
/// How far before its issue a certificate is already valid (clocks of a cluster differ).
const BACKDATE: Duration = Duration::hours(1);
/// The host names every leaf is valid for besides the ones asked for: loopback.
const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("'{0}' is neither a host name nor an IP address")]
    InvalidHost(String),
    #[error("time {0} ms is out of range")]
    Time(u64),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error(transparent)]
    Tls(#[from] crate::TlsError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io { path: path.to_owned(), source }
}

/// Writes `bytes` to `path` as a private (0600) file, atomically.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = private_fs::file_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)
        .map_err(io_error(&temporary))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io_error(&temporary))?;
    std::fs::rename(&temporary, path).map_err(io_error(path))
}

fn at(now_ms: u64) -> Result<OffsetDateTime, PkiError> {
    let seconds = i64::try_from(now_ms / 1000).map_err(|_| PkiError::Time(now_ms))?;
    OffsetDateTime::from_unix_timestamp(seconds).map_err(|_| PkiError::Time(now_ms))
}

/// A certificate authority whose key is in a directory.
pub struct LocalCa {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl LocalCa {
    /// The CA in `dir`, created (with a new key) when `dir` holds none. `now_ms` starts the
    /// validity of what is created.
    pub fn open_or_create(dir: &Path, now_ms: u64) -> Result<Self, PkiError> {
        private_fs::create_dir_all(dir).map_err(io_error(dir))?;
        let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
        if !cert_path.exists() {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            let mut name = DistinguishedName::new();
            name.push(DnType::OrganizationName, "Strata");
            name.push(DnType::CommonName, "Strata internal CA");
            params.distinguished_name = name;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.not_before = at(now_ms)? - BACKDATE;
            params.not_after = at(now_ms)? + Duration::days(CA_VALIDITY_DAYS);
            let cert = params.self_signed(&key)?;
            // The key first: a certificate without its key would be taken for a whole CA.
            write_private(&key_path, key.serialize_pem().as_bytes())?;
            write_private(&cert_path, cert.pem().as_bytes())?;
        }
        let key_pem = std::fs::read_to_string(&key_path).map_err(io_error(&key_path))?;
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(io_error(&cert_path))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(Self { dir: dir.to_owned(), issuer })
    }

    /// The CA certificate's file.
    pub fn cert_file(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    /// Issues a certificate (and a new key) naming `identity`, valid for loopback and `hosts`,
    /// for both ends of a connection; writes `<out_dir>/<file_stem>.pem` and `.key` and answers
    /// the files a config names.
    pub fn issue(
        &self,
        identity: &Identity,
        hosts: &[String],
        out_dir: &Path,
        file_stem: &str,
        now_ms: u64,
    ) -> Result<TlsFiles, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Strata");
        name.push(DnType::CommonName, identity.to_string());
        params.distinguished_name = name;
        params.subject_alt_names.push(SanType::URI(identity.uri().try_into()?));
        for host in LOOPBACK_HOSTS.iter().copied().chain(hosts.iter().map(String::as_str)) {
            let san = match host.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(host.try_into().map_err(|_| PkiError::InvalidHost(host.to_owned()))?),
            };
            if !params.subject_alt_names.contains(&san) {
                params.subject_alt_names.push(san);
            }
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = at(now_ms)? - BACKDATE;
        params.not_after = at(now_ms)? + Duration::days(LEAF_VALIDITY_DAYS);
        let cert = params.signed_by(&key, &self.issuer)?;
        private_fs::create_dir_all(out_dir).map_err(io_error(out_dir))?;
        let files = TlsFiles {
            ca: self.cert_file(),
            cert: out_dir.join(format!("{file_stem}.pem")),
            key: out_dir.join(format!("{file_stem}.key")),
        };
        write_private(&files.key, key.serialize_pem().as_bytes())?;
        write_private(&files.cert, cert.pem().as_bytes())?;
        Ok(files)
    }

    /// Issues and loads the credentials of the process `name` of `role`, valid for loopback only,
    /// beside the CA (for processes that run next to their CA: `strata dev`, tests).
    pub fn credentials(&self, role: Role, name: &str, now_ms: u64) -> Result<Credentials, PkiError> {
        let identity = Identity::new(role, name)?;
        let files = self.issue(&identity, &[], &self.dir, &format!("{role}-{name}"), now_ms)?;
        Ok(Credentials::load(files)?)
    }
}

/// The credentials of the process `name` of `role`, issued by the CA in `ca_dir` (made there on
/// first use): for tests and single-process setups.
pub fn local_credentials(ca_dir: &Path, role: Role, name: &str, now_ms: u64) -> Result<Credentials, PkiError> {
    LocalCa::open_or_create(ca_dir, now_ms)?.credentials(role, name, now_ms)
}

/// Credentials of `role`/`name` from one CA per test process (in the system's temporary
/// directory, made on first use), for tests that start servers and clients in one process.
pub fn test_credentials(role: Role, name: &str) -> Credentials {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| std::env::temp_dir().join(format!("strata-test-ca-{}", std::process::id())));
    let now_ms = strata_common::Clock::now_ms(&strata_common::SystemClock);
    match local_credentials(dir, role, name, now_ms) {
        Ok(credentials) => credentials,
        Err(e) => panic!("test credentials of {role}/{name}: {e}"),
    }
}

/// A lazily connecting channel to `address`, a process of `server`, presenting
/// [`test_credentials`] of `caller`: for tests that call a server directly.
pub fn test_channel(address: &str, caller: Role, server: Role) -> tonic::transport::Channel {
    let credentials = test_credentials(caller, "test");
    match crate::lazy_channel(address, std::time::Duration::from_secs(60), &credentials, server) {
        Ok(channel) => channel,
        Err(e) => panic!("a channel to {address}: {e}"),
    }
}
