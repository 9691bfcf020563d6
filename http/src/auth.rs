//! JWT bearer authentication for the native API.
//!
//! This module owns the answer to "which tenant is this request acting for?".
//! It verifies `Authorization: Bearer <JWT>` credentials against a fixed set of
//! configured keys and mints tokens for `strata dev` and tests.
//!
//! Guarantees of [`JwtVerifier::verify`]:
//! - A token longer than [`TOKEN_BYTES_MAX`] is rejected before any parsing.
//! - The header must name a configured key (`kid`); the header `alg` must equal
//!   the algorithm configured for that key *exactly*. This rejects `alg: none`
//!   and algorithm confusion (e.g. an HS256 token "signed" with an RSA public
//!   key presented under an RS256 key id) before any signature check runs.
//! - Headers carrying `crit` are rejected: no JWS extension is understood here.
//! - The signature is checked before any claim is read.
//! - `exp`, `aud`, `iss` and `sub` are required; `aud` and `iss` must equal
//!   the configured values; `exp` (and `nbf` when present) are checked against
//!   the verifier's [`Clock`] (the system clock unless one is injected) with a
//!   small clock-skew leeway ([`LEEWAY_S_DEFAULT`]).
//! - A token may live at most the verifier's maximum lifetime
//!   ([`TOKEN_LIFETIME_S_MAX_DEFAULT`] unless configured): `exp` no further than that from now,
//!   and from `iat` when the token carries one. A stolen token stops working within it.
//! - A token whose `aud` names another of Strata's audiences too (the tenant API's and the
//!   admin API's, say) is refused: one token never opens two doors.
//! - The tenant is taken from the verified `sub` claim and nowhere else; it
//!   must be a valid tenant id ([`strata_common::names::validate_tenant`]).
//!
//! Errors are [`AuthError`]; [`AuthError::public_message`] gives text that is
//! safe to return to a tenant (it never echoes tokens or key material).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use strata_common::clock::{Clock, SystemClock};
use strata_common::names::validate_tenant;

/// Largest accepted bearer token, in bytes; longer tokens are rejected unparsed.
pub const TOKEN_BYTES_MAX: usize = 8 * 1024;

/// Default clock-skew allowance applied to `exp` and `nbf`, in seconds.
pub const LEEWAY_S_DEFAULT: u64 = 5;

/// Default longest lifetime of an accepted token (24 hours), in seconds.
pub const TOKEN_LIFETIME_S_MAX_DEFAULT: u64 = 24 * 3600;

/// Claims every accepted token must carry.
const REQUIRED_CLAIMS: [&str; 4] = ["exp", "aud", "iss", "sub"];

/// Why a credential was rejected (or could not be checked).
///
/// The `Display` text is meant for logs; use [`AuthError::public_message`] for
/// responses to tenants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential was presented.
    #[error("no bearer token presented")]
    MissingToken,
    /// The credential is not a well-formed bearer JWT (wrong scheme, bad
    /// encoding, oversized, unsupported header fields, ...).
    #[error("malformed bearer token")]
    Malformed,
    /// The header names no key id, or one that is not configured.
    #[error("token key id is missing or unknown")]
    UnknownKeyId,
    /// The header `alg` differs from the algorithm configured for the key id.
    #[error("token algorithm does not match the algorithm configured for its key id")]
    AlgorithmMismatch,
    /// The token is outside its validity window (`exp` passed, or `nbf` in the future).
    #[error("token is expired or not yet valid")]
    Expired,
    /// The `aud` claim does not name this service.
    #[error("token audience is not accepted")]
    InvalidAudience,
    /// The `aud` claim names this service and another of Strata's.
    #[error("token names more than one of Strata's audiences")]
    SeveralAudiences,
    /// The token lives longer than the verifier's maximum lifetime.
    #[error("token lifetime exceeds the maximum")]
    LifetimeTooLong,
    /// The `iss` claim is not the configured issuer.
    #[error("token issuer is not accepted")]
    InvalidIssuer,
    /// The signature does not verify with the key named by `kid`.
    #[error("token signature is invalid")]
    InvalidSignature,
    /// A required claim is absent (or not of the type the claim requires).
    #[error("token lacks required claim `{0}`")]
    MissingClaim(&'static str),
    /// The `sub` claim is not a valid tenant id.
    #[error("token subject is not a valid tenant id")]
    InvalidTenant,
    /// Configuration or library failure not caused by the token's content.
    #[error("internal authentication error: {0}")]
    Internal(String),
}

impl AuthError {
    /// Text that is safe to show to a tenant: says what to do, never echoes
    /// the token or any key material.
    pub fn public_message(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing bearer token: send `Authorization: Bearer <token>`",
            AuthError::Malformed => {
                "malformed bearer token: send `Authorization: Bearer <token>` with a well-formed JWT of at most 8 KiB"
            }
            AuthError::UnknownKeyId => {
                "token key id (kid) is missing or unknown: obtain a token from a configured issuer"
            }
            AuthError::AlgorithmMismatch => {
                "token algorithm is not accepted for its key id: obtain a token from a configured issuer"
            }
            AuthError::Expired => "token expired or not yet valid: obtain a new token",
            AuthError::InvalidAudience => "token audience is not accepted: obtain a token issued for this service",
            AuthError::SeveralAudiences => {
                "token names more than one of Strata's audiences (tenant API, admin API): obtain a token for one"
            }
            AuthError::LifetimeTooLong => {
                "token lives longer than this service accepts (24 hours unless configured): obtain a shorter-lived token"
            }
            AuthError::InvalidIssuer => "token issuer is not accepted: obtain a token from a configured issuer",
            AuthError::InvalidSignature => "token signature is invalid: obtain a new token",
            AuthError::MissingClaim(_) => {
                "token lacks a required claim (exp, aud, iss, sub): obtain a token that carries them"
            }
            AuthError::InvalidTenant => {
                "token subject is not a valid tenant id (1-64 characters of A-Z, a-z, 0-9, '_', '-'): obtain a token for a valid tenant"
            }
            AuthError::Internal(_) => "internal authentication error: retry later or contact the operator",
        }
    }
}

/// One verification key: the algorithm is fixed per key id (a token's `alg`
/// header must equal it exactly).
#[derive(Clone, Debug)]
pub struct JwtKey {
    /// Key id, matched against the token header's `kid`.
    pub kid: String,
    /// The only algorithm accepted for tokens naming this key id.
    pub algorithm: Algorithm,
    key: DecodingKey,
}

impl JwtKey {
    /// An HS256 key from a shared secret. Use a random secret of at least 32 bytes.
    pub fn hmac(kid: impl Into<String>, secret: &[u8]) -> Self {
        JwtKey { kid: kid.into(), algorithm: Algorithm::HS256, key: DecodingKey::from_secret(secret) }
    }

    /// An RSA public key (PEM: `PUBLIC KEY` or `RSA PUBLIC KEY`) for `algorithm`,
    /// which must be one of RS256/384/512 or PS256/384/512.
    pub fn rsa_pem(kid: impl Into<String>, algorithm: Algorithm, public_key_pem: &[u8]) -> Result<Self, AuthError> {
        require_family(algorithm, AlgorithmFamily::Rsa)?;
        let key = DecodingKey::from_rsa_pem(public_key_pem)
            .map_err(|e| AuthError::Internal(format!("invalid RSA public key PEM: {e}")))?;
        Ok(JwtKey { kid: kid.into(), algorithm, key })
    }

    /// An Ed25519 public key (PEM `PUBLIC KEY`), verified as EdDSA.
    pub fn ed25519_pem(kid: impl Into<String>, public_key_pem: &[u8]) -> Result<Self, AuthError> {
        let key = DecodingKey::from_ed_pem(public_key_pem)
            .map_err(|e| AuthError::Internal(format!("invalid Ed25519 public key PEM: {e}")))?;
        Ok(JwtKey { kid: kid.into(), algorithm: Algorithm::EdDSA, key })
    }
}

/// The identity established by a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The tenant the request acts for: the verified `sub` claim.
    pub tenant: String,
    /// The token's `exp` claim, in seconds since the Unix epoch.
    pub expires_at_s: u64,
}

/// Verifies bearer tokens against a fixed key set, issuer and audience.
#[derive(Clone)]
pub struct JwtVerifier {
    keys: BTreeMap<String, JwtKey>,
    issuer: String,
    audience: String,
    /// Strata's other audiences: a token naming one of them too is refused.
    other_audiences: Vec<String>,
    leeway_s: u64,
    lifetime_s_max: u64,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("other_audiences", &self.other_audiences)
            .field("leeway_s", &self.leeway_s)
            .field("lifetime_s_max", &self.lifetime_s_max)
            .finish_non_exhaustive()
    }
}

/// The header fields read before the signature is checked.
#[derive(Deserialize)]
struct UnverifiedHeader {
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

impl JwtVerifier {
    /// A verifier accepting tokens whose `iss` equals `issuer` and whose `aud`
    /// names `audience`, signed by one of `keys`. If two keys share a kid, the
    /// later one wins. Leeway is [`LEEWAY_S_DEFAULT`]; time comes from the
    /// system clock (see [`JwtVerifier::with_clock`]).
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>, keys: Vec<JwtKey>) -> Self {
        JwtVerifier {
            keys: keys.into_iter().map(|k| (k.kid.clone(), k)).collect(),
            issuer: issuer.into(),
            audience: audience.into(),
            other_audiences: Vec::new(),
            leeway_s: LEEWAY_S_DEFAULT,
            lifetime_s_max: TOKEN_LIFETIME_S_MAX_DEFAULT,
            clock: Arc::new(SystemClock),
        }
    }

    /// Refuses tokens that also name one of `audiences` (Strata's other APIs).
    pub fn with_other_audiences(mut self, audiences: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.other_audiences = audiences.into_iter().map(Into::into).collect();
        self
    }

    /// Replaces the longest accepted token lifetime ([`TOKEN_LIFETIME_S_MAX_DEFAULT`]).
    pub fn with_lifetime_s_max(mut self, lifetime_s_max: u64) -> Self {
        self.lifetime_s_max = lifetime_s_max;
        self
    }

    /// Replaces the clock that `exp` and `nbf` are checked against.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Replaces the clock-skew leeway applied to `exp` and `nbf`.
    pub fn with_leeway_s(mut self, leeway_s: u64) -> Self {
        self.leeway_s = leeway_s;
        self
    }

    /// Verifies a bearer token; the tenant comes only from the verified `sub` claim.
    pub fn verify(&self, token: &str) -> Result<VerifiedToken, AuthError> {
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        if token.len() > TOKEN_BYTES_MAX {
            return Err(AuthError::Malformed);
        }

        let header = parse_unverified_header(token)?;
        if header.crit.is_some() {
            return Err(AuthError::Malformed);
        }
        let kid = header.kid.ok_or(AuthError::UnknownKeyId)?;
        let key = self.keys.get(&kid).ok_or(AuthError::UnknownKeyId)?;
        let alg_name = header.alg.ok_or(AuthError::Malformed)?;
        // `Algorithm::from_str` knows no "none", so `alg: none` fails here.
        let alg = Algorithm::from_str(&alg_name).map_err(|_| AuthError::AlgorithmMismatch)?;
        if alg != key.algorithm {
            return Err(AuthError::AlgorithmMismatch);
        }

        let validation = self.validation_for(key.algorithm);
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key.key, &validation)
            .map_err(map_jwt_error)?;
        let claims = data.claims;

        // The signature and `aud`/`iss` are verified and the required claims are
        // present; now the validity window, against our clock.
        let now_s = self.clock.now_ms() / 1000;
        let expires_at_s = match claims.get("exp") {
            Some(exp) => numeric_date_s(exp).ok_or(AuthError::Malformed)?,
            None => return Err(AuthError::MissingClaim("exp")),
        };
        // RFC 7519 §4.1.4: the token is invalid on or after `exp`.
        if now_s >= expires_at_s.saturating_add(self.leeway_s) {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = claims.get("nbf") {
            let not_before_s = numeric_date_s(nbf).ok_or(AuthError::Malformed)?;
            if not_before_s > now_s.saturating_add(self.leeway_s) {
                return Err(AuthError::Expired);
            }
        }
        if expires_at_s > now_s.saturating_add(self.lifetime_s_max).saturating_add(self.leeway_s) {
            return Err(AuthError::LifetimeTooLong);
        }
        if let Some(iat) = claims.get("iat") {
            let issued_at_s = numeric_date_s(iat).ok_or(AuthError::Malformed)?;
            if expires_at_s.saturating_sub(issued_at_s) > self.lifetime_s_max {
                return Err(AuthError::LifetimeTooLong);
            }
        }
        let names_other_audience = match claims.get("aud") {
            Some(Value::Array(audiences)) => {
                audiences.iter().filter_map(Value::as_str).any(|a| self.other_audiences.iter().any(|o| o == a))
            }
            _ => false,
        };
        if names_other_audience {
            return Err(AuthError::SeveralAudiences);
        }

        let tenant = match claims.get("sub") {
            Some(Value::String(sub)) => sub,
            Some(_) => return Err(AuthError::InvalidTenant),
            None => return Err(AuthError::MissingClaim("sub")),
        };
        if validate_tenant(tenant).is_err() {
            return Err(AuthError::InvalidTenant);
        }

        Ok(VerifiedToken { tenant: tenant.clone(), expires_at_s })
    }

    /// Verifies an `Authorization` header value of the form `Bearer <token>`
    /// (scheme case-insensitive).
    pub fn verify_authorization_header(&self, header_value: Option<&str>) -> Result<VerifiedToken, AuthError> {
        let value = header_value.map(str::trim).filter(|v| !v.is_empty()).ok_or(AuthError::MissingToken)?;
        let Some((scheme, rest)) = value.split_once([' ', '\t']) else {
            return Err(if value.eq_ignore_ascii_case("bearer") {
                AuthError::MissingToken
            } else {
                AuthError::Malformed
            });
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Malformed);
        }
        let token = rest.trim_start();
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        self.verify(token)
    }

    fn validation_for(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        // Presence (and numeric type of `exp`) is enforced by the library even
        // with its time checks off.
        validation.set_required_spec_claims(&REQUIRED_CLAIMS);
        // The library reads the system clock directly, bypassing the `Clock`
        // seam; `exp`/`nbf` are checked in `verify` against `self.clock`.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = true;
        validation.set_audience(&[self.audience.as_str()]);
        validation.set_issuer(&[self.issuer.as_str()]);
        validation
    }
}

/// Decodes the (unverified) header: exactly three dot-separated parts, the
/// first base64url (no padding) JSON.
fn parse_unverified_header(token: &str) -> Result<UnverifiedHeader, AuthError> {
    let mut parts = token.split('.');
    let (Some(header_b64), Some(_payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let header_json = URL_SAFE_NO_PAD.decode(header_b64).map_err(|_| AuthError::Malformed)?;
    serde_json::from_slice(&header_json).map_err(|_| AuthError::Malformed)
}

/// A JWT NumericDate as whole seconds (fractions rounded, as the validator does).
fn numeric_date_s(value: &Value) -> Option<u64> {
    if let Some(s) = value.as_u64() {
        return Some(s);
    }
    // Fractional seconds are allowed by RFC 7519; round as the library does.
    let f = value.as_f64()?;
    (f.is_finite() && f >= 0.0 && f < u64::MAX as f64).then(|| f.round() as u64)
}

fn map_jwt_error(error: jsonwebtoken::errors::Error) -> AuthError {
    match error.kind() {
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_)
        | ErrorKind::InvalidClaimFormat(_) => AuthError::Malformed,
        ErrorKind::InvalidSignature => AuthError::InvalidSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => AuthError::AlgorithmMismatch,
        ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => AuthError::Expired,
        ErrorKind::InvalidAudience => AuthError::InvalidAudience,
        ErrorKind::InvalidIssuer => AuthError::InvalidIssuer,
        ErrorKind::InvalidSubject => AuthError::InvalidTenant,
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => AuthError::MissingClaim("exp"),
            "aud" => AuthError::MissingClaim("aud"),
            "iss" => AuthError::MissingClaim("iss"),
            "sub" => AuthError::MissingClaim("sub"),
            "nbf" => AuthError::MissingClaim("nbf"),
            _ => AuthError::Malformed,
        },
        other => AuthError::Internal(format!("token verification failed: {other:?}")),
    }
}

fn require_family(algorithm: Algorithm, family: AlgorithmFamily) -> Result<(), AuthError> {
    if algorithm.family() == family {
        Ok(())
    } else {
        Err(AuthError::Internal(format!("algorithm {algorithm:?} is not in the {family:?} family")))
    }
}

/// Claims of a minted token.
#[derive(Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    iss: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

/// Mints tokens (used by `strata dev` for its dev tenant and by tests).
#[derive(Clone, Debug)]
pub struct JwtIssuer {
    kid: String,
    algorithm: Algorithm,
    key: EncodingKey,
    issuer: String,
    audience: String,
}

impl JwtIssuer {
    /// An HS256 issuer; pair it with [`JwtKey::hmac`] using the same kid and secret.
    pub fn hmac(kid: impl Into<String>, secret: &[u8], issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        JwtIssuer {
            kid: kid.into(),
            algorithm: Algorithm::HS256,
            key: EncodingKey::from_secret(secret),
            issuer: issuer.into(),
            audience: audience.into(),
        }
    }

    /// An RSA issuer from a private key PEM (PKCS#1 or PKCS#8); `algorithm`
    /// must be one of RS256/384/512 or PS256/384/512.
    pub fn rsa_pem(
        kid: impl Into<String>,
        algorithm: Algorithm,
        private_key_pem: &[u8],
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Result<Self, AuthError> {
        require_family(algorithm, AlgorithmFamily::Rsa)?;
        let key = EncodingKey::from_rsa_pem(private_key_pem)
            .map_err(|e| AuthError::Internal(format!("invalid RSA private key PEM: {e}")))?;
        Ok(JwtIssuer { kid: kid.into(), algorithm, key, issuer: issuer.into(), audience: audience.into() })
    }

    /// An EdDSA issuer from an Ed25519 private key PEM (PKCS#8).
    pub fn ed25519_pem(
        kid: impl Into<String>,
        private_key_pem: &[u8],
        issuer: impl Into<String>,
        audience: impl Into<String>,
    ) -> Result<Self, AuthError> {
        let key = EncodingKey::from_ed_pem(private_key_pem)
            .map_err(|e| AuthError::Internal(format!("invalid Ed25519 private key PEM: {e}")))?;
        Ok(JwtIssuer {
            kid: kid.into(),
            algorithm: Algorithm::EdDSA,
            key,
            issuer: issuer.into(),
            audience: audience.into(),
        })
    }

    /// Mints a token for `tenant` valid from `now_s` for `ttl_s` seconds
    /// (`exp = now_s + ttl_s`, seconds since the Unix epoch).
    pub fn mint(&self, tenant: &str, ttl_s: u64, now_s: u64) -> Result<String, AuthError> {
        if validate_tenant(tenant).is_err() {
            return Err(AuthError::InvalidTenant);
        }
        let exp =
            now_s.checked_add(ttl_s).ok_or_else(|| AuthError::Internal("token expiry overflows u64 seconds".into()))?;
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        let claims = MintedClaims { sub: tenant, iss: &self.issuer, aud: &self.audience, iat: now_s, exp };
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| AuthError::Internal(format!("token signing failed: {e}")))
    }
}
