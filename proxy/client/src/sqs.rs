//! Signing calls of the SQS-compatible API's JSON protocol with AWS SigV4, as an AWS SDK signs
//! them, for programs that call it without an SDK (`strata bench`, the tests). The signature is
//! made with `aws-sigv4`, AWS's own signer.

use std::borrow::Cow;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;

/// Why a call could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("cannot sign the SQS call: {0}")]
pub struct SignError(String);

/// Departures from how an SDK signs, for tests of the server's checks.
#[derive(Debug, Clone, Default)]
pub struct SignOptions {
    /// Headers sent but left out of the signature.
    pub unsigned_headers: Vec<&'static str>,
    /// Sign `UNSIGNED-PAYLOAD` (sent as `x-amz-content-sha256`) instead of the body's hash.
    pub unsigned_payload: bool,
}

/// Signs as one access key of a tenant, for one region.
pub struct SqsSigner {
    region: String,
    credentials: Credentials,
}

impl SqsSigner {
    pub fn new(region: &str, access_key_id: &str, secret_access_key: &str) -> Self {
        let credentials = Credentials::new(access_key_id, secret_access_key, None, None, "strata-client");
        Self { region: region.to_owned(), credentials }
    }

    /// The headers to send with a JSON-protocol call of `action` (`SendMessageBatch`, ...) posted
    /// to `url` (the endpoint's root, `http://host:port/`) with `body`, signed at `at`.
    pub fn json_call_headers(
        &self,
        url: &str,
        action: &str,
        body: &[u8],
        at: SystemTime,
        options: &SignOptions,
    ) -> Result<Vec<(String, String)>, SignError> {
        let host = url
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .ok_or_else(|| SignError(format!("the URL '{url}' names no host")))?;
        let target = format!("AmazonSQS.{action}");
        let headers =
            [("host", host), ("content-type", "application/x-amz-json-1.0"), ("x-amz-target", target.as_str())];
        let mut settings = SigningSettings::default();
        settings.excluded_headers = Some(options.unsigned_headers.iter().map(|name| Cow::Borrowed(*name)).collect());
        let signable_body = if options.unsigned_payload {
            settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
            SignableBody::UnsignedPayload
        } else {
            SignableBody::Bytes(body)
        };
        let identity = self.credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("sqs")
            .time(at)
            .settings(settings)
            .build()
            .map_err(|e| SignError(e.to_string()))?
            .into();
        let signable = SignableRequest::new("POST", url, headers.iter().copied(), signable_body)
            .map_err(|e| SignError(e.to_string()))?;
        let (instructions, _) = sign(signable, &params).map_err(|e| SignError(e.to_string()))?.into_parts();
        // `host` is the URL's; the HTTP client sends it.
        Ok(headers
            .iter()
            .skip(1)
            .copied()
            .chain(instructions.headers())
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect())
    }
}
