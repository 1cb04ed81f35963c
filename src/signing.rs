//! Signing of outbound callbacks (SPEC §2 "Every attempt carries", and the
//! `auth: {"type": "jwt"}` paragraph).
//!
//! Owns: the Standard Webhooks signing secret and its `whsec_` + base64 wire
//! form, the `webhook-signature` value (`v1,` + base64 HMAC-SHA256 over
//! `{id}.{timestamp}.{body}`), its verification (for `postback listen` and for
//! tests), and the short-lived HS256 JWT a callback's `auth` asks for.
//!
//! Must not: do I/O or read the clock (every instant is a parameter, so
//! signing is deterministic and testable; the only exception is
//! [`SigningSecret::generate`], which draws from the OS random source), and
//! never log, print or quote a secret: [`SigningSecret`]'s `Debug` is
//! redacted, it has no `Display`, and no error carries the input it rejected.

use base64::alphabet;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};

type HmacSha256 = Hmac<Sha256>;

/// Prefix of a Standard Webhooks secret's text form.
pub const SECRET_PREFIX: &str = "whsec_";

/// The only signature version this crate produces and accepts.
pub const SIGNATURE_VERSION: &str = "v1";

/// How far a `webhook-timestamp` may be from the receiver's clock, either
/// way, before [`verify`] refuses it (the Standard Webhooks libraries' value).
pub const DEFAULT_TOLERANCE_SECS: i64 = 5 * 60;

/// Key length of a generated secret: 32 bytes, inside the 24–64 bytes the
/// Standard Webhooks specification recommends.
const GENERATED_SECRET_LEN: usize = 32;

/// Decodes a secret with or without `=` padding: the Python reference library
/// pads for its caller, so a secret that works there must work here too.
const SECRET_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a secret's text form was refused. Never carries the text itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Nothing left to use as a key (empty input, or just `whsec_`).
    #[error("signing secret is empty")]
    Empty,
    /// The part after the optional `whsec_` is not standard base64.
    #[error("signing secret is not `whsec_` followed by standard base64")]
    NotBase64,
}

/// Why [`verify`] refused a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The timestamp is further in the past than the tolerance (a replay, or a
    /// message that sat in a queue too long).
    #[error("webhook timestamp is too old")]
    TimestampTooOld,
    /// The timestamp is further in the future than the tolerance.
    #[error("webhook timestamp is too far in the future")]
    TimestampTooNew,
    /// No `v1` entry of the header matches the message.
    #[error("no matching webhook signature")]
    NoMatchingSignature,
}

/// Why [`callback_jwt`] could not make a token.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// An empty HMAC key would make a token anyone can forge.
    #[error("the callback JWT secret is empty")]
    EmptySecret,
    /// `jsonwebtoken` refused to encode (its errors never include the key).
    #[error("could not encode the callback JWT")]
    Encode(#[source] jsonwebtoken::errors::Error),
}

/// The decoded key of a Standard Webhooks secret.
#[derive(Clone)]
pub struct SigningSecret {
    key: Vec<u8>,
}

impl SigningSecret {
    /// Parses `whsec_` + base64. As in every Standard Webhooks library the
    /// prefix is optional, so a bare base64 string is accepted too; unlike
    /// some, missing `=` padding is forgiven (as Python's library does) and
    /// surrounding whitespace (a trailing newline from a secrets file) is
    /// ignored. The decoded key must not be empty.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let text = text.trim();
        let encoded = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
        let key = SECRET_BASE64
            .decode(encoded)
            // The decode error names the offending byte; dropping it keeps
            // every piece of the secret out of logs.
            .map_err(|_| SecretError::NotBase64)?;
        if key.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Self { key })
    }

    /// Length of the decoded key in bytes.
    pub fn len(&self) -> usize {
        self.key.len()
    }

    /// True for an empty key (never, for a parsed or generated secret).
    pub fn is_empty(&self) -> bool {
        self.key.is_empty()
    }

    /// A fresh random secret from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut key = vec![0u8; GENERATED_SECRET_LEN];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Self { key }
    }

    /// The secret's text form, `whsec_` + padded standard base64, as it is
    /// configured, stored and handed to customers.
    pub fn as_whsec(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.key))
    }

    fn keyed_mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any length")
    }
}

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(***)")
    }
}

/// Computes a `webhook-signature` value over a body fed in pieces, so a
/// streamed media body is signed without ever being held in memory whole.
///
/// The HMAC covers the raw bytes (SPEC §2). Beware that the reference
/// receiver libraries first turn the body into text (Rust and Python refuse
/// invalid UTF-8, JavaScript replaces it), so a binary media body verifies
/// only with a receiver that hashes the bytes as received.
pub struct Signer {
    mac: HmacSha256,
}

impl Signer {
    /// Starts a signature for one attempt: the id and timestamp are the
    /// `webhook-id` and `webhook-timestamp` headers the attempt carries.
    pub fn new(secret: &SigningSecret, msg_id: &str, timestamp: i64) -> Self {
        let mut mac = secret.keyed_mac();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        Self { mac }
    }

    /// Feeds the next piece of the body, exactly as it goes on the wire.
    pub fn update(&mut self, chunk: &[u8]) {
        self.mac.update(chunk);
    }

    /// The header value: `v1,` + base64 of the HMAC.
    pub fn finish(self) -> String {
        format!("{SIGNATURE_VERSION},{}", STANDARD.encode(self.finish_raw()))
    }

    fn finish_raw(self) -> Vec<u8> {
        self.mac.finalize().into_bytes().to_vec()
    }
}

/// Signs one body with several secrets at once (a rotation's grace
/// period): the header carries one `v1,` entry per secret, in the order
/// given (newest first), separated by a space, as Standard Webhooks
/// receivers expect.
pub struct MultiSigner {
    signers: Vec<Signer>,
}

impl MultiSigner {
    /// Starts one signature per secret of `secrets`.
    pub fn new(secrets: &[SigningSecret], msg_id: &str, timestamp: i64) -> Self {
        Self {
            signers: secrets
                .iter()
                .map(|s| Signer::new(s, msg_id, timestamp))
                .collect(),
        }
    }

    /// Feeds the next piece of the body to every signature.
    pub fn update(&mut self, chunk: &[u8]) {
        for signer in &mut self.signers {
            signer.update(chunk);
        }
    }

    /// The header value: the entries joined by spaces.
    pub fn finish(self) -> String {
        let entries: Vec<String> = self.signers.into_iter().map(Signer::finish).collect();
        entries.join(" ")
    }
}

/// The `webhook-signature` value of `body` under every secret of
/// `secrets`, newest first.
pub fn sign_all(secrets: &[SigningSecret], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut signer = MultiSigner::new(secrets, msg_id, timestamp);
    signer.update(body);
    signer.finish()
}

/// The `webhook-signature` value for a body held in memory.
pub fn sign(secret: &SigningSecret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut signer = Signer::new(secret, msg_id, timestamp);
    signer.update(body);
    signer.finish()
}

/// Checks a received message the way Standard Webhooks receivers do: the
/// timestamp must lie within `tolerance_secs` of `now` (both Unix seconds; a
/// negative tolerance counts as zero), and at least one space-separated `v1,`
/// entry of `signature_header` must match. Entries of other versions or that
/// are not base64 are skipped, which is what lets a sender rotate secrets by
/// sending several signatures at once.
pub fn verify(
    secret: &SigningSecret,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
    signature_header: &str,
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    check_timestamp_freshness(timestamp, now, tolerance_secs)?;
    let mut signer = Signer::new(secret, msg_id, timestamp);
    signer.update(body);
    let expected = signer.finish_raw();
    if header_has_signature(signature_header, &expected) {
        Ok(())
    } else {
        Err(VerifyError::NoMatchingSignature)
    }
}

fn check_timestamp_freshness(
    timestamp: i64,
    now: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let tolerance = tolerance_secs.max(0);
    // Saturating so a hostile timestamp near i64::MIN/MAX cannot overflow.
    if timestamp < now.saturating_sub(tolerance) {
        Err(VerifyError::TimestampTooOld)
    } else if timestamp > now.saturating_add(tolerance) {
        Err(VerifyError::TimestampTooNew)
    } else {
        Ok(())
    }
}

fn header_has_signature(signature_header: &str, expected: &[u8]) -> bool {
    // Every candidate is compared in constant time and none short-circuits,
    // so timing tells an attacker nothing about how close a guess came.
    let mut found = Choice::from(0);
    for candidate in v1_signatures(signature_header) {
        found |= candidate.as_slice().ct_eq(expected);
    }
    found.into()
}

fn v1_signatures(signature_header: &str) -> impl Iterator<Item = Vec<u8>> + '_ {
    signature_header
        .split_ascii_whitespace()
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == SIGNATURE_VERSION)
        .filter_map(|(_, encoded)| STANDARD.decode(encoded).ok())
}

/// `iss` of every callback JWT.
pub const JWT_ISSUER: &str = "postback";

/// Lifetime of a callback JWT: `exp` = `iat` + 5 minutes (SPEC §2).
pub const JWT_LIFETIME_SECS: i64 = 5 * 60;

/// Claims of the JWT a callback with `auth: {"type": "jwt"}` carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackClaims {
    /// Always [`JWT_ISSUER`].
    pub iss: String,
    /// The job id.
    pub sub: String,
    /// The delivery id, so a receiver can refuse a replayed token.
    pub jti: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expiry, Unix seconds.
    pub exp: i64,
}

/// An HS256 JWT for one attempt of a callback, signed with the secret the
/// customer gave in `auth` (its UTF-8 bytes are the HMAC key, as Daglo-style
/// receivers expect). Made per attempt, because it expires 5 minutes after
/// `now_unix`.
pub fn callback_jwt(
    secret: &str,
    job_id: &str,
    delivery_id: &str,
    now_unix: i64,
) -> Result<String, JwtError> {
    if secret.is_empty() {
        return Err(JwtError::EmptySecret);
    }
    let claims = CallbackClaims {
        iss: JWT_ISSUER.to_owned(),
        sub: job_id.to_owned(),
        jti: delivery_id.to_owned(),
        iat: now_unix,
        exp: now_unix.saturating_add(JWT_LIFETIME_SECS),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(JwtError::Encode)
}

/// The `Authorization` header value: `"<scheme> <token>"`, or the bare token
/// when the scheme is `""` (SPEC §2).
pub fn authorization_value(scheme: &str, token: &str) -> String {
    if scheme.is_empty() {
        token.to_owned()
    } else {
        format!("{scheme} {token}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, DecodingKey, Validation};

    // The Standard Webhooks reference vector, as in
    // standard-webhooks/standard-webhooks libraries/python/tests/test_webhooks.py
    // (`test_sign_function`) and libraries/php/tests/WebhookTest.php.
    const REF_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const REF_MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const REF_TIMESTAMP: i64 = 1_614_265_330;
    const REF_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const REF_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn ref_secret() -> SigningSecret {
        SigningSecret::parse(REF_SECRET).expect("reference secret parses")
    }

    fn verify_ref(
        id: &str,
        ts: i64,
        body: &[u8],
        header: &str,
        now: i64,
    ) -> Result<(), VerifyError> {
        verify(
            &ref_secret(),
            id,
            ts,
            body,
            header,
            now,
            DEFAULT_TOLERANCE_SECS,
        )
    }

    #[test]
    fn reproduces_the_standard_webhooks_reference_vector() {
        assert_eq!(
            sign(&ref_secret(), REF_MSG_ID, REF_TIMESTAMP, REF_BODY),
            REF_SIGNATURE
        );
    }

    #[test]
    fn reproduces_the_reference_rust_library_vector() {
        // standard-webhooks/standard-webhooks libraries/rust/src/lib.rs `test_sign`.
        let secret = SigningSecret::parse("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        assert_eq!(
            sign(
                &secret,
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1_649_367_553,
                body
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn the_prefix_is_optional_and_padding_forgiven() {
        let bare = SigningSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            sign(&bare, REF_MSG_ID, REF_TIMESTAMP, REF_BODY),
            REF_SIGNATURE
        );
        let padded = SigningSecret::parse("whsec_AAECAwQ=").unwrap();
        let unpadded = SigningSecret::parse("whsec_AAECAwQ\n").unwrap();
        assert_eq!(padded.as_whsec(), unpadded.as_whsec());
        assert_eq!(padded.as_whsec(), "whsec_AAECAwQ=");
    }

    #[test]
    fn bad_secrets_are_refused_without_echoing_them() {
        assert_eq!(SigningSecret::parse("").unwrap_err(), SecretError::Empty);
        assert_eq!(
            SigningSecret::parse("whsec_").unwrap_err(),
            SecretError::Empty
        );
        let err = SigningSecret::parse("whsec_not*base64!").unwrap_err();
        assert_eq!(err, SecretError::NotBase64);
        assert!(!err.to_string().contains("not*base64"));
    }

    #[test]
    fn generated_secrets_round_trip_and_differ() {
        let a = SigningSecret::generate();
        let b = SigningSecret::generate();
        assert!(a.as_whsec().starts_with(SECRET_PREFIX));
        assert_ne!(a.as_whsec(), b.as_whsec());
        let reparsed = SigningSecret::parse(&a.as_whsec()).unwrap();
        assert_eq!(reparsed.as_whsec(), a.as_whsec());
        assert_eq!(a.key.len(), GENERATED_SECRET_LEN);
    }

    #[test]
    fn debug_never_shows_the_key() {
        let secret = ref_secret();
        let shown = format!("{secret:?} {secret:#?}");
        assert_eq!(format!("{secret:?}"), "SigningSecret(***)");
        assert!(!shown.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
    }

    #[test]
    fn verifies_the_reference_vector() {
        verify_ref(
            REF_MSG_ID,
            REF_TIMESTAMP,
            REF_BODY,
            REF_SIGNATURE,
            REF_TIMESTAMP,
        )
        .unwrap();
    }

    #[test]
    fn tampering_with_body_id_or_timestamp_fails() {
        let now = REF_TIMESTAMP;
        let no_match = Err(VerifyError::NoMatchingSignature);
        assert_eq!(
            verify_ref(
                REF_MSG_ID,
                now,
                br#"{"test": 2432232315}"#,
                REF_SIGNATURE,
                now
            ),
            no_match
        );
        assert_eq!(
            verify_ref("msg_other", now, REF_BODY, REF_SIGNATURE, now),
            no_match
        );
        assert_eq!(
            verify_ref(REF_MSG_ID, now + 1, REF_BODY, REF_SIGNATURE, now),
            no_match
        );
        // One flipped bit of the signature (the reference libraries' test).
        let flipped = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=";
        assert_eq!(
            verify_ref(REF_MSG_ID, now, REF_BODY, flipped, now),
            no_match
        );
        let other_key = SigningSecret::generate();
        let err = verify(
            &other_key,
            REF_MSG_ID,
            now,
            REF_BODY,
            REF_SIGNATURE,
            now,
            300,
        );
        assert_eq!(err, no_match);
    }

    #[test]
    fn any_one_of_several_v1_signatures_suffices() {
        let now = REF_TIMESTAMP;
        let header = format!(
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= \
             garbage v1,not-base64 {REF_SIGNATURE} v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
        );
        verify_ref(REF_MSG_ID, now, REF_BODY, &header, now).unwrap();
        let without_valid = header.replace(REF_SIGNATURE, "");
        assert_eq!(
            verify_ref(REF_MSG_ID, now, REF_BODY, &without_valid, now),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn only_v1_is_accepted() {
        let v2 = REF_SIGNATURE.replacen("v1,", "v2,", 1);
        assert_eq!(
            verify_ref(REF_MSG_ID, REF_TIMESTAMP, REF_BODY, &v2, REF_TIMESTAMP),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            verify_ref(REF_MSG_ID, REF_TIMESTAMP, REF_BODY, "", REF_TIMESTAMP),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn timestamps_outside_the_tolerance_are_refused() {
        let ts = REF_TIMESTAMP;
        let tol = DEFAULT_TOLERANCE_SECS;
        verify_ref(REF_MSG_ID, ts, REF_BODY, REF_SIGNATURE, ts + tol).unwrap();
        verify_ref(REF_MSG_ID, ts, REF_BODY, REF_SIGNATURE, ts - tol).unwrap();
        assert_eq!(
            verify_ref(REF_MSG_ID, ts, REF_BODY, REF_SIGNATURE, ts + tol + 1),
            Err(VerifyError::TimestampTooOld)
        );
        assert_eq!(
            verify_ref(REF_MSG_ID, ts, REF_BODY, REF_SIGNATURE, ts - tol - 1),
            Err(VerifyError::TimestampTooNew)
        );
    }

    #[test]
    fn extreme_timestamps_do_not_overflow() {
        let secret = ref_secret();
        for (ts, now) in [
            (i64::MIN, i64::MAX),
            (i64::MAX, i64::MIN),
            (i64::MAX, i64::MAX),
        ] {
            let sig = sign(&secret, "id", ts, b"x");
            let _ = verify(&secret, "id", ts, b"x", &sig, now, i64::MAX);
            let _ = verify(&secret, "id", ts, b"x", &sig, now, i64::MIN);
        }
        let sig = sign(&secret, "id", i64::MIN, b"x");
        verify(&secret, "id", i64::MIN, b"x", &sig, i64::MIN, 0).unwrap();
    }

    #[test]
    fn incremental_signing_equals_one_shot() {
        let secret = SigningSecret::generate();
        let body: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let one_shot = sign(&secret, "msg_1", 1_700_000_000, &body);
        for chunk_size in [1, 7, 4096, 65_536, body.len()] {
            let mut signer = Signer::new(&secret, "msg_1", 1_700_000_000);
            for chunk in body.chunks(chunk_size) {
                signer.update(chunk);
            }
            assert_eq!(signer.finish(), one_shot, "chunk size {chunk_size}");
        }
        // A streamed reference body reproduces the reference vector too.
        let mut signer = Signer::new(&ref_secret(), REF_MSG_ID, REF_TIMESTAMP);
        signer.update(&REF_BODY[..5]);
        signer.update(&[]);
        signer.update(&REF_BODY[5..]);
        assert_eq!(signer.finish(), REF_SIGNATURE);
    }

    #[test]
    fn non_utf8_bodies_sign_and_verify() {
        let secret = SigningSecret::generate();
        let body = [0xff, 0x00, 0xfe, 0x80];
        let sig = sign(&secret, "msg_media", 10, &body);
        verify(&secret, "msg_media", 10, &body, &sig, 10, 300).unwrap();
    }

    fn now_unix() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    fn postback_validation() -> Validation {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[JWT_ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation
    }

    #[test]
    fn callback_jwt_decodes_with_the_expected_claims() {
        let now = now_unix();
        let token = callback_jwt("s3cret", "job-1", "dlv-1", now).unwrap();
        let decoded = decode::<CallbackClaims>(
            &token,
            &DecodingKey::from_secret(b"s3cret"),
            &postback_validation(),
        )
        .unwrap();
        assert_eq!(decoded.header.alg, Algorithm::HS256);
        assert_eq!(
            decoded.claims,
            CallbackClaims {
                iss: "postback".into(),
                sub: "job-1".into(),
                jti: "dlv-1".into(),
                iat: now,
                exp: now + 300,
            }
        );
    }

    #[test]
    fn callback_jwt_is_refused_with_wrong_key_issuer_or_after_expiry() {
        let now = now_unix();
        let token = callback_jwt("s3cret", "job-1", "dlv-1", now).unwrap();
        let wrong_key = decode::<CallbackClaims>(
            &token,
            &DecodingKey::from_secret(b"other"),
            &postback_validation(),
        );
        assert!(wrong_key.is_err());

        let mut other_issuer = postback_validation();
        other_issuer.set_issuer(&["someone-else"]);
        let err =
            decode::<CallbackClaims>(&token, &DecodingKey::from_secret(b"s3cret"), &other_issuer)
                .unwrap_err();
        assert_eq!(err.kind(), &jsonwebtoken::errors::ErrorKind::InvalidIssuer);

        // Issued 10 minutes ago: expired 5 minutes ago, beyond the default 60 s leeway.
        let stale = callback_jwt("s3cret", "job-1", "dlv-1", now - 600).unwrap();
        let err = decode::<CallbackClaims>(
            &stale,
            &DecodingKey::from_secret(b"s3cret"),
            &postback_validation(),
        )
        .unwrap_err();
        assert_eq!(
            err.kind(),
            &jsonwebtoken::errors::ErrorKind::ExpiredSignature
        );
    }

    #[test]
    fn callback_jwt_refuses_an_empty_secret() {
        assert!(matches!(
            callback_jwt("", "j", "d", 0),
            Err(JwtError::EmptySecret)
        ));
    }

    #[test]
    fn authorization_value_uses_the_scheme_unless_empty() {
        assert_eq!(authorization_value("Bearer", "abc"), "Bearer abc");
        assert_eq!(authorization_value("JWT", "abc"), "JWT abc");
        assert_eq!(authorization_value("", "abc"), "abc");
    }
}
