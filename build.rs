//! Compiles the protos with protox (no system `protoc`), generates the tonic
//! code, and writes the descriptor set that server reflection serves.
//!
//! Request messages derive `serde::Serialize` so that a message *is* the JSON
//! body Feishu expects (the field names are Feishu's); fields that travel in
//! the path or the query are skipped here and placed by the endpoint catalog.
//! Response messages derive `serde::Deserialize` from Feishu's `data` object.

use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "feishu/corehr/v2/pre_hire.proto",
    "feishu/corehr/v2/offboarding.proto",
    "feishu/hire/v1/application.proto",
];

/// Messages sent to Feishu as the JSON body.
const REQUESTS: &[&str] = &[
    "feishu.corehr.v2.WithdrawOnboardingRequest",
    "feishu.corehr.v2.RestoreFlowInstanceRequest",
    "feishu.corehr.v2.RevokeRequest",
    "feishu.hire.v1.CancelOnboardRequest",
];

/// Messages read from Feishu's `data` object.
const RESPONSES: &[&str] = &[
    "feishu.corehr.v2.WithdrawOnboardingResponse",
    "feishu.corehr.v2.RestoreFlowInstanceResponse",
    "feishu.corehr.v2.RevokeResponse",
    "feishu.hire.v1.CancelOnboardResponse",
];

/// Request fields that are not part of the JSON body (path or query parameters).
const NOT_IN_BODY: &[&str] = &[
    "feishu.corehr.v2.RevokeRequest.user_id_type",
    "feishu.hire.v1.CancelOnboardRequest.application_id",
];

/// Optional request fields: absent stays absent in the JSON body.
const OPTIONAL: &[&str] = &[
    "feishu.corehr.v2.RestoreFlowInstanceRequest.confirm_workforce",
    "feishu.corehr.v2.RevokeRequest.operator_id",
    "feishu.hire.v1.CancelOnboardRequest.termination_reason_notes",
];

/// Repeated request fields: an empty list is not sent.
const REPEATED: &[&str] = &["feishu.hire.v1.CancelOnboardRequest.termination_reason_id_list"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let files: Vec<String> = PROTOS.iter().map(|p| format!("proto/{p}")).collect();
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    fs::write(
        out_dir.join("feishu_gateway_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;

    let mut build = tonic_prost_build::configure()
        .build_server(true)
        .build_client(true);
    for m in REQUESTS {
        build = build.message_attribute(*m, "#[derive(serde::Serialize)]");
    }
    for m in RESPONSES {
        build = build.message_attribute(*m, "#[derive(serde::Deserialize)] #[serde(default)]");
    }
    for f in NOT_IN_BODY {
        build = build.field_attribute(*f, "#[serde(skip)]");
    }
    for f in OPTIONAL {
        build = build.field_attribute(*f, "#[serde(skip_serializing_if = \"Option::is_none\")]");
    }
    for f in REPEATED {
        build = build.field_attribute(*f, "#[serde(skip_serializing_if = \"Vec::is_empty\")]");
    }
    build.compile_fds(fds)?;
    Ok(())
}
