//! The real gateway against an upstream this project did not write: nginx as a
//! static Feishu, with configs written here. The sandbox shares the gateway's
//! assumptions (it once let HTTP/2-only calls pass against an HTTP/1.1 world);
//! nginx's access log says what really went over the wire.

mod common;

use std::time::Duration;

use common::nginx::{self, Logged, Nginx};
use feishu_gateway::{
    app::{self, Running},
    config::{AppCredentials, Settings, DEFAULT_APP},
    pb::feishu::{
        corehr::v2::{
            offboarding_service_client::OffboardingServiceClient,
            pre_hire_service_client::PreHireServiceClient, RestoreFlowInstanceRequest,
            RevokeRequest, UserIdType, WithdrawOnboardingRequest,
        },
        hire::v1::{
            application_service_client::ApplicationServiceClient, CancelOnboardRequest,
            TerminationType,
        },
    },
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use tonic::{transport::Channel, Code, Request, Status};
use tonic_types::{ErrorInfo, StatusExt};

const TOKEN: &str = "/open-apis/auth/v3/tenant_access_token/internal";
const WITHDRAW: &str = "/open-apis/corehr/v2/pre_hires/withdraw_onboarding";
const RESTORE: &str = "/open-apis/corehr/v2/pre_hires/restore_flow_instance";
const REVOKE: &str = "/open-apis/corehr/v2/offboardings/revoke";
const CANCEL: &str = "~ ^/open-apis/hire/v1/applications/[0-9]+/cancel_onboard$";
/// Example IDs of the seed documents.
const PRE_HIRE: &str = "7345005664477775407";
const OFFBOARDING: &str = "7095671727698478604";
const OPERATOR: &str = "6982509313466189341";
const APPLICATION: &str = "1111111111";
/// The seed documents' success bodies.
const SUCCESS_TRUE: &str = r#"{"code":0,"msg":"success","data":{"success":true}}"#;
const SUCCESS_EMPTY: &str = r#"{"code":0,"msg":"success","data":{}}"#;

/// nginx's `return` argument for a JSON answer.
fn json(status: u16, body: &str) -> String {
    format!("{status} '{body}'")
}

/// A location answering `ret` (see [`json`], or a bare status for nginx's own
/// page) with Feishu's log-id header and `headers`. Log ids are of Feishu's
/// alphabet, `[A-Za-z0-9]`: the gateway drops anything else.
fn location(matcher: &str, log_id: &str, headers: &[(&str, &str)], ret: &str) -> String {
    block(matcher, log_id, headers, "", ret)
}

/// A business endpoint of Feishu: it answers only the token nginx issued
/// (anything else gets Feishu's 99991663, so a wrong bearer fails the test).
fn business(matcher: &str, log_id: &str, headers: &[(&str, &str)], ret: &str) -> String {
    let guard = r#"if ($http_authorization != "Bearer t-nginx") { return 400 '{"code":99991663,"msg":"Invalid access token for authorization"}'; }"#;
    block(matcher, log_id, headers, guard, ret)
}

fn block(matcher: &str, log_id: &str, headers: &[(&str, &str)], guard: &str, ret: &str) -> String {
    let headers: String = headers
        .iter()
        .map(|(k, v)| format!("add_header {k} {v} always;\n"))
        .collect();
    format!(
        "location {matcher} {{\ndefault_type application/json;\nadd_header X-Tt-Logid {log_id} always;\n{headers}{guard}\nreturn {ret};\n}}\n"
    )
}

/// The token endpoint as Feishu answers a good secret.
fn token_ok() -> String {
    location(
        &format!("= {TOKEN}"),
        "nginx-token",
        &[],
        &json(
            200,
            r#"{"code":0,"msg":"ok","tenant_access_token":"t-nginx","expire":7200}"#,
        ),
    )
}

/// The four business endpoints answering their seed documents' success bodies.
fn seed_successes() -> String {
    [
        business(
            &format!("= {WITHDRAW}"),
            "logwithdraw",
            &[],
            &json(200, SUCCESS_TRUE),
        ),
        business(
            &format!("= {RESTORE}"),
            "logrestore",
            &[],
            &json(200, SUCCESS_TRUE),
        ),
        business(
            &format!("= {REVOKE}"),
            "logrevoke",
            &[],
            &json(200, SUCCESS_EMPTY),
        ),
        business(CANCEL, "logcancel", &[], &json(200, SUCCESS_EMPTY)),
    ]
    .concat()
}

/// One plain-HTTP nginx serving `locations`.
fn plain(locations: &[String]) -> Nginx {
    nginx::Config::new().server("", &locations.concat()).start()
}

/// The real gateway, in process, pointed at `base_url`.
async fn gateway(base_url: String, tweak: impl FnOnce(&mut Settings)) -> (Running, Channel) {
    let mut settings = Settings::default();
    settings.gateway.listen = common::LOOPBACK;
    settings.gateway.admin_listen = common::LOOPBACK;
    settings.feishu.base_url = base_url;
    tweak(&mut settings);
    let credentials = AppCredentials::self_built("cli_nginx", "nginx-secret");
    let running = app::start(&settings, vec![(DEFAULT_APP.to_owned(), credentials)])
        .await
        .expect("gateway starts");
    let channel = Channel::from_shared(format!("http://{}", running.grpc_addr))
        .unwrap()
        .connect()
        .await
        .expect("connect to the gateway");
    (running, channel)
}

fn timed<T>(msg: T, timeout: Duration) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(timeout);
    r
}

fn withdraw_message() -> WithdrawOnboardingRequest {
    WithdrawOnboardingRequest {
        pre_hire_id: PRE_HIRE.into(),
        withdraw_reason: "withdraw reason".into(),
    }
}

fn withdraw() -> Request<WithdrawOnboardingRequest> {
    timed(withdraw_message(), Duration::from_secs(5))
}

fn error_info(s: &Status) -> ErrorInfo {
    s.get_error_details()
        .error_info()
        .cloned()
        .unwrap_or_else(|| panic!("ErrorInfo in {s:?}"))
}

fn log_id<T>(r: &tonic::Response<T>) -> &str {
    r.metadata()
        .get("x-tt-logid")
        .expect("x-tt-logid in the response metadata")
        .to_str()
        .unwrap()
}

fn business_requests(n: &Nginx) -> Vec<Logged> {
    n.requests()
        .into_iter()
        .filter(|r| r.uri != TOKEN)
        .collect()
}

#[tokio::test]
async fn the_four_rpcs_succeed_over_one_kept_alive_http1_connection() {
    let n = plain(&[token_ok(), seed_successes()]);
    let (_gw, channel) = gateway(n.http_origin(), |_| {}).await;
    let mut pre_hire = PreHireServiceClient::new(channel.clone());

    let r = pre_hire
        .withdraw_onboarding(withdraw())
        .await
        .expect("withdraw");
    assert_eq!(log_id(&r), "logwithdraw");
    assert!(r.into_inner().success);
    let r = pre_hire
        .restore_flow_instance(timed(
            RestoreFlowInstanceRequest {
                pre_hire_id: PRE_HIRE.into(),
                confirm_workforce: Some(false),
            },
            Duration::from_secs(5),
        ))
        .await
        .expect("restore");
    assert_eq!(log_id(&r), "logrestore");
    assert!(r.into_inner().success);
    let r = OffboardingServiceClient::new(channel.clone())
        .revoke(timed(
            RevokeRequest {
                offboarding_id: OFFBOARDING.into(),
                operator_id: Some(OPERATOR.into()),
                user_id_type: UserIdType::PeopleCoreHrId as i32,
            },
            Duration::from_secs(5),
        ))
        .await
        .expect("revoke");
    assert_eq!(log_id(&r), "logrevoke");
    let r = ApplicationServiceClient::new(channel.clone())
        .cancel_onboard(timed(
            CancelOnboardRequest {
                application_id: APPLICATION.into(),
                termination_type: TerminationType::WeRejected as i32,
                termination_reason_id_list: vec!["6959090661225640000".into()],
                termination_reason_notes: Some("候选人经历不匹配".into()),
            },
            Duration::from_secs(5),
        ))
        .await
        .expect("cancel onboard");
    assert_eq!(log_id(&r), "logcancel");
    pre_hire
        .withdraw_onboarding(withdraw())
        .await
        .expect("again");

    let all = n.requests();
    let tokens: Vec<&Logged> = all.iter().filter(|r| r.uri == TOKEN).collect();
    assert_eq!(tokens.len(), 1, "one token for every call: {all:#?}");
    assert_eq!(
        tokens[0].authorization, "none",
        "the token request carries no bearer"
    );
    let sent = business_requests(&n);
    let uris: Vec<&str> = sent.iter().map(|r| r.uri.as_str()).collect();
    assert_eq!(
        uris,
        [
            WITHDRAW,
            RESTORE,
            "/open-apis/corehr/v2/offboardings/revoke?user_id_type=people_corehr_id",
            "/open-apis/hire/v1/applications/1111111111/cancel_onboard",
            WITHDRAW,
        ]
    );
    for r in &all {
        assert_eq!(
            (r.method.as_str(), r.protocol.as_str(), r.status),
            ("POST", "HTTP/1.1", 200),
            "{r:?}"
        );
    }
    assert!(
        sent.iter().all(|r| r.authorization == "bearer"),
        "{sent:#?}"
    );
    assert!(
        sent.iter().all(|r| r.connection == sent[0].connection),
        "sequential calls reuse one connection: {sent:#?}"
    );
    assert!(sent
        .windows(2)
        .all(|w| w[1].connection_requests > w[0].connection_requests));
}

#[tokio::test]
async fn a_token_error_fails_the_call_and_no_business_request_is_sent() {
    let n = plain(&[
        location(
            &format!("= {TOKEN}"),
            "logtoken10014",
            &[],
            &json(200, r#"{"code":10014,"msg":"app secret invalid"}"#),
        ),
        seed_successes(),
    ]);
    let (_gw, channel) = gateway(n.http_origin(), |_| {}).await;
    let status = PreHireServiceClient::new(channel)
        .withdraw_onboarding(withdraw())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    let info = error_info(&status);
    assert_eq!(info.reason, "APP_SECRET_INVALID");
    assert_eq!(info.domain, "open.feishu.cn");
    assert_eq!(info.metadata["feishuCode"], "10014");
    assert_eq!(info.metadata["httpStatus"], "200");
    assert_eq!(
        info.metadata["endpoint"],
        "auth.v3.tenant_access_token.internal"
    );
    assert_eq!(info.metadata["logId"], "logtoken10014");
    assert!(!n.requests_to(TOKEN).is_empty());
    assert_eq!(
        business_requests(&n),
        [],
        "nothing may be sent without a token"
    );
}

#[tokio::test]
async fn a_token_endpoint_outage_says_nothing_was_sent() {
    let n = plain(&[
        location(&format!("= {TOKEN}"), "logtoken502", &[], "502"),
        seed_successes(),
    ]);
    let (_gw, channel) = gateway(n.http_origin(), |_| {}).await;
    let status = PreHireServiceClient::new(channel)
        .withdraw_onboarding(withdraw())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = error_info(&status);
    assert_eq!(
        info.metadata["endpoint"],
        "auth.v3.tenant_access_token.internal"
    );
    assert_eq!(
        business_requests(&n),
        [],
        "nothing may be sent without a token"
    );
    assert_eq!(
        info.metadata["mayHaveRun"], "false",
        "the write never left the gateway: {status:?}"
    );
}

#[tokio::test]
async fn a_business_error_keeps_every_detail_feishu_sent() {
    let troubleshooter = "排查建议查看(Troubleshooting suggestions): https://open.feishu.cn/search?from=openapi&log_id=log1161129&code=1161129&method_id=7345";
    let body = format!(
        r#"{{"code":1161129,"msg":"Unable to submit this task as pre-hire is in the 「已入职」 stage.","error":{{"log_id":"log1161129","troubleshooter":"{troubleshooter}","field_violations":[{{"field":"pre_hire_id","description":"pre-hire already onboarded"}}]}}}}"#
    );
    let n = plain(&[
        token_ok(),
        business(
            &format!("= {WITHDRAW}"),
            "log1161129",
            &[],
            &json(400, &body),
        ),
    ]);
    let (_gw, channel) = gateway(n.http_origin(), |_| {}).await;
    let status = PreHireServiceClient::new(channel)
        .withdraw_onboarding(withdraw())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let d = status.get_error_details();
    let info = d.error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "PRE_HIRE_STAGE_NOT_ALLOWED");
    assert_eq!(info.domain, "open.feishu.cn");
    assert_eq!(info.metadata["feishuCode"], "1161129");
    assert_eq!(info.metadata["httpStatus"], "400");
    assert_eq!(info.metadata["logId"], "log1161129");
    assert!(info.metadata["feishuMsg"].contains("「已入职」"));
    assert_eq!(
        status
            .metadata()
            .get("x-tt-logid")
            .and_then(|v| v.to_str().ok()),
        Some("log1161129")
    );
    assert_eq!(
        d.help().expect("Help").links[0].url,
        "https://open.feishu.cn/search?from=openapi&log_id=log1161129&code=1161129&method_id=7345"
    );
    assert_eq!(
        d.request_info().expect("RequestInfo").request_id,
        "log1161129"
    );
    let p = &d
        .precondition_failure()
        .expect("PreconditionFailure")
        .violations[0];
    assert_eq!(
        (p.r#type.as_str(), p.subject.as_str()),
        ("PRE_HIRE_STAGE", "pre_hires/7345005664477775407")
    );
    let bad = &d.bad_request().expect("BadRequest").field_violations[0];
    assert_eq!(
        (bad.field.as_str(), bad.description.as_str()),
        ("pre_hire_id", "pre-hire already onboarded")
    );
    assert_eq!(n.requests_to(WITHDRAW).len(), 1);
}

#[tokio::test]
async fn a_429_gives_feishus_reset_and_is_not_retried_within_a_short_deadline() {
    let n = plain(&[
        token_ok(),
        business(
            CANCEL,
            "log429",
            &[
                ("x-ogw-ratelimit-limit", "10"),
                ("x-ogw-ratelimit-reset", "7"),
            ],
            &json(
                429,
                r#"{"code":99991400,"msg":"request trigger frequency limit"}"#,
            ),
        ),
    ]);
    let (_gw, channel) = gateway(n.http_origin(), |_| {}).await;
    let started = std::time::Instant::now();
    let status = ApplicationServiceClient::new(channel)
        .cancel_onboard(timed(
            CancelOnboardRequest {
                application_id: APPLICATION.into(),
                termination_type: TerminationType::WeRejected as i32,
                termination_reason_id_list: vec![],
                termination_reason_notes: None,
            },
            Duration::from_millis(800),
        ))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let d = status.get_error_details();
    assert_eq!(d.error_info().unwrap().reason, "RATE_LIMITED");
    assert_eq!(d.error_info().unwrap().metadata["feishuCode"], "99991400");
    assert_eq!(
        d.retry_info().unwrap().retry_delay,
        Some(Duration::from_secs(7))
    );
    let v = &d.quota_failure().expect("QuotaFailure").violations[0];
    assert_eq!(
        (v.subject.as_str(), v.quota_value),
        ("hire.v1.applications.cancel_onboard", 10)
    );
    let sent = n.requests_to("/open-apis/hire/");
    assert_eq!(
        sent.len(),
        1,
        "a 7 s wait does not fit an 800 ms deadline: {sent:#?}"
    );
    assert_eq!(sent[0].status, 429);
}

#[tokio::test]
async fn a_502_page_on_a_write_is_unavailable_and_sent_once() {
    // nginx's own "502 Bad Gateway" HTML page, as a proxy in front of Feishu sends it.
    let n = plain(&[
        token_ok(),
        business(&format!("= {WITHDRAW}"), "log502", &[], "502"),
    ]);
    let (_gw, channel) = gateway(n.http_origin(), |_| {}).await;
    // No deadline: only the gateway's rule can stop a repeat.
    let status = PreHireServiceClient::new(channel)
        .withdraw_onboarding(withdraw_message())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = error_info(&status);
    assert_eq!(info.reason, "UPSTREAM_UNAVAILABLE");
    assert_eq!(info.metadata["mayHaveRun"], "true");
    assert_eq!(info.metadata["httpStatus"], "502");
    assert_eq!(info.metadata["logId"], "log502");
    let sent = n.requests_to(WITHDRAW);
    assert_eq!(
        sent.len(),
        1,
        "a write that may have run is never repeated: {sent:#?}"
    );
    assert_eq!(sent[0].status, 502);
}

/// A CA made here, and a certificate it signed for `localhost` and `127.0.0.1`.
fn pki(dir: &std::path::Path) -> std::path::PathBuf {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    server
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let server = server.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("server.crt"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
    dir.join("ca.crt")
}

/// Two TLS servers: the first offers only `http/1.1` by ALPN, the second `h2` too.
fn tls_pair() -> (Nginx, std::path::PathBuf) {
    let config = nginx::Config::new();
    let ca = pki(config.dir());
    let d = config.dir().display().to_string();
    let site = [token_ok(), seed_successes()].concat();
    let n = config
        .http(&format!(
            "ssl_certificate {d}/server.crt;\nssl_certificate_key {d}/server.key;"
        ))
        .server("ssl", &site)
        .server("ssl http2", &site)
        .start();
    (n, ca)
}

#[tokio::test]
async fn over_tls_with_the_configured_ca_the_gateway_speaks_what_nginx_offers() {
    let (n, ca) = tls_pair();
    let (http1, h2) = (n.ports()[0], n.ports()[1]);
    for (origin, port, protocol) in [
        (format!("https://127.0.0.1:{http1}"), http1, "HTTP/1.1"),
        (format!("https://localhost:{h2}"), h2, "HTTP/2.0"),
    ] {
        let ca = ca.clone();
        let (_gw, channel) = gateway(origin.clone(), |s| s.feishu.ca_file = Some(ca)).await;
        let r = PreHireServiceClient::new(channel)
            .withdraw_onboarding(withdraw())
            .await
            .unwrap_or_else(|s| panic!("{origin}: {s:?}"));
        assert!(r.into_inner().success);
        let seen: Vec<Logged> = n
            .requests()
            .into_iter()
            .filter(|r| r.port == port)
            .collect();
        let uris: Vec<&str> = seen.iter().map(|r| r.uri.as_str()).collect();
        assert_eq!(uris, [TOKEN, WITHDRAW], "{origin}");
        assert!(
            seen.iter().all(|r| r.protocol == protocol),
            "{origin}: {seen:#?}"
        );
    }
}

#[tokio::test]
async fn over_tls_without_the_ca_nothing_is_sent() {
    let (n, _ca) = tls_pair();
    let (_gw, channel) = gateway(format!("https://127.0.0.1:{}", n.port()), |_| {}).await;
    let status = PreHireServiceClient::new(channel)
        .withdraw_onboarding(withdraw())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        error_info(&status).metadata["mayHaveRun"],
        "false",
        "{status:?}"
    );
    assert_eq!(
        n.requests(),
        [],
        "the handshake failed: no request reached nginx"
    );
}

#[tokio::test]
async fn h2c_with_prior_knowledge_reaches_an_http2_only_nginx() {
    let n = nginx::Config::new()
        .server("http2", &[token_ok(), seed_successes()].concat())
        .start();
    let (_gw, channel) = gateway(n.http_origin(), |s| s.feishu.http2_prior_knowledge = true).await;
    let mut client = PreHireServiceClient::new(channel);
    for _ in 0..2 {
        let r = client
            .withdraw_onboarding(withdraw())
            .await
            .expect("withdraw over h2c");
        assert!(r.into_inner().success);
    }
    let seen = n.requests();
    assert_eq!(seen.len(), 3, "{seen:#?}");
    assert!(seen.iter().all(|r| r.protocol == "HTTP/2.0"), "{seen:#?}");
    let sent = business_requests(&n);
    assert_eq!(
        sent[0].connection, sent[1].connection,
        "one HTTP/2 connection: {sent:#?}"
    );
}

/// grpcurl (a dynamic client, through reflection) against the gateway.
async fn grpcurl(addr: std::net::SocketAddr, data: &str, method: &str) -> (bool, String) {
    let out = tokio::process::Command::new("grpcurl")
        .args(["-plaintext", "-d", data, &addr.to_string(), method])
        .output()
        .await
        .expect("grpcurl is needed (.ci/run installs it)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Generated routes as nginx sees them: a GET with its path parameter,
/// query (a list repeated) and no body, a PATCH; Feishu's answer read
/// leniently (a number where a string is declared, a string where a number
/// is, an unknown field).
#[tokio::test]
async fn generated_routes_send_their_method_path_and_query_as_feishu_documents_them() {
    let get = r#"if ($request_method != GET) { return 405; }
if ($http_content_type) { return 415; }
if ($http_authorization != "Bearer t-nginx") { return 400 '{"code":99991663,"msg":"Invalid access token for authorization"}'; }"#;
    let patch = r#"if ($request_method != PATCH) { return 405; }
if ($http_authorization != "Bearer t-nginx") { return 400 '{"code":99991663,"msg":"Invalid access token for authorization"}'; }"#;
    let n = plain(&[
        token_ok(),
        block(
            "~ ^/open-apis/hire/v1/applications/[0-9]+$",
            "logget",
            &[],
            get,
            &json(
                200,
                r#"{"code":0,"msg":"success","data":{"application":{"id":"1111111111","talent_id":7,"active_status":"1","new_field":{"x":1}}}}"#,
            ),
        ),
        block(
            "~ ^/open-apis/corehr/v2/persons/[0-9]+$",
            "logpatch",
            &[],
            patch,
            &json(200, r#"{"code":0,"msg":"success","data":{}}"#),
        ),
    ]);
    let (gw, _channel) = gateway(n.http_origin(), |_| {}).await;

    let (ok, out) = grpcurl(
        gw.grpc_addr,
        r#"{"application_id":"1111111111","user_id_type":"open_id","options":["get_onboard","get_offer"]}"#,
        "feishu.hire.v1.ApplicationService/Get",
    )
    .await;
    assert!(ok, "{out}");
    assert!(out.contains(r#""talent_id": "7""#), "{out}");
    assert!(out.contains(r#""active_status": "1""#), "{out}");
    let (ok, out) = grpcurl(
        gw.grpc_addr,
        r#"{"person_id":"7001","person_id_body":"7001","phone_number":"13800000000"}"#,
        "feishu.corehr.v2.PersonService/Patch",
    )
    .await;
    assert!(ok, "{out}");

    let sent: Vec<(String, String, u16)> = business_requests(&n)
        .into_iter()
        .map(|r| (r.method, r.uri, r.status))
        .collect();
    assert_eq!(
        sent,
        [
            (
                "GET".to_owned(),
                "/open-apis/hire/v1/applications/1111111111?user_id_type=open_id&options=get_onboard&options=get_offer".to_owned(),
                200
            ),
            (
                "PATCH".to_owned(),
                "/open-apis/corehr/v2/persons/7001".to_owned(),
                200
            ),
        ]
    );
}
