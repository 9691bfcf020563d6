//! Server-side verification of AWS Signature Version 4 (SigV4), so that the AWS CLI, boto3 and the
//! other AWS SDKs authenticate against the SQS-compatible API with a tenant's access key.
//!
//! This module owns reading a signature from a request (the `Authorization: AWS4-HMAC-SHA256 ...`
//! header or the presigned `X-Amz-*` query parameters), rebuilding the canonical request the signer
//! hashed (canonical URI, query, headers and payload hash), and comparing the signature recomputed
//! from the secret with the one sent. It does not look keys up, nor decide what a key may do.
//!
//! Verification has two phases because the secret is looked up (async) in between: [`parse`] reads
//! what the request claims (access key id, region, time, signed headers) and needs no secret;
//! [`verify`] checks the time against the caller's clock and recomputes the signature.
//!
//! Guarantees:
//! - a request passes only if its signature was made with the secret over its method, path, query,
//!   the headers it names and its body, for service `sqs`, at a time within [`CLOCK_SKEW_MS_MAX`]
//!   of `now_ms` (a presigned URL: not in the future beyond that skew, and until its
//!   `X-Amz-Expires`);
//! - the signed headers include `host`, every `x-amz-*` header sent (`X-Amz-Target`, which names
//!   the action, among them), `content-type` when sent, and `date` when it carries the request
//!   time: a captured request cannot be replayed as another action or with another body shape;
//! - an `UNSIGNED-PAYLOAD` signature (S3-style presigned URLs) is taken only with an empty body, so
//!   no parameter ever comes from a body nobody signed;
//! - signatures are compared in constant time;
//! - error messages say what to check and never carry the secret, the signature we expected or the
//!   string to sign;
//! - the work per request is bounded ([`AUTHORIZATION_BYTES_MAX`], [`SIGNED_HEADERS_MAX`],
//!   [`QUERY_PARAMS_MAX`]), and no input makes it panic.
//!
//! Canonicalization follows the SigV4 rules for services other than S3 and, where the rules leave
//! room, what botocore (AWS CLI and boto3) sends; the tests' fixtures were made with botocore 1.43:
//! - path: empty and `.` segments dropped, `..` resolved, then every byte but the unreserved ones and
//!   `/` percent-encoded once more (a raw `%2F` is signed as `%252F`);
//! - query: every name and value decoded (`+` as a space: botocore sends its query parameters through
//!   `urlencode`, yet signs them as `%20`), re-encoded with the RFC 3986 unreserved set, then sorted
//!   by name and value;
//! - header values: trimmed, and inner runs of spaces and tabs collapsed to one space (botocore uses
//!   Python's `str.split()`); several values of one header joined by `,`;
//! - presigned URLs of non-S3 services sign the SHA-256 of the (empty) body, not `UNSIGNED-PAYLOAD`
//!   as S3 presigners do; without an `x-amz-content-sha256` header both are accepted (the signer
//!   chose which, so accepting either lets nobody change a body that was signed);
//! - a request that already carries a `Date` header is signed by botocore with that header rewritten
//!   in RFC 2822 form (`Sat, 21 Nov 2026 12:00:00 -0000`) and no `X-Amz-Date`: both forms are parsed.
//!
//! Callers pass `uri.path()` and `uri.query()` exactly as received. Under HTTP/2 there is no `host`
//! header: put the `:authority` into one before calling. `X-Amz-Security-Token` (temporary
//! credentials) is checked like any other signed part but not interpreted here.

use std::time::{Duration, UNIX_EPOCH};

use aws_sigv4::sign::v4::{calculate_signature, generate_signing_key};
use axum::http::HeaderMap;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode, percent_encode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Largest distance between the request's time and ours, in both directions (AWS allows 15 minutes).
pub const CLOCK_SKEW_MS_MAX: u64 = 15 * 60 * 1000;
/// Longest validity of a presigned URL (AWS: "X-Amz-Expires must be less than a week").
pub const PRESIGNED_EXPIRES_S_MAX: u64 = 7 * 24 * 60 * 60;
/// Longest `Authorization` header: botocore's is about 250 bytes with five signed headers.
pub const AUTHORIZATION_BYTES_MAX: usize = 4 * 1024;
/// Most headers one signature may cover: SDKs sign 3 to 6.
pub const SIGNED_HEADERS_MAX: usize = 64;
/// Most query parameters canonicalized: a presigned SendMessageBatch of 10 entries with 10 message
/// attributes each needs about 400.
pub const QUERY_PARAMS_MAX: usize = 1024;
/// Longest access key id (AWS documents 16 to 128 characters; ours are 20).
const ACCESS_KEY_ID_CHARS_MAX: usize = 128;
/// Longest region in a credential scope (AWS's are under 20 characters).
const REGION_CHARS_MAX: usize = 64;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const SERVICE: &str = "sqs";
const SCOPE_TERMINATOR: &str = "aws4_request";
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
const SIGNATURE_HEX_CHARS: usize = 64;

/// Bytes left as they are in canonical query names and values: RFC 3986 unreserved characters.
const QUERY_ENCODE_SET: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
/// Bytes left as they are in the canonical URI: unreserved characters and the segment separator.
const PATH_ENCODE_SET: &AsciiSet = &QUERY_ENCODE_SET.remove(b'/');

/// What a request carries that SigV4 covers. `path` and `query` are exactly as received (raw,
/// still percent-encoded; `query` without the `?`, empty when there is none).
#[derive(Debug, Clone, Copy)]
pub struct SignedParts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// The parsed signature, before the secret is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The access key the request claims to be signed with; look its secret up, then [`verify`].
    pub access_key_id: String,
    /// The region of the credential scope (any region is accepted).
    pub region: String,
    location: Location,
    timestamp: Timestamp,
    /// Lowercase, strictly ascending, containing `host`.
    signed_headers: Vec<String>,
    /// 64 lowercase hexadecimal digits.
    signature_hex: String,
    /// Presigned URLs only: `X-Amz-Expires`, at most [`PRESIGNED_EXPIRES_S_MAX`].
    expires_s: Option<u64>,
}

impl Signature {
    /// Whether the signature came in the query string (a presigned URL) rather than a header.
    pub fn is_presigned(&self) -> bool {
        self.location == Location::Query
    }

    /// The time the request says it was signed, in milliseconds since the Unix epoch.
    pub fn timestamp_ms(&self) -> u64 {
        self.timestamp.epoch_s.saturating_mul(1000)
    }
}

/// Where the signature was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Location {
    AuthorizationHeader,
    Query,
}

/// Why a request does not authenticate. Messages are safe to answer to the client.
#[derive(Debug, thiserror::Error)]
pub enum SigV4Error {
    #[error(
        "Request is missing Authentication Token: sign it with AWS Signature Version 4 (an Authorization header or \
         X-Amz-* query parameters) using one of your tenant's access keys"
    )]
    MissingAuthenticationToken,
    #[error("Incomplete or malformed AWS Signature Version 4: {0}")]
    IncompleteSignature(String),
    #[error(
        "The access key id '{access_key_id}' is not known or no longer active: check the access key your client is \
         configured with"
    )]
    InvalidClientTokenId { access_key_id: String },
    #[error("The request signature we calculated does not match the signature you provided: {0}")]
    SignatureDoesNotMatch(String),
    #[error("Request has expired: {0}")]
    RequestExpired(String),
}

impl SigV4Error {
    /// The answer when no key has [`Signature::access_key_id`] (or it is revoked).
    pub fn invalid_client_token_id(access_key_id: &str) -> Self {
        Self::InvalidClientTokenId { access_key_id: access_key_id.to_string() }
    }

    /// The AWS error code, as SQS answers it.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingAuthenticationToken => "MissingAuthenticationToken",
            Self::IncompleteSignature(_) => "IncompleteSignature",
            Self::InvalidClientTokenId { .. } => "InvalidClientTokenId",
            Self::SignatureDoesNotMatch(_) => "SignatureDoesNotMatch",
            Self::RequestExpired(_) => "RequestExpired",
        }
    }

    /// The HTTP status AWS answers with this code.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::MissingAuthenticationToken => 403,
            Self::IncompleteSignature(_) => 400,
            Self::InvalidClientTokenId { .. } => 403,
            Self::SignatureDoesNotMatch(_) => 403,
            Self::RequestExpired(_) => 400,
        }
    }
}

fn incomplete(message: impl Into<String>) -> SigV4Error {
    SigV4Error::IncompleteSignature(message.into())
}

/// Reads the signature of a request, from its `Authorization` header or, for a presigned URL, its
/// query string. Checks everything that needs no secret: the form, the algorithm, the credential
/// scope (service `sqs`, any region, the date of the request's time) and the signed headers.
pub fn parse(parts: &SignedParts<'_>) -> Result<Signature, SigV4Error> {
    let mut authorization = parts.headers.get_all("authorization").iter();
    let header = authorization.next();
    if authorization.next().is_some() {
        return Err(incomplete("the request has more than one Authorization header"));
    }
    let query = parse_query(parts.query)?;
    let presigned = query
        .iter()
        .any(|(name, _)| matches!(name.as_slice(), b"X-Amz-Algorithm" | b"X-Amz-Credential" | b"X-Amz-Signature"));
    let signature = match (header, presigned) {
        (None, false) => Err(SigV4Error::MissingAuthenticationToken),
        (Some(_), true) => Err(incomplete(
            "the request carries both an Authorization header and X-Amz-* signature query parameters; use one",
        )),
        (Some(value), false) => parse_authorization_header(value.as_bytes(), parts.headers),
        (None, true) => parse_presigned(&query),
    }?;
    if let Some(name) = signature.signed_headers.iter().find(|name| !parts.headers.contains_key(name.as_str())) {
        return Err(missing_signed_header(name));
    }
    if let Some(name) =
        parts.headers.keys().map(|name| name.as_str()).find(|name| must_be_signed(&signature, parts, name))
    {
        return Err(incomplete(format!(
            "the header '{name}' is sent but not signed; sign every x-amz-* header, content-type and the request time"
        )));
    }
    Ok(signature)
}

/// Whether the header `name`, sent with the request, must be among the signed ones.
fn must_be_signed(signature: &Signature, parts: &SignedParts<'_>, name: &str) -> bool {
    let signed = signature.signed_headers.binary_search_by(|signed| signed.as_str().cmp(name)).is_ok();
    let time_header = name == "date"
        && signature.location == Location::AuthorizationHeader
        && !parts.headers.contains_key("x-amz-date");
    !signed && (name.starts_with("x-amz-") || name == "content-type" || time_header)
}

fn missing_signed_header(name: &str) -> SigV4Error {
    incomplete(format!("the signed header '{name}' is not in the request; sign only headers that your client sends"))
}

/// Checks the request's time against `now_ms` (milliseconds since the Unix epoch) and recomputes the
/// signature with `secret_access_key`. `parts` must be the ones given to [`parse`].
pub fn verify(
    signature: &Signature,
    parts: &SignedParts<'_>,
    secret_access_key: &str,
    now_ms: u64,
) -> Result<(), SigV4Error> {
    check_time(signature, now_ms)?;
    for payload_hash in payload_hashes(signature, parts)? {
        let expected = signature_for(signature, parts, secret_access_key, &payload_hash)?;
        if bool::from(expected.as_bytes().ct_eq(signature.signature_hex.as_bytes())) {
            return Ok(());
        }
    }
    Err(SigV4Error::SignatureDoesNotMatch(format!(
        "check your secret access key, that your client signs for region '{}' and service '{SERVICE}', and that \
         nothing between your client and us changed the method, path, query, body or a signed header ({})",
        signature.region,
        signature.signed_headers.join(";"),
    )))
}

/// The hex signature of the request with `payload_hash`, as a signer holding `secret_access_key` makes it.
fn signature_for(
    signature: &Signature,
    parts: &SignedParts<'_>,
    secret_access_key: &str,
    payload_hash: &str,
) -> Result<String, SigV4Error> {
    let canonical = canonical_request(signature, parts, payload_hash)?;
    let scope = format!("{}/{}/{SERVICE}/{SCOPE_TERMINATOR}", signature.timestamp.date(), signature.region);
    let string_to_sign = format!(
        "{ALGORITHM}\n{}\n{scope}\n{}",
        signature.timestamp.iso_basic(),
        hex::encode(Sha256::digest(&canonical))
    );
    // The signing key's date is the UTC date of this instant, which parse checked to equal the scope's.
    let signed_at = UNIX_EPOCH
        .checked_add(Duration::from_secs(signature.timestamp.epoch_s))
        .ok_or_else(|| incomplete("the request time is out of range"))?;
    let key = generate_signing_key(secret_access_key, signed_at, &signature.region, SERVICE);
    Ok(calculate_signature(&key, string_to_sign.as_bytes()))
}

fn check_time(signature: &Signature, now_ms: u64) -> Result<(), SigV4Error> {
    let signed_ms = signature.timestamp_ms();
    let now = format_epoch_s(now_ms / 1000);
    let signed = signature.timestamp.iso_basic();
    if signed_ms > now_ms.saturating_add(CLOCK_SKEW_MS_MAX) {
        return Err(SigV4Error::RequestExpired(format!(
            "the request time {signed} is more than {} minutes after the server time {now}; check your client's clock",
            CLOCK_SKEW_MS_MAX / 60_000
        )));
    }
    match signature.expires_s {
        Some(expires_s) => {
            let expires_ms = signed_ms.saturating_add(expires_s.saturating_mul(1000));
            if now_ms > expires_ms {
                return Err(SigV4Error::RequestExpired(format!(
                    "the presigned URL signed at {signed} expired after {expires_s} seconds, at {} (server time \
                     {now}); presign a new one, or check your client's clock",
                    format_epoch_s(expires_ms / 1000)
                )));
            }
        }
        None => {
            if now_ms > signed_ms.saturating_add(CLOCK_SKEW_MS_MAX) {
                return Err(SigV4Error::RequestExpired(format!(
                    "the request time {signed} is more than {} minutes before the server time {now}; check your \
                     client's clock, and sign each request (or retry) anew",
                    CLOCK_SKEW_MS_MAX / 60_000
                )));
            }
        }
    }
    Ok(())
}

/// The payload hashes the signer may have used, most likely first.
fn payload_hashes(signature: &Signature, parts: &SignedParts<'_>) -> Result<Vec<String>, SigV4Error> {
    let body_hash = hex::encode(Sha256::digest(parts.body));
    let Some(claimed) = single_header(parts.headers, "x-amz-content-sha256")? else {
        return Ok(match signature.location {
            Location::AuthorizationHeader => vec![body_hash],
            // botocore's SigV4QueryAuth signs the body's hash, S3-style presigners UNSIGNED-PAYLOAD
            // (taken only without a body: parameters never come from a body nobody signed).
            Location::Query if parts.body.is_empty() => vec![body_hash, UNSIGNED_PAYLOAD.to_string()],
            Location::Query => vec![body_hash],
        });
    };
    // Like botocore, the header's value itself stands for the payload in the canonical request.
    if claimed == UNSIGNED_PAYLOAD {
        if !parts.body.is_empty() {
            return Err(incomplete(
                "UNSIGNED-PAYLOAD is accepted only without a body; sign the body (its SHA-256) instead",
            ));
        }
        return Ok(vec![claimed.to_string()]);
    }
    if claimed.len() != SIGNATURE_HEX_CHARS || !claimed.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(incomplete(
            "x-amz-content-sha256 must be the hex SHA-256 of the body or UNSIGNED-PAYLOAD (streaming payloads are not \
             supported)",
        ));
    }
    if !claimed.eq_ignore_ascii_case(&body_hash) {
        return Err(SigV4Error::SignatureDoesNotMatch(
            "the x-amz-content-sha256 header is not the SHA-256 of the body received; check that nothing changed the \
             body after signing"
                .to_string(),
        ));
    }
    Ok(vec![claimed.to_string()])
}

/// The canonical request (SigV4 task 1) as the signer built it, ending in `payload_hash`.
fn canonical_request(
    signature: &Signature,
    parts: &SignedParts<'_>,
    payload_hash: &str,
) -> Result<Vec<u8>, SigV4Error> {
    let mut out = Vec::with_capacity(256 + parts.path.len() + parts.query.len());
    out.extend_from_slice(parts.method.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(canonical_uri(parts.path).as_bytes());
    out.push(b'\n');
    let query = parse_query(parts.query)?;
    let skip_signature = signature.location == Location::Query;
    out.extend_from_slice(canonical_query(&query, skip_signature).as_bytes());
    out.push(b'\n');
    for name in &signature.signed_headers {
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        let mut values = parts.headers.get_all(name.as_str()).iter().peekable();
        if values.peek().is_none() {
            return Err(missing_signed_header(name));
        }
        for (i, value) in values.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_trimmed(&mut out, value.as_bytes());
        }
        out.push(b'\n');
    }
    out.push(b'\n');
    out.extend_from_slice(signature.signed_headers.join(";").as_bytes());
    out.push(b'\n');
    out.extend_from_slice(payload_hash.as_bytes());
    Ok(out)
}

/// Appends `value` without leading or trailing whitespace, each inner run of spaces and tabs as one space.
fn push_trimmed(out: &mut Vec<u8>, value: &[u8]) {
    let words = value.split(|b| *b == b' ' || *b == b'\t').filter(|word| !word.is_empty());
    for (i, word) in words.enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(word);
    }
}

/// The canonical URI of a raw path for a non-S3 service: dot and empty segments removed (RFC 3986
/// 5.2.4, plus AWS's collapsing of `//`), then URI-encoded again, keeping `/`.
fn canonical_uri(raw_path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in raw_path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            _ => segments.push(segment),
        }
    }
    let mut normalized = String::with_capacity(raw_path.len() + 1);
    normalized.push('/');
    normalized.push_str(&segments.join("/"));
    if raw_path.ends_with('/') && !segments.is_empty() {
        normalized.push('/');
    }
    percent_encode(normalized.as_bytes(), PATH_ENCODE_SET).to_string()
}

/// A query parameter, decoded.
type QueryParam = (Vec<u8>, Vec<u8>);

/// Splits a raw query into decoded (name, value) pairs, in order. Empty segments (`a=1&&b=2`) are
/// skipped; a segment without `=` has an empty value.
fn parse_query(raw: &str) -> Result<Vec<QueryParam>, SigV4Error> {
    let mut params = Vec::new();
    for segment in raw.split('&').filter(|segment| !segment.is_empty()) {
        if params.len() == QUERY_PARAMS_MAX {
            return Err(incomplete(format!("the query string has more than {QUERY_PARAMS_MAX} parameters")));
        }
        let (name, value) = segment.split_once('=').unwrap_or((segment, ""));
        params.push((decode_query_component(name), decode_query_component(value)));
    }
    Ok(params)
}

/// `+` is a space (form encoding, as botocore sends parameters); `%XX` a byte; a `%` that starts no
/// valid escape stays a `%`.
fn decode_query_component(raw: &str) -> Vec<u8> {
    let bytes: Vec<u8> = raw.bytes().map(|b| if b == b'+' { b' ' } else { b }).collect();
    percent_decode(&bytes).collect()
}

/// Names and values encoded with the unreserved set, sorted by name then value, joined by `&`.
fn canonical_query(params: &[QueryParam], skip_signature: bool) -> String {
    let mut encoded: Vec<(String, String)> = params
        .iter()
        .filter(|(name, _)| !(skip_signature && name.as_slice() == b"X-Amz-Signature"))
        .map(|(name, value)| {
            (percent_encode(name, QUERY_ENCODE_SET).to_string(), percent_encode(value, QUERY_ENCODE_SET).to_string())
        })
        .collect();
    encoded.sort_unstable();
    let pairs: Vec<String> = encoded.into_iter().map(|(name, value)| format!("{name}={value}")).collect();
    pairs.join("&")
}

fn parse_authorization_header(value: &[u8], headers: &HeaderMap) -> Result<Signature, SigV4Error> {
    if value.len() > AUTHORIZATION_BYTES_MAX {
        return Err(incomplete(format!("the Authorization header is longer than {AUTHORIZATION_BYTES_MAX} bytes")));
    }
    let malformed = || {
        incomplete(
            "the Authorization header must read 'AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...' \
             (only AWS Signature Version 4 with HMAC-SHA256 is supported)",
        )
    };
    let value = std::str::from_utf8(value).map_err(|_| malformed())?;
    let rest = value.strip_prefix(ALGORITHM).filter(|rest| rest.starts_with([' ', '\t'])).ok_or_else(malformed)?;
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for component in rest.split(',') {
        let component = component.trim();
        let (key, field_value) = component.split_once('=').ok_or_else(|| {
            incomplete("the Authorization header must consist of Credential=..., SignedHeaders=..., Signature=...")
        })?;
        let slot = match key {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed_headers,
            "Signature" => &mut signature,
            _ => {
                return Err(incomplete(
                    "the Authorization header has a component other than Credential, SignedHeaders and Signature",
                ));
            }
        };
        if slot.replace(field_value).is_some() {
            return Err(incomplete(format!("the Authorization header has {key} more than once")));
        }
    }
    let missing = |key: &str| incomplete(format!("the Authorization header has no {key}=..."));
    let credential = parse_credential(credential.ok_or_else(|| missing("Credential"))?)?;
    let signed_headers = parse_signed_headers(signed_headers.ok_or_else(|| missing("SignedHeaders"))?)?;
    let signature_hex = parse_signature_hex(signature.ok_or_else(|| missing("Signature"))?)?;

    // SigV4 takes the time from X-Amz-Date, or else from Date.
    let timestamp = match single_header(headers, "x-amz-date")? {
        Some(value) => Timestamp::parse_iso_basic(value)
            .ok_or_else(|| incomplete("X-Amz-Date must be a UTC time in the form YYYYMMDD'T'HHMMSS'Z'"))?,
        None => {
            let value = single_header(headers, "date")?
                .ok_or_else(|| incomplete("the request has neither an X-Amz-Date nor a Date header"))?;
            Timestamp::parse_iso_basic(value).or_else(|| Timestamp::parse_http_date(value)).ok_or_else(|| {
                incomplete(
                    "the Date header must be YYYYMMDD'T'HHMMSS'Z' or an HTTP date such as \
                     'Sat, 21 Nov 2026 12:00:00 GMT'",
                )
            })?
        }
    };
    signature_from(credential, timestamp, signed_headers, signature_hex, Location::AuthorizationHeader, None)
}

fn parse_presigned(query: &[QueryParam]) -> Result<Signature, SigV4Error> {
    let param = |name: &str| -> Result<&str, SigV4Error> {
        let mut values = query.iter().filter(|(n, _)| n.as_slice() == name.as_bytes()).map(|(_, v)| v);
        let value = values.next().ok_or_else(|| {
            incomplete(format!(
                "a presigned URL needs the query parameters X-Amz-Algorithm, X-Amz-Credential, X-Amz-Date, \
                 X-Amz-Expires, X-Amz-SignedHeaders and X-Amz-Signature; {name} is missing"
            ))
        })?;
        if values.next().is_some() {
            return Err(incomplete(format!("the query parameter {name} appears more than once")));
        }
        std::str::from_utf8(value).map_err(|_| incomplete(format!("the query parameter {name} is not UTF-8")))
    };
    if param("X-Amz-Algorithm")? != ALGORITHM {
        return Err(incomplete("X-Amz-Algorithm must be AWS4-HMAC-SHA256"));
    }
    let credential = parse_credential(param("X-Amz-Credential")?)?;
    let signed_headers = parse_signed_headers(param("X-Amz-SignedHeaders")?)?;
    let signature_hex = parse_signature_hex(param("X-Amz-Signature")?)?;
    let timestamp = Timestamp::parse_iso_basic(param("X-Amz-Date")?)
        .ok_or_else(|| incomplete("X-Amz-Date must be a UTC time in the form YYYYMMDD'T'HHMMSS'Z'"))?;
    let expires = param("X-Amz-Expires")?;
    let expires_s = parse_decimal(expires.as_bytes())
        .filter(|expires_s| (1..=PRESIGNED_EXPIRES_S_MAX).contains(expires_s))
        .ok_or_else(|| {
            incomplete(format!(
                "X-Amz-Expires must be a number of seconds from 1 to {PRESIGNED_EXPIRES_S_MAX} (7 days)"
            ))
        })?;
    signature_from(credential, timestamp, signed_headers, signature_hex, Location::Query, Some(expires_s))
}

fn signature_from(
    credential: Credential<'_>,
    timestamp: Timestamp,
    signed_headers: Vec<String>,
    signature_hex: String,
    location: Location,
    expires_s: Option<u64>,
) -> Result<Signature, SigV4Error> {
    let date = timestamp.date();
    if credential.date != date {
        return Err(SigV4Error::SignatureDoesNotMatch(format!(
            "the date in the credential scope ({}) is not the date of the request time ({date}, from {}); sign with \
             the date the request is sent",
            credential.date,
            timestamp.iso_basic()
        )));
    }
    Ok(Signature {
        access_key_id: credential.access_key_id.to_string(),
        region: credential.region.to_string(),
        location,
        timestamp,
        signed_headers,
        signature_hex,
        expires_s,
    })
}

/// `AKID/YYYYMMDD/region/sqs/aws4_request`.
struct Credential<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
}

fn parse_credential(value: &str) -> Result<Credential<'_>, SigV4Error> {
    let fields: Vec<&str> = value.splitn(6, '/').collect();
    let [access_key_id, date, region, service, terminator] = fields.as_slice() else {
        return Err(incomplete("the credential must read ACCESS_KEY_ID/YYYYMMDD/REGION/sqs/aws4_request"));
    };
    let access_key_id_ok = (1..=ACCESS_KEY_ID_CHARS_MAX).contains(&access_key_id.len())
        && access_key_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !access_key_id_ok {
        return Err(incomplete(format!(
            "the access key id in the credential must be 1 to {ACCESS_KEY_ID_CHARS_MAX} letters and digits"
        )));
    }
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(incomplete("the date in the credential must be YYYYMMDD"));
    }
    let region_ok = (1..=REGION_CHARS_MAX).contains(&region.len())
        && region.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !region_ok {
        return Err(incomplete(format!(
            "the region in the credential must be 1 to {REGION_CHARS_MAX} letters, digits and dashes"
        )));
    }
    if *service != SERVICE {
        // AWS answers this with SignatureDoesNotMatch too.
        let shown = if service.len() <= 32 && service.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            *service
        } else {
            "(malformed)"
        };
        return Err(SigV4Error::SignatureDoesNotMatch(format!(
            "Credential should be scoped to correct service: '{SERVICE}' (the request is signed for '{shown}'); \
             configure your client for SQS"
        )));
    }
    if *terminator != SCOPE_TERMINATOR {
        return Err(incomplete("the credential must end in /aws4_request"));
    }
    Ok(Credential { access_key_id, date, region })
}

/// Lowercase header names separated by `;`, strictly ascending (as the spec requires), with `host`.
fn parse_signed_headers(value: &str) -> Result<Vec<String>, SigV4Error> {
    let mut names: Vec<String> = Vec::new();
    for name in value.split(';') {
        if names.len() == SIGNED_HEADERS_MAX {
            return Err(incomplete(format!("more than {SIGNED_HEADERS_MAX} signed headers")));
        }
        let token = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(incomplete("SignedHeaders must be lowercase header names separated by ';'"));
        }
        if names.last().is_some_and(|last| last.as_str() >= name) {
            return Err(incomplete("SignedHeaders must be sorted and without repetition"));
        }
        names.push(name.to_string());
    }
    if !names.iter().any(|name| name == "host") {
        return Err(incomplete("SignedHeaders must include host"));
    }
    Ok(names)
}

fn parse_signature_hex(value: &str) -> Result<String, SigV4Error> {
    if value.len() != SIGNATURE_HEX_CHARS || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(incomplete("the signature must be 64 hexadecimal digits"));
    }
    Ok(value.to_ascii_lowercase())
}

/// The value of a header that must appear at most once, as text.
fn single_header<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, SigV4Error> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(incomplete(format!("the request has more than one {name} header")));
    }
    let text = value.to_str().map_err(|_| incomplete(format!("the {name} header is not ASCII")))?;
    Ok(Some(text.trim()))
}

/// A non-negative decimal of at most 18 digits (so it cannot overflow).
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// A request time: whole seconds since the Unix epoch, from 1970 to 9999.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timestamp {
    epoch_s: u64,
}

impl Timestamp {
    /// `YYYYMMDD'T'HHMMSS'Z'`, the form of `X-Amz-Date`.
    fn parse_iso_basic(value: &str) -> Option<Self> {
        let b = value.as_bytes();
        if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
            return None;
        }
        let number = |range: std::ops::Range<usize>| parse_decimal(b.get(range)?);
        Self::from_utc(number(0..4)?, number(4..6)?, number(6..8)?, number(9..11)?, number(11..13)?, number(13..15)?)
    }

    /// An HTTP date: `[Sat, ]21 Nov 2026 12:00:00 ZONE`, ZONE being `GMT`, `UTC`, `UT`, `Z` or `±HHMM`
    /// (botocore writes `-0000`).
    fn parse_http_date(value: &str) -> Option<Self> {
        let mut tokens: Vec<&str> = value.split_ascii_whitespace().collect();
        if tokens.first().is_some_and(|first| first.ends_with(',')) {
            tokens.remove(0);
        }
        let [day, month, year, time, zone] = tokens.as_slice() else {
            return None;
        };
        const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
        let month = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(month))? as u64 + 1;
        let (day, year) = (parse_decimal(day.as_bytes())?, parse_decimal(year.as_bytes())?);
        if year < 1000 {
            return None;
        }
        let mut clock = time.split(':');
        let mut next = || parse_decimal(clock.next()?.as_bytes());
        let (hour, minute, second) = (next()?, next()?, next()?);
        if clock.next().is_some() {
            return None;
        }
        let local = Self::from_utc(year, month, day, hour, minute, second)?;
        let offset_s = match *zone {
            "GMT" | "UTC" | "UT" | "Z" => 0,
            _ => {
                let z = zone.as_bytes();
                let sign = match z.first()? {
                    b'+' => 1,
                    b'-' => -1,
                    _ => return None,
                };
                let (hours, minutes) = (parse_decimal(z.get(1..3)?)?, parse_decimal(z.get(3..5)?)?);
                if z.len() != 5 || hours > 23 || minutes > 59 {
                    return None;
                }
                sign * i64::try_from(hours * 3600 + minutes * 60).ok()?
            }
        };
        let epoch_s = i64::try_from(local.epoch_s).ok()?.checked_sub(offset_s)?;
        Some(Self { epoch_s: u64::try_from(epoch_s).ok()? })
    }

    fn from_utc(year: u64, month: u64, day: u64, hour: u64, minute: u64, second: u64) -> Option<Self> {
        let valid = (1970..=9999).contains(&year)
            && (1..=12).contains(&month)
            && (1..=days_in_month(year, month)).contains(&day)
            && hour < 24
            && minute < 60
            && second < 60;
        if !valid {
            return None;
        }
        let days = days_from_civil(year, month, day);
        Some(Self { epoch_s: days * 86_400 + hour * 3600 + minute * 60 + second })
    }

    /// `YYYYMMDD'T'HHMMSS'Z'`, the form of the string to sign.
    fn iso_basic(&self) -> String {
        format_epoch_s(self.epoch_s)
    }

    /// `YYYYMMDD`, the form of the credential scope.
    fn date(&self) -> String {
        let (year, month, day) = civil_from_days(self.epoch_s / 86_400);
        format!("{year:04}{month:02}{day:02}")
    }
}

/// `YYYYMMDD'T'HHMMSS'Z'` of a time in seconds since the Unix epoch.
fn format_epoch_s(epoch_s: u64) -> String {
    let (year, month, day) = civil_from_days(epoch_s / 86_400);
    let second_of_day = epoch_s % 86_400;
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

fn is_leap_year(year: u64) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar, from 1970 on (Howard
/// Hinnant's `days_from_civil`, in unsigned arithmetic: eras start on March 1st of year 0).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date of a day counted from 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let days = days + 719_468;
    let era = days / 146_097;
    let day_of_era = days - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    //! Fixtures were made with botocore 1.43.11 (the AWS CLI's and boto3's signer) at development
    //! time: `SigV4Auth` / `SigV4QueryAuth` / `S3SigV4QueryAuth` over an `AWSRequest`, and the boto3
    //! SQS client itself captured at `before-send`, with `botocore.auth.get_current_datetime` pinned
    //! to 2026-11-21T12:00:00Z; plus one request captured from `aws sqs send-message --debug`. The
    //! `CANONICAL` constants are botocore's own `CanonicalRequest` for each, which ours must equal.

    use axum::http::{HeaderName, HeaderValue};

    use super::*;

    const AKID: &str = "SKEXAMPLEKEY234567AB";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    /// 2026-11-21T12:00:00Z, the time every botocore fixture was signed at.
    const SIGNED_MS: u64 = 1_795_262_400_000;
    const MINUTE_MS: u64 = 60_000;

    /// boto3 `sqs.list_queues(QueueNamePrefix="orders")` (JSON protocol) against http://127.0.0.1:9324,
    /// as sent; boto3 signs `x-amzn-query-mode` but adds `amz-sdk-*` after signing.
    const BOTO3_LIST_QUEUES_HEADERS: &[(&str, &str)] = &[
        ("Host", "127.0.0.1:9324"),
        ("Accept-Encoding", "identity"),
        ("X-Amz-Target", "AmazonSQS.ListQueues"),
        ("Content-Type", "application/x-amz-json-1.0"),
        ("x-amzn-query-mode", "true"),
        (
            "User-Agent",
            "Botocore/1.43.11 ua/2.1 os/linux#6.18.44-fc-v595 md/arch#x86_64 lang/python#3.11.7 md/pyimpl#CPython \
             m/b,D,N,Z,e cfg/retry-mode#legacy",
        ),
        ("X-Amz-Date", "20261121T120000Z"),
        (
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=SKEXAMPLEKEY234567AB/20261121/us-east-1/sqs/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date;x-amz-target;x-amzn-query-mode, \
             Signature=97306d5c6c2a065c522f33f22bda503bf3ec8ea1f1dd9f528e96d818eba6be0d",
        ),
        ("amz-sdk-invocation-id", "559bd7e8-4cf4-42dc-bf75-373279cf08d4"),
        ("amz-sdk-request", "attempt=1"),
        ("Content-Length", "29"),
    ];
    const BOTO3_LIST_QUEUES_BODY: &[u8] = br#"{"QueueNamePrefix": "orders"}"#;
    const BOTO3_LIST_QUEUES_CANONICAL: &str = "POST\n/\n\ncontent-type:application/x-amz-json-1.0\n\
        host:127.0.0.1:9324\nx-amz-date:20261121T120000Z\nx-amz-target:AmazonSQS.ListQueues\n\
        x-amzn-query-mode:true\n\ncontent-type;host;x-amz-date;x-amz-target;x-amzn-query-mode\n\
        9998c1d2207f84c2719fb3e1b0373b20fed859f99936f31755d744fc80720cff";

    /// Query protocol, header auth: a form POST to a queue path, region eu-west-1.
    const QUERY_SEND_HEADERS: &[(&str, &str)] = &[
        ("Host", "localhost:8080"),
        ("Content-Type", "application/x-www-form-urlencoded; charset=utf-8"),
        ("X-Amz-Date", "20261121T120000Z"),
        (
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=SKEXAMPLEKEY234567AB/20261121/eu-west-1/sqs/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=cea6e22257e4cc131291f396adbb3b13fd794ca5898fd036eff1a6d86447446e",
        ),
        ("Content-Length", "127"),
    ];
    const QUERY_SEND_BODY: &[u8] = b"Action=SendMessage&MessageBody=hello+world%21&\
        QueueUrl=http%3A%2F%2Flocalhost%3A8080%2F123456789012%2Forders&Version=2012-11-05";
    const QUERY_SEND_CANONICAL: &str = "POST\n/123456789012/orders\n\n\
        content-type:application/x-www-form-urlencoded; charset=utf-8\nhost:localhost:8080\n\
        x-amz-date:20261121T120000Z\n\ncontent-type;host;x-amz-date\n\
        11d053c2b67dac05b8e0df76ba2423a21e9ec59009898c9709fe5eea9d5a961a";

    /// `SigV4QueryAuth(expires=300)` of a GET whose parameters need encoding (space, `/`, `~`, `+`,
    /// `*`, `=`, `&`, non-ASCII), region eu-central-1. botocore signs the empty body's hash.
    const PRESIGNED_HOST: &str = "sqs.eu-central-1.amazonaws.com";
    const PRESIGNED_PATH_AND_QUERY: &str = "/123456789012/my-queue?Action=SendMessage&\
        MessageBody=hello%20world%2F~%C3%BCn%C3%AF%2B%2A%3D%26&Version=2012-11-05&MessageAttribute.1.Name=a%20b&\
        X-Amz-Algorithm=AWS4-HMAC-SHA256&\
        X-Amz-Credential=SKEXAMPLEKEY234567AB%2F20261121%2Feu-central-1%2Fsqs%2Faws4_request&\
        X-Amz-Date=20261121T120000Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host&\
        X-Amz-Signature=b134533c1d0a0e7fc33a029f998305ae4dfbceb19aa7c3313f3641eee6e60372";
    const PRESIGNED_CANONICAL: &str = "GET\n/123456789012/my-queue\nAction=SendMessage&\
        MessageAttribute.1.Name=a%20b&MessageBody=hello%20world%2F~%C3%BCn%C3%AF%2B%2A%3D%26&Version=2012-11-05&\
        X-Amz-Algorithm=AWS4-HMAC-SHA256&\
        X-Amz-Credential=SKEXAMPLEKEY234567AB%2F20261121%2Feu-central-1%2Fsqs%2Faws4_request&\
        X-Amz-Date=20261121T120000Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host\n\
        host:sqs.eu-central-1.amazonaws.com\n\nhost\n\
        e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    /// `S3SigV4QueryAuth` (S3-style presigning: `UNSIGNED-PAYLOAD`) for service sqs, expires=60.
    const PRESIGNED_UNSIGNED_PATH_AND_QUERY: &str = "/123456789012/orders?Action=ReceiveMessage&\
        MaxNumberOfMessages=10&X-Amz-Algorithm=AWS4-HMAC-SHA256&\
        X-Amz-Credential=SKEXAMPLEKEY234567AB%2F20261121%2Fus-east-1%2Fsqs%2Faws4_request&\
        X-Amz-Date=20261121T120000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host&\
        X-Amz-Signature=a212494a15067dd06552742fe8393328f12277f7130c83371bd42a218240f40b";

    /// Header auth of a GET with query parameters: botocore sends them through `urlencode` (a space
    /// as `+`) but signs them quoted (a space as `%20`), region us-west-2.
    const GET_PARAMS_PATH_AND_QUERY: &str = "/?Action=ListQueues&QueueNamePrefix=a+b%2Bc~%2F";
    const GET_PARAMS_HEADERS: &[(&str, &str)] = &[
        ("Host", "localhost:8080"),
        ("X-Amz-Date", "20261121T120000Z"),
        (
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=SKEXAMPLEKEY234567AB/20261121/us-west-2/sqs/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=1c65699404866c0f1cf47a8ad3655d1bc30e97f6b99255297125b4d1a41d06d9",
        ),
    ];
    const GET_PARAMS_CANONICAL: &str = "GET\n/\nAction=ListQueues&QueueNamePrefix=a%20b%2Bc~%2F\n\
        host:localhost:8080\nx-amz-date:20261121T120000Z\n\nhost;x-amz-date\n\
        e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    /// A request that came with a `Date` header: botocore rewrites it in RFC 2822 form, signs it, and
    /// sends no X-Amz-Date.
    const DATE_HEADER_HEADERS: &[(&str, &str)] = &[
        ("Host", "localhost:8080"),
        ("X-Amz-Target", "AmazonSQS.ListQueues"),
        ("Content-Type", "application/x-amz-json-1.0"),
        ("Date", "Sat, 21 Nov 2026 12:00:00 -0000"),
        (
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=SKEXAMPLEKEY234567AB/20261121/us-east-1/sqs/aws4_request, \
             SignedHeaders=content-type;date;host;x-amz-target, \
             Signature=fd2c566cddcef2c47443733d259fe4f35d27dd6511499d7cdc3350c9a4ea5f34",
        ),
    ];

    /// Payload signing disabled (botocore over https with `payload_signing_enabled=False`).
    const UNSIGNED_PAYLOAD_HEADERS: &[(&str, &str)] = &[
        ("Host", "sqs.us-east-1.amazonaws.com"),
        ("X-Amz-Target", "AmazonSQS.CreateQueue"),
        ("Content-Type", "application/x-amz-json-1.0"),
        ("X-Amz-Date", "20261121T120000Z"),
        ("X-Amz-Content-SHA256", "UNSIGNED-PAYLOAD"),
        (
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=SKEXAMPLEKEY234567AB/20261121/us-east-1/sqs/aws4_request, \
             SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date;x-amz-target, \
             Signature=d30e8be99116935425d5fbdf64c3dcc12af345c0f69dad1c40a10f6613209ee5",
        ),
    ];

    /// `aws sqs send-message --queue-url http://127.0.0.1:1/123456789012/orders --message-body 'hi there ü'
    /// --endpoint-url http://127.0.0.1:1 --region ap-southeast-2` (aws-cli 1.45.11), from `--debug`.
    const CLI_SIGNED_MS: u64 = 1_795_254_578_000;
    const CLI_SEND_HEADERS: &[(&str, &str)] = &[
        ("Host", "127.0.0.1:1"),
        ("X-Amz-Target", "AmazonSQS.SendMessage"),
        ("Content-Type", "application/x-amz-json-1.0"),
        ("x-amzn-query-mode", "true"),
        (
            "User-Agent",
            "aws-cli/1.45.11 md/Botocore#1.43.11 ua/2.1 os/linux#6.18.44-fc-v595 md/arch#x86_64 lang/python#3.11.7 \
             md/pyimpl#CPython m/b,Z,g,D,N cfg/retry-mode#legacy botocore/1.43.11",
        ),
        ("X-Amz-Date", "20261121T094938Z"),
        (
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=SKEXAMPLEKEY234567AB/20261121/ap-southeast-2/sqs/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date;x-amz-target;x-amzn-query-mode, \
             Signature=9c877b42222a07cee06bd9bbb47c87f3e203876027681b4ab08637c7f0d7df87",
        ),
        ("amz-sdk-invocation-id", "140db3a9-e3a5-49d3-b06a-22950276cfa1"),
        ("amz-sdk-request", "attempt=1"),
        ("Content-Length", "88"),
    ];
    const CLI_SEND_BODY: &[u8] =
        br#"{"QueueUrl": "http://127.0.0.1:1/123456789012/orders", "MessageBody": "hi there \u00fc"}"#;
    const CLI_SEND_CANONICAL: &str = "POST\n/\n\ncontent-type:application/x-amz-json-1.0\nhost:127.0.0.1:1\n\
        x-amz-date:20261121T094938Z\nx-amz-target:AmazonSQS.SendMessage\nx-amzn-query-mode:true\n\n\
        content-type;host;x-amz-date;x-amz-target;x-amzn-query-mode\n\
        437d8fcc31407c0112945538139eaa8b7ed748854488ce570d5290627115891a";

    /// A request as the server receives it.
    struct Request {
        method: &'static str,
        path: String,
        query: String,
        headers: HeaderMap,
        body: Vec<u8>,
    }

    impl Request {
        fn new(method: &'static str, path_and_query: &str, headers: &[(&str, &str)], body: &[u8]) -> Self {
            let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
            let mut map = HeaderMap::new();
            for (name, value) in headers {
                let name = HeaderName::from_bytes(name.as_bytes()).expect("fixture header name");
                map.append(name, HeaderValue::from_str(value).expect("fixture header value"));
            }
            Self { method, path: path.to_string(), query: query.to_string(), headers: map, body: body.to_vec() }
        }

        fn boto3_list_queues() -> Self {
            Self::new("POST", "/", BOTO3_LIST_QUEUES_HEADERS, BOTO3_LIST_QUEUES_BODY)
        }

        fn presigned() -> Self {
            Self::new("GET", PRESIGNED_PATH_AND_QUERY, &[("Host", PRESIGNED_HOST)], b"")
        }

        fn parts(&self) -> SignedParts<'_> {
            SignedParts {
                method: self.method,
                path: &self.path,
                query: &self.query,
                headers: &self.headers,
                body: &self.body,
            }
        }

        fn set_header(&mut self, name: &'static str, value: &str) {
            self.headers.insert(name, HeaderValue::from_str(value).expect("test header value"));
        }

        fn parse(&self) -> Result<Signature, SigV4Error> {
            parse(&self.parts())
        }

        fn check(&self, secret: &str, now_ms: u64) -> Result<Signature, SigV4Error> {
            let signature = self.parse()?;
            verify(&signature, &self.parts(), secret, now_ms)?;
            Ok(signature)
        }

        fn canonical(&self, payload_hash: &str) -> String {
            let signature = self.parse().expect("fixture parses");
            let canonical = canonical_request(&signature, &self.parts(), payload_hash).expect("canonical request");
            String::from_utf8(canonical).expect("fixture canonical request is UTF-8")
        }
    }

    #[track_caller]
    fn assert_code<T: std::fmt::Debug>(result: Result<T, SigV4Error>, code: &str) -> SigV4Error {
        match result {
            Err(error) => {
                assert_eq!(error.code(), code, "{error}");
                error
            }
            Ok(value) => panic!("expected {code}, got Ok({value:?})"),
        }
    }

    fn sha256_hex(body: &[u8]) -> String {
        hex::encode(Sha256::digest(body))
    }

    #[test]
    fn boto3_json_protocol_request_verifies() {
        let request = Request::boto3_list_queues();
        let signature = request.check(SECRET, SIGNED_MS).expect("boto3 ListQueues verifies");
        assert_eq!(signature.access_key_id, AKID);
        assert_eq!(signature.region, "us-east-1");
        assert!(!signature.is_presigned());
        assert_eq!(signature.timestamp_ms(), SIGNED_MS);
        assert_eq!(request.canonical(&sha256_hex(BOTO3_LIST_QUEUES_BODY)), BOTO3_LIST_QUEUES_CANONICAL);
    }

    #[test]
    fn aws_cli_request_verifies() {
        let request = Request::new("POST", "/", CLI_SEND_HEADERS, CLI_SEND_BODY);
        let signature = request.check(SECRET, CLI_SIGNED_MS + 5_000).expect("aws sqs send-message verifies");
        assert_eq!(signature.region, "ap-southeast-2");
        assert_eq!(request.canonical(&sha256_hex(CLI_SEND_BODY)), CLI_SEND_CANONICAL);
    }

    #[test]
    fn query_protocol_form_post_verifies() {
        let request = Request::new("POST", "/123456789012/orders", QUERY_SEND_HEADERS, QUERY_SEND_BODY);
        let signature = request.check(SECRET, SIGNED_MS).expect("query-protocol SendMessage verifies");
        assert_eq!(signature.region, "eu-west-1");
        assert_eq!(request.canonical(&sha256_hex(QUERY_SEND_BODY)), QUERY_SEND_CANONICAL);
    }

    #[test]
    fn presigned_get_with_encoded_parameters_verifies() {
        let request = Request::presigned();
        let signature = request.check(SECRET, SIGNED_MS + 299_000).expect("presigned GET verifies");
        assert_eq!(signature.access_key_id, AKID);
        assert_eq!(signature.region, "eu-central-1");
        assert!(signature.is_presigned());
        assert_eq!(request.canonical(&sha256_hex(b"")), PRESIGNED_CANONICAL);
    }

    #[test]
    fn s3_style_presigned_url_with_unsigned_payload_verifies() {
        let request =
            Request::new("GET", PRESIGNED_UNSIGNED_PATH_AND_QUERY, &[("Host", "sqs.us-east-1.amazonaws.com")], b"");
        request.check(SECRET, SIGNED_MS).expect("UNSIGNED-PAYLOAD presigned URL verifies");
    }

    #[test]
    fn plus_in_query_is_a_space_as_botocore_sends_it() {
        let request = Request::new("GET", GET_PARAMS_PATH_AND_QUERY, GET_PARAMS_HEADERS, b"");
        let signature = request.check(SECRET, SIGNED_MS).expect("GET with '+' for a space verifies");
        assert_eq!(signature.region, "us-west-2");
        assert_eq!(request.canonical(&sha256_hex(b"")), GET_PARAMS_CANONICAL);
    }

    #[test]
    fn date_header_in_rfc_2822_form_verifies() {
        let request = Request::new("POST", "/", DATE_HEADER_HEADERS, b"{}");
        request.check(SECRET, SIGNED_MS).expect("botocore's Date-header request verifies");
    }

    #[test]
    fn unsigned_payload_is_taken_only_without_a_body() {
        let mut request = Request::new("POST", "/", UNSIGNED_PAYLOAD_HEADERS, b"");
        request.check(SECRET, SIGNED_MS).expect("UNSIGNED-PAYLOAD request without a body verifies");
        request.body = br#"{"QueueName":"orders"}"#.to_vec();
        assert_code(request.check(SECRET, SIGNED_MS), "IncompleteSignature");

        let mut request =
            Request::new("GET", PRESIGNED_UNSIGNED_PATH_AND_QUERY, &[("Host", "sqs.us-east-1.amazonaws.com")], b"");
        request.body = b"Action=ReceiveMessage&QueueUrl=x".to_vec();
        assert_code(request.check(SECRET, SIGNED_MS), "SignatureDoesNotMatch");
    }

    #[test]
    fn every_amz_header_content_type_and_the_time_must_be_signed() {
        // A signed GetQueueAttributes replayed as ReceiveMessage with an unsigned X-Amz-Target.
        let mut request = Request::new("GET", GET_PARAMS_PATH_AND_QUERY, GET_PARAMS_HEADERS, b"");
        request.check(SECRET, SIGNED_MS).expect("fixture verifies");
        request.set_header("x-amz-target", "AmazonSQS.ReceiveMessage");
        let error = assert_code(request.check(SECRET, SIGNED_MS), "IncompleteSignature");
        assert!(error.to_string().contains("x-amz-target"), "{error}");

        let mut request = Request::new("GET", GET_PARAMS_PATH_AND_QUERY, GET_PARAMS_HEADERS, b"");
        request.set_header("content-type", "application/x-amz-json-1.0");
        assert_code(request.check(SECRET, SIGNED_MS), "IncompleteSignature");

        let mut request = Request::presigned();
        request.set_header("x-amz-target", "AmazonSQS.PurgeQueue");
        assert_code(request.check(SECRET, SIGNED_MS), "IncompleteSignature");

        // Headers outside those rules may travel unsigned (proxies add some).
        let mut request = Request::boto3_list_queues();
        request.set_header("x-amzn-trace-id", "Root=1-5759e988");
        request.set_header("user-agent", "curl/8");
        request.check(SECRET, SIGNED_MS).expect("x-amzn-* and user-agent need no signature");
    }

    #[test]
    fn wrong_secret_does_not_match_and_the_message_leaks_nothing() {
        let request = Request::boto3_list_queues();
        let wrong = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEz";
        let error = assert_code(request.check(wrong, SIGNED_MS), "SignatureDoesNotMatch");
        assert_eq!(error.http_status(), 403);

        let signature = request.parse().expect("fixture parses");
        let expected = signature_for(&signature, &request.parts(), wrong, &sha256_hex(BOTO3_LIST_QUEUES_BODY))
            .expect("signature computes");
        let message = error.to_string();
        assert!(!message.contains(wrong), "{message}");
        assert!(!message.contains(SECRET), "{message}");
        assert!(!message.contains(&expected), "{message}");
        assert!(!message.contains("AWS4-HMAC-SHA256\n"), "no string to sign: {message}");
    }

    #[test]
    fn tampered_body_does_not_match() {
        let mut request = Request::boto3_list_queues();
        request.body = br#"{"QueueNamePrefix": "ordert"}"#.to_vec();
        assert_code(request.check(SECRET, SIGNED_MS), "SignatureDoesNotMatch");

        let mut request = Request::new("POST", "/123456789012/orders", QUERY_SEND_HEADERS, QUERY_SEND_BODY);
        request.body = String::from_utf8_lossy(QUERY_SEND_BODY).replace("hello", "hellO").into_bytes();
        assert_code(request.check(SECRET, SIGNED_MS), "SignatureDoesNotMatch");
    }

    #[test]
    fn content_sha256_header_must_match_the_body() {
        let mut request = Request::boto3_list_queues();
        // Sent unsigned, the header itself is refused; signed, it must be the body's hash.
        request.set_header("x-amz-content-sha256", &sha256_hex(b"another body"));
        assert_code(request.check(SECRET, SIGNED_MS), "IncompleteSignature");
        let mut request = Request::new("POST", "/", UNSIGNED_PAYLOAD_HEADERS, b"");
        request.set_header("x-amz-content-sha256", &sha256_hex(b"another body"));
        assert_code(request.check(SECRET, SIGNED_MS), "SignatureDoesNotMatch");
        request.set_header("x-amz-content-sha256", "STREAMING-UNSIGNED-PAYLOAD-TRAILER");
        assert_code(request.check(SECRET, SIGNED_MS), "IncompleteSignature");
    }

    #[test]
    fn tampered_signed_parts_do_not_match_but_unsigned_headers_may_change() {
        let mut request = Request::boto3_list_queues();
        request.set_header("x-amz-target", "AmazonSQS.DeleteQueue");
        assert_code(request.check(SECRET, SIGNED_MS), "SignatureDoesNotMatch");

        let mut request = Request::boto3_list_queues();
        request.set_header("user-agent", "curl/8");
        request.set_header("amz-sdk-request", "attempt=2");
        request.check(SECRET, SIGNED_MS).expect("unsigned headers are not covered");

        let mut request = Request::boto3_list_queues();
        request.path = "/123456789012/orders".to_string();
        assert_code(request.check(SECRET, SIGNED_MS), "SignatureDoesNotMatch");

        let mut request = Request::boto3_list_queues();
        request.method = "PUT";
        assert_code(request.check(SECRET, SIGNED_MS), "SignatureDoesNotMatch");

        let mut request = Request::presigned();
        request.query = request.query.replace("hello%20world", "hello%20World");
        assert_code(request.check(SECRET, SIGNED_MS), "SignatureDoesNotMatch");

        let mut request = Request::presigned();
        request.query.push_str("&Extra=1");
        assert_code(request.check(SECRET, SIGNED_MS), "SignatureDoesNotMatch");

        let mut request = Request::presigned();
        request.set_header("host", "sqs.us-east-1.amazonaws.com");
        assert_code(request.check(SECRET, SIGNED_MS), "SignatureDoesNotMatch");

        let mut request = Request::presigned();
        request.body = b"a body the presigner did not sign".to_vec();
        assert_code(request.check(SECRET, SIGNED_MS), "SignatureDoesNotMatch");
    }

    #[test]
    fn clock_skew_is_bounded_both_ways() {
        let request = Request::boto3_list_queues();
        request.check(SECRET, SIGNED_MS + CLOCK_SKEW_MS_MAX).expect("at the edge, late");
        request.check(SECRET, SIGNED_MS - CLOCK_SKEW_MS_MAX).expect("at the edge, early");

        let error = assert_code(request.check(SECRET, SIGNED_MS + CLOCK_SKEW_MS_MAX + 1), "RequestExpired");
        assert_eq!(error.http_status(), 400);
        let message = error.to_string();
        assert!(message.contains("20261121T120000Z") && message.contains("20261121T121500Z"), "{message}");
        assert!(message.contains("clock"), "{message}");

        let error = assert_code(request.check(SECRET, SIGNED_MS - CLOCK_SKEW_MS_MAX - 1), "RequestExpired");
        let message = error.to_string();
        assert!(message.contains("20261121T120000Z") && message.contains("20261121T114459Z"), "{message}");

        // Expiry is checked before the signature: a wrong secret at a skewed time still says expired.
        assert_code(request.check("wrong", SIGNED_MS + 60 * MINUTE_MS), "RequestExpired");
    }

    #[test]
    fn presigned_urls_expire() {
        let request = Request::presigned();
        request.check(SECRET, SIGNED_MS + 300_000).expect("valid through X-Amz-Expires");
        let error = assert_code(request.check(SECRET, SIGNED_MS + 300_001), "RequestExpired");
        assert!(error.to_string().contains("300 seconds"), "{error}");
        // Presigned in the future beyond the allowed skew.
        request.check(SECRET, SIGNED_MS - CLOCK_SKEW_MS_MAX).expect("within skew");
        assert_code(request.check(SECRET, SIGNED_MS - CLOCK_SKEW_MS_MAX - 1), "RequestExpired");
    }

    #[test]
    fn presigned_expires_is_capped_at_seven_days() {
        let mut request = Request::presigned();
        request.query = request.query.replace("X-Amz-Expires=300", "X-Amz-Expires=604801");
        assert_code(request.parse(), "IncompleteSignature");
        request.query = request.query.replace("X-Amz-Expires=604801", "X-Amz-Expires=604800");
        request.parse().expect("7 days is allowed");
        request.query = request.query.replace("X-Amz-Expires=604800", "X-Amz-Expires=-1");
        assert_code(request.parse(), "IncompleteSignature");
    }

    #[test]
    fn other_service_is_rejected() {
        let mut request = Request::boto3_list_queues();
        let authorization = BOTO3_LIST_QUEUES_HEADERS[7].1.replace("/us-east-1/sqs/", "/us-east-1/sns/");
        request.set_header("authorization", &authorization);
        let error = assert_code(request.parse(), "SignatureDoesNotMatch");
        assert!(error.to_string().contains("'sqs'") && error.to_string().contains("'sns'"), "{error}");

        let mut request = Request::presigned();
        request.query = request.query.replace("%2Fsqs%2F", "%2Fs3%2F");
        assert_code(request.parse(), "SignatureDoesNotMatch");
    }

    #[test]
    fn any_region_is_accepted_but_it_is_signed() {
        // The region is part of the key derivation: claiming another one breaks the signature.
        let mut request = Request::boto3_list_queues();
        let authorization = BOTO3_LIST_QUEUES_HEADERS[7].1.replace("/us-east-1/", "/local-1/");
        request.set_header("authorization", &authorization);
        let signature = request.parse().expect("any region parses");
        assert_eq!(signature.region, "local-1");
        assert_code(request.check(SECRET, SIGNED_MS), "SignatureDoesNotMatch");
    }

    #[test]
    fn credential_date_must_be_the_request_date() {
        let mut request = Request::boto3_list_queues();
        let authorization = BOTO3_LIST_QUEUES_HEADERS[7].1.replace("/20261121/", "/20261120/");
        request.set_header("authorization", &authorization);
        assert_code(request.parse(), "SignatureDoesNotMatch");
    }

    #[test]
    fn missing_signature_is_missing_authentication_token() {
        let request = Request::new("POST", "/", &[("Host", "localhost"), ("X-Amz-Date", "20261121T120000Z")], b"{}");
        let error = assert_code(request.parse(), "MissingAuthenticationToken");
        assert_eq!(error.http_status(), 403);

        // Unrelated query parameters are no signature either.
        let request = Request::new("GET", "/?Action=ListQueues&X-Amz-Date=20261121T120000Z", &[("Host", "h")], b"");
        assert_code(request.parse(), "MissingAuthenticationToken");
    }

    #[test]
    fn garbage_authorization_is_incomplete_signature() {
        let valid = BOTO3_LIST_QUEUES_HEADERS[7].1;
        let form = "must read 'AWS4-HMAC-SHA256 Credential=";
        let components = "must consist of Credential";
        let credential = "credential must read";
        let signed_headers = "SignedHeaders must be lowercase";
        let unsorted = "must be sorted and without repetition";
        // 64 names sorting before `host`, plus `host`.
        let many: Vec<String> = (0..SIGNED_HEADERS_MAX).map(|i| format!("a-{i:03}")).collect();
        let many = valid.replace("SignedHeaders=content-type;host", &format!("SignedHeaders={};host", many.join(";")));
        let cases = [
            ("garbage".to_string(), form),
            ("Bearer eyJhbGciOiJIUzI1NiJ9.e30.x".to_string(), form),
            ("AWS4-HMAC-SHA256".to_string(), form),
            ("AWS4-HMAC-SHA256Credential=x".to_string(), form),
            ("AWS4-ECDSA-P256-SHA256 Credential=x, SignedHeaders=host, Signature=00".to_string(), form),
            ("AWS4-HMAC-SHA256 ".to_string(), components),
            (format!("{valid},"), components),
            (format!("{valid}, Extra=1"), "other than Credential"),
            (format!("{valid}, Signature={}", "0".repeat(64)), "Signature more than once"),
            (
                "AWS4-HMAC-SHA256 Credential=SKEXAMPLEKEY234567AB/20261121/us-east-1/sqs/aws4_request".to_string(),
                "has no SignedHeaders",
            ),
            (valid.replace(", Signature=", ", Signature=zz"), "64 hexadecimal digits"),
            (valid.replace("97306d5c", "97306d5"), "64 hexadecimal digits"),
            (valid.replace("SignedHeaders=", "SignedHeaders=;"), signed_headers),
            (valid.replace("content-type;host", "Content-Type;host"), signed_headers),
            (valid.replace("content-type;host", "host;content-type"), unsorted),
            (valid.replace("content-type;host", "content-type;content-type;host"), unsorted),
            (valid.replace("content-type;host;", "content-type;"), "must include host"),
            (many, "more than 64 signed headers"),
            (valid.replace("/aws4_request", "/aws4_request/extra"), credential),
            (valid.replace("/us-east-1", ""), credential),
            (valid.replace("/aws4_request", "/aws5_request"), "must end in /aws4_request"),
            (valid.replace("SKEXAMPLEKEY234567AB/", "/"), "access key id"),
            (valid.replace("SKEXAMPLEKEY234567AB/", "SK EXAMPLE/"), "access key id"),
            (valid.replace("/20261121/", "/2026-11-21/"), "must be YYYYMMDD"),
            (valid.replace("/us-east-1/", "/us east 1/"), "region"),
            (format!("{valid}{}", " ".repeat(AUTHORIZATION_BYTES_MAX)), "longer than 4096 bytes"),
        ];
        for (authorization, fragment) in cases {
            let mut request = Request::boto3_list_queues();
            request.set_header("authorization", &authorization);
            let error = assert_code(request.parse(), "IncompleteSignature");
            assert_eq!(error.http_status(), 400);
            assert!(error.to_string().contains(fragment), "{authorization:?}: {error}");
        }
    }

    #[test]
    fn malformed_requests_are_incomplete_signature() {
        // Signed header not sent.
        let mut request = Request::boto3_list_queues();
        request.headers.remove("x-amzn-query-mode");
        let error = assert_code(request.parse(), "IncompleteSignature");
        assert!(error.to_string().contains("'x-amzn-query-mode'"), "{error}");
        // No time, or a malformed one.
        let mut request = Request::boto3_list_queues();
        request.headers.remove("x-amz-date");
        assert_code(request.parse(), "IncompleteSignature");
        for date in ["2026-11-21T12:00:00Z", "20261121T120000", "20260230T120000Z", "20261121T240000Z", "x"] {
            request.set_header("x-amz-date", date);
            assert_code(request.parse(), "IncompleteSignature");
        }
        // Two Authorization headers.
        let mut request = Request::boto3_list_queues();
        request.headers.append("authorization", HeaderValue::from_static("AWS4-HMAC-SHA256 x"));
        assert_code(request.parse(), "IncompleteSignature");
        // Both forms at once.
        let mut request = Request::presigned();
        request.set_header("authorization", BOTO3_LIST_QUEUES_HEADERS[7].1);
        assert_code(request.parse(), "IncompleteSignature");
        // Presigned parameters missing, repeated or wrong.
        for (from, to) in [
            ("X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Algorithm=AWS4-HMAC-SHA1"),
            ("&X-Amz-Expires=300", ""),
            ("&X-Amz-SignedHeaders=host", ""),
            ("X-Amz-SignedHeaders=host", "X-Amz-SignedHeaders=x-amz-date"),
            ("X-Amz-Date=20261121T120000Z", "X-Amz-Date=20261121T120000Z&X-Amz-Date=20261121T120000Z"),
            ("X-Amz-Date=20261121T120000Z", "X-Amz-Date=Sat%2C%2021%20Nov%202026%2012%3A00%3A00%20GMT"),
        ] {
            let mut request = Request::presigned();
            request.query = request.query.replace(from, to);
            assert_code(request.parse(), "IncompleteSignature");
        }
        // Too many query parameters.
        let mut request = Request::presigned();
        request.query.push_str(&"&a=1".repeat(QUERY_PARAMS_MAX));
        assert_code(request.parse(), "IncompleteSignature");
    }

    #[test]
    fn invalid_client_token_id_is_made_by_the_caller() {
        let error = SigV4Error::invalid_client_token_id(AKID);
        assert_eq!(error.code(), "InvalidClientTokenId");
        assert_eq!(error.http_status(), 403);
        assert!(error.to_string().contains(AKID), "{error}");
    }

    #[test]
    fn canonical_uri_matches_botocore() {
        // From botocore's SigV4Auth._normalize_url_path.
        for (path, canonical) in [
            ("", "/"),
            ("/", "/"),
            ("/a/./b/../c//d/", "/a/c/d/"),
            ("/123456789012/queue-name", "/123456789012/queue-name"),
            ("/%2F x/é", "/%252F%20x/%C3%A9"),
            ("/a/..", "/"),
            ("//", "/"),
            ("/a%20b~c!", "/a%2520b~c%21"),
        ] {
            assert_eq!(canonical_uri(path), canonical, "path {path:?}");
        }
    }

    #[test]
    fn canonical_query_decodes_then_encodes() {
        for (raw, canonical) in [
            ("", ""),
            ("b=2&a=1&a=0&c", "a=0&a=1&b=2&c="),
            ("a=%7e%7E~", "a=~~~"),
            ("a=x+y%20z", "a=x%20y%20z"),
            ("a=%2b%2B", "a=%2B%2B"),
            ("a=%zz%4", "a=%25zz%254"),
            ("a=1&&b=2&", "a=1&b=2"),
            ("%C3%BC=%c3%bc", "%C3%BC=%C3%BC"),
            ("A=1&a=1&B=1&_=1", "A=1&B=1&_=1&a=1"),
        ] {
            let params = parse_query(raw).expect("query parses");
            assert_eq!(canonical_query(&params, false), canonical, "query {raw:?}");
        }
        let params = parse_query("X-Amz-Signature=abc&a=1").expect("query parses");
        assert_eq!(canonical_query(&params, true), "a=1");
        assert_eq!(canonical_query(&params, false), "X-Amz-Signature=abc&a=1");
    }

    #[test]
    fn header_values_are_trimmed_and_joined() {
        let mut out = Vec::new();
        push_trimmed(&mut out, b"  a   b \t c  ");
        assert_eq!(out, b"a b c");

        let mut request = Request::new("GET", "/", &[("Host", "h"), ("X-Amz-Date", "20261121T120000Z")], b"");
        request.headers.append("x-multi", HeaderValue::from_static(" one  two "));
        request.headers.append("x-multi", HeaderValue::from_static("three"));
        let signature = "0".repeat(64);
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={AKID}/20261121/r/sqs/aws4_request, SignedHeaders=host;x-amz-date;x-multi, \
             Signature={signature}"
        );
        request.set_header("authorization", &authorization);
        assert_eq!(
            request.canonical("p"),
            "GET\n/\n\nhost:h\nx-amz-date:20261121T120000Z\nx-multi:one two,three\n\nhost;x-amz-date;x-multi\np"
        );
    }

    #[test]
    fn timestamps_parse_and_format() {
        let parse = |s: &str| Timestamp::parse_iso_basic(s).map(|t| t.epoch_s);
        assert_eq!(parse("19700101T000000Z"), Some(0));
        assert_eq!(parse("20261121T120000Z"), Some(SIGNED_MS / 1000));
        assert_eq!(parse("20240229T235959Z"), Some(1_709_251_199));
        assert_eq!(parse("20000229T000000Z"), Some(951_782_400));
        assert_eq!(parse("99991231T235959Z"), Some(253_402_300_799));
        for bad in ["21000229T000000Z", "20230229T000000Z", "20261131T000000Z", "20261301T000000Z", "19691231T235959Z"]
        {
            assert_eq!(parse(bad), None, "{bad}");
        }
        for bad in ["20261121T126000Z", "20261121T120060Z", "+0261121T120000Z", "20261121t120000Z", "20261121T120000ZZ"]
        {
            assert_eq!(parse(bad), None, "{bad}");
        }
        for epoch_s in [0, 951_782_400, 1_709_251_199, SIGNED_MS / 1000, 253_402_300_799] {
            let formatted = format_epoch_s(epoch_s);
            assert_eq!(parse(&formatted), Some(epoch_s), "{formatted}");
        }
        assert_eq!(Timestamp { epoch_s: 1_709_251_199 }.date(), "20240229");

        let http = |s: &str| Timestamp::parse_http_date(s).map(|t| t.epoch_s);
        let signed_s = SIGNED_MS / 1000;
        assert_eq!(http("Sat, 21 Nov 2026 12:00:00 -0000"), Some(signed_s));
        assert_eq!(http("Sat, 21 Nov 2026 12:00:00 GMT"), Some(signed_s));
        assert_eq!(http("21 Nov 2026 13:30:00 +0130"), Some(signed_s));
        assert_eq!(http("Sat, 21 Nov 2026 07:00:00 -0500"), Some(signed_s));
        for bad in ["Sat, 21 Foo 2026 12:00:00 GMT", "Sat, 21 Nov 2026 12:00 GMT", "Sat, 21 Nov 2026 12:00:00 +00", ""]
        {
            assert_eq!(http(bad), None, "{bad}");
        }
    }

    #[test]
    fn error_codes_and_statuses() {
        let cases = [
            (SigV4Error::MissingAuthenticationToken, "MissingAuthenticationToken", 403),
            (SigV4Error::IncompleteSignature(String::new()), "IncompleteSignature", 400),
            (SigV4Error::invalid_client_token_id(AKID), "InvalidClientTokenId", 403),
            (SigV4Error::SignatureDoesNotMatch(String::new()), "SignatureDoesNotMatch", 403),
            (SigV4Error::RequestExpired(String::new()), "RequestExpired", 400),
        ];
        for (error, code, status) in cases {
            assert_eq!((error.code(), error.http_status()), (code, status));
        }
    }
}
