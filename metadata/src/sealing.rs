//! SigV4 secrets sealed at rest under a key-encryption key (KEK).
//!
//! # What it owns
//!
//! [`Keks`]: the KEKs a metadata member holds (AES-256-GCM keys of 32 bytes, each named by an id,
//! from a file or an environment variable holding 64 hex characters). The first one seals new
//! secrets; every one opens what it sealed, so a KEK can be rotated by putting the new one first
//! and keeping the old ones until every secret they sealed is gone (rotated or revoked).
//!
//! A sealed secret is stored in place of the clear one, as `sealed1:<kek id>:<base64 of nonce
//! and ciphertext>`, bound to its access key id (the AEAD's associated data), so a sealed value
//! moved to another key does not open. The metadata log, its snapshots and their copies in the
//! bucket then hold no secret in clear; the members open secrets only to answer those who verify
//! signatures (`LookupAccessKey`) and the caller who created the key.
//!
//! [`seal_clear_secrets`]: on the leader, seals in place the secrets stored in clear before (keys
//! made before the cluster sealed secrets), once the cluster writes format generation 4, and then
//! has the catalog snapshotted so that the clear text leaves the snapshots and their backups.
//!
//! # What it guarantees
//!
//! A secret is sealed only when the cluster writes format generation 3 or later (older releases
//! would take the sealed text for the secret); secrets stored in clear before stay readable, and
//! are sealed in the catalog once it writes generation 4. The log entries that created them keep
//! the clear text until the log is compacted past them.

use std::sync::Arc;
use std::time::Duration;

use crate::error::MemberError;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use serde::Deserialize;
use strata_common::error::StrataError;

use crate::catalog::{MetaCommand, SEAL_CLEAR_SECRETS_GENERATION, Secret};
use crate::server::MetadataNode;

/// What a sealed secret starts with.
pub const SEALED_PREFIX: &str = "sealed1:";
/// Bytes of a KEK.
pub const KEK_BYTES: usize = 32;

/// Where one KEK is read from (a metadata member's config, `[[kek]]`): a file or an
/// environment variable holding 64 hex characters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KekSource {
    pub id: String,
    pub file: Option<std::path::PathBuf>,
    pub env: Option<String>,
}

struct Kek {
    id: String,
    key: LessSafeKey,
}

/// The KEKs of a member; the first seals. Empty: secrets stay in clear (a warning at start).
#[derive(Clone, Default)]
pub struct Keks {
    keys: Arc<Vec<Kek>>,
}

impl std::fmt::Debug for Keks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keks").field("ids", &ids).finish()
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn aad(access_key_id: &str) -> Aad<Vec<u8>> {
    Aad::from(format!("strata-access-key:{access_key_id}").into_bytes())
}

/// Whether a stored secret is sealed.
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(SEALED_PREFIX)
}

impl Keks {
    /// The KEKs `sources` name, in order; an error names the one at fault.
    pub fn load(sources: &[KekSource]) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        for source in sources {
            anyhow::ensure!(valid_id(&source.id), "KEK id '{}' is not 1-64 letters, digits, '-', '_', '.'", source.id);
            let text = match (&source.file, &source.env) {
                (Some(file), None) => std::fs::read_to_string(file)
                    .map_err(|e| anyhow::anyhow!("KEK '{}': {}: {e}", source.id, file.display()))?,
                (None, Some(var)) => {
                    std::env::var(var).map_err(|_| anyhow::anyhow!("KEK '{}': {var} is not set", source.id))?
                }
                _ => anyhow::bail!("KEK '{}' needs exactly one of file and env", source.id),
            };
            let bytes = hex::decode(text.trim())
                .ok()
                .filter(|b| b.len() == KEK_BYTES)
                .ok_or_else(|| anyhow::anyhow!("KEK '{}' is not {} hex characters", source.id, KEK_BYTES * 2))?;
            let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| anyhow::anyhow!("KEK '{}'", source.id))?;
            keys.push(Kek { id: source.id.clone(), key: LessSafeKey::new(key) });
        }
        Ok(Self { keys: Arc::new(keys) })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// `secret` sealed under the first KEK for `access_key_id`; `None` without a KEK.
    pub fn seal(&self, secret: &str, access_key_id: &str) -> Option<Result<String, StrataError>> {
        let kek = self.keys.first()?;
        let nonce = strata_common::random::secret_bytes::<NONCE_LEN>();
        let mut sealed = secret.as_bytes().to_vec();
        if kek
            .key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), aad(access_key_id), &mut sealed)
            .is_err()
        {
            return Some(Err(MemberError::bug("sealing a secret failed", "the AEAD refused").into()));
        }
        let mut body = nonce.to_vec();
        body.extend_from_slice(&sealed);
        let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(body);
        Some(Ok(format!("{SEALED_PREFIX}{}:{encoded}", kek.id)))
    }

    /// The clear secret of a stored one (sealed or not) of `access_key_id`.
    pub fn open(&self, stored: &str, access_key_id: &str) -> Result<String, StrataError> {
        let Some(rest) = stored.strip_prefix(SEALED_PREFIX) else { return Ok(stored.to_owned()) };
        let malformed =
            |why: &str| MemberError::damaged("a sealed secret is malformed", format_args!("{access_key_id}: {why}"));
        let (id, encoded) = rest.split_once(':').ok_or_else(|| malformed("no KEK id"))?;
        let kek = self.keys.iter().find(|k| k.id == id).ok_or_else(|| {
            MemberError::damaged(
                "a secret is sealed under a KEK this member does not hold",
                format_args!("{access_key_id}: KEK '{id}'"),
            )
        })?;
        let body =
            base64::engine::general_purpose::STANDARD_NO_PAD.decode(encoded).map_err(|_| malformed("not base64"))?;
        if body.len() < NONCE_LEN {
            return Err(malformed("shorter than its nonce").into());
        }
        let (nonce, ciphertext) = body.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| malformed("bad nonce"))?;
        let mut buffer = ciphertext.to_vec();
        let clear = kek.key.open_in_place(nonce, aad(access_key_id), &mut buffer).map_err(|_| {
            MemberError::damaged("a sealed secret does not open", format_args!("{access_key_id}: KEK '{id}'"))
        })?;
        Ok(String::from_utf8(clear.to_vec()).map_err(|_| malformed("not text"))?)
    }
}

/// How often the leader looks for secrets stored in clear.
const SEAL_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Most secrets sealed in one look (the next look goes on).
const SEALS_PER_CHECK_MAX: usize = 100;

/// Every [`SEAL_CHECK_INTERVAL`] while `node` leads, holds KEKs and the cluster writes
/// [`SEAL_CLEAR_SECRETS_GENERATION`]: seals the secrets stored in clear in place, then snapshots
/// the catalog. Runs until aborted.
pub(crate) async fn seal_clear_secrets(node: Arc<MetadataNode>) {
    // Secrets were sealed since the last snapshot: one snapshot once none is left in clear, not
    // one per batch.
    let mut snapshot_due = false;
    loop {
        node.clock.sleep(SEAL_CHECK_INTERVAL).await;
        match seal_once(&node).await {
            Ok(0) if snapshot_due => match node.snapshot_now().await {
                Ok(()) => snapshot_due = false,
                Err(e) => tracing::warn!(error = %e, "snapshotting the sealed secrets failed; will retry"),
            },
            Ok(0) => {}
            Ok(sealed) => {
                snapshot_due = true;
                tracing::info!(sealed, "secrets stored in clear are sealed now");
            }
            Err(e) => tracing::warn!(error = %e, "sealing the secrets stored in clear failed; will retry"),
        }
    }
}

/// One look: how many secrets were sealed.
async fn seal_once(node: &MetadataNode) -> Result<usize, StrataError> {
    let keks = node.keks();
    if !node.is_leader() || keks.is_empty() || node.catalog().format_generation() < SEAL_CLEAR_SECRETS_GENERATION {
        return Ok(0);
    }
    let clear = node.catalog().clear_secrets(SEALS_PER_CHECK_MAX);
    for (access_key_id, secret) in &clear {
        let Some(sealed) = keks.seal(&secret.0, access_key_id) else { return Ok(0) };
        let command = MetaCommand::SealSecret { access_key_id: access_key_id.clone(), secret: Secret(sealed?) };
        node.propose(None, command)
            .await
            .map_err(|status| MemberError::quorum("sealing a secret", status.message()))?;
    }
    Ok(clear.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keks(ids_and_hex: &[(&str, &str)]) -> Keks {
        let dir = tempfile::tempdir().unwrap();
        let sources: Vec<KekSource> = ids_and_hex
            .iter()
            .map(|(id, hex)| {
                let file = dir.path().join(id);
                std::fs::write(&file, hex).unwrap();
                KekSource { id: (*id).to_owned(), file: Some(file), env: None }
            })
            .collect();
        Keks::load(&sources).unwrap()
    }

    #[test]
    fn sealed_secrets_open_only_for_their_key_id_and_under_a_held_kek() {
        let old = keks(&[("old", &"11".repeat(32))]);
        let sealed = old.seal("the secret", "SKAAA").unwrap().unwrap();
        assert!(is_sealed(&sealed) && !sealed.contains("the secret"), "{sealed}");
        assert_eq!(old.open(&sealed, "SKAAA").unwrap(), "the secret");
        assert!(old.open(&sealed, "SKBBB").is_err(), "a sealed value moved to another key opens");
        // Rotation: the new KEK seals, the old one still opens what it sealed.
        let rotated = keks(&[("new", &"22".repeat(32)), ("old2", &"11".repeat(32))]);
        let renamed = sealed.replace(":old:", ":old2:");
        assert_eq!(rotated.open(&renamed, "SKAAA").unwrap(), "the secret");
        assert!(rotated.seal("x", "SKAAA").unwrap().unwrap().starts_with("sealed1:new:"));
        assert!(keks(&[("other", &"33".repeat(32))]).open(&sealed, "SKAAA").is_err());
        // Clear secrets (stored before sealing) read as they are; no KEK seals nothing.
        assert_eq!(Keks::default().open("clear", "SKAAA").unwrap(), "clear");
        assert!(Keks::default().seal("x", "SKAAA").is_none());
    }
}
