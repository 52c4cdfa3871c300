//! Event pushes as Feishu sends them to an app's request URL: the app_ticket
//! event (v1 and v2) and the URL check, in plaintext or, with an Encrypt
//! Key, encrypted and signed. Tests deliver them to the gateway's push
//! endpoint exactly as Feishu would.

use aes::Aes256;
use base64::Engine;
use cbc::cipher::{block_padding::Pkcs7, BlockEncryptMut, KeyIvInit};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// One push: the body and the headers Feishu sends with it.
#[derive(Debug, Clone)]
pub struct PushRequest {
    pub body: String,
    /// `X-Lark-Request-Timestamp`, `X-Lark-Request-Nonce` and `X-Lark-Signature`
    /// when the push is encrypted; none otherwise.
    pub headers: Vec<(&'static str, String)>,
}

impl PushRequest {
    /// A header's value, by its name in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The v1 app_ticket event (`type: event_callback`), as Feishu pushes it hourly.
pub fn app_ticket_v1(app_id: &str, ticket: &str, verification_token: &str) -> Value {
    json!({
        "ts": "1700000000.000000",
        "uuid": format!("{:032x}", fastrand::u128(..)),
        "token": verification_token,
        "type": "event_callback",
        "event": {"app_id": app_id, "app_ticket": ticket, "type": "app_ticket"},
    })
}

/// The same event in the v2 shape (`schema: "2.0"`, token and type in `header`).
pub fn app_ticket_v2(app_id: &str, ticket: &str, verification_token: &str) -> Value {
    json!({
        "schema": "2.0",
        "header": {
            "event_id": format!("{:032x}", fastrand::u128(..)),
            "event_type": "app_ticket",
            "create_time": "1700000000000",
            "token": verification_token,
            "app_id": app_id,
            "tenant_key": "",
        },
        "event": {"app_id": app_id, "app_ticket": ticket, "type": "app_ticket"},
    })
}

/// Feishu's check of a request URL, sent when the URL is saved in its console.
pub fn url_verification(challenge: &str, verification_token: &str) -> Value {
    json!({"challenge": challenge, "token": verification_token, "type": "url_verification"})
}

/// `{"encrypt": …}`'s value: base64 of a random IV and the AES-256-CBC (PKCS#7)
/// ciphertext under SHA-256 of the Encrypt Key. (The IV comes from `fastrand`:
/// fine for a simulator, not for a real sender.)
pub fn encrypt(encrypt_key: &str, plaintext: &[u8]) -> String {
    let key = Sha256::digest(encrypt_key.as_bytes());
    let iv: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    let ciphertext =
        cbc::Encryptor::<Aes256>::new(&key, &iv.into()).encrypt_padded_vec_mut::<Pkcs7>(plaintext);
    let mut raw = iv.to_vec();
    raw.extend_from_slice(&ciphertext);
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// The request Feishu sends for `event`: plaintext without an Encrypt Key;
/// with one, encrypted and signed over `timestamp` (Unix seconds).
pub fn push(event: &Value, encrypt_key: Option<&str>, timestamp: i64) -> PushRequest {
    let Some(key) = encrypt_key else {
        return PushRequest {
            body: event.to_string(),
            headers: Vec::new(),
        };
    };
    let body = json!({"encrypt": encrypt(key, event.to_string().as_bytes())}).to_string();
    let timestamp = timestamp.to_string();
    let nonce = fastrand::u32(..).to_string();
    let signature = signature(&timestamp, &nonce, key, body.as_bytes());
    PushRequest {
        body,
        headers: vec![
            ("X-Lark-Request-Timestamp", timestamp),
            ("X-Lark-Request-Nonce", nonce),
            ("X-Lark-Signature", signature),
        ],
    }
}

/// `X-Lark-Signature`, as Feishu's document defines it: hex of
/// SHA-256(timestamp + nonce + Encrypt Key + body). Written here, not taken
/// from the gateway, so that the sandbox stays an independent check of the
/// gateway's verification.
pub fn signature(timestamp: &str, nonce: &str, encrypt_key: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(timestamp.as_bytes());
    h.update(nonce.as_bytes());
    h.update(encrypt_key.as_bytes());
    h.update(body);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
