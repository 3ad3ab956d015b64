//! Standard Webhooks v1 signatures (standardwebhooks.com).
//!
//! Every event is signed with `HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")` and
//! sent as `webhook-signature: v1,<padded standard base64>`. While a secret is being rotated the
//! header carries one entry per active secret, separated by one space, so receivers holding
//! either the old or the new secret accept the event. The output matches the reference
//! libraries (Python `standardwebhooks`, `svix`) byte for byte, which the test vectors below pin.

use std::fmt;
use std::str::FromStr;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

type HmacSha256 = Hmac<Sha256>;

/// The prefix that marks a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// How far a `webhook-timestamp` may be from the receiver's clock, as in the reference libraries.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// Random bytes in a generated secret: as many as the HMAC-SHA256 block wants for full strength.
const GENERATED_SECRET_BYTES: usize = 32;

/// The version tag of the only signature scheme defined so far.
const SIGNATURE_VERSION: &str = "v1";

/// Secrets pasted by people or written by other tools come padded or not; both mean the same key.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A parsed signing secret, ready to sign.
///
/// It holds the HMAC already keyed with the decoded secret, so signing many events does not
/// repeat the key schedule. Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct SigningSecret {
    keyed_mac: HmacSha256,
}

/// Why a secret string could not be used. Never carries the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("the signing secret is empty")]
    Empty,
    #[error("the signing secret is not valid base64 (expected \"whsec_\" followed by base64)")]
    InvalidBase64,
}

impl SigningSecret {
    /// A fresh secret as shown to users and stored: `whsec_` + padded standard base64 of 32
    /// random bytes from the thread-local CSPRNG.
    pub fn generate() -> String {
        let mut key = [0u8; GENERATED_SECRET_BYTES];
        rand::rng().fill_bytes(&mut key);
        format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
    }

    /// Accepts `whsec_<base64>` and, like the reference libraries, a bare base64 string.
    /// Surrounding whitespace (a trailing newline from a file or a paste) is ignored.
    pub fn parse(raw: &str) -> Result<Self, SecretError> {
        let trimmed = raw.trim();
        let encoded = trimmed.strip_prefix(SECRET_PREFIX).unwrap_or(trimmed);
        if encoded.is_empty() {
            return Err(SecretError::Empty);
        }
        let key = LENIENT_BASE64
            .decode(encoded)
            .map_err(|_| SecretError::InvalidBase64)?;
        if key.is_empty() {
            return Err(SecretError::Empty);
        }
        // HMAC takes keys of any length, so this cannot fail; mapping keeps it panic-free anyway.
        let keyed_mac = HmacSha256::new_from_slice(&key).map_err(|_| SecretError::Empty)?;
        Ok(SigningSecret { keyed_mac })
    }

    /// The raw 32-byte HMAC-SHA256 tag over `{msg_id}.{timestamp}.{body}`.
    fn tag(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
        let mut mac = self.keyed_mac.clone();
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(<redacted>)")
    }
}

impl FromStr for SigningSecret {
    type Err = SecretError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        SigningSecret::parse(raw)
    }
}

/// One signature entry: `v1,` + padded standard base64 of the HMAC-SHA256 tag.
pub fn sign(secret: &SigningSecret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "{SIGNATURE_VERSION},{}",
        STANDARD.encode(secret.tag(msg_id, timestamp, body))
    )
}

/// The `webhook-signature` header value: one entry per secret, in the given order, separated
/// by one space (during a rotation the new secret first, then the old one).
pub fn signature_header(
    secrets: &[SigningSecret],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|secret| sign(secret, msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why a webhook did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing or empty header {0}")]
    MissingHeader(&'static str),
    #[error("webhook-timestamp is not an integer number of Unix seconds")]
    InvalidTimestamp,
    #[error("webhook-timestamp is too old")]
    TimestampTooOld,
    #[error("webhook-timestamp is too far in the future")]
    TimestampTooNew,
    #[error("no v1 signature in webhook-signature matches the secret")]
    NoMatchingSignature,
}

/// Verifies a received webhook the way the standardwebhooks libraries do: the three headers are
/// present, the timestamp is within `tolerance_secs` of `now_unix` (this bounds replays), and
/// at least one space-separated `v1,` entry of `signature_header` matches. Entries with another
/// version or undecodable base64 are skipped, so new schemes can be added beside v1. The tag
/// comparison is constant time. A negative tolerance is treated as zero.
pub fn verify(
    secret: &SigningSecret,
    msg_id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
    now_unix: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    if msg_id.is_empty() {
        return Err(VerifyError::MissingHeader("webhook-id"));
    }
    let timestamp = timestamp.trim();
    if timestamp.is_empty() {
        return Err(VerifyError::MissingHeader("webhook-timestamp"));
    }
    if signature_header.trim().is_empty() {
        return Err(VerifyError::MissingHeader("webhook-signature"));
    }

    let sent_at: i64 = timestamp
        .parse()
        .map_err(|_| VerifyError::InvalidTimestamp)?;
    let tolerance = tolerance_secs.max(0);
    if sent_at < now_unix.saturating_sub(tolerance) {
        return Err(VerifyError::TimestampTooOld);
    }
    if sent_at > now_unix.saturating_add(tolerance) {
        return Err(VerifyError::TimestampTooNew);
    }

    let expected = secret.tag(msg_id, sent_at, body);
    let matches = signature_header
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == SIGNATURE_VERSION)
        .filter_map(|(_, encoded)| STANDARD.decode(encoded).ok())
        .any(|candidate| bool::from(expected.as_slice().ct_eq(&candidate)));
    if matches {
        Ok(())
    } else {
        Err(VerifyError::NoMatchingSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VECTOR_1_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_1_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_1_TS: i64 = 1614265330;
    const VECTOR_1_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VECTOR_1_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    const VECTOR_2_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const VECTOR_2_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const VECTOR_2_TS: i64 = 1649367553;
    const VECTOR_2_BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const VECTOR_2_SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    fn secret(raw: &str) -> SigningSecret {
        SigningSecret::parse(raw).expect("valid test secret")
    }

    fn verify_at_sign_time(
        secret: &SigningSecret,
        id: &str,
        ts: i64,
        header: &str,
        body: &[u8],
    ) -> Result<(), VerifyError> {
        verify(
            secret,
            id,
            &ts.to_string(),
            header,
            body,
            ts,
            DEFAULT_TOLERANCE_SECS,
        )
    }

    #[test]
    fn signs_the_first_standard_webhooks_test_vector_exactly() {
        let signature = sign(
            &secret(VECTOR_1_SECRET),
            VECTOR_1_ID,
            VECTOR_1_TS,
            VECTOR_1_BODY,
        );
        assert_eq!(signature, VECTOR_1_SIG);
    }

    #[test]
    fn signs_the_second_standard_webhooks_test_vector_exactly() {
        let signature = sign(
            &secret(VECTOR_2_SECRET),
            VECTOR_2_ID,
            VECTOR_2_TS,
            VECTOR_2_BODY,
        );
        assert_eq!(signature, VECTOR_2_SIG);
    }

    #[test]
    fn verifies_both_test_vectors() {
        let first = secret(VECTOR_1_SECRET);
        let second = secret(VECTOR_2_SECRET);
        assert_eq!(
            verify_at_sign_time(
                &first,
                VECTOR_1_ID,
                VECTOR_1_TS,
                VECTOR_1_SIG,
                VECTOR_1_BODY
            ),
            Ok(())
        );
        assert_eq!(
            verify_at_sign_time(
                &second,
                VECTOR_2_ID,
                VECTOR_2_TS,
                VECTOR_2_SIG,
                VECTOR_2_BODY
            ),
            Ok(())
        );
    }

    #[test]
    fn bare_base64_secret_signs_like_the_prefixed_one() {
        let bare = secret(VECTOR_1_SECRET.trim_start_matches(SECRET_PREFIX));
        assert_eq!(
            sign(&bare, VECTOR_1_ID, VECTOR_1_TS, VECTOR_1_BODY),
            VECTOR_1_SIG
        );
    }

    #[test]
    fn rotation_header_verifies_with_either_secret() {
        let new = secret(&SigningSecret::generate());
        let old = secret(VECTOR_1_SECRET);
        let header = signature_header(
            &[new.clone(), old.clone()],
            VECTOR_1_ID,
            VECTOR_1_TS,
            VECTOR_1_BODY,
        );

        let entries: Vec<&str> = header.split(' ').collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1], VECTOR_1_SIG);
        for receiver_secret in [&new, &old] {
            assert_eq!(
                verify_at_sign_time(
                    receiver_secret,
                    VECTOR_1_ID,
                    VECTOR_1_TS,
                    &header,
                    VECTOR_1_BODY
                ),
                Ok(())
            );
        }
        let stranger = secret(&SigningSecret::generate());
        assert_eq!(
            verify_at_sign_time(&stranger, VECTOR_1_ID, VECTOR_1_TS, &header, VECTOR_1_BODY),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn tampered_body_id_or_timestamp_fails() {
        let key = secret(VECTOR_1_SECRET);
        let tampered_body = br#"{"test": 2432232315}"#;
        assert_eq!(
            verify_at_sign_time(&key, VECTOR_1_ID, VECTOR_1_TS, VECTOR_1_SIG, tampered_body),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            verify_at_sign_time(&key, "msg_other", VECTOR_1_TS, VECTOR_1_SIG, VECTOR_1_BODY),
            Err(VerifyError::NoMatchingSignature)
        );
        assert_eq!(
            verify_at_sign_time(
                &key,
                VECTOR_1_ID,
                VECTOR_1_TS + 1,
                VECTOR_1_SIG,
                VECTOR_1_BODY
            ),
            Err(VerifyError::NoMatchingSignature)
        );
    }

    #[test]
    fn timestamps_outside_the_tolerance_fail_and_the_edges_pass() {
        let key = secret(VECTOR_1_SECRET);
        let check = |now: i64| {
            verify(
                &key,
                VECTOR_1_ID,
                &VECTOR_1_TS.to_string(),
                VECTOR_1_SIG,
                VECTOR_1_BODY,
                now,
                DEFAULT_TOLERANCE_SECS,
            )
        };
        assert_eq!(check(VECTOR_1_TS + DEFAULT_TOLERANCE_SECS), Ok(()));
        assert_eq!(check(VECTOR_1_TS - DEFAULT_TOLERANCE_SECS), Ok(()));
        assert_eq!(
            check(VECTOR_1_TS + DEFAULT_TOLERANCE_SECS + 1),
            Err(VerifyError::TimestampTooOld)
        );
        assert_eq!(
            check(VECTOR_1_TS - DEFAULT_TOLERANCE_SECS - 1),
            Err(VerifyError::TimestampTooNew)
        );
    }

    #[test]
    fn extreme_timestamps_and_tolerances_do_not_overflow() {
        let key = secret(VECTOR_1_SECRET);
        let result = verify(
            &key,
            VECTOR_1_ID,
            &i64::MIN.to_string(),
            VECTOR_1_SIG,
            VECTOR_1_BODY,
            i64::MAX,
            i64::MAX,
        );
        assert_eq!(result, Err(VerifyError::TimestampTooOld));
        let result = verify(
            &key,
            VECTOR_1_ID,
            &VECTOR_1_TS.to_string(),
            VECTOR_1_SIG,
            VECTOR_1_BODY,
            VECTOR_1_TS,
            i64::MIN,
        );
        assert_eq!(result, Ok(()));
    }

    #[test]
    fn malformed_or_missing_headers_are_reported() {
        let key = secret(VECTOR_1_SECRET);
        let ts = VECTOR_1_TS.to_string();
        let now = VECTOR_1_TS;
        let tol = DEFAULT_TOLERANCE_SECS;
        let body = VECTOR_1_BODY;
        assert_eq!(
            verify(&key, "", &ts, VECTOR_1_SIG, body, now, tol),
            Err(VerifyError::MissingHeader("webhook-id"))
        );
        assert_eq!(
            verify(&key, VECTOR_1_ID, " ", VECTOR_1_SIG, body, now, tol),
            Err(VerifyError::MissingHeader("webhook-timestamp"))
        );
        assert_eq!(
            verify(&key, VECTOR_1_ID, &ts, "", body, now, tol),
            Err(VerifyError::MissingHeader("webhook-signature"))
        );
        assert_eq!(
            verify(
                &key,
                VECTOR_1_ID,
                "16142653.5",
                VECTOR_1_SIG,
                body,
                now,
                tol
            ),
            Err(VerifyError::InvalidTimestamp)
        );
    }

    #[test]
    fn non_v1_and_malformed_entries_are_ignored() {
        let key = secret(VECTOR_1_SECRET);
        let encoded = VECTOR_1_SIG.trim_start_matches("v1,");
        let only_other_versions = format!("v2,{encoded} v1a,{encoded} {encoded}");
        assert_eq!(
            verify_at_sign_time(
                &key,
                VECTOR_1_ID,
                VECTOR_1_TS,
                &only_other_versions,
                VECTOR_1_BODY
            ),
            Err(VerifyError::NoMatchingSignature)
        );
        let mixed = format!("v2,{encoded} v1,!!notbase64!! v1, v1,AAAA  {VECTOR_1_SIG}");
        assert_eq!(
            verify_at_sign_time(&key, VECTOR_1_ID, VECTOR_1_TS, &mixed, VECTOR_1_BODY),
            Ok(())
        );
    }

    #[test]
    fn generated_secrets_are_prefixed_32_random_bytes_that_round_trip() {
        let first = SigningSecret::generate();
        let second = SigningSecret::generate();
        assert_ne!(first, second);
        for generated in [&first, &second] {
            let encoded = generated
                .strip_prefix(SECRET_PREFIX)
                .expect("whsec_ prefix");
            assert_eq!(STANDARD.decode(encoded).expect("padded base64").len(), 32);
            let parsed = secret(generated);
            let signature = sign(&parsed, "msg_1", 1, b"{}");
            assert_eq!(
                verify_at_sign_time(&parsed, "msg_1", 1, &signature, b"{}"),
                Ok(())
            );
        }
    }

    #[test]
    fn parse_rejects_empty_and_non_base64_secrets() {
        assert_eq!(SigningSecret::parse("").unwrap_err(), SecretError::Empty);
        assert_eq!(
            SigningSecret::parse("whsec_").unwrap_err(),
            SecretError::Empty
        );
        assert_eq!(
            SigningSecret::parse("whsec_not base64!").unwrap_err(),
            SecretError::InvalidBase64
        );
        assert!(SigningSecret::parse(" whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").is_ok());
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let raw = SigningSecret::generate();
        let shown = format!("{:?}", secret(&raw));
        let encoded = raw.trim_start_matches(SECRET_PREFIX);
        assert!(!shown.contains(encoded));
        assert!(!shown.contains(&encoded[..8]));
        assert_eq!(shown, "SigningSecret(<redacted>)");
    }

    proptest! {
        #[test]
        fn sign_then_verify_succeeds_and_any_body_flip_fails(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            msg_id in "[ -~]{1,64}",
            timestamp in any::<i64>(),
            flip_at in any::<prop::sample::Index>(),
            flip_mask in 1u8..=255,
        ) {
            let key = secret(VECTOR_2_SECRET);
            let header = sign(&key, &msg_id, timestamp, &body);
            prop_assert_eq!(
                verify_at_sign_time(&key, &msg_id, timestamp, &header, &body),
                Ok(())
            );
            if !body.is_empty() {
                let mut tampered = body.clone();
                let i = flip_at.index(tampered.len());
                tampered[i] ^= flip_mask;
                prop_assert_eq!(
                    verify_at_sign_time(&key, &msg_id, timestamp, &header, &tampered),
                    Err(VerifyError::NoMatchingSignature)
                );
            }
        }

        #[test]
        fn verify_never_panics_on_arbitrary_headers(
            msg_id in any::<String>(),
            timestamp in any::<String>(),
            header in any::<String>(),
            body in proptest::collection::vec(any::<u8>(), 0..64),
            now in any::<i64>(),
            tolerance in any::<i64>(),
        ) {
            let key = secret(VECTOR_1_SECRET);
            let _ = verify(&key, &msg_id, &timestamp, &header, &body, now, tolerance);
        }

        #[test]
        fn parse_never_panics_on_arbitrary_secrets(raw in any::<String>()) {
            let _ = SigningSecret::parse(&raw);
        }
    }
}
