//! Who a certificate names: a [`Role`] and the name of one process of that role.
//!
//! The identity is a URI subject alternative name of the leaf certificate,
//! `spiffe://strata/<role>/<name>` (for example `spiffe://strata/storage/storage-2`). A
//! certificate with no such URI, or with two, names nobody and is refused.

use std::fmt;
use std::str::FromStr;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The URI prefix of a Strata identity.
pub const IDENTITY_URI_PREFIX: &str = "spiffe://strata/";
/// Longest process name in a certificate.
pub const NAME_CHARS_MAX: usize = 128;

/// The kinds of process of the internal plane; each RPC names the roles that may call it
/// (see [`crate::authz`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Proxy,
    Storage,
    Metadata,
    Billing,
    Autoscaler,
    /// A person or tool operating the cluster (the CLI, tests).
    Operator,
}

impl Role {
    pub const ALL: [Role; 6] =
        [Role::Proxy, Role::Storage, Role::Metadata, Role::Billing, Role::Autoscaler, Role::Operator];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Proxy => "proxy",
            Role::Storage => "storage",
            Role::Metadata => "metadata",
            Role::Billing => "billing",
            Role::Autoscaler => "autoscaler",
            Role::Operator => "operator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| IdentityError::UnknownRole(s.to_owned()))
    }
}

/// One process of the internal plane, as its certificate names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub role: Role,
    /// The process's name among those of its role (a storage node's `node_id`, a metadata
    /// member's id, a proxy's host name...).
    pub name: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("unknown role '{0}' (expected one of proxy, storage, metadata, billing, autoscaler, operator)")]
    UnknownRole(String),
    #[error("a process name is 1 to {NAME_CHARS_MAX} characters of letters, digits, '-', '_' and '.': '{0}' is not")]
    InvalidName(String),
    #[error("the certificate is not valid X.509")]
    Undecodable,
    #[error("the certificate names no Strata identity (a URI SAN {IDENTITY_URI_PREFIX}<role>/<name>)")]
    Missing,
    #[error("the certificate names more than one Strata identity")]
    Several,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_CHARS_MAX
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Identity {
    pub fn new(role: Role, name: &str) -> Result<Self, IdentityError> {
        if !valid_name(name) {
            return Err(IdentityError::InvalidName(name.to_owned()));
        }
        Ok(Self { role, name: name.to_owned() })
    }

    /// The URI subject alternative name that carries this identity.
    pub fn uri(&self) -> String {
        format!("{IDENTITY_URI_PREFIX}{}/{}", self.role, self.name)
    }

    /// The identity a URI names, if it is a Strata identity URI.
    pub fn from_uri(uri: &str) -> Option<Result<Self, IdentityError>> {
        let rest = uri.strip_prefix(IDENTITY_URI_PREFIX)?;
        let Some((role, name)) = rest.split_once('/') else {
            return Some(Err(IdentityError::InvalidName(rest.to_owned())));
        };
        Some(role.parse().and_then(|role| Identity::new(role, name)))
    }

    /// The identity a DER certificate names.
    pub fn of_certificate(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Undecodable)?;
        let mut found = None;
        if let Some(san) = cert.subject_alternative_name().map_err(|_| IdentityError::Undecodable)? {
            for name in &san.value.general_names {
                let GeneralName::URI(uri) = name else { continue };
                let Some(identity) = Identity::from_uri(uri) else { continue };
                if found.replace(identity?).is_some() {
                    return Err(IdentityError::Several);
                }
            }
        }
        found.ok_or(IdentityError::Missing)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.role, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_through_their_uri_and_bad_ones_are_refused() {
        let id = Identity::new(Role::Storage, "storage-2").unwrap();
        assert_eq!(id.uri(), "spiffe://strata/storage/storage-2");
        assert_eq!(Identity::from_uri(&id.uri()), Some(Ok(id)));
        assert_eq!(Identity::from_uri("spiffe://other/storage/x"), None);
        assert!(matches!(Identity::from_uri("spiffe://strata/root/x"), Some(Err(IdentityError::UnknownRole(_)))));
        assert!(matches!(Identity::from_uri("spiffe://strata/proxy/a/b"), Some(Err(IdentityError::InvalidName(_)))));
        assert!(matches!(Identity::from_uri("spiffe://strata/proxy"), Some(Err(IdentityError::InvalidName(_)))));
        assert!(Identity::new(Role::Proxy, &"x".repeat(NAME_CHARS_MAX + 1)).is_err());
    }
}
