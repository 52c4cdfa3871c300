//! The cryptography of Feishu's event pushes, as pure functions: the body
//! decryption and the signature an Encrypt Key enables, and the age limit
//! on the signed timestamp that keeps a captured push from being replayed.

use aes::Aes256;
use base64::Engine;
use cbc::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How far the signed `X-Lark-Request-Timestamp` may be from the gateway's
/// clock, either way: older pushes are replays, newer ones a wrong clock.
pub const MAX_AGE_SECS: i64 = 5 * 60;

/// Why a body could not be decrypted; deliberately without detail (a
/// padding error told apart from the rest would be an oracle).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the push cannot be decrypted")]
pub struct Undecryptable;

/// The plaintext of an `{"encrypt": "…"}` body: base64 of a 16-byte IV and
/// the AES-256-CBC ciphertext (PKCS#7), keyed with SHA-256 of the Encrypt Key.
pub fn decrypt(encrypt_key: &str, encrypted: &str) -> Result<Vec<u8>, Undecryptable> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encrypted.trim())
        .map_err(|_| Undecryptable)?;
    if raw.len() < 32 || raw.len() % 16 != 0 {
        return Err(Undecryptable);
    }
    let (iv, ciphertext) = raw.split_at(16);
    let key = Sha256::digest(encrypt_key.as_bytes());
    cbc::Decryptor::<Aes256>::new_from_slices(&key, iv)
        .map_err(|_| Undecryptable)?
        .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
        .map_err(|_| Undecryptable)
}

/// Feishu's `X-Lark-Signature`: hex of SHA-256 over timestamp, nonce,
/// Encrypt Key and the raw body, concatenated. Public so that the sandbox
/// can sign pushes the way Feishu does.
pub fn signature(timestamp: &str, nonce: &str, encrypt_key: &str, body: &[u8]) -> String {
    let digest = signature_digest(timestamp, nonce, encrypt_key, body);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn signature_digest(timestamp: &str, nonce: &str, encrypt_key: &str, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(timestamp.as_bytes());
    h.update(nonce.as_bytes());
    h.update(encrypt_key.as_bytes());
    h.update(body);
    h.finalize().into()
}

/// Whether `claimed` (the `X-Lark-Signature` header, hex in either case) is
/// the signature of this push, compared in constant time so that a forger
/// learns nothing from how long the refusal took.
pub fn verify_signature(
    timestamp: &str,
    nonce: &str,
    encrypt_key: &str,
    body: &[u8],
    claimed: &str,
) -> bool {
    let Some(claimed) = decode_hex32(claimed.trim()) else {
        return false;
    };
    let expected = signature_digest(timestamp, nonce, encrypt_key, body);
    bool::from(expected.ct_eq(&claimed))
}

/// Whether the signed timestamp (Unix seconds) is within [`MAX_AGE_SECS`] of `now_unix`.
pub fn fresh(timestamp: &str, now_unix: i64) -> bool {
    timestamp
        .trim()
        .parse::<i64>()
        .ok()
        .and_then(|ts| now_unix.checked_sub(ts))
        .is_some_and(|age| age.abs() <= MAX_AGE_SECS)
}

/// 64 hex digits as 32 bytes; anything else is no signature.
fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    let digits = s.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        *byte = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}
