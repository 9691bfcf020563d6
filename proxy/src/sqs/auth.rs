//! SigV4 authentication of SQS requests against tenants' access keys kept in metadata.
//!
//! Keys (and unknown key ids) are cached for [`ACCESS_KEY_CACHE_TTL`], so a revocation reaches
//! every proxy within that time (and this proxy at once when the revocation went through it), and
//! a new key works everywhere within that time after creation at worst. Secrets are never logged.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use strata_common::error::ErrorKind;
use strata_common::proto as pb;
use strata_metadata_client::MetadataClient;

use super::error::SqsError;
use crate::sigv4::{self, SignedParts};

/// How long a looked-up key is trusted before metadata is asked again.
pub const ACCESS_KEY_CACHE_TTL: Duration = Duration::from_secs(5);
/// Cached keys at most; the cache is cleared when it would grow past this.
const ACCESS_KEY_CACHE_ENTRIES_MAX: usize = 10_000;

/// Who a verified request comes from.
pub struct Caller {
    pub tenant: String,
    /// The region of the signature's credential scope (used in ARNs).
    pub region: String,
    /// The access key the request was signed with.
    pub access_key_id: String,
}

pub struct AccessKeys {
    metadata: MetadataClient,
    /// Looked-up keys; `None` records an id metadata does not know, so that requests with made-up
    /// ids do not each cost a metadata call.
    cache: Mutex<HashMap<String, (Option<pb::AccessKey>, Instant)>>,
}

impl AccessKeys {
    pub fn new(metadata: MetadataClient) -> Self {
        Self { metadata, cache: Mutex::new(HashMap::new()) }
    }

    /// Drops a key from the cache (after it was revoked or rotated through this proxy).
    pub fn forget(&self, access_key_id: &str) {
        self.cache.lock().remove(access_key_id);
    }

    async fn lookup(&self, access_key_id: &str) -> Result<Option<pb::AccessKey>, SqsError> {
        let clock = self.metadata.clock();
        if let Some((key, fetched)) = self.cache.lock().get(access_key_id)
            && clock.instant().duration_since(*fetched) < ACCESS_KEY_CACHE_TTL
        {
            return Ok(key.clone());
        }
        let key = match self.metadata.lookup_access_key(access_key_id).await {
            Ok(key) => Some(key),
            Err(e) if e.kind == ErrorKind::AccessKeyNotFound => None,
            Err(e) => return Err(e.into()),
        };
        let mut cache = self.cache.lock();
        if cache.len() >= ACCESS_KEY_CACHE_ENTRIES_MAX {
            cache.clear();
        }
        cache.insert(access_key_id.to_string(), (key.clone(), clock.instant()));
        Ok(key)
    }

    /// What can be checked before the body is read: a well-formed signature of a live access
    /// key. `parts` may carry no body. A stranger without a key is refused before it can make
    /// the service hold its body; the answer verifies the whole request once it is read.
    pub async fn precheck(&self, parts: &SignedParts<'_>, now_ms: u64) -> Result<Signed, SqsError> {
        let signature = sigv4::parse(parts).map_err(sigv4_error)?;
        let key = self.lookup(&signature.access_key_id).await?.ok_or_else(invalid_key)?;
        let signed = Signed { signature, key };
        signed.check_live(now_ms)?;
        Ok(signed)
    }
}

/// A request's signature, read before its body, and the live access key it names.
pub struct Signed {
    signature: sigv4::Signature,
    key: pb::AccessKey,
}

impl Signed {
    /// Verifies the signature over the whole request (`parts` with its body); the caller's
    /// tenant is the key's tenant.
    pub fn verify(self, parts: &SignedParts<'_>, now_ms: u64) -> Result<Caller, SqsError> {
        // The body may have taken a while: a revocation meanwhile counts.
        self.check_live(now_ms)?;
        sigv4::verify(&self.signature, parts, &self.key.secret_access_key, now_ms).map_err(sigv4_error)?;
        Ok(Caller {
            tenant: self.key.tenant,
            region: self.signature.region,
            access_key_id: self.signature.access_key_id,
        })
    }

    fn check_live(&self, now_ms: u64) -> Result<(), SqsError> {
        let revoked = self.key.revoked_at_ms != 0 && now_ms >= self.key.revoked_at_ms;
        if revoked { Err(invalid_key()) } else { Ok(()) }
    }
}

fn invalid_key() -> SqsError {
    SqsError::auth(
        "InvalidClientTokenId",
        403,
        "The security token included in the request is invalid: unknown or revoked access key id.",
    )
}

fn sigv4_error(e: sigv4::SigV4Error) -> SqsError {
    SqsError::auth(e.code(), e.http_status(), e.to_string())
}
