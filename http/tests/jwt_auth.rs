//! Tests for JWT bearer verification (`strata_http::auth`).
//!
//! Keys under `tests/fixtures/` are test-only (see the README there).

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use strata_common::clock::ManualClock;
use strata_http::auth::{
    AuthError, JwtIssuer, JwtKey, JwtVerifier, LEEWAY_S_DEFAULT, TOKEN_BYTES_MAX, TOKEN_LIFETIME_S_MAX_DEFAULT,
    VerifiedToken,
};

const RSA_PRIVATE_PEM: &[u8] = include_bytes!("fixtures/rsa_private.pem");
const RSA_PUBLIC_PEM: &[u8] = include_bytes!("fixtures/rsa_public.pem");
const ED25519_PRIVATE_PEM: &[u8] = include_bytes!("fixtures/ed25519_private.pem");
const ED25519_PUBLIC_PEM: &[u8] = include_bytes!("fixtures/ed25519_public.pem");

const HMAC_SECRET: &[u8] = b"test-only-hmac-secret-0123456789abcdef";
const ISSUER: &str = "https://auth.strata.test";
const AUDIENCE: &str = "strata-native";
const HS_KID: &str = "hs-1";
const RS_KID: &str = "rs-1";
const ED_KID: &str = "ed-1";
const TTL_S: u64 = 300;

/// The verifier's clock reads this (seconds since the Unix epoch) unless a test moves it.
const NOW_S: u64 = 1_800_000_000;

/// The verifier under test, reading time from `clock`.
fn verifier_at(clock: &ManualClock) -> JwtVerifier {
    JwtVerifier::new(
        ISSUER,
        AUDIENCE,
        vec![
            JwtKey::hmac(HS_KID, HMAC_SECRET),
            JwtKey::rsa_pem(RS_KID, Algorithm::RS256, RSA_PUBLIC_PEM).expect("RSA public key"),
            JwtKey::ed25519_pem(ED_KID, ED25519_PUBLIC_PEM).expect("Ed25519 public key"),
        ],
    )
    .with_clock(Arc::new(clock.clone()))
}

/// The verifier under test with its clock at [`NOW_S`].
fn verifier() -> JwtVerifier {
    verifier_at(&ManualClock::new(NOW_S * 1000))
}

fn hs_issuer() -> JwtIssuer {
    JwtIssuer::hmac(HS_KID, HMAC_SECRET, ISSUER, AUDIENCE)
}

fn hs_key() -> EncodingKey {
    EncodingKey::from_secret(HMAC_SECRET)
}

fn rs_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM).expect("RSA private key")
}

fn ed_key() -> EncodingKey {
    EncodingKey::from_ed_pem(ED25519_PRIVATE_PEM).expect("Ed25519 private key")
}

/// Claims that pass every check, for `sub`.
fn good_claims(sub: &str) -> Value {
    let now = NOW_S;
    json!({ "sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + TTL_S })
}

/// Signs arbitrary claims with a real key (jsonwebtoken's encoder).
fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("encode test token")
}

fn b64_json(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).expect("serialize"))
}

/// Assembles a token by hand from header and claims JSON plus a raw signature part.
fn craft(header: &Value, claims: &Value, signature_b64: &str) -> String {
    format!("{}.{}.{}", b64_json(header), b64_json(claims), signature_b64)
}

fn with_claim_removed(claims: &Value, name: &str) -> Value {
    let mut claims = claims.clone();
    claims.as_object_mut().expect("claims object").remove(name);
    claims
}

// ---------------------------------------------------------------- valid tokens

#[test]
fn valid_hs256_token_minted_by_issuer_verifies() {
    let now = NOW_S;
    let token = hs_issuer().mint("tenant-a", TTL_S, now).expect("mint");
    let verified = verifier().verify(&token).expect("valid HS256 token");
    assert_eq!(verified, VerifiedToken { tenant: "tenant-a".into(), expires_at_s: now + TTL_S });
}

#[test]
fn valid_rs256_token_verifies() {
    let claims = good_claims("tenant_rs");
    let token = sign(Algorithm::RS256, Some(RS_KID), &claims, &rs_key());
    let verified = verifier().verify(&token).expect("valid RS256 token");
    assert_eq!(verified.tenant, "tenant_rs");
    assert_eq!(Some(verified.expires_at_s), claims["exp"].as_u64());
}

#[test]
fn valid_rs256_token_minted_by_rsa_issuer_verifies() {
    let issuer = JwtIssuer::rsa_pem(RS_KID, Algorithm::RS256, RSA_PRIVATE_PEM, ISSUER, AUDIENCE).expect("RSA issuer");
    let now = NOW_S;
    let token = issuer.mint("acme", TTL_S, now).expect("mint");
    let verified = verifier().verify(&token).expect("valid RS256 token");
    assert_eq!(verified.tenant, "acme");
    assert_eq!(verified.expires_at_s, now + TTL_S);
}

#[test]
fn valid_eddsa_token_verifies() {
    let claims = good_claims("tenant-ed");
    let token = sign(Algorithm::EdDSA, Some(ED_KID), &claims, &ed_key());
    let verified = verifier().verify(&token).expect("valid EdDSA token");
    assert_eq!(verified.tenant, "tenant-ed");
    assert_eq!(Some(verified.expires_at_s), claims["exp"].as_u64());

    let issuer = JwtIssuer::ed25519_pem(ED_KID, ED25519_PRIVATE_PEM, ISSUER, AUDIENCE).expect("Ed issuer");
    let minted = issuer.mint("tenant-ed", TTL_S, NOW_S).expect("mint");
    assert_eq!(verifier().verify(&minted).expect("minted EdDSA").tenant, "tenant-ed");
}

#[test]
fn audience_array_containing_ours_is_accepted() {
    let mut claims = good_claims("tenant-a");
    claims["aud"] = json!(["other-service", AUDIENCE]);
    let token = sign(Algorithm::HS256, Some(HS_KID), &claims, &hs_key());
    assert_eq!(verifier().verify(&token).expect("valid").tenant, "tenant-a");
}

#[test]
fn tenant_comes_only_from_sub() {
    let mut claims = good_claims("real-tenant");
    let extra = claims.as_object_mut().expect("claims object");
    extra.insert("tenant".into(), json!("evil-tenant"));
    extra.insert("tid".into(), json!("evil-tenant"));
    extra.insert("tenant_id".into(), json!("evil-tenant"));
    extra.insert("org".into(), json!("evil-tenant"));
    extra.insert("azp".into(), json!("evil-tenant"));
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(HS_KID.into());
    header.extras.insert("tenant", "evil-tenant");
    let token = jsonwebtoken::encode(&header, &claims, &hs_key()).expect("encode");

    let verified = verifier().verify(&token).expect("valid token");
    assert_eq!(verified.tenant, "real-tenant");
}

// ------------------------------------------------------------ claim validation

#[test]
fn expired_token_is_rejected() {
    let mut claims = good_claims("tenant-a");
    claims["exp"] = json!(NOW_S - 60);
    let token = sign(Algorithm::HS256, Some(HS_KID), &claims, &hs_key());
    assert_eq!(verifier().verify(&token), Err(AuthError::Expired));

    // Also through the issuer: a token minted long ago with a short ttl.
    let old = hs_issuer().mint("tenant-a", 10, NOW_S - 3_600).expect("mint");
    assert_eq!(verifier().verify(&old), Err(AuthError::Expired));
}

#[test]
fn expiry_boundary_follows_the_clock_and_leeway() {
    let clock = ManualClock::new(NOW_S * 1000);
    let v = verifier_at(&clock);
    let token = hs_issuer().mint("tenant-a", TTL_S, NOW_S).expect("mint");
    assert!(v.verify(&token).is_ok(), "fresh token");

    // Last accepted second: exp + leeway - 1.
    clock.set_ms((NOW_S + TTL_S + LEEWAY_S_DEFAULT - 1) * 1000);
    assert!(v.verify(&token).is_ok(), "within leeway after exp");

    // From exp + leeway on, rejected.
    clock.set_ms((NOW_S + TTL_S + LEEWAY_S_DEFAULT) * 1000);
    assert_eq!(v.verify(&token), Err(AuthError::Expired));
}

#[test]
fn leeway_is_applied_and_configurable() {
    let mut claims = good_claims("tenant-a");
    claims["exp"] = json!(NOW_S - 30);
    let token = sign(Algorithm::HS256, Some(HS_KID), &claims, &hs_key());
    const { assert!(LEEWAY_S_DEFAULT < 30) };
    assert_eq!(verifier().verify(&token), Err(AuthError::Expired));
    let lenient = verifier().with_leeway_s(120);
    assert_eq!(lenient.verify(&token).expect("within leeway").tenant, "tenant-a");
}

#[test]
fn not_yet_valid_token_is_rejected() {
    let mut claims = good_claims("tenant-a");
    claims["nbf"] = json!(NOW_S + 120);
    let token = sign(Algorithm::HS256, Some(HS_KID), &claims, &hs_key());
    assert_eq!(verifier().verify(&token), Err(AuthError::Expired));

    // An `nbf` in the past, or ahead by less than the leeway, is fine.
    for nbf in [NOW_S - 120, NOW_S + LEEWAY_S_DEFAULT] {
        claims["nbf"] = json!(nbf);
        let token = sign(Algorithm::HS256, Some(HS_KID), &claims, &hs_key());
        assert!(verifier().verify(&token).is_ok(), "nbf {nbf}");
    }
}

#[test]
fn wrong_audience_is_rejected() {
    let mut claims = good_claims("tenant-a");
    claims["aud"] = json!("some-other-service");
    let token = sign(Algorithm::HS256, Some(HS_KID), &claims, &hs_key());
    assert_eq!(verifier().verify(&token), Err(AuthError::InvalidAudience));

    let other = JwtIssuer::hmac(HS_KID, HMAC_SECRET, ISSUER, "not-strata");
    let minted = other.mint("tenant-a", TTL_S, NOW_S).expect("mint");
    assert_eq!(verifier().verify(&minted), Err(AuthError::InvalidAudience));
}

#[test]
fn wrong_issuer_is_rejected() {
    let mut claims = good_claims("tenant-a");
    claims["iss"] = json!("https://evil.example");
    let token = sign(Algorithm::HS256, Some(HS_KID), &claims, &hs_key());
    assert_eq!(verifier().verify(&token), Err(AuthError::InvalidIssuer));
}

#[test]
fn missing_required_claims_are_rejected() {
    for name in ["exp", "aud", "iss", "sub"] {
        let claims = with_claim_removed(&good_claims("tenant-a"), name);
        let token = sign(Algorithm::HS256, Some(HS_KID), &claims, &hs_key());
        assert_eq!(verifier().verify(&token), Err(AuthError::MissingClaim(name)), "token without `{name}`");
    }
}

#[test]
fn invalid_tenant_in_sub_is_rejected() {
    let too_long = "a".repeat(65);
    for sub in ["", "tenant/a", "tenant a", "../etc", "tenänt", "tenant.a", "tenant:a", too_long.as_str()] {
        let token = sign(Algorithm::HS256, Some(HS_KID), &good_claims(sub), &hs_key());
        assert_eq!(verifier().verify(&token), Err(AuthError::InvalidTenant), "sub {sub:?}");
    }

    let longest = "Z_-9".repeat(16);
    let token = sign(Algorithm::HS256, Some(HS_KID), &good_claims(&longest), &hs_key());
    assert_eq!(verifier().verify(&token).expect("64 chars ok").tenant, longest);
}

#[test]
fn issuer_refuses_to_mint_invalid_tenant() {
    assert_eq!(hs_issuer().mint("bad tenant", TTL_S, NOW_S), Err(AuthError::InvalidTenant));
    assert_eq!(hs_issuer().mint("", TTL_S, NOW_S), Err(AuthError::InvalidTenant));
}

// ------------------------------------------------------ algorithm and key checks

#[test]
fn alg_none_is_rejected() {
    let claims = good_claims("tenant-a");
    for alg in ["none", "None", "NONE", "nOnE"] {
        for kid in [HS_KID, RS_KID, ED_KID] {
            let token = craft(&json!({ "alg": alg, "typ": "JWT", "kid": kid }), &claims, "");
            assert!(token.ends_with('.'), "empty signature part");
            assert_eq!(verifier().verify(&token), Err(AuthError::AlgorithmMismatch), "alg {alg:?} kid {kid:?}");
        }
    }
}

#[test]
fn hs256_signed_with_rsa_public_key_under_rs256_kid_is_rejected() {
    // Classic key confusion: the attacker knows the RSA public key and uses its
    // PEM bytes as an HMAC secret, then presents the token under the RSA kid.
    let claims = good_claims("tenant-a");
    let forged = sign(Algorithm::HS256, Some(RS_KID), &claims, &EncodingKey::from_secret(RSA_PUBLIC_PEM));
    assert_eq!(verifier().verify(&forged), Err(AuthError::AlgorithmMismatch));

    // Same with the Ed25519 public key under the EdDSA kid.
    let forged_ed = sign(Algorithm::HS256, Some(ED_KID), &claims, &EncodingKey::from_secret(ED25519_PUBLIC_PEM));
    assert_eq!(verifier().verify(&forged_ed), Err(AuthError::AlgorithmMismatch));
}

#[test]
fn other_algorithm_of_same_family_is_rejected() {
    // The key is configured for HS256 only; HS512 under its kid is refused even
    // with the right secret.
    let token = sign(Algorithm::HS512, Some(HS_KID), &good_claims("tenant-a"), &hs_key());
    assert_eq!(verifier().verify(&token), Err(AuthError::AlgorithmMismatch));

    // And an RS256 token presented under the HMAC kid.
    let token = sign(Algorithm::RS256, Some(HS_KID), &good_claims("tenant-a"), &rs_key());
    assert_eq!(verifier().verify(&token), Err(AuthError::AlgorithmMismatch));
}

#[test]
fn unknown_kid_is_rejected() {
    let token = sign(Algorithm::HS256, Some("hs-2"), &good_claims("tenant-a"), &hs_key());
    assert_eq!(verifier().verify(&token), Err(AuthError::UnknownKeyId));
}

#[test]
fn missing_kid_is_rejected() {
    let token = sign(Algorithm::HS256, None, &good_claims("tenant-a"), &hs_key());
    assert_eq!(verifier().verify(&token), Err(AuthError::UnknownKeyId));
}

#[test]
fn tampered_payload_is_rejected() {
    let cases = [
        (Algorithm::HS256, HS_KID, hs_key()),
        (Algorithm::RS256, RS_KID, rs_key()),
        (Algorithm::EdDSA, ED_KID, ed_key()),
    ];
    for (alg, kid, key) in cases {
        let token = sign(alg, Some(kid), &good_claims("tenant-a"), &key);
        assert!(verifier().verify(&token).is_ok(), "untampered {alg:?}");

        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let tampered = format!("{}.{}.{}", parts[0], b64_json(&good_claims("tenant-b")), parts[2]);
        assert_eq!(verifier().verify(&tampered), Err(AuthError::InvalidSignature), "tampered {alg:?}");
    }
}

#[test]
fn token_signed_with_different_secret_under_same_kid_is_rejected() {
    let other = JwtIssuer::hmac(HS_KID, b"a-different-test-secret-0123456789", ISSUER, AUDIENCE);
    let token = other.mint("tenant-a", TTL_S, NOW_S).expect("mint");
    assert_eq!(verifier().verify(&token), Err(AuthError::InvalidSignature));
}

// ------------------------------------------------------------- shape and size

#[test]
fn oversized_token_is_rejected_before_parsing() {
    // A correctly signed token that is valid in every respect except its size.
    let mut claims = good_claims("tenant-a");
    claims["pad"] = json!("x".repeat(TOKEN_BYTES_MAX));
    let token = sign(Algorithm::HS256, Some(HS_KID), &claims, &hs_key());
    assert!(token.len() > TOKEN_BYTES_MAX);
    assert_eq!(verifier().verify(&token), Err(AuthError::Malformed));

    // Garbage beyond the limit is refused the same way.
    assert_eq!(verifier().verify(&"a".repeat(TOKEN_BYTES_MAX + 1)), Err(AuthError::Malformed));

    // A padded token under the limit still verifies.
    let mut claims = good_claims("tenant-a");
    claims["pad"] = json!("x".repeat(TOKEN_BYTES_MAX / 2));
    let token = sign(Algorithm::HS256, Some(HS_KID), &claims, &hs_key());
    assert!(token.len() <= TOKEN_BYTES_MAX);
    assert_eq!(verifier().verify(&token).expect("under limit").tenant, "tenant-a");
}

#[test]
fn structurally_malformed_tokens_are_rejected() {
    let good = hs_issuer().mint("tenant-a", TTL_S, NOW_S).expect("mint");
    let extra_part = format!("{good}.extra");
    let bad_header = format!("!!!{}", &good[good.find('.').expect("dot")..]);
    let not_json_header = format!("{}{}", URL_SAFE_NO_PAD.encode(b"not json"), &good[good.find('.').expect("dot")..]);
    for token in ["abc", "a.b", "..", extra_part.as_str(), bad_header.as_str(), not_json_header.as_str()] {
        assert_eq!(verifier().verify(token), Err(AuthError::Malformed), "token {token:?}");
    }
    assert_eq!(verifier().verify(""), Err(AuthError::MissingToken));
}

#[test]
fn crit_header_is_rejected() {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(HS_KID.into());
    header.crit = Some(vec!["exp".into()]);
    let token = jsonwebtoken::encode(&header, &good_claims("tenant-a"), &hs_key()).expect("encode");
    assert_eq!(verifier().verify(&token), Err(AuthError::Malformed));
}

// ------------------------------------------------------------ header parsing

#[test]
fn authorization_header_parsing() {
    let v = verifier();
    let token = hs_issuer().mint("tenant-a", TTL_S, NOW_S).expect("mint");

    assert_eq!(v.verify_authorization_header(None), Err(AuthError::MissingToken));
    assert_eq!(v.verify_authorization_header(Some("")), Err(AuthError::MissingToken));
    assert_eq!(v.verify_authorization_header(Some("Bearer")), Err(AuthError::MissingToken));
    assert_eq!(v.verify_authorization_header(Some("Bearer   ")), Err(AuthError::MissingToken));

    let basic = format!("Basic {token}");
    let raw = token.clone();
    let glued = format!("Bearer{token}");
    for value in ["Basic dXNlcjpwYXNz", basic.as_str(), raw.as_str(), glued.as_str()] {
        assert_eq!(v.verify_authorization_header(Some(value)), Err(AuthError::Malformed), "header {value:?}");
    }

    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let value = format!("{scheme} {token}");
        let verified =
            v.verify_authorization_header(Some(&value)).unwrap_or_else(|e| panic!("scheme {scheme:?} rejected: {e}"));
        assert_eq!(verified.tenant, "tenant-a");
    }

    // Errors from the token itself come through unchanged.
    let expired = hs_issuer().mint("tenant-a", 1, NOW_S - 3_600).expect("mint");
    assert_eq!(v.verify_authorization_header(Some(&format!("Bearer {expired}"))), Err(AuthError::Expired));
}

// ------------------------------------------------------------ keys and errors

#[test]
fn key_constructors_reject_bad_input() {
    assert!(matches!(JwtKey::rsa_pem("k", Algorithm::HS256, RSA_PUBLIC_PEM), Err(AuthError::Internal(_))));
    assert!(matches!(JwtKey::rsa_pem("k", Algorithm::RS256, b"not a pem"), Err(AuthError::Internal(_))));
    assert!(matches!(JwtKey::ed25519_pem("k", b"not a pem"), Err(AuthError::Internal(_))));
    assert!(matches!(JwtKey::ed25519_pem("k", RSA_PUBLIC_PEM), Err(AuthError::Internal(_))));
    assert!(JwtKey::rsa_pem("k", Algorithm::PS256, RSA_PUBLIC_PEM).is_ok(), "PS256 is an RSA algorithm");
}

#[test]
fn public_messages_are_static_guidance_without_secrets() {
    let all = [
        AuthError::MissingToken,
        AuthError::Malformed,
        AuthError::UnknownKeyId,
        AuthError::AlgorithmMismatch,
        AuthError::Expired,
        AuthError::InvalidAudience,
        AuthError::InvalidIssuer,
        AuthError::InvalidSignature,
        AuthError::MissingClaim("exp"),
        AuthError::InvalidTenant,
        AuthError::Internal(String::from_utf8_lossy(HMAC_SECRET).into_owned()),
    ];
    let secret = String::from_utf8_lossy(HMAC_SECRET);
    for error in &all {
        let message = error.public_message();
        assert!(message.contains(':'), "{error:?} message gives guidance");
        assert!(!message.contains(secret.as_ref()), "{error:?} leaks secret");
        assert!(!message.contains("BEGIN"), "{error:?} leaks PEM");
    }
    assert_eq!(AuthError::Expired.public_message(), "token expired or not yet valid: obtain a new token");
}

// ------------------------------------------------------------- lifetime and audiences

#[test]
fn tokens_living_longer_than_the_maximum_are_refused() {
    const DAY_S: u64 = 24 * 3600;
    assert_eq!(TOKEN_LIFETIME_S_MAX_DEFAULT, DAY_S);
    let a_day = hs_issuer().mint("tenant-a", DAY_S, NOW_S).expect("mint");
    verifier().verify(&a_day).expect("a token of the maximum lifetime");
    let a_month = hs_issuer().mint("tenant-a", 30 * DAY_S, NOW_S).expect("mint");
    assert_eq!(verifier().verify(&a_month), Err(AuthError::LifetimeTooLong));
    assert!(verifier().with_lifetime_s_max(30 * DAY_S).verify(&a_month).is_ok(), "configurable");

    // Without `iat`, the lifetime left counts.
    let mut claims = with_claim_removed(&good_claims("tenant-a"), "iat");
    claims["exp"] = json!(NOW_S + 2 * DAY_S);
    let token = sign(Algorithm::HS256, Some(HS_KID), &claims, &hs_key());
    assert_eq!(verifier().verify(&token), Err(AuthError::LifetimeTooLong));
    // With `iat`, the whole lifetime counts, even once part of it has passed.
    let mut claims = good_claims("tenant-a");
    claims["iat"] = json!(NOW_S - DAY_S);
    claims["exp"] = json!(NOW_S + 3600);
    let token = sign(Algorithm::HS256, Some(HS_KID), &claims, &hs_key());
    assert_eq!(verifier().verify(&token), Err(AuthError::LifetimeTooLong));
}

#[test]
fn a_token_for_two_of_stratas_audiences_is_refused() {
    let mut claims = good_claims("tenant-a");
    claims["aud"] = json!([AUDIENCE, "strata-admin"]);
    let token = sign(Algorithm::HS256, Some(HS_KID), &claims, &hs_key());
    let tenant_api = verifier().with_other_audiences(["strata-admin"]);
    assert_eq!(tenant_api.verify(&token), Err(AuthError::SeveralAudiences));
    // An audience outside Strata's beside ours is another service's business.
    claims["aud"] = json!([AUDIENCE, "billing-portal"]);
    let token = sign(Algorithm::HS256, Some(HS_KID), &claims, &hs_key());
    assert!(tenant_api.verify(&token).is_ok());
}
