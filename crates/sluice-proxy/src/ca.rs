//! The certificate authority behind TLS interception: a CA key and certificate the proxy
//! generates once per machine (or `--ca-dir`) and reuses, and the per-host certificates it
//! signs for CONNECT tunnels, cached in memory.
//!
//! Clients must trust the CA certificate (`sluice proxy ca` says how); nothing else about
//! the proxy needs it. The key file is created readable by its owner only.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;
use sha2::{Digest, Sha256};

use crate::error::ProxyError;

/// The CA certificate, PEM; the file clients are told to trust.
pub const CA_CERT_FILE: &str = "sluice-ca.pem";
/// The CA private key, PEM (PKCS#8), mode 0600.
pub const CA_KEY_FILE: &str = "sluice-ca-key.pem";

const DAY: Duration = Duration::from_secs(24 * 3600);
/// Ten years: long enough that trusting it is a one-time chore.
const CA_VALIDITY: Duration = Duration::from_secs(3650 * 24 * 3600);
/// One year, within what browsers and TLS libraries accept for a leaf.
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates start this far in the past, so a client whose clock runs behind still
/// accepts them.
const BACKDATE: Duration = DAY;
/// A cached leaf is reissued after this, well before it expires, so a proxy running for
/// months never serves an expired certificate.
const LEAF_REISSUE_AFTER: Duration = Duration::from_secs(30 * 24 * 3600);
/// Distinct hosts whose certificates are kept; beyond it the least recently used goes.
const MAX_CACHED_LEAVES: usize = 1024;
/// When another process is creating the CA at the same moment, how long to wait for it.
const CREATE_RACE_WAIT: Duration = Duration::from_secs(3);

/// The CA directory when none is given: `$SLUICE_CA_DIR`, else `$XDG_DATA_HOME/sluice/ca`,
/// else `~/.local/share/sluice/ca`.
pub fn default_ca_dir() -> Result<PathBuf, ProxyError> {
    ca_dir_from(|name| std::env::var_os(name))
}

fn ca_dir_from(var: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf, ProxyError> {
    let set = |name: &str| var(name).filter(|v| !v.is_empty());
    if let Some(dir) = set("SLUICE_CA_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(data) = set("XDG_DATA_HOME") {
        return Ok(PathBuf::from(data).join("sluice").join("ca"));
    }
    if let Some(home) = set("HOME") {
        return Ok(PathBuf::from(home)
            .join(".local")
            .join("share")
            .join("sluice")
            .join("ca"));
    }
    Err(ProxyError::NoCaDir)
}

/// A loaded CA that signs per-host certificates.
pub struct CertificateAuthority {
    cert_path: PathBuf,
    cert_der: CertificateDer<'static>,
    /// The CA as rcgen needs it to sign: rebuilt from the key, with the same subject as the
    /// certificate on disk (the subject is derived from the key, see [`ca_params`]).
    issuer: rcgen::Certificate,
    key: KeyPair,
    leaves: Mutex<LeafCache>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Loads the CA in `dir`, generating it first when the directory holds none.
    pub fn load_or_create(dir: &Path) -> Result<CertificateAuthority, ProxyError> {
        if let Some(ca) = Self::load(dir)? {
            return Ok(ca);
        }
        if create(dir)? {
            return Self::load(dir)?.ok_or_else(|| missing(dir, CA_CERT_FILE));
        }
        // Another process created it first; its files appear one after the other.
        let deadline = Instant::now() + CREATE_RACE_WAIT;
        loop {
            match Self::load(dir) {
                Ok(Some(ca)) => return Ok(ca),
                Ok(None) | Err(ProxyError::CaRead { .. }) | Err(ProxyError::CaInvalid { .. })
                    if Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(None) => return Err(missing(dir, CA_CERT_FILE)),
                Err(e) => return Err(e),
            }
        }
    }

    /// Loads the CA in `dir`; `None` when neither of its files exists.
    pub fn load(dir: &Path) -> Result<Option<CertificateAuthority>, ProxyError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let (cert_exists, key_exists) = (cert_path.exists(), key_path.exists());
        if !cert_exists && !key_exists {
            return Ok(None);
        }
        if !key_exists {
            return Err(missing(dir, CA_KEY_FILE));
        }
        if !cert_exists {
            return Err(missing(dir, CA_CERT_FILE));
        }
        check_key_permissions(&key_path)?;
        let key_pem = read_text(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| ProxyError::CaInvalid {
            path: key_path.clone(),
            reason: format!("not a PEM private key: {e}"),
        })?;
        let cert_pem = std::fs::read(&cert_path).map_err(|source| ProxyError::CaRead {
            path: cert_path.clone(),
            source,
        })?;
        let cert_der =
            CertificateDer::from_pem_slice(&cert_pem).map_err(|e| ProxyError::CaInvalid {
                path: cert_path.clone(),
                reason: format!("not a PEM certificate: {e}"),
            })?;
        // The certificate carries the key's public half and the subject derived from it;
        // anything else was not generated for this key.
        let subject = ca_common_name(&key);
        if !contains(&cert_der, key.public_key_raw()) || !contains(&cert_der, subject.as_bytes()) {
            return Err(ProxyError::CaInvalid {
                path: cert_path,
                reason: format!(
                    "it is not the certificate of the key in {}",
                    key_path.display()
                ),
            });
        }
        let issuer = ca_params(&key, SystemTime::now())
            .self_signed(&key)
            .map_err(|e| ProxyError::CaInvalid {
                path: key_path.clone(),
                reason: format!("cannot sign with this key: {e}"),
            })?;
        Ok(Some(CertificateAuthority {
            cert_path,
            cert_der,
            issuer,
            key,
            leaves: Mutex::new(LeafCache::default()),
        }))
    }

    /// The CA certificate file clients must trust.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// A TLS server config presenting a certificate for `host` (a DNS name or an IP
    /// address, IPv6 with or without brackets), issued on first use and cached.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, ProxyError> {
        let host = host.to_ascii_lowercase();
        if let Some(config) = self.cached(&host) {
            return Ok(config);
        }
        let config = Arc::new(self.issue(&host)?);
        let mut cache = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(host, config.clone());
        Ok(config)
    }

    /// How many host certificates are cached (for tests and diagnostics).
    pub fn cached_leaves(&self) -> usize {
        self.leaves.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn cached(&self, host: &str) -> Option<Arc<ServerConfig>> {
        let mut cache = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(host)
    }

    fn issue(&self, host: &str) -> Result<ServerConfig, ProxyError> {
        let fail = |reason: String| ProxyError::Certificate {
            subject: host.to_owned(),
            reason,
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let san = match bare.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                // rcgen takes any ASCII; a name no client could verify is refused here.
                rustls::pki_types::DnsName::try_from(host)
                    .map_err(|e| fail(format!("not a valid DNS name: {e}")))?;
                SanType::DnsName(
                    host.to_owned()
                        .try_into()
                        .map_err(|e| fail(format!("not a valid DNS name: {e}")))?,
                )
            }
        };
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![san];
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, bare);
        params.distinguished_name = name;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + LEAF_VALIDITY).into();
        let leaf_key = KeyPair::generate().map_err(|e| fail(e.to_string()))?;
        let leaf = params
            .signed_by(&leaf_key, &self.issuer, &self.key)
            .map_err(|e| fail(e.to_string()))?;
        let chain = vec![leaf.der().clone(), self.cert_der.clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| fail(e.to_string()))?
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .map_err(|e| fail(e.to_string()))?;
        // The decrypted stream is served as HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// Per-host server configs, least recently used evicted beyond [`MAX_CACHED_LEAVES`].
#[derive(Default)]
struct LeafCache {
    entries: HashMap<String, CachedLeaf>,
    clock: u64,
}

struct CachedLeaf {
    config: Arc<ServerConfig>,
    issued: Instant,
    last_used: u64,
}

impl LeafCache {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn get(&mut self, host: &str) -> Option<Arc<ServerConfig>> {
        self.clock += 1;
        let clock = self.clock;
        let leaf = self.entries.get_mut(host)?;
        if leaf.issued.elapsed() > LEAF_REISSUE_AFTER {
            return None;
        }
        leaf.last_used = clock;
        Some(leaf.config.clone())
    }

    fn insert(&mut self, host: String, config: Arc<ServerConfig>) {
        self.clock += 1;
        if self.entries.len() >= MAX_CACHED_LEAVES && !self.entries.contains_key(&host) {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, leaf)| leaf.last_used)
                .map(|(h, _)| h.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(
            host,
            CachedLeaf {
                config,
                issued: Instant::now(),
                last_used: self.clock,
            },
        );
    }
}

/// `sluice proxy CA <16 hex digits of the key's SHA-256>`: unique per generated CA, so two
/// machines' CAs never share a name in a trust store, and recomputable from the key alone.
fn ca_common_name(key: &KeyPair) -> String {
    let digest = Sha256::digest(key.public_key_raw());
    let id: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("sluice proxy CA {id}")
}

fn ca_params(key: &KeyPair, now: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "sluice");
    name.push(DnType::CommonName, ca_common_name(key));
    params.distinguished_name = name;
    // Path length 0: it signs leaves, never other CAs.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + CA_VALIDITY).into();
    params
}

/// Generates a CA into `dir`. `false` when another process created one first.
fn create(dir: &Path) -> Result<bool, ProxyError> {
    std::fs::create_dir_all(dir).map_err(|source| ProxyError::CaWrite {
        path: dir.to_owned(),
        source,
    })?;
    let key = KeyPair::generate().map_err(|e| ProxyError::Certificate {
        subject: "the proxy CA".to_owned(),
        reason: e.to_string(),
    })?;
    let cert = ca_params(&key, SystemTime::now())
        .self_signed(&key)
        .map_err(|e| ProxyError::Certificate {
            subject: "the proxy CA".to_owned(),
            reason: e.to_string(),
        })?;
    let key_path = dir.join(CA_KEY_FILE);
    let cert_path = dir.join(CA_CERT_FILE);
    let suffix = format!("{}.tmp", std::process::id());
    let key_temp = dir.join(format!(".{CA_KEY_FILE}.{suffix}"));
    let cert_temp = dir.join(format!(".{CA_CERT_FILE}.{suffix}"));
    let cleanup = || {
        let _ = std::fs::remove_file(&key_temp);
        let _ = std::fs::remove_file(&cert_temp);
    };
    let written = write_new(&key_temp, key.serialize_pem().as_bytes(), 0o600)
        .map_err(|source| ProxyError::CaWrite {
            path: key_path.clone(),
            source,
        })
        .and_then(|()| {
            write_new(&cert_temp, cert.pem().as_bytes(), 0o644).map_err(|source| {
                ProxyError::CaWrite {
                    path: cert_path.clone(),
                    source,
                }
            })
        });
    if let Err(e) = written {
        cleanup();
        return Err(e);
    }
    // A hard link fails when the target exists: of two processes creating the CA at once,
    // exactly one gets its key in place, and only that one installs its certificate.
    match std::fs::hard_link(&key_temp, &key_path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            cleanup();
            return Ok(false);
        }
        Err(source) => {
            cleanup();
            return Err(ProxyError::CaWrite {
                path: key_path,
                source,
            });
        }
    }
    let renamed = std::fs::rename(&cert_temp, &cert_path);
    cleanup();
    renamed.map_err(|source| ProxyError::CaWrite {
        path: cert_path,
        source,
    })?;
    tracing::info!("generated the proxy CA in {}", dir.display());
    Ok(true)
}

/// Creates `path` (which must not exist) with `mode` from the start, so the key is never
/// readable by others, not even for a moment.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path)?;
    // The umask may have removed bits the certificate needs (world-readable).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    file.write_all(bytes)?;
    file.sync_all()
}

/// Refuses a key other users can read, as ssh does: it could sign certificates for any
/// site the machine trusts the CA for.
fn check_key_permissions(path: &Path) -> Result<(), ProxyError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|source| ProxyError::CaRead {
            path: path.to_owned(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(ProxyError::CaInvalid {
                path: path.to_owned(),
                reason: format!(
                    "the private key is accessible to other users (mode {mode:o}); run `chmod 600 {}`",
                    path.display()
                ),
            });
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn read_text(path: &Path) -> Result<String, ProxyError> {
    std::fs::read_to_string(path).map_err(|source| ProxyError::CaRead {
        path: path.to_owned(),
        source,
    })
}

fn missing(dir: &Path, file: &str) -> ProxyError {
    let other = if file == CA_KEY_FILE {
        CA_CERT_FILE
    } else {
        CA_KEY_FILE
    };
    ProxyError::CaInvalid {
        path: dir.join(file),
        reason: format!("the file is missing while {other} exists"),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn the_ca_dir_comes_from_the_first_variable_set() {
        let all = [
            ("SLUICE_CA_DIR", "/a"),
            ("XDG_DATA_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(ca_dir_from(env(&all)).unwrap(), PathBuf::from("/a"));
        assert_eq!(
            ca_dir_from(env(&all[1..])).unwrap(),
            PathBuf::from("/x/sluice/ca")
        );
        assert_eq!(
            ca_dir_from(env(&[("SLUICE_CA_DIR", ""), ("HOME", "/h")])).unwrap(),
            PathBuf::from("/h/.local/share/sluice/ca")
        );
        assert!(matches!(ca_dir_from(env(&[])), Err(ProxyError::NoCaDir)));
    }

    #[test]
    fn the_leaf_cache_is_bounded_and_evicts_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let config = ca.server_config("a.example").unwrap();
        let mut cache = LeafCache::default();
        for i in 0..MAX_CACHED_LEAVES {
            cache.insert(format!("h{i}"), config.clone());
        }
        // Touch h0 so that h1 is now the least recently used.
        assert!(cache.get("h0").is_some());
        cache.insert("new".to_owned(), config);
        assert_eq!(cache.len(), MAX_CACHED_LEAVES);
        assert!(cache.get("h0").is_some());
        assert!(cache.get("h1").is_none());
        assert!(cache.get("new").is_some());
    }
}
