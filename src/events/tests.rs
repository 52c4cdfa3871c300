//! Known answers computed outside this crate (Feishu's documented example,
//! and vectors made with Python's `cryptography` and `hashlib`, cross-checked
//! with `openssl enc -d -aes-256-cbc`), then the acceptance rules.

use super::*;
use crate::config::EventSecrets;
use feishu_sandbox::events as feishu;

/// Feishu's documentation example: Encrypt Key "test key", "hello world".
const DOC_KEY: &str = "test key";
const DOC_ENCRYPTED: &str = "P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk=";

const KEY: &str = "6Sz8bYwE0Tq-encrypt-key";
const TOKEN: &str = "v-token-123";
const APP_ID: &str = "cli_store00000001";
/// Python: IV 00..0f, AES-256-CBC(SHA-256(KEY)), PKCS#7, of `TICKET_EVENT`.
const TICKET_EVENT: &str = r#"{"ts":"1700000000.000","uuid":"0f3c","token":"v-token-123","type":"event_callback","event":{"app_id":"cli_store00000001","app_ticket":"ticket-abc","type":"app_ticket"}}"#;
const TICKET_ENCRYPTED: &str = "AAECAwQFBgcICQoLDA0OD5S8G+aEELK6w4wPQVckZCT6nuEa71+k46zQbcDhqp/lapPbcIRN1Dle8HdLFuFfHexmMIT1zvM0Bnh6+rMBKpWvvbs87dSrRdkGxHqn0F3ceiGU4UOQKwrZmqrhC5GGOqQuHqmBl7V/uiE4i+AX1kSslP9Zl5bCQTWytBOm528egNOeFctyB7cRvVZ0CLuTZWxzJ0xQjLbJR4ej3OZ5aGRjOz1WrLUtF6qhcVv4HfU2";
/// Python hashlib: sha256(TS + NONCE + KEY + the body `{"encrypt":"<TICKET_ENCRYPTED>"}`).
const TS: &str = "1700000000";
const TS_UNIX: i64 = 1_700_000_000;
const NONCE: &str = "13572468";
const SIGNATURE: &str = "e4d3247904ddeff24eabc25db6a1e8fa9141db93ff89b32f3ab501df7fe47c3a";
/// Python: IV 10..1f, the URL check `{"challenge":"ajls384kdjx98XX","token":TOKEN,...}`.
const CHALLENGE_ENCRYPTED: &str = "EBESExQVFhcYGRobHB0eHwL4+6TXEuybCanAqmHKU31KE6sxsE3oQw7YabOil/b0pIhcF0YyD8TUPwwWHMIyL/9c0kphH4jl+5Yr6uq0B8TYRryKC7rHQvdy7Bs7mYIS";

fn ticket_body() -> String {
    format!(r#"{{"encrypt":"{TICKET_ENCRYPTED}"}}"#)
}

fn signed<'a>(ts: &'a str, signature: &'a str) -> SignedBy<'a> {
    SignedBy {
        timestamp: Some(ts),
        nonce: Some(NONCE),
        signature: Some(signature),
    }
}

fn signed_by(p: &feishu::PushRequest) -> SignedBy<'_> {
    SignedBy {
        timestamp: p.header("X-Lark-Request-Timestamp"),
        nonce: p.header("X-Lark-Request-Nonce"),
        signature: p.header("X-Lark-Signature"),
    }
}

fn store(app_id: &str, token: Option<&str>, key: Option<&str>) -> AppCredentials {
    AppCredentials {
        kind: AppKind::Store,
        events: EventSecrets {
            verification_token: token.map(|t| SecretString::from(t.to_owned())),
            encrypt_key: key.map(|k| SecretString::from(k.to_owned())),
        },
        ..AppCredentials::self_built(app_id, "secret")
    }
}

fn verifier(apps: &[(&str, AppCredentials)]) -> Verifier {
    Verifier::new(apps.iter().map(|(n, c)| (*n, c)))
}

fn ticket_of(r: Result<Accepted, Refused>) -> (String, String) {
    match r {
        Ok(Accepted::AppTicket { app_id, ticket }) => (app_id, ticket.expose_secret().to_owned()),
        Ok(_) => panic!("accepted, but not as a ticket"),
        Err(e) => panic!("refused: {e}"),
    }
}

fn refusal(r: Result<Accepted, Refused>) -> Refused {
    match r {
        Err(e) => e,
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn decrypts_feishus_documented_example() {
    assert_eq!(decrypt(DOC_KEY, DOC_ENCRYPTED).unwrap(), b"hello world");
}

#[test]
fn decrypts_a_vector_made_by_python() {
    assert_eq!(
        decrypt(KEY, TICKET_ENCRYPTED).unwrap(),
        TICKET_EVENT.as_bytes()
    );
    let push = parse_push(&decrypt(KEY, CHALLENGE_ENCRYPTED).unwrap()).unwrap();
    assert!(
        matches!(&push.kind, PushKind::UrlVerification { challenge } if challenge == "ajls384kdjx98XX")
    );
}

#[test]
fn what_does_not_decrypt_is_one_error() {
    for (key, encrypted) in [
        ("another key", TICKET_ENCRYPTED),
        (KEY, "not base64 at all!"),
        (KEY, "AAECAwQFBgcICQoLDA0ODw=="), // an IV and nothing else
        (KEY, &TICKET_ENCRYPTED[..TICKET_ENCRYPTED.len() - 8]), // cut short
    ] {
        assert_eq!(
            decrypt(key, encrypted),
            Err(Undecryptable),
            "{key} {encrypted}"
        );
    }
}

#[test]
fn the_signature_matches_hashlib() {
    let body = ticket_body();
    assert_eq!(signature(TS, NONCE, KEY, body.as_bytes()), SIGNATURE);
    assert!(verify_signature(TS, NONCE, KEY, body.as_bytes(), SIGNATURE));
    assert!(verify_signature(
        TS,
        NONCE,
        KEY,
        body.as_bytes(),
        &SIGNATURE.to_uppercase()
    ));
    let mut tampered = body.clone().into_bytes();
    tampered[20] ^= 1;
    assert!(!verify_signature(TS, NONCE, KEY, &tampered, SIGNATURE));
    assert!(!verify_signature(
        "1700000001",
        NONCE,
        KEY,
        body.as_bytes(),
        SIGNATURE
    ));
    assert!(!verify_signature(
        TS,
        NONCE,
        "other",
        body.as_bytes(),
        SIGNATURE
    ));
    for bad in [
        "",
        &SIGNATURE[..63],
        &format!("{SIGNATURE}00"),
        &SIGNATURE.replace('e', "g"),
    ] {
        assert!(
            !verify_signature(TS, NONCE, KEY, body.as_bytes(), bad),
            "{bad}"
        );
    }
}

#[test]
fn timestamps_count_five_minutes_either_way() {
    assert!(fresh(TS, TS_UNIX));
    assert!(fresh(TS, TS_UNIX + 300));
    assert!(fresh(TS, TS_UNIX - 300));
    assert!(!fresh(TS, TS_UNIX + 301));
    assert!(!fresh(TS, TS_UNIX - 360));
    for bad in ["", "soon", "1700000000.5", "-9223372036854775808"] {
        assert!(!fresh(bad, TS_UNIX), "{bad}");
    }
}

#[test]
fn parses_the_shapes_feishu_pushes() {
    let v1 = feishu::app_ticket_v1(APP_ID, "t-1", TOKEN).to_string();
    let v2 = feishu::app_ticket_v2(APP_ID, "t-2", TOKEN).to_string();
    for (body, want) in [(v1, "t-1"), (v2, "t-2")] {
        let push = parse_push(body.as_bytes()).unwrap();
        assert_eq!(push.token.unwrap().expose_secret(), TOKEN);
        let PushKind::AppTicket { app_id, ticket } = push.kind else {
            panic!("not a ticket: {body}");
        };
        assert_eq!((app_id.as_str(), ticket.expose_secret()), (APP_ID, want));
    }
    let other = r#"{"schema":"2.0","header":{"event_type":"contact.user.created_v3","token":"x","app_id":"cli_1"},"event":{"object":{}}}"#;
    let push = parse_push(other.as_bytes()).unwrap();
    assert!(matches!(push.kind, PushKind::Other { event_type, app_id }
        if event_type == "contact.user.created_v3" && app_id.as_deref() == Some("cli_1")));

    for (body, why) in [
        ("[]", Malformed::NotJson),
        ("{", Malformed::NotJson),
        (
            r#"{"app_id":"cli_1","app_ticket":"t"}"#,
            Malformed::UnknownShape,
        ),
        (
            r#"{"type":"url_verification","token":"x"}"#,
            Malformed::NoChallenge,
        ),
        (
            r#"{"type":"event_callback","token":"x","event":{}}"#,
            Malformed::NoEventType,
        ),
        (
            r#"{"type":"event_callback","token":"x","event":{"type":"app_ticket","app_id":"cli_1"}}"#,
            Malformed::NoTicket,
        ),
        (
            r#"{"schema":"2.0","header":{"event_type":"app_ticket","app_id":"cli_2"},"event":{"app_id":"cli_1","app_ticket":"t"}}"#,
            Malformed::AppIdsDiffer,
        ),
    ] {
        assert_eq!(parse_push(body.as_bytes()).err(), Some(why), "{body}");
    }
}

#[test]
fn a_plaintext_push_needs_the_apps_token() {
    let v = verifier(&[
        ("isv", store(APP_ID, Some(TOKEN), None)),
        ("bare", store("cli_bare", None, None)),
        ("self", AppCredentials::self_built("cli_self", "s")),
    ]);
    let body = |app_id: &str, token: &str| feishu::app_ticket_v1(app_id, "t-9", token).to_string();
    let at = |body: String| v.verify(SignedBy::default(), body.as_bytes(), TS_UNIX);
    assert_eq!(
        ticket_of(at(body(APP_ID, TOKEN))),
        (APP_ID.into(), "t-9".into())
    );
    let v2 = feishu::app_ticket_v2(APP_ID, "t-9", TOKEN).to_string();
    assert_eq!(ticket_of(at(v2)).1, "t-9");
    assert_eq!(refusal(at(body(APP_ID, "v-token-12"))), Refused::WrongToken);
    let tokenless = r#"{"type":"event_callback","event":{"app_id":"cli_store00000001","app_ticket":"t","type":"app_ticket"}}"#;
    assert_eq!(refusal(at(tokenless.into())), Refused::WrongToken);
    assert_eq!(
        refusal(at(body("cli_bare", TOKEN))),
        Refused::NoVerificationToken
    );
    assert_eq!(refusal(at(body("cli_self", TOKEN))), Refused::UnknownApp);
    assert_eq!(refusal(at(body("cli_nobody", TOKEN))), Refused::UnknownApp);
    assert_eq!(
        v.apps_without_token().collect::<Vec<_>>(),
        [("bare", "cli_bare")]
    );

    let check = feishu::url_verification("c-1", TOKEN).to_string();
    assert!(matches!(at(check), Ok(Accepted::Challenge(c)) if c == "c-1"));
    let forged = feishu::url_verification("c-1", "guess").to_string();
    assert_eq!(refusal(at(forged)), Refused::WrongToken);
    let other = r#"{"schema":"2.0","header":{"event_type":"im.message.receive_v1","token":"v-token-123","app_id":"cli_store00000001"},"event":{}}"#;
    assert!(matches!(at(other.into()), Ok(Accepted::Ignored { .. })));
}

#[test]
fn an_encrypted_push_needs_a_fresh_valid_signature() {
    let v = verifier(&[("isv", store(APP_ID, Some(TOKEN), Some(KEY)))]);
    let body = ticket_body();
    let at = |signed, now| v.verify(signed, body.as_bytes(), now);
    // The Python vector, signed by hashlib, as Feishu would send it.
    assert_eq!(
        ticket_of(at(signed(TS, SIGNATURE), TS_UNIX + 299)),
        (APP_ID.into(), "ticket-abc".into())
    );
    assert_eq!(
        refusal(at(signed(TS, SIGNATURE), TS_UNIX + 360)),
        Refused::Stale
    );
    assert_eq!(
        refusal(at(signed(TS, SIGNATURE), TS_UNIX - 360)),
        Refused::Stale
    );
    let wrong = SIGNATURE.replace('e', "f");
    assert_eq!(
        refusal(at(signed(TS, &wrong), TS_UNIX)),
        Refused::BadSignature
    );
    // A replay with a fresh timestamp does not carry a valid signature.
    assert_eq!(
        refusal(at(signed("1700000100", SIGNATURE), TS_UNIX)),
        Refused::BadSignature
    );
    assert_eq!(refusal(at(SignedBy::default(), TS_UNIX)), Refused::Unsigned);
    // The app has a key: a plaintext push with the right token is still refused.
    let plain = feishu::app_ticket_v1(APP_ID, "t", TOKEN).to_string();
    assert_eq!(
        refusal(v.verify(SignedBy::default(), plain.as_bytes(), TS_UNIX)),
        Refused::NotEncrypted
    );
    // The URL check comes unsigned; the Python vector decrypts and its token is checked.
    let check = format!(r#"{{"encrypt":"{CHALLENGE_ENCRYPTED}"}}"#);
    let answer = v.verify(SignedBy::default(), check.as_bytes(), TS_UNIX);
    assert!(matches!(answer, Ok(Accepted::Challenge(c)) if c == "ajls384kdjx98XX"));
    let garbage = r#"{"encrypt":"AAECAwQFBgcICQoLDA0OD5S8G+aEELK6w4wPQVckZCT6nuEa"}"#;
    assert_eq!(
        refusal(v.verify(SignedBy::default(), garbage.as_bytes(), TS_UNIX)),
        Refused::Undecryptable
    );
}

#[test]
fn a_push_signed_with_one_apps_key_cannot_speak_for_another() {
    let v = verifier(&[
        ("a", store("cli_a", Some("token-a"), Some("key-a"))),
        ("b", store("cli_b", Some("token-b"), Some("key-b"))),
    ]);
    let now = now_unix();
    // Whoever holds key-a (app a's secrets) forges a ticket for app b.
    let forged = feishu::push(
        &feishu::app_ticket_v1("cli_b", "t", "token-b"),
        Some("key-a"),
        now,
    );
    let r = v.verify(signed_by(&forged), forged.body.as_bytes(), now);
    assert_eq!(refusal(r), Refused::BadSignature);
    let real = feishu::push(
        &feishu::app_ticket_v2("cli_b", "t-b", "token-b"),
        Some("key-b"),
        now,
    );
    let r = v.verify(signed_by(&real), real.body.as_bytes(), now);
    assert_eq!(ticket_of(r), ("cli_b".into(), "t-b".into()));
    // A's encrypted URL check with b's token is refused: each key answers for its own apps.
    let check = feishu::push(
        &feishu::url_verification("c", "token-b"),
        Some("key-a"),
        now,
    );
    let r = v.verify(SignedBy::default(), check.body.as_bytes(), now);
    assert_eq!(refusal(r), Refused::WrongToken);
}

#[test]
fn without_store_apps_every_push_is_for_an_unknown_app() {
    let v = verifier(&[("self", AppCredentials::self_built("cli_self", "s"))]);
    let check = feishu::url_verification("c", TOKEN).to_string();
    let ticket = feishu::app_ticket_v1("cli_self", "t", TOKEN).to_string();
    for body in [check, ticket] {
        let r = v.verify(SignedBy::default(), body.as_bytes(), TS_UNIX);
        assert_eq!(refusal(r), Refused::UnknownApp, "{body}");
    }
}

#[test]
fn debug_shows_no_token_or_key() {
    let v = verifier(&[("isv", store(APP_ID, Some(TOKEN), Some(KEY)))]);
    let text = format!("{v:?}");
    assert!(text.contains(APP_ID), "{text}");
    assert!(!text.contains(TOKEN) && !text.contains(KEY), "{text}");
}
