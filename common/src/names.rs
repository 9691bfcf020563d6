//! Validation of tenant ids and queue names, shared so every front door accepts the same set.

use crate::error::{ErrorKind, StrataError};

/// Longest tenant id.
pub const TENANT_ID_CHARS_MAX: usize = 64;
/// Longest queue name (SQS: 80 characters).
pub const QUEUE_NAME_CHARS_MAX: usize = 80;

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// Tenant ids that cannot be used: an SQS queue URL is `/<tenant>/<queue>`, `/v1/...` is the
/// native API, and the system tenant owns Strata's internal queues.
const RESERVED_TENANTS: [&str; 2] = ["v1", crate::metering::SYSTEM_TENANT];

/// A tenant id is 1–64 characters of `[A-Za-z0-9_-]`, and not reserved.
pub fn validate_tenant(tenant: &str) -> Result<(), StrataError> {
    if RESERVED_TENANTS.contains(&tenant) {
        return Err(StrataError::new(ErrorKind::InvalidParameter, format!("tenant id '{tenant}' is reserved")));
    }
    if tenant.is_empty() || tenant.len() > TENANT_ID_CHARS_MAX || !tenant.chars().all(allowed) {
        return Err(StrataError::new(
            ErrorKind::InvalidParameter,
            format!("tenant id must be 1-{TENANT_ID_CHARS_MAX} characters of A-Z, a-z, 0-9, '-' and '_'"),
        ));
    }
    Ok(())
}

/// A tenant id a credential may name, or the system tenant (metadata accepts both; the
/// front doors accept only the former).
pub fn validate_tenant_or_system(tenant: &str) -> Result<(), StrataError> {
    if tenant == crate::metering::SYSTEM_TENANT { Ok(()) } else { validate_tenant(tenant) }
}

/// A queue name is 1–80 characters of `[A-Za-z0-9_-]`, optionally ending in `.fifo`.
pub fn validate_queue_name(name: &str) -> Result<(), StrataError> {
    let stem = name.strip_suffix(".fifo").unwrap_or(name);
    if name.is_empty() || name.len() > QUEUE_NAME_CHARS_MAX || stem.is_empty() || !stem.chars().all(allowed) {
        return Err(StrataError::new(
            ErrorKind::InvalidParameter,
            format!(
                "queue name must be 1-{QUEUE_NAME_CHARS_MAX} characters of A-Z, a-z, 0-9, '-' and '_' \
                 (optionally ending in .fifo)"
            ),
        ));
    }
    Ok(())
}

/// A queue tag: a key of 1-128 characters and a value of 0-256.
pub fn validate_tag(key: &str, value: &str) -> Result<(), StrataError> {
    use crate::limits::{TAG_KEY_CHARS_MAX, TAG_VALUE_CHARS_MAX};
    if key.is_empty() || key.chars().count() > TAG_KEY_CHARS_MAX {
        return Err(StrataError::invalid(format!("tag keys are 1-{TAG_KEY_CHARS_MAX} characters")));
    }
    if value.chars().count() > TAG_VALUE_CHARS_MAX {
        return Err(StrataError::invalid(format!("tag values are 0-{TAG_VALUE_CHARS_MAX} characters")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names() {
        assert!(validate_queue_name("orders").is_ok());
        assert!(validate_queue_name("orders-1_a.fifo").is_ok());
        assert!(validate_queue_name("").is_err());
        assert!(validate_queue_name(".fifo").is_err());
        assert!(validate_queue_name("a/b").is_err());
        assert!(validate_queue_name(&"x".repeat(81)).is_err());
        assert!(validate_queue_name(&"x".repeat(80)).is_ok());
    }

    #[test]
    fn tenants() {
        assert!(validate_tenant("acme").is_ok());
        assert!(validate_tenant("").is_err());
        assert!(validate_tenant("a b").is_err());
        assert!(validate_tenant(&"t".repeat(65)).is_err());
        assert!(validate_tenant(crate::metering::SYSTEM_TENANT).is_err());
        assert!(validate_tenant_or_system(crate::metering::SYSTEM_TENANT).is_ok());
    }
}
