//! Feishu's event pushes against the real gateway's admin port, over real
//! HTTP: an app_ticket is stored only when it comes as Feishu sends it (the
//! app's Verification Token; with an Encrypt Key, encrypted and signed over
//! a fresh timestamp), the URL check is answered, and everything else is
//! refused with nothing stored. The stored ticket then buys the store app's
//! tokens from the sandbox.

mod common;

use std::time::Duration;

use common::{capture::Capture, Harness, LOOPBACK};
use feishu_gateway::{
    config::{AppCredentials, AppKind, EventSecrets},
    events::now_unix,
    pb::feishu::corehr::v2::WithdrawOnboardingRequest,
    sandbox::{
        events::{self, PushRequest},
        Endpoint, PreHire, Sandbox, SandboxConfig, StoreApp,
    },
};
use serde_json::{json, Value};
use tonic::Request;

const TENANT: &str = "2ed263bf32cf1651";

/// A store app whose pushes come in plaintext (no Encrypt Key set in Feishu).
const PLAIN: App = App {
    name: "isv",
    app_id: "cli_store00000001",
    token: Some("plain-verification-token"),
    key: None,
};
/// A store app with an Encrypt Key: its pushes are encrypted and signed.
const SEALED: App = App {
    name: "isv-sealed",
    app_id: "cli_store00000002",
    token: Some("sealed-verification-token"),
    key: Some("sealed-encrypt-key-0123456789"),
};
/// A store app configured without a Verification Token.
const BARE: App = App {
    name: "isv-bare",
    app_id: "cli_store00000003",
    token: None,
    key: None,
};

struct App {
    name: &'static str,
    app_id: &'static str,
    token: Option<&'static str>,
    key: Option<&'static str>,
}

impl App {
    fn secret(&self) -> String {
        format!("{}-app-secret", self.name)
    }
    fn token(&self) -> &'static str {
        self.token.unwrap_or("no-token-configured")
    }
    fn credentials(&self) -> AppCredentials {
        AppCredentials {
            kind: AppKind::Store,
            events: EventSecrets {
                verification_token: self.token.map(Into::into),
                encrypt_key: self.key.map(Into::into),
            },
            ..AppCredentials::self_built(self.app_id, self.secret())
        }
    }
    /// Its app_ticket event as Feishu sends it, signed `age_secs` ago when encrypted.
    fn ticket_push(&self, ticket: &str, age_secs: i64) -> PushRequest {
        let event = events::app_ticket_v1(self.app_id, ticket, self.token());
        events::push(&event, self.key, now_unix() - age_secs)
    }
}

/// Every log line of one test, at TRACE, from every crate.
struct Logs {
    capture: Capture,
    _guard: tracing::subscriber::DefaultGuard,
}

/// Captures this test's logs. Every test here does, before the gateway logs
/// anything: a callsite first reached while no subscriber exists anywhere
/// may be cached as disabled, and the tests run side by side.
fn capture_logs() -> Logs {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    Logs {
        capture,
        _guard: tracing::subscriber::set_default(subscriber),
    }
}

/// Sandbox and gateway with the three store apps besides the default app
/// (the test runtime has one thread: every task logs through [`Logs`]).
async fn start() -> (Harness, Logs) {
    let logs = capture_logs();
    let config = SandboxConfig {
        store_apps: [&PLAIN, &SEALED, &BARE]
            .iter()
            .map(|a| StoreApp {
                app_id: a.app_id.into(),
                app_secret: a.secret(),
                tenant_keys: vec![TENANT.into()],
            })
            .collect(),
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::start(config.clone(), LOOPBACK)
        .await
        .expect("sandbox");
    let apps = [&PLAIN, &SEALED, &BARE].map(|a| (a.name.to_owned(), a.credentials()));
    let (gateway, channel) = common::gateway_with_apps(&sandbox, &config, apps.into(), |s| {
        s.gateway.max_quota_wait_ms = 1_000;
    })
    .await;
    let h = Harness {
        sandbox,
        gateway,
        channel,
        config,
    };
    (h, logs)
}

/// What the gateway answered: status and body.
struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn post(h: &Harness, push: &PushRequest) -> Answer {
    let headers = push.headers.iter().map(|(n, v)| (*n, v.as_str()));
    post_raw(h, &push.body, headers).await
}

/// POSTs a body with headers to the push endpoint, as Feishu would.
async fn post_raw<'a>(
    h: &Harness,
    body: &str,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Answer {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let mut req = client
        .post(format!("http://{}/admin/app_ticket", h.gateway.admin_addr))
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (name, value) in headers {
        req = req.header(name, value);
    }
    let response = req.send().await.expect("the admin port answers");
    let status = response.status().as_u16();
    Answer {
        status,
        body: response.text().await.expect("body"),
    }
}

/// Tickets the gateway stored for `app` (its counter of accepted pushes).
fn tickets_stored(h: &Harness, app: &App) -> u64 {
    h.gateway
        .gateway
        .tokens()
        .stats()
        .snapshot()
        .iter()
        .find(|s| &*s.app == app.name)
        .map_or(0, |s| s.tickets_received)
}

/// Withdraws a fresh pre-hire as `app` for the tenant: needs a ticket the sandbox issued.
async fn withdraw(h: &Harness, app: &App) -> Result<(), tonic::Status> {
    let id = format!("7{}", fastrand::u64(10_000_000_000..u64::MAX / 2));
    h.sandbox.add_pre_hire(&id, PreHire::ready());
    let mut req = Request::new(WithdrawOnboardingRequest {
        pre_hire_id: id,
        withdraw_reason: "x".into(),
    });
    req.set_timeout(Duration::from_secs(5));
    let md = req.metadata_mut();
    md.insert("x-feishu-app", app.name.parse().expect("ascii"));
    md.insert("x-feishu-tenant-key", TENANT.parse().expect("ascii"));
    h.pre_hire().withdraw_onboarding(req).await.map(|_| ())
}

/// Feishu's answers to the app_token requests so far (0, or 10012 for a ticket it never issued).
fn app_token_codes(h: &Harness) -> Vec<i64> {
    h.sandbox
        .requests()
        .iter()
        .filter(|r| r.endpoint == Some(Endpoint::AppToken))
        .map(|r| r.code)
        .collect()
}

fn assert_refused(answer: &Answer, status: u16, says: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert!(
        answer.body.contains(says),
        "{says:?} not in {}",
        answer.body
    );
}

#[tokio::test]
async fn a_plaintext_push_with_the_token_is_stored_and_buys_the_apps_tokens() {
    let (h, _logs) = start().await;
    let ticket = h.sandbox.push_app_ticket(PLAIN.app_id);
    let answer = post(&h, &PLAIN.ticket_push(&ticket, 0)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json(), json!({"msg": "success"}));
    assert_eq!(tickets_stored(&h, &PLAIN), 1);
    withdraw(&h, &PLAIN).await.expect("the pushed ticket works");
    assert_eq!(app_token_codes(&h), [0]);
    assert_eq!(h.sandbox.count(Endpoint::AppTicketResend), 0);

    // The v2 shape (token and app in `header`) is Feishu's too.
    let ticket = h.sandbox.push_app_ticket(PLAIN.app_id);
    let event = events::app_ticket_v2(PLAIN.app_id, &ticket, PLAIN.token());
    let answer = post(&h, &events::push(&event, None, 0)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(tickets_stored(&h, &PLAIN), 2);
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_the_ticket_is_not_replaced() {
    let (h, _logs) = start().await;
    let ticket = h.sandbox.push_app_ticket(PLAIN.app_id);
    assert_eq!(post(&h, &PLAIN.ticket_push(&ticket, 0)).await.status, 200);
    for token in ["guessed-token", "", "plain-verification-toke"] {
        let forged = events::app_ticket_v1(PLAIN.app_id, "forged-ticket", token);
        let answer = post(&h, &events::push(&forged, None, 0)).await;
        assert_refused(&answer, 401, "verification token does not match");
    }
    // The old shape without any token is refused as well.
    let legacy = json!({"app_id": PLAIN.app_id, "app_ticket": "forged-ticket"}).to_string();
    let answer = post(
        &h,
        &PushRequest {
            body: legacy,
            headers: Vec::new(),
        },
    )
    .await;
    assert_refused(&answer, 400, "not a Feishu event push");
    assert_eq!(tickets_stored(&h, &PLAIN), 1);
    // The app token is bought with the real ticket: Feishu accepts it at once.
    withdraw(&h, &PLAIN)
        .await
        .expect("the real ticket was kept");
    assert_eq!(app_token_codes(&h), [0]);
}

#[tokio::test]
async fn an_app_without_a_verification_token_refuses_every_push() {
    let (h, _logs) = start().await;
    let ticket = h.sandbox.push_app_ticket(BARE.app_id);
    let answer = post(&h, &BARE.ticket_push(&ticket, 0)).await;
    assert_refused(&answer, 403, "no verification token configured");
    assert_eq!(tickets_stored(&h, &BARE), 0);
}

#[tokio::test]
async fn an_encrypted_signed_push_is_stored() {
    let (h, _logs) = start().await;
    let ticket = h.sandbox.push_app_ticket(SEALED.app_id);
    let push = SEALED.ticket_push(&ticket, 0);
    assert!(push.body.starts_with(r#"{"encrypt":"#), "{}", push.body);
    assert!(!push.body.contains(&ticket));
    let answer = post(&h, &push).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(tickets_stored(&h, &SEALED), 1);
    withdraw(&h, &SEALED)
        .await
        .expect("the pushed ticket works");
    assert_eq!(app_token_codes(&h), [0]);

    // Four minutes of clock difference either way is still accepted.
    for age in [240, -240] {
        let ticket = h.sandbox.push_app_ticket(SEALED.app_id);
        assert_eq!(
            post(&h, &SEALED.ticket_push(&ticket, age)).await.status,
            200
        );
    }
    assert_eq!(tickets_stored(&h, &SEALED), 3);
}

#[tokio::test]
async fn bad_signatures_stale_timestamps_and_plaintext_are_refused_for_an_encrypted_app() {
    let (h, _logs) = start().await;
    let ticket = h.sandbox.push_app_ticket(SEALED.app_id);

    let mut tampered = SEALED.ticket_push(&ticket, 0);
    tampered.headers.retain(|(n, _)| *n != "X-Lark-Signature");
    tampered.headers.push(("X-Lark-Signature", "0".repeat(64)));
    assert_refused(&post(&h, &tampered).await, 401, "signature does not match");

    // A valid signature over another nonce (a replay under new headers).
    let mut renonced = SEALED.ticket_push(&ticket, 0);
    for (name, value) in &mut renonced.headers {
        if *name == "X-Lark-Request-Nonce" {
            value.push('9');
        }
    }
    assert_refused(&post(&h, &renonced).await, 401, "signature does not match");

    let mut unsigned = SEALED.ticket_push(&ticket, 0);
    unsigned.headers.clear();
    assert_refused(&post(&h, &unsigned).await, 401, "not signed");

    for age in [360, -360] {
        let stale = SEALED.ticket_push(&ticket, age);
        assert_refused(&post(&h, &stale).await, 401, "more than 5 minutes");
    }

    // Signed with the right key, but the ciphertext is not Feishu's.
    let body = json!({"encrypt": "AAECAwQFBgcICQoLDA0OD5S8G+aEELK6w4wPQVckZCT6"}).to_string();
    let ts = now_unix().to_string();
    let key = SEALED.key.expect("a key");
    let garbled = PushRequest {
        headers: vec![
            ("X-Lark-Request-Timestamp", ts.clone()),
            ("X-Lark-Request-Nonce", "1".into()),
            (
                "X-Lark-Signature",
                feishu_gateway::events::signature(&ts, "1", key, body.as_bytes()),
            ),
        ],
        body,
    };
    assert_refused(&post(&h, &garbled).await, 401, "cannot be decrypted");

    // The right token in plaintext is not enough once the app has an Encrypt Key.
    let event = events::app_ticket_v1(SEALED.app_id, &ticket, SEALED.token());
    let plain = events::push(&event, None, 0);
    assert_refused(
        &post(&h, &plain).await,
        401,
        "must come encrypted and signed",
    );

    assert_eq!(tickets_stored(&h, &SEALED), 0);
}

#[tokio::test]
async fn the_url_check_is_answered_plain_and_encrypted() {
    let (h, _logs) = start().await;
    let check = events::url_verification("challenge-plain-1", PLAIN.token());
    let answer = post(&h, &events::push(&check, None, 0)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json(), json!({"challenge": "challenge-plain-1"}));

    // Encrypted with the app's key; Feishu does not sign the URL check.
    let check = events::url_verification("challenge-sealed-2", SEALED.token());
    let mut push = events::push(&check, SEALED.key, now_unix());
    push.headers.clear();
    let answer = post(&h, &push).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json(), json!({"challenge": "challenge-sealed-2"}));
    // Signed, it is answered as well.
    let signed = events::push(&check, SEALED.key, now_unix());
    assert_eq!(
        post(&h, &signed).await.json()["challenge"],
        "challenge-sealed-2"
    );

    // The token is checked before the challenge is answered.
    let forged = events::url_verification("challenge-3", "guessed-token");
    let answer = post(&h, &events::push(&forged, None, 0)).await;
    assert_refused(&answer, 401, "verification token does not match");
    assert!(!answer.body.contains("challenge-3"));
    let plain_for_sealed = events::url_verification("challenge-4", SEALED.token());
    let answer = post(&h, &events::push(&plain_for_sealed, None, 0)).await;
    assert_refused(&answer, 401, "must come encrypted");
}

#[tokio::test]
async fn unknown_apps_and_oversized_bodies_are_refused_without_naming_apps() {
    let (h, _logs) = start().await;
    let push = events::push(
        &events::app_ticket_v1("cli_nobody000000", "t", PLAIN.token()),
        None,
        0,
    );
    let answer = post(&h, &push).await;
    assert_refused(&answer, 404, "no store app with this app_id");
    for app in [&PLAIN, &SEALED, &BARE] {
        assert!(!answer.body.contains(app.app_id) && !answer.body.contains(app.name));
    }
    assert!(!answer.body.contains("cli_nobody"), "{}", answer.body);
    // The default app is self-built: it gets no app_ticket.
    let push = events::push(
        &events::app_ticket_v1(&h.config.app_id, "t", PLAIN.token()),
        None,
        0,
    );
    assert_eq!(post(&h, &push).await.status, 404);

    let mut event = events::app_ticket_v1(PLAIN.app_id, "t", PLAIN.token());
    event["padding"] = json!("x".repeat(70 * 1024));
    let answer = post(&h, &events::push(&event, None, 0)).await;
    assert_eq!(answer.status, 413, "{}", answer.body);
    assert_eq!(tickets_stored(&h, &PLAIN), 0);
}

/// Feishu's own Python SDK (lark-oapi) takes the sandbox's pushes for
/// Feishu's, and refuses the same forgeries; and a push encrypted by the SDK's
/// cipher library and signed by hashlib (no code of this crate) is accepted.
#[tokio::test]
async fn feishus_python_sdk_agrees_with_the_pushes_both_ways() {
    let (h, _logs) = start().await;
    let ticket = h.sandbox.push_app_ticket(SEALED.app_id);
    let entry = |name: &str, push: &PushRequest, expect: Value| {
        let headers: serde_json::Map<String, Value> = push
            .headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), json!(v)))
            .collect();
        json!({"name": name, "body": push.body, "headers": headers, "expect": expect})
    };
    let now = now_unix();
    let v2 = events::app_ticket_v2(SEALED.app_id, &ticket, SEALED.token());
    let check = events::url_verification("challenge-sdk", SEALED.token());
    let forged = events::app_ticket_v1(SEALED.app_id, &ticket, "guessed-token");
    let mut tampered = SEALED.ticket_push(&ticket, 0);
    tampered.headers.retain(|(n, _)| *n != "X-Lark-Signature");
    tampered.headers.push(("X-Lark-Signature", "0".repeat(64)));
    let pushes = json!([
        entry(
            "v1 app_ticket",
            &SEALED.ticket_push(&ticket, 0),
            json!({"app_ticket": ticket})
        ),
        entry(
            "v2 app_ticket",
            &events::push(&v2, SEALED.key, now),
            json!({"app_ticket": ticket})
        ),
        entry(
            "url_verification",
            &events::push(&check, SEALED.key, now),
            json!({"challenge": "challenge-sdk"})
        ),
        entry(
            "wrong token",
            &events::push(&forged, SEALED.key, now),
            json!("refused")
        ),
        entry("bad signature", &tampered, json!("refused")),
    ]);

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/sdk/lark_events_check.py"
    );
    let fresh = h.sandbox.push_app_ticket(SEALED.app_id);
    let mut child = tokio::process::Command::new("python3")
        .args([
            script,
            SEALED.key.expect("a key"),
            SEALED.token(),
            SEALED.app_id,
            &fresh,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is needed to run Feishu's Python SDK");
    let mut stdin = child.stdin.take().expect("stdin");
    tokio::io::AsyncWriteExt::write_all(&mut stdin, pushes.to_string().as_bytes())
        .await
        .expect("write the pushes");
    drop(stdin);
    let out = child.wait_with_output().await.expect("the script ends");
    let log = String::from_utf8_lossy(&out.stderr);
    // The script exits with 3 when `import lark_oapi` fails: that is a failure, not a skip.
    assert_ne!(
        out.status.code(),
        Some(3),
        "Feishu's SDK is missing: run `pip install lark-oapi` (CI installs it)\n{log}"
    );
    assert!(out.status.success(), "lark_events_check.py failed:\n{log}");

    let own: Value = serde_json::from_slice(&out.stdout).expect("the SDK-made push");
    let headers = own["headers"].as_object().expect("headers");
    let answer = post_raw(
        &h,
        own["body"].as_str().expect("body"),
        headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str().unwrap_or_default())),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(tickets_stored(&h, &SEALED), 1);
    withdraw(&h, &SEALED)
        .await
        .expect("the SDK-made push carried a real ticket");
    assert_eq!(app_token_codes(&h), [0]);
}

#[tokio::test]
async fn start_up_names_the_app_without_a_token_and_no_push_secret_is_logged() {
    let (h, logs) = start().await;
    let warned = logs
        .capture
        .text()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("verification_token"))
        .map(str::to_owned)
        .collect::<Vec<_>>();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains(BARE.name) && warned[0].contains(BARE.app_id));

    let plain_ticket = h.sandbox.push_app_ticket(PLAIN.app_id);
    let sealed_ticket = h.sandbox.push_app_ticket(SEALED.app_id);
    assert_eq!(
        post(&h, &PLAIN.ticket_push(&plain_ticket, 0)).await.status,
        200
    );
    assert_eq!(
        post(&h, &SEALED.ticket_push(&sealed_ticket, 0))
            .await
            .status,
        200
    );
    let forged = events::app_ticket_v1(PLAIN.app_id, "forged-ticket-value", "guess");
    assert_eq!(post(&h, &events::push(&forged, None, 0)).await.status, 401);
    let stale = SEALED.ticket_push(&sealed_ticket, 600);
    assert_eq!(post(&h, &stale).await.status, 401);
    withdraw(&h, &SEALED).await.expect("store call");

    let mut seen = logs.capture.text();
    seen.push_str(&h.metrics().await);
    seen.push_str(&format!("{:?}", h.gateway.gateway.tokens()));
    let secrets = [
        PLAIN.token(),
        SEALED.token(),
        SEALED.key.expect("a key"),
        plain_ticket.as_str(),
        sealed_ticket.as_str(),
        "forged-ticket-value",
    ];
    for (i, secret) in secrets.iter().enumerate() {
        assert!(!seen.contains(secret), "secret #{i} leaked");
    }
    assert!(seen.contains("event push refused"), "refusals are logged");
}
