//! The keys the gateway accepts, held in memory: authentication never waits on the store.
//!
//! A [`KeyRing`] is built from the keys declared in the config file and the active keys of
//! the store, and swapped whole when the store changes. A refresher thread asks the store
//! every [`REFRESH_EVERY`] whether any process committed to it (one cheap SQLite pragma) and
//! reloads only then, so a key revoked with `sluice keys revoke` or the admin API stops
//! working within a second, on every gateway that shares the data directory.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use super::key::KeyDigest;
use super::table::{now_unix, KeyError, KeyRecord, KeyTable};
use crate::services::{AuthError, KeyPrincipal, KeyStore, Principal};

/// How often the refresher looks for changes in the store.
pub const REFRESH_EVERY: Duration = Duration::from_millis(500);

/// One accepted key.
#[derive(Debug)]
struct Accepted {
    digest: KeyDigest,
    principal: Arc<KeyPrincipal>,
    expires_unix: Option<i64>,
}

type Keys = HashMap<KeyDigest, Accepted>;

#[derive(Debug)]
pub struct KeyRing {
    keys: RwLock<Arc<Keys>>,
    declared: Vec<KeyRecord>,
    table: Option<KeyTable>,
}

impl KeyRing {
    /// The keys of `declared` and of `table` (when the gateway has a store).
    pub fn load(
        declared: Vec<KeyRecord>,
        table: Option<KeyTable>,
    ) -> Result<Arc<KeyRing>, KeyError> {
        let ring = KeyRing {
            keys: RwLock::new(Arc::new(Keys::new())),
            declared,
            table,
        };
        ring.reload()?;
        Ok(Arc::new(ring))
    }

    pub fn table(&self) -> Option<&KeyTable> {
        self.table.as_ref()
    }

    /// Rebuilds the accepted keys from the config and the store.
    pub fn reload(&self) -> Result<(), KeyError> {
        let stored = match &self.table {
            Some(t) => t.list(None)?,
            None => Vec::new(),
        };
        let keys: Keys = self
            .declared
            .iter()
            .chain(stored.iter())
            // Expired keys stay, so that their holders are told why they are refused.
            .filter(|k| k.revoked_unix.is_none())
            .map(|k| {
                let accepted = Accepted {
                    digest: k.digest,
                    principal: Arc::new(KeyPrincipal {
                        tenant: k.tenant.clone(),
                        subject: k.subject.clone(),
                        key_name: k.name.clone(),
                        scopes: k.scopes,
                        allowed_models: k.models.clone(),
                        requests_per_minute: k.requests_per_minute,
                        tokens_per_minute: k.tokens_per_minute,
                    }),
                    expires_unix: k.expires_unix,
                };
                (k.digest, accepted)
            })
            .collect();
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
        Ok(())
    }

    /// Starts the thread that reloads the ring when the store changes. It holds the ring
    /// weakly and ends with it.
    pub fn watch_store(ring: &Arc<KeyRing>) {
        let Some(table) = ring.table.clone() else {
            return;
        };
        let weak: Weak<KeyRing> = Arc::downgrade(ring);
        let spawned = std::thread::Builder::new()
            .name("sluice-keys".into())
            .spawn(move || {
                let mut seen = table.version().ok();
                loop {
                    std::thread::sleep(REFRESH_EVERY);
                    let Some(ring) = weak.upgrade() else { return };
                    match table.version() {
                        Ok(v) if Some(v) == seen => {}
                        Ok(v) => match ring.reload() {
                            Ok(()) => seen = Some(v),
                            Err(e) => tracing::warn!(error = %e, "reloading API keys failed; the previous keys stay in force"),
                        },
                        Err(e) => tracing::warn!(error = %e, "checking the key store failed"),
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the key refresher: revoked keys stay valid until restart");
        }
    }

    fn current(&self) -> Arc<Keys> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl KeyStore for KeyRing {
    fn authenticate(&self, token: Option<&[u8]>) -> Result<Principal, AuthError> {
        let token = token.ok_or(AuthError::Missing)?;
        let digest = KeyDigest::of(token);
        let keys = self.current();
        let accepted = keys.get(&digest).ok_or(AuthError::Invalid)?;
        // The map found it by digest; the comparison that decides is constant-time.
        if !accepted.digest.matches(&digest) {
            return Err(AuthError::Invalid);
        }
        if accepted.expires_unix.is_some_and(|e| now_unix() >= e) {
            return Err(AuthError::Expired);
        }
        Ok(Principal::Key(accepted.principal.clone()))
    }
}
