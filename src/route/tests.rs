//! The seed routes as their protos describe them: bodies in Feishu's names
//! and types, the query and path, every bad field at once, the audit view.

use prost_reflect::{DynamicMessage, Value};

use super::*;

fn route(method: &str) -> &'static Route {
    catalog()
        .by_path(&format!("/{method}"))
        .unwrap_or_else(|| panic!("no route for {method}"))
}

fn message(route: &Route, fields: &[(&str, Value)]) -> DynamicMessage {
    let mut m = DynamicMessage::new(route.input.clone());
    for (name, value) in fields {
        m.set_field_by_name(name, value.clone());
    }
    m
}

fn s(v: &str) -> Value {
    Value::String(v.into())
}

fn body(r: &Rendered) -> serde_json::Value {
    serde_json::from_slice(r.body.as_deref().unwrap_or(b"null")).unwrap()
}

fn violations(route: &Route, m: &DynamicMessage) -> Vec<String> {
    let mut v = Vec::new();
    route.validate(m, &mut v);
    v.into_iter().map(|v| v.field).collect()
}

const WITHDRAW: &str = "feishu.corehr.v2.PreHireService/WithdrawOnboarding";
const RESTORE: &str = "feishu.corehr.v2.PreHireService/RestoreFlowInstance";
const REVOKE: &str = "feishu.corehr.v2.OffboardingService/Revoke";
const CANCEL: &str = "feishu.hire.v1.ApplicationService/CancelOnboard";

#[test]
fn every_route_loads_and_the_seed_rows_are_the_documented_ones() {
    let c = catalog();
    let rows: Vec<_> = [WITHDRAW, RESTORE, REVOKE, CANCEL]
        .iter()
        .map(|m| route(m).endpoint)
        .collect();
    assert_eq!(rows[0].name, "corehr.v2.pre_hires.withdraw_onboarding");
    assert_eq!(rows[0].limits, &[Window::per_minute(100)]);
    assert_eq!(rows[1].limits, &[Window::per_minute(100)]);
    assert!(rows[2].limits.is_empty());
    assert_eq!(rows[2].already_applied, &[1160202]);
    assert_eq!(rows[3].limits, &[Window::per_second(10)]);
    assert_eq!(
        rows[3].path,
        "/open-apis/hire/v1/applications/:application_id/cancel_onboard"
    );
    assert_eq!(rows[3].already_applied, &[1002221]);
    assert!(rows.iter().all(|r| r.write && r.method == "POST"));
    for r in c.routes() {
        assert_eq!(
            c.by_name(r.endpoint.name).map(|x| x.grpc_method),
            Some(r.grpc_method)
        );
    }
    assert!(c.by_name("nope").is_none());
}

#[test]
fn bodies_use_feishu_names_and_types_and_omit_unset_fields() {
    let r = route(WITHDRAW);
    let m = message(
        r,
        &[
            ("pre_hire_id", s("7345005664477775407")),
            ("withdraw_reason", s("r")),
        ],
    );
    let out = r.render(&m).unwrap();
    assert_eq!(
        out.path_and_query,
        "/open-apis/corehr/v2/pre_hires/withdraw_onboarding"
    );
    assert_eq!(
        body(&out),
        serde_json::json!({"pre_hire_id":"7345005664477775407","withdraw_reason":"r"})
    );

    let r = route(RESTORE);
    let m = message(r, &[("pre_hire_id", s("1"))]);
    assert_eq!(
        body(&r.render(&m).unwrap()),
        serde_json::json!({"pre_hire_id":"1"})
    );
    let m = message(
        r,
        &[
            ("pre_hire_id", s("1")),
            ("confirm_workforce", Value::Bool(false)),
        ],
    );
    assert_eq!(
        body(&r.render(&m).unwrap()),
        serde_json::json!({"pre_hire_id":"1","confirm_workforce":false})
    );

    let r = route(REVOKE);
    let m = message(
        r,
        &[
            ("offboarding_id", s("7")),
            ("user_id_type", Value::EnumNumber(4)),
        ],
    );
    let out = r.render(&m).unwrap();
    assert_eq!(body(&out), serde_json::json!({"offboarding_id":"7"}));
    assert_eq!(
        out.path_and_query,
        "/open-apis/corehr/v2/offboardings/revoke?user_id_type=people_corehr_id"
    );
    let m = message(r, &[("offboarding_id", s("7"))]);
    assert_eq!(
        r.render(&m).unwrap().path_and_query,
        "/open-apis/corehr/v2/offboardings/revoke"
    );

    let r = route(CANCEL);
    let m = message(
        r,
        &[
            ("application_id", s("1111111111")),
            ("termination_type", Value::EnumNumber(22)),
            (
                "termination_reason_id_list",
                Value::List(vec![s("6959090661225640000")]),
            ),
            ("termination_reason_notes", s("候选人经历不匹配")),
        ],
    );
    let out = r.render(&m).unwrap();
    assert_eq!(
        body(&out),
        serde_json::json!({"termination_type":22,"termination_reason_id_list":["6959090661225640000"],"termination_reason_notes":"候选人经历不匹配"})
    );
    assert_eq!(
        out.path_and_query,
        "/open-apis/hire/v1/applications/1111111111/cancel_onboard"
    );
    assert_eq!(r.subject(&m), "applications/1111111111");
}

#[test]
fn every_bad_field_is_named_at_once() {
    let r = route(CANCEL);
    let m = message(
        r,
        &[
            ("application_id", s("../x")),
            ("termination_type", Value::EnumNumber(5)),
            (
                "termination_reason_id_list",
                Value::List(vec![s("ok"), s("a b")]),
            ),
            ("termination_reason_notes", s(&"x".repeat(1001))),
        ],
    );
    assert_eq!(
        violations(r, &m),
        [
            "application_id",
            "termination_reason_id_list[1]",
            "termination_reason_notes",
            "termination_type"
        ]
    );
    let m = message(r, &[("application_id", s("1"))]);
    let mut v = Vec::new();
    r.validate(&m, &mut v);
    assert_eq!(v.len(), 1);
    assert_eq!(
        v[0].description,
        "required: one of WE_REJECTED (1), CANDIDATE_REJECTED (22), OTHER (27)"
    );
    let m = message(
        r,
        &[
            ("application_id", s("1")),
            ("termination_type", Value::EnumNumber(5)),
        ],
    );
    let mut v = Vec::new();
    r.validate(&m, &mut v);
    assert_eq!(v[0].description, "unknown value 5: must be 1, 22 or 27");

    let r = route(WITHDRAW);
    let m = message(r, &[("withdraw_reason", s(&"撤".repeat(501)))]);
    assert_eq!(violations(r, &m), ["pre_hire_id", "withdraw_reason"]);
    let m = message(
        r,
        &[
            ("pre_hire_id", s("1")),
            ("withdraw_reason", s(&"撤".repeat(500))),
        ],
    );
    assert!(violations(r, &m).is_empty());

    let r = route(REVOKE);
    let m = message(
        r,
        &[
            ("offboarding_id", s("7")),
            ("operator_id", s("")),
            ("user_id_type", Value::EnumNumber(9)),
        ],
    );
    assert_eq!(violations(r, &m), ["operator_id", "user_id_type"]);
}

#[test]
fn the_audit_keeps_ids_and_the_length_of_free_text() {
    let r = route(CANCEL);
    let m = message(
        r,
        &[
            ("application_id", s("1")),
            ("termination_type", Value::EnumNumber(22)),
            (
                "termination_reason_id_list",
                Value::List(vec![s("a"), s("b")]),
            ),
            ("termination_reason_notes", s("候选人")),
        ],
    );
    let facts = r.audit(&m);
    assert_eq!(
        facts.related,
        [
            "termination_type:22",
            "termination_reason:a",
            "termination_reason:b"
        ]
    );
    assert_eq!(facts.text_chars, Some(3));
    let r = route(REVOKE);
    let m = message(r, &[("offboarding_id", s("7")), ("operator_id", s("6982"))]);
    let facts = r.audit(&m);
    assert_eq!(facts.related, ["operator:6982"]);
    assert_eq!(facts.text_chars, None);
    let r = route(RESTORE);
    let m = message(
        r,
        &[
            ("pre_hire_id", s("1")),
            ("confirm_workforce", Value::Bool(true)),
        ],
    );
    assert_eq!(r.audit(&m).related, ["confirm_workforce:true"]);
    let r = route(WITHDRAW);
    let m = message(
        r,
        &[("pre_hire_id", s("1")), ("withdraw_reason", s("why not"))],
    );
    let facts = r.audit(&m);
    assert!(facts.related.is_empty());
    assert_eq!(facts.text_chars, Some(7));
}

#[test]
fn answers_are_read_leniently() {
    let r = route(WITHDRAW);
    let data = serde_json::json!({"success": true, "unknown": {"x": 1}});
    let m = json::message_from_json(&r.output, &data);
    assert_eq!(
        m.get_field_by_name("success").and_then(|v| v.as_bool()),
        Some(true)
    );
    // A string where a bool is declared, as Feishu sometimes sends, still reads.
    let m = json::message_from_json(&r.output, &serde_json::json!({"success": "true"}));
    assert_eq!(
        m.get_field_by_name("success").and_then(|v| v.as_bool()),
        Some(true)
    );
    let m = json::message_from_json(&r.output, &serde_json::json!({"success": [1]}));
    assert_eq!(
        m.get_field_by_name("success").and_then(|v| v.as_bool()),
        Some(false)
    );
}

#[test]
fn a_generated_write_places_path_query_and_body_and_keeps_feishus_names() {
    let r = route("feishu.corehr.v2.PersonService/Patch");
    assert_eq!((r.endpoint.method, r.endpoint.write), ("PATCH", true));
    let m = message(
        r,
        &[
            ("person_id", s("7001")),
            ("person_id_body", s("7001")),
            ("no_need_query", Value::Bool(true)),
            ("phone_number", s("13800000000")),
        ],
    );
    let mut v = Vec::new();
    r.validate(&m, &mut v);
    assert!(v.is_empty(), "{v:?}");
    let out = r.render(&m).unwrap();
    assert_eq!(
        out.path_and_query,
        "/open-apis/corehr/v2/persons/7001?no_need_query=true"
    );
    // The body field named person_id_body in the proto is Feishu's person_id.
    assert_eq!(
        body(&out),
        serde_json::json!({"person_id":"7001","phone_number":"13800000000"})
    );
    // A path parameter is a Feishu ID, whatever the proto says of it.
    let m = message(r, &[("person_id", s("../x"))]);
    assert_eq!(violations(r, &m), ["person_id"]);
    let m = message(r, &[]);
    assert_eq!(violations(r, &m), ["person_id"]);
}

#[test]
fn a_generated_get_has_no_body() {
    let r = route("feishu.hire.v1.ApplicationService/Get");
    assert_eq!(r.endpoint.method, "GET");
    assert!(!r.endpoint.write);
    let m = message(r, &[("application_id", s("1111"))]);
    let out = r.render(&m).unwrap();
    assert!(out.body.is_none());
    assert!(
        out.path_and_query
            .starts_with("/open-apis/hire/v1/applications/1111"),
        "{}",
        out.path_and_query
    );
}

#[test]
fn a_generated_request_audits_ids_and_flags_and_only_the_length_of_the_rest() {
    let r = route("feishu.corehr.v2.PersonService/Patch");
    let m = message(
        r,
        &[
            ("person_id", s("7001")),
            ("no_need_query", Value::Bool(true)),
            ("phone_number", s("13800000000")),
        ],
    );
    let facts = r.audit(&m);
    assert_eq!(facts.related, ["no_need_query:true"]);
    assert_eq!(facts.text_chars, Some(11), "the phone number by its length");
    assert_eq!(r.subject(&m), "persons/7001");
}
