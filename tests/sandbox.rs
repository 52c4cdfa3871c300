//! The Feishu sandbox, seen from a caller: real HTTP on loopback, asserting on what a
//! gateway (or Feishu's own SDK) would notice.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use feishu_gateway::sandbox::{
    demo, Application, ApplicationState, Endpoint, Fault, FaultKind, FaultTarget, Offboarding,
    OffboardingState, PreHire, PreHireStage, Sandbox, SandboxConfig, SandboxHandle, StoreApp,
    TakenBy,
};
use serde_json::{json, Value};

const WITHDRAW: &str = "/open-apis/corehr/v2/pre_hires/withdraw_onboarding";
const RESTORE: &str = "/open-apis/corehr/v2/pre_hires/restore_flow_instance";
const REVOKE: &str = "/open-apis/corehr/v2/offboardings/revoke";
const TOKEN: &str = "/open-apis/auth/v3/tenant_access_token/internal";

fn cancel_path(application_id: &str) -> String {
    format!("/open-apis/hire/v1/applications/{application_id}/cancel_onboard")
}

async fn start(config: SandboxConfig) -> SandboxHandle {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    Sandbox::start(config, addr).await.unwrap()
}

async fn demo_sandbox() -> SandboxHandle {
    start(SandboxConfig {
        seed_demo: true,
        ..SandboxConfig::default()
    })
    .await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
    json: Value,
}

impl Answer {
    fn code(&self) -> i64 {
        self.json["code"].as_i64().unwrap()
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).unwrap().to_str().unwrap()
    }

    /// A business error as Feishu sends it: status, code, and an `error` whose log id is
    /// the header's and whose troubleshooter links to it.
    fn assert_error(&self, status: u16, code: i64) {
        assert_eq!((self.status, self.code()), (status, code), "{}", self.json);
        let log_id = self.header("x-tt-logid");
        assert_eq!(self.json["error"]["log_id"], log_id);
        let link = self.json["error"]["troubleshooter"].as_str().unwrap();
        assert!(link.starts_with("排查建议查看(Troubleshooting suggestions): https://open.feishu.cn/search?from=openapi&log_id="));
        assert!(link.contains(&format!("log_id={log_id}&code={code}&method_id=")));
        assert_eq!(
            self.header("content-type"),
            "application/json; charset=utf-8"
        );
    }

    fn assert_success(&self, data: Value) {
        assert_eq!(self.status, 200, "{}", self.json);
        assert_eq!(
            self.json,
            json!({"code": 0, "msg": "success", "data": data})
        );
        assert_eq!(self.header("x-tt-logid").len(), 38);
    }
}

async fn send(h: &SandboxHandle, path: &str, auth: Option<&str>, body: &str) -> Answer {
    send_with(&client(), h, path, auth, body).await.unwrap()
}

async fn send_with(
    c: &reqwest::Client,
    h: &SandboxHandle,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> reqwest::Result<Answer> {
    let mut req = c
        .post(format!("{}{path}", h.base_url()))
        .header("content-type", "application/json; charset=utf-8")
        .body(body.to_string());
    if let Some(auth) = auth {
        req = req.header("authorization", auth);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await?.to_vec();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Ok(Answer {
        status,
        headers,
        body,
        json,
    })
}

async fn token(h: &SandboxHandle) -> String {
    let body = json!({"app_id": "cli_sandbox0000001", "app_secret": "sandbox-app-secret"});
    let a = send(h, TOKEN, None, &body.to_string()).await;
    a.json["tenant_access_token"].as_str().unwrap().to_string()
}

/// A business call with a fresh (or reused) token.
async fn call(h: &SandboxHandle, path: &str, body: Value) -> Answer {
    let bearer = format!("Bearer {}", token(h).await);
    send(h, path, Some(&bearer), &body.to_string()).await
}

fn withdraw(id: &str) -> Value {
    json!({"pre_hire_id": id, "withdraw_reason": "withdraw reason"})
}

fn restore(id: &str) -> Value {
    json!({"pre_hire_id": id})
}

fn revoke(id: &str) -> Value {
    json!({"offboarding_id": id, "operator_id": "6982509313466189341"})
}

fn cancel() -> Value {
    json!({"termination_type": 1, "termination_reason_id_list": [demo::TERMINATION_REASON], "termination_reason_notes": "候选人经历不匹配"})
}

#[tokio::test]
async fn tokens_are_reused_then_renewed_and_expire() {
    let h = start(SandboxConfig {
        token_ttl: Duration::from_secs(3),
        token_reuse_below: Duration::from_millis(1500),
        ..SandboxConfig::default()
    })
    .await;
    let creds =
        json!({"app_id": "cli_sandbox0000001", "app_secret": "sandbox-app-secret"}).to_string();
    let first = send(&h, TOKEN, None, &creds).await;
    assert_eq!(
        (first.status, first.code(), &first.json["msg"]),
        (200, 0, &json!("ok"))
    );
    assert_eq!(first.json["expire"], 3);
    let t1 = first.json["tenant_access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(t1.starts_with("t-") && t1.len() >= 34);
    let again = send(&h, TOKEN, None, &creds).await;
    assert_eq!(again.json["tenant_access_token"], t1.as_str());
    assert!(again.json["expire"].as_u64().unwrap() <= 2);

    tokio::time::sleep(Duration::from_millis(1600)).await;
    let renewed = send(&h, TOKEN, None, &creds).await;
    let t2 = renewed.json["tenant_access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(
        t1, t2,
        "a token with less than reuse_below left is replaced"
    );
    assert_eq!(renewed.json["expire"], 3);
    let bearer = |t: &str| format!("Bearer {t}");
    let old = send(&h, WITHDRAW, Some(&bearer(&t1)), &withdraw("x").to_string()).await;
    old.assert_error(400, 1161105); // the old token still works until its own end

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expired = send(&h, WITHDRAW, Some(&bearer(&t1)), &withdraw("x").to_string()).await;
    expired.assert_error(400, 99991663);
    let current = send(&h, WITHDRAW, Some(&bearer(&t2)), &withdraw("x").to_string()).await;
    current.assert_error(400, 1161105);

    h.revoke_all_tokens();
    let revoked = send(&h, WITHDRAW, Some(&bearer(&t2)), &withdraw("x").to_string()).await;
    revoked.assert_error(400, 99991663);
    let fresh = token(&h).await;
    assert!(fresh != t1 && fresh != t2);
    assert_eq!(h.issued_tokens(), vec![t1, t2, fresh]);
}

#[tokio::test]
async fn token_errors_come_with_http_200() {
    let h = start(SandboxConfig::default()).await;
    let cases = [
        (
            json!({"app_id": "cli_sandbox0000001", "app_secret": "wrong"}).to_string(),
            10014,
            "app secret invalid",
        ),
        (
            json!({"app_id": "cli_unknown", "app_secret": "sandbox-app-secret"}).to_string(),
            10014,
            "app secret invalid",
        ),
        (
            json!({"app_id": "cli_sandbox0000001"}).to_string(),
            10003,
            "invalid param",
        ),
        (
            json!({"app_id": "", "app_secret": "sandbox-app-secret"}).to_string(),
            10003,
            "invalid param",
        ),
        (
            json!({"app_id": 7, "app_secret": "sandbox-app-secret"}).to_string(),
            10003,
            "invalid param",
        ),
        ("{not json".to_string(), 10003, "invalid param"),
    ];
    for (body, code, msg) in cases {
        let a = send(&h, TOKEN, None, &body).await;
        assert_eq!(
            (a.status, a.code(), a.json["msg"].as_str().unwrap()),
            (200, code, msg),
            "{body}"
        );
        assert!(a.json.get("tenant_access_token").is_none());
    }
    assert!(h.issued_tokens().is_empty());
    assert_eq!(h.count(Endpoint::TenantToken), 6);
}

#[tokio::test]
async fn business_calls_check_the_bearer_token_and_scope() {
    let h = demo_sandbox().await;
    let body = withdraw(demo::PRE_HIRE_READY).to_string();
    send(&h, WITHDRAW, None, &body)
        .await
        .assert_error(400, 99991661);
    let a = send(&h, WITHDRAW, Some("Bearer "), &body).await;
    a.assert_error(400, 99991661);
    assert!(a.json["msg"]
        .as_str()
        .unwrap()
        .starts_with("Missing access token"));
    for bad in ["Bearer u-abc", "Bearer t-a b", "t-abcdef", "Basic dXNlcg=="] {
        send(&h, WITHDRAW, Some(bad), &body)
            .await
            .assert_error(400, 99991671);
    }
    let unknown = send(&h, WITHDRAW, Some("Bearer t-0000000000"), &body).await;
    unknown.assert_error(400, 99991663);
    assert_eq!(
        unknown.json["msg"],
        "Invalid access token for authorization. Please make a request with token attached."
    );

    h.set_scope_granted("corehr:pre_hire:withdraw_onboarding", false);
    let denied = call(&h, WITHDRAW, withdraw(demo::PRE_HIRE_READY)).await;
    denied.assert_error(400, 99991672);
    assert!(denied.json["msg"]
        .as_str()
        .unwrap()
        .contains("[corehr:pre_hire:withdraw_onboarding]"));
    let v = &denied.json["error"]["permission_violations"][0];
    assert_eq!(v["type"], "action_scope_required");
    assert_eq!(v["subject"], "corehr:pre_hire:withdraw_onboarding");
    assert_eq!(
        h.pre_hire(demo::PRE_HIRE_READY).unwrap().stage,
        PreHireStage::ReadyToOnboard
    );
    h.set_scope_granted("corehr:pre_hire:withdraw_onboarding", true);
    call(&h, WITHDRAW, withdraw(demo::PRE_HIRE_READY))
        .await
        .assert_success(json!({"success": true}));
}

#[tokio::test]
async fn withdraw_then_restore_and_every_pre_hire_error() {
    let h = demo_sandbox().await;
    let ok = json!({"success": true});
    call(&h, WITHDRAW, withdraw(demo::PRE_HIRE_READY))
        .await
        .assert_success(ok.clone());
    assert_eq!(
        h.pre_hire(demo::PRE_HIRE_READY).unwrap().stage,
        PreHireStage::Withdrawn
    );
    let again = call(&h, WITHDRAW, withdraw(demo::PRE_HIRE_READY)).await;
    again.assert_error(400, 1161129);
    assert_eq!(
        again.json["msg"],
        "Unable to submit this task as pre-hire is in the \"Withdrawn\" stage."
    );
    call(&h, RESTORE, restore(demo::PRE_HIRE_READY))
        .await
        .assert_success(ok.clone());
    assert_eq!(
        h.pre_hire(demo::PRE_HIRE_READY).unwrap().stage,
        PreHireStage::Preparing
    );

    let withdraw_cases = [
        ("7345005664477775499", 1161105),
        (demo::PRE_HIRE_RESTRICTED, 1161097),
        (demo::PRE_HIRE_LOCKED, 1161116),
        (demo::PRE_HIRE_IN_APPROVAL, 1161094),
        (demo::PRE_HIRE_ONBOARDED, 1161129),
    ];
    for (id, code) in withdraw_cases {
        call(&h, WITHDRAW, withdraw(id))
            .await
            .assert_error(400, code);
    }
    let restore_cases = [
        ("7345005664477775499", 1161105),
        (demo::PRE_HIRE_IN_APPROVAL, 1161094),
        (demo::PRE_HIRE_ONBOARDED, 1161129),
        (demo::PRE_HIRE_HEADCOUNT_FULL, 1161063),
        (demo::PRE_HIRE_EMAIL_NOT_EDITABLE, 1161120),
        (demo::PRE_HIRE_EMAIL_NO_AT, 1161034),
        (demo::PRE_HIRE_EMAIL_UPPERCASE, 1161121),
        (demo::PRE_HIRE_EMAIL_SPECIAL_CHAR, 1161122),
        (demo::PRE_HIRE_EMAIL_TOO_LONG, 1161124),
        (demo::PRE_HIRE_EMAIL_EMPTY_LOCAL, 1161123),
        (demo::PRE_HIRE_EMAIL_WRONG_DOMAIN, 1161035),
        (demo::PRE_HIRE_EMAIL_SENSITIVE, 1161126),
        (demo::PRE_HIRE_EMAIL_ACTIVE_DUP, 1161036),
        (demo::PRE_HIRE_EMAIL_BUSINESS_DUP, 1161118),
        (demo::PRE_HIRE_EMAIL_OFFBOARDED_DUP, 1161119),
        (demo::PRE_HIRE_EMAIL_LDAP_DUP, 1161125),
        (demo::PRE_HIRE_EMAIL_MAILBOX_DUP, 1161127),
    ];
    for (id, code) in restore_cases {
        call(&h, RESTORE, restore(id)).await.assert_error(400, code);
    }
    let onboarded = call(&h, RESTORE, restore(demo::PRE_HIRE_ONBOARDED)).await;
    assert!(onboarded.json["msg"]
        .as_str()
        .unwrap()
        .contains("\"Onboarded\""));
    let forced = json!({"pre_hire_id": demo::PRE_HIRE_HEADCOUNT_FULL, "confirm_workforce": true});
    call(&h, RESTORE, forced).await.assert_success(ok.clone());
    call(&h, RESTORE, restore(demo::PRE_HIRE_WITHDRAWN))
        .await
        .assert_success(ok.clone());

    // Tests set their own records and taken addresses.
    h.add_pre_hire("p1", PreHire::withdrawn_with_email("ann@example.com"));
    h.take_email(TakenBy::Ldap, "ann@example.com");
    call(&h, RESTORE, restore("p1"))
        .await
        .assert_error(400, 1161125);
}

#[tokio::test]
async fn parameters_are_validated_like_feishu() {
    let h = demo_sandbox().await;
    let long = "撤".repeat(501);
    let cases = [
        (
            WITHDRAW,
            json!({"pre_hire_id": demo::PRE_HIRE_READY}).to_string(),
            1161001,
            "withdraw_reason",
        ),
        (
            WITHDRAW,
            json!({"pre_hire_id": 7345005664477775407_u64, "withdraw_reason": "r"}).to_string(),
            1161001,
            "pre_hire_id",
        ),
        (
            WITHDRAW,
            json!({"pre_hire_id": demo::PRE_HIRE_READY, "withdraw_reason": long}).to_string(),
            1161001,
            "withdraw_reason",
        ),
        (WITHDRAW, "{\"pre_hire_id\":".to_string(), 1161001, "body"),
        (
            RESTORE,
            json!({"pre_hire_id": demo::PRE_HIRE_HEADCOUNT_FULL, "confirm_workforce": "true"})
                .to_string(),
            1161001,
            "confirm_workforce",
        ),
        (
            REVOKE,
            json!({"offboarding_id": ""}).to_string(),
            1160102,
            "offboarding_id",
        ),
        (
            REVOKE,
            json!({"offboarding_id": demo::OFFBOARDING, "operator_id": 5}).to_string(),
            1160102,
            "operator_id",
        ),
        (
            "/open-apis/corehr/v2/offboardings/revoke?user_id_type=email",
            revoke(demo::OFFBOARDING).to_string(),
            1160102,
            "user_id_type",
        ),
        (
            &cancel_path(demo::APPLICATION),
            json!({"termination_type": "1"}).to_string(),
            1002002,
            "termination_type",
        ),
        (
            &cancel_path(demo::APPLICATION),
            json!({"termination_type": 2}).to_string(),
            1002002,
            "termination_type",
        ),
        (
            &cancel_path(demo::APPLICATION),
            json!({"termination_type": 1, "termination_reason_id_list": ["404"]}).to_string(),
            1002002,
            "termination_reason_id_list",
        ),
        (
            &cancel_path("2222222222"),
            cancel().to_string(),
            1002002,
            "application_id",
        ),
    ];
    let bearer = format!("Bearer {}", token(&h).await);
    for (path, body, code, field) in cases {
        let a = send(&h, path, Some(&bearer), &body).await;
        a.assert_error(400, code);
        assert_eq!(
            a.json["error"]["field_violations"][0]["field"], field,
            "{body}"
        );
    }
    // Exactly 500 characters (1500 bytes) is fine.
    let reason = "撤".repeat(500);
    let body = json!({"pre_hire_id": demo::PRE_HIRE_READY, "withdraw_reason": reason});
    call(&h, WITHDRAW, body)
        .await
        .assert_success(json!({"success": true}));
    assert_eq!(
        h.application(demo::APPLICATION).unwrap().state,
        ApplicationState::ToBeOnboarded
    );
    assert_eq!(
        h.offboarding(demo::OFFBOARDING).unwrap().state,
        OffboardingState::Offboarded
    );
}

#[tokio::test]
async fn revoke_offboarding_states() {
    let h = demo_sandbox().await;
    let path = format!("{REVOKE}?user_id_type=people_corehr_id");
    call(&h, &path, revoke(demo::OFFBOARDING))
        .await
        .assert_success(json!({}));
    assert_eq!(
        h.offboarding(demo::OFFBOARDING).unwrap().state,
        OffboardingState::Revoked
    );
    let cases = [
        (demo::OFFBOARDING, 1160202),
        ("7095671727698478699", 1160201),
        (demo::OFFBOARDING_REVOKED, 1160202),
        (demo::OFFBOARDING_DEPARTMENT_DISABLED, 1160203),
        (demo::OFFBOARDING_LOCKED, 1160204),
    ];
    for (id, code) in cases {
        call(&h, REVOKE, revoke(id)).await.assert_error(400, code);
    }
    h.add_offboarding("o1", Offboarding::default());
    call(&h, REVOKE, json!({"offboarding_id": "o1"}))
        .await
        .assert_success(json!({}));
    let recorded = h.requests();
    let last = recorded.last().unwrap();
    assert_eq!(last.endpoint, Some(Endpoint::RevokeOffboarding));
    assert_eq!(
        (last.status, last.code, last.tenant.as_deref()),
        (200, 0, None)
    );
    let with_query = recorded.iter().find(|r| r.query.is_some()).unwrap();
    assert_eq!(
        with_query.query.as_deref(),
        Some("user_id_type=people_corehr_id")
    );
    assert!(with_query
        .authorization
        .as_deref()
        .unwrap()
        .starts_with("Bearer t-"));
    assert_eq!(
        with_query.json.as_ref().unwrap()["offboarding_id"],
        demo::OFFBOARDING
    );
}

#[tokio::test]
async fn cancel_onboard_and_the_raw_path_parameter() {
    let h = demo_sandbox().await;
    call(&h, &cancel_path(demo::APPLICATION), cancel())
        .await
        .assert_success(json!({}));
    assert_eq!(
        h.application(demo::APPLICATION).unwrap().state,
        ApplicationState::Terminated
    );
    let terminated = call(&h, &cancel_path(demo::APPLICATION), cancel()).await;
    terminated.assert_error(400, 1002221);
    assert_eq!(terminated.json["msg"], "投递已经终止");
    call(
        &h,
        &cancel_path(demo::APPLICATION_BOUND_TO_COREHR),
        cancel(),
    )
    .await
    .assert_error(400, 1002910);

    // `a%2Fb` is the application "a/b": unknown, never another route.
    let encoded = call(&h, &cancel_path("a%2Fb"), cancel()).await;
    encoded.assert_error(400, 1002002);
    assert_eq!(encoded.json["error"]["field_violations"][0]["value"], "a/b");
    h.add_application("a/b", Application::default());
    call(&h, &cancel_path("a%2Fb"), json!({"termination_type": 22}))
        .await
        .assert_success(json!({}));
    assert_eq!(
        h.application("a/b").unwrap().state,
        ApplicationState::Terminated
    );
    let raw = h
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.endpoint == Some(Endpoint::CancelOnboard))
        .unwrap();
    assert_eq!(
        raw.path,
        "/open-apis/hire/v1/applications/a%2Fb/cancel_onboard"
    );

    for path in [
        "/open-apis/hire/v1/applications/a/b/cancel_onboard",
        "/open-apis/corehr/v2/pre_hires%2Fwithdraw_onboarding",
        "/open-apis/nope",
    ] {
        let a = call(&h, path, cancel()).await;
        assert_eq!(
            (a.status, &a.json),
            (404, &json!({"code": 404, "msg": "404 page not found"}))
        );
        assert!(a.headers.contains_key("x-tt-logid"));
    }
    assert_eq!(h.requests().last().unwrap().endpoint, None);
}

#[tokio::test]
async fn sliding_window_limit_refuses_then_recovers() {
    let window = Duration::from_millis(1500);
    let h = start(SandboxConfig {
        seed_demo: true,
        limit_overrides: vec![(Endpoint::WithdrawOnboarding, 3, window)],
        ..SandboxConfig::default()
    })
    .await;
    let bearer = format!("Bearer {}", token(&h).await);
    let body = withdraw("7345005664477775499").to_string();
    send(&h, WITHDRAW, Some(&bearer), &body)
        .await
        .assert_error(400, 1161105);
    let first_answered = Instant::now();
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..2 {
        send(&h, WITHDRAW, Some(&bearer), &body)
            .await
            .assert_error(400, 1161105);
    }
    let refused = send(&h, WITHDRAW, Some(&bearer), &body).await;
    refused.assert_error(429, 99991400);
    assert_eq!(refused.json["msg"], "request trigger frequency limit");
    assert_eq!(refused.header("x-ogw-ratelimit-limit"), "3");
    let reset: u64 = refused.header("x-ogw-ratelimit-reset").parse().unwrap();
    assert!((1..=2).contains(&reset), "about 0.9 s, rounded up: {reset}");
    // Refusals do not count; one slot frees when the first arrival leaves the window,
    // the next only 600 ms later.
    tokio::time::sleep((first_answered + window + Duration::from_millis(50)) - Instant::now())
        .await;
    send(&h, WITHDRAW, Some(&bearer), &body)
        .await
        .assert_error(400, 1161105);
    send(&h, WITHDRAW, Some(&bearer), &body)
        .await
        .assert_error(429, 99991400);
    assert_eq!(
        (
            h.count(Endpoint::WithdrawOnboarding),
            h.rate_limited(Endpoint::WithdrawOnboarding)
        ),
        (6, 2)
    );
    // Other endpoints have their own window.
    call(&h, RESTORE, restore(demo::PRE_HIRE_WITHDRAWN))
        .await
        .assert_success(json!({"success": true}));
}

#[tokio::test]
async fn concurrent_calls_on_one_record_conflict() {
    let h = start(SandboxConfig {
        seed_demo: true,
        processing_delay: Duration::from_millis(500),
        ..SandboxConfig::default()
    })
    .await;
    let bearer = format!("Bearer {}", token(&h).await);
    let body = withdraw(demo::PRE_HIRE_READY).to_string();
    let (a, b) = tokio::join!(send(&h, WITHDRAW, Some(&bearer), &body), async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        send(&h, WITHDRAW, Some(&bearer), &body).await
    });
    let (won, lost) = if a.code() == 0 { (a, b) } else { (b, a) };
    won.assert_success(json!({"success": true}));
    lost.assert_error(400, 1161116);
    let body = revoke(demo::OFFBOARDING).to_string();
    let (a, b) = tokio::join!(send(&h, REVOKE, Some(&bearer), &body), async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        send(&h, REVOKE, Some(&bearer), &body).await
    });
    let (won, lost) = if a.code() == 0 { (a, b) } else { (b, a) };
    won.assert_success(json!({}));
    lost.assert_error(400, 1160204);
    // Once released, the state machine answers.
    send(&h, REVOKE, Some(&bearer), &body)
        .await
        .assert_error(400, 1160202);
}

#[tokio::test]
async fn faults_misbehave_in_order() {
    let h = demo_sandbox().await;
    let bearer = format!("Bearer {}", token(&h).await);
    let body = withdraw(demo::PRE_HIRE_READY).to_string();
    let target = FaultTarget::Endpoint(Endpoint::WithdrawOnboarding);
    h.inject(Fault {
        target,
        kind: FaultKind::FeishuError {
            http_status: 500,
            code: 1161000,
            msg: "Server system error".into(),
        },
        times: 2,
    });
    h.inject(Fault::once(
        FaultTarget::AnyBusiness,
        FaultKind::Raw {
            http_status: 502,
            content_type: "text/html".into(),
            body: b"<html>502 Bad Gateway</html>".to_vec(),
        },
    ));
    h.inject(Fault::once(
        target,
        FaultKind::RateLimited {
            reset_secs: 7,
            limit: 100,
        },
    ));
    h.inject(Fault::once(target, FaultKind::DropConnection));
    h.inject(Fault::once(
        target,
        FaultKind::Delay(Duration::from_millis(300)),
    ));
    for _ in 0..2 {
        send(&h, WITHDRAW, Some(&bearer), &body)
            .await
            .assert_error(500, 1161000);
    }
    let raw = send(&h, WITHDRAW, Some(&bearer), &body).await;
    assert_eq!(
        (raw.status, raw.body.as_slice()),
        (502, &b"<html>502 Bad Gateway</html>"[..])
    );
    assert_eq!(raw.header("content-type"), "text/html");
    let limited = send(&h, WITHDRAW, Some(&bearer), &body).await;
    limited.assert_error(429, 99991400);
    assert_eq!(
        (
            limited.header("x-ogw-ratelimit-reset"),
            limited.header("x-ogw-ratelimit-limit")
        ),
        ("7", "100")
    );
    let dropped = send_with(&client(), &h, WITHDRAW, Some(&bearer), &body).await;
    assert!(dropped.is_err(), "{dropped:?}");
    assert_eq!(
        h.pre_hire(demo::PRE_HIRE_READY).unwrap().stage,
        PreHireStage::ReadyToOnboard
    );
    let started = Instant::now();
    send(&h, WITHDRAW, Some(&bearer), &body)
        .await
        .assert_success(json!({"success": true}));
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(h.rate_limited(Endpoint::WithdrawOnboarding), 1);

    // A write that ran but whose answer was lost.
    h.inject(Fault::once(
        FaultTarget::AnyBusiness,
        FaultKind::DropAfterApply,
    ));
    let lost = send_with(
        &client(),
        &h,
        REVOKE,
        Some(&bearer),
        &revoke(demo::OFFBOARDING).to_string(),
    )
    .await;
    assert!(lost.is_err());
    assert_eq!(
        h.offboarding(demo::OFFBOARDING).unwrap().state,
        OffboardingState::Revoked
    );
    let last = h.requests().pop().unwrap();
    assert_eq!(
        (last.endpoint, last.status),
        (Some(Endpoint::RevokeOffboarding), 0)
    );

    h.inject(Fault::once(
        FaultTarget::AnyToken,
        FaultKind::DropConnection,
    ));
    let creds =
        json!({"app_id": "cli_sandbox0000001", "app_secret": "sandbox-app-secret"}).to_string();
    assert!(send_with(&client(), &h, TOKEN, None, &creds).await.is_err());
    assert!(token(&h).await.starts_with("t-"));
}

#[tokio::test]
async fn store_apps_get_tokens_through_tickets_and_tenants() {
    let h = start(SandboxConfig {
        seed_demo: true,
        store_apps: vec![StoreApp {
            app_id: "cli_isv".into(),
            app_secret: "isv-secret".into(),
            tenant_keys: vec!["tenant-a".into()],
        }],
        ..SandboxConfig::default()
    })
    .await;
    assert!(!format!("{:?}", SandboxConfig::default()).contains("sandbox-app-secret"));
    let app_token_path = "/open-apis/auth/v3/app_access_token";
    let isv_tenant_path = "/open-apis/auth/v3/tenant_access_token";
    let resend = json!({"app_id": "cli_isv", "app_secret": "isv-secret"}).to_string();
    let a = send(&h, "/open-apis/auth/v3/app_ticket/resend", None, &resend).await;
    assert_eq!(a.json, json!({"code": 0, "msg": "ok"}));
    let ticket = h.app_ticket("cli_isv").unwrap();
    let bad = json!({"app_id": "cli_isv", "app_secret": "isv-secret", "app_ticket": "stale"});
    assert_eq!(
        send(&h, app_token_path, None, &bad.to_string())
            .await
            .code(),
        10012
    );
    let good = json!({"app_id": "cli_isv", "app_secret": "isv-secret", "app_ticket": ticket});
    let app = send(&h, app_token_path, None, &good.to_string()).await;
    assert_eq!(
        (app.status, app.code(), &app.json["expire"]),
        (200, 0, &json!(7200))
    );
    let app_token = app.json["app_access_token"].as_str().unwrap();
    assert!(app_token.starts_with("a-"));

    let unknown_tenant = json!({"app_access_token": app_token, "tenant_key": "tenant-b"});
    assert_eq!(
        send(&h, isv_tenant_path, None, &unknown_tenant.to_string())
            .await
            .code(),
        10003
    );
    let bad_app = json!({"app_access_token": "a-nope", "tenant_key": "tenant-a"});
    assert_eq!(
        send(&h, isv_tenant_path, None, &bad_app.to_string())
            .await
            .code(),
        99991664
    );
    let body = json!({"app_access_token": app_token, "tenant_key": "tenant-a"});
    let tenant = send(&h, isv_tenant_path, None, &body.to_string()).await;
    let tenant_token = tenant.json["tenant_access_token"].as_str().unwrap();
    let bearer = format!("Bearer {tenant_token}");
    let a = send(
        &h,
        WITHDRAW,
        Some(&bearer),
        &withdraw(demo::PRE_HIRE_READY).to_string(),
    )
    .await;
    a.assert_success(json!({"success": true}));
    assert_eq!(
        h.requests().last().unwrap().tenant.as_deref(),
        Some("tenant-a")
    );
    // revoke and cancel_onboard are for self-built apps only.
    let a = send(
        &h,
        REVOKE,
        Some(&bearer),
        &revoke(demo::OFFBOARDING).to_string(),
    )
    .await;
    a.assert_error(400, 99991672);
    assert!(a.json["msg"]
        .as_str()
        .unwrap()
        .contains("[corehr:offboarding.revoke:write]"));
    // An app token is not a tenant token.
    let as_app = format!("Bearer {app_token}");
    send(&h, WITHDRAW, Some(&as_app), &withdraw("x").to_string())
        .await
        .assert_error(400, 99991671);
}

#[tokio::test]
async fn control_api_over_http() {
    let h = demo_sandbox().await;
    let c = client();
    let url = |p: &str| format!("{}/__sandbox/{p}", h.base_url());
    let fault = json!({"target": "cancel_onboard", "kind": "feishu_error", "http_status": 500, "code": 1002001, "msg": "系统错误"});
    let r = c
        .post(url("faults"))
        .body(fault.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(url("faults"))
        .body("{\"target\":\"nowhere\",\"kind\":\"drop_connection\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    call(&h, &cancel_path(demo::APPLICATION), cancel())
        .await
        .assert_error(500, 1002001);
    let t = token(&h).await;
    c.post(url("revoke_tokens")).send().await.unwrap();
    let stale = send(
        &h,
        WITHDRAW,
        Some(&format!("Bearer {t}")),
        &withdraw("x").to_string(),
    )
    .await;
    stale.assert_error(400, 99991663);

    let stats: Value = serde_json::from_slice(
        &c.get(url("stats"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(stats["token_requests"], 2);
    let cancel_stats = &stats["endpoints"]["cancel_onboard"];
    assert_eq!(
        (
            cancel_stats["count"].as_u64(),
            cancel_stats["rate_limited"].as_u64()
        ),
        (Some(1), Some(0))
    );
    assert_eq!(cancel_stats["arrivals_ms"].as_array().unwrap().len(), 1);
    assert_eq!(stats["endpoints"]["withdraw_onboarding"]["count"], 1);
    c.post(url("reset_stats")).send().await.unwrap();
    assert_eq!(h.count(Endpoint::CancelOnboard), 0);
    assert!(
        h.requests().is_empty(),
        "the control API itself is not recorded"
    );
}

#[tokio::test]
async fn http2_prior_knowledge_and_shutdown() {
    let h = demo_sandbox().await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let body =
        json!({"app_id": "cli_sandbox0000001", "app_secret": "sandbox-app-secret"}).to_string();
    let a = send_with(&h2, &h, TOKEN, None, &body).await.unwrap();
    assert_eq!(a.code(), 0);
    h.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(send_with(&client(), &h, TOKEN, None, &body).await.is_err());
}

/// Feishu's own Python SDK must take the sandbox for Feishu.
#[tokio::test]
async fn lark_oapi_sdk_talks_to_the_sandbox() {
    let h = demo_sandbox().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/lark_oapi_check.py");
    let out = tokio::process::Command::new("python3")
        .args([
            script,
            &h.base_url(),
            "cli_sandbox0000001",
            "sandbox-app-secret",
        ])
        .output()
        .await
        .expect("python3 is needed to run Feishu's Python SDK against the sandbox");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The script exits with 3 when `import lark_oapi` fails: that is a failure, not a skip.
    assert_ne!(
        out.status.code(),
        Some(3),
        "Feishu's SDK is missing: run `pip install lark-oapi` (CI installs it)\n{log}"
    );
    assert!(out.status.success(), "lark_oapi_check.py failed:\n{log}");
    assert_eq!(
        h.count(Endpoint::TenantToken),
        1,
        "the SDK caches its token"
    );
    assert_eq!(
        h.pre_hire(demo::PRE_HIRE_READY).unwrap().stage,
        PreHireStage::Preparing
    );
    // The generated endpoints it called, once each, with the SDK's path parameters.
    for name in [
        "corehr.v2.pre_hires.search",
        "corehr.v2.job_changes.revoke",
        "hire.v1.applications.terminate",
    ] {
        let e = Endpoint::from_name(name).unwrap();
        assert_eq!(h.count(e), 1, "{name}");
    }
    let terminate = Endpoint::from_name("hire.v1.applications.terminate");
    let sent = h.requests().into_iter().find(|r| r.endpoint == terminate);
    assert_eq!(
        sent.map(|r| r.path_params),
        Some(vec![(
            "application_id".to_string(),
            "6960663240925956555".to_string()
        )])
    );
}
