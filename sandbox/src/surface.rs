//! The generated surface: every corehr v2 and hire v1 endpoint of the official SDK, read
//! from `routes.json` (written by `tools/gen_routes.py`, not by hand), so that the sandbox
//! answers each one as Feishu does without a line of code per endpoint. The four seed
//! endpoints are left out here: they keep their state machines in `records`.
//!
//! A generated endpoint has no records: a well-formed call answers the route's
//! zero-valued `data` (what the SDK's response type parses as empty). What is checked is
//! what Feishu checks before any business logic: the token kind and the JSON types of the
//! query and body fields the SDK declares.

use std::collections::HashMap;
use std::sync::OnceLock;

use percent_encoding::percent_decode_str;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::config::Endpoint;
use super::params::decode;
use super::wire::FieldViolation;

/// The generator's output, embedded so that a sandbox binary serves it from anywhere.
const ROUTES_JSON: &str = include_str!("../routes.json");

#[derive(Deserialize)]
struct RawFile {
    routes: Vec<RawRoute>,
}

#[derive(Deserialize)]
struct RawRoute {
    name: String,
    http_method: String,
    path: String,
    tokens: Vec<String>,
    #[serde(default)]
    query: Vec<RawField>,
    #[serde(default)]
    body: Vec<RawField>,
    #[serde(default)]
    data: Value,
}

#[derive(Deserialize)]
struct RawField {
    name: String,
    #[serde(rename = "type")]
    ty: String,
}

/// The JSON type the SDK gives a field (`routes.json`'s `type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FieldType {
    String,
    Int,
    Float,
    Bool,
    List,
    Object,
    /// A type the generator may add later: not checked rather than refused.
    Any,
}

impl FieldType {
    fn parse(s: &str) -> FieldType {
        match s {
            "string" => FieldType::String,
            "int" => FieldType::Int,
            "float" => FieldType::Float,
            "bool" => FieldType::Bool,
            "list" => FieldType::List,
            "object" => FieldType::Object,
            _ => FieldType::Any,
        }
    }

    /// What Feishu's field_violations say is expected.
    fn expected(self) -> &'static str {
        match self {
            FieldType::String => "a string",
            FieldType::Int => "an integer",
            FieldType::Float => "a number",
            FieldType::Bool => "a boolean",
            FieldType::List => "an array",
            FieldType::Object => "an object",
            FieldType::Any => "any value",
        }
    }

    /// Whether a body value has this type (null stands for an absent field, as in Go).
    fn admits_json(self, v: &Value) -> bool {
        match (self, v) {
            (_, Value::Null) | (FieldType::Any, _) => true,
            (FieldType::String, Value::String(_)) => true,
            (FieldType::Int, Value::Number(n)) => n.is_i64() || n.is_u64(),
            (FieldType::Float, Value::Number(_)) => true,
            (FieldType::Bool, Value::Bool(_)) => true,
            (FieldType::List, Value::Array(_)) => true,
            (FieldType::Object, Value::Object(_)) => true,
            _ => false,
        }
    }

    /// Whether a (decoded) query value parses as this type; a repeated list parameter
    /// is one value per occurrence, whatever its items are.
    fn admits_text(self, s: &str) -> bool {
        match self {
            FieldType::Int => s.parse::<i64>().is_ok() || s.parse::<u64>().is_ok(),
            FieldType::Float => s.parse::<f64>().is_ok_and(f64::is_finite),
            FieldType::Bool => s == "true" || s == "false",
            FieldType::String | FieldType::List | FieldType::Object | FieldType::Any => true,
        }
    }
}

/// A query or body field of a route.
#[derive(Debug)]
pub(crate) struct Field {
    pub name: String,
    pub ty: FieldType,
}

/// A segment of a route's path: literal text, or a `:param` that takes one raw segment.
#[derive(Debug)]
enum Segment {
    Literal(String),
    Param(String),
}

/// One generated endpoint.
#[derive(Debug)]
pub(crate) struct GeneratedRoute {
    /// The SDK's name, e.g. `corehr.v2.pre_hires.search`: the endpoint's name everywhere.
    pub name: String,
    pub http_method: String,
    segments: Vec<Segment>,
    /// Whether a tenant_access_token may call it (the others take a user token only).
    pub tenant: bool,
    pub query: Vec<Field>,
    pub body: Vec<Field>,
    pub data: Value,
    /// A stable made-up `method_id` for troubleshooter links (as the seeds have).
    pub method_id: String,
}

impl GeneratedRoute {
    /// The decoded path parameters if the raw path is this route's; `None` otherwise.
    /// A `:param` takes exactly one non-empty raw segment, decoded only after matching,
    /// so that `a%2Fb` is the one value "a/b" and never two segments.
    fn matches(&self, raw_segments: &[&str]) -> Option<Vec<(String, String)>> {
        if raw_segments.len() != self.segments.len() {
            return None;
        }
        let mut params = Vec::new();
        for (segment, raw) in self.segments.iter().zip(raw_segments) {
            match segment {
                Segment::Literal(text) if text == raw => {}
                Segment::Param(name) if !raw.is_empty() => {
                    let value = percent_decode_str(raw).decode_utf8_lossy().into_owned();
                    params.push((name.clone(), value));
                }
                _ => return None,
            }
        }
        Some(params)
    }

    /// Literal segments before parameters, position by position: where
    /// `/jobs/:job_id` and `/jobs/query_recent_change` both match, the literal one is
    /// meant (a router's usual rule, and the only one that makes both reachable).
    fn literal_mask(&self) -> Vec<bool> {
        self.segments
            .iter()
            .map(|s| matches!(s, Segment::Literal(_)))
            .collect()
    }
}

/// The generated routes, indexed for matching and by name.
pub(crate) struct Table {
    routes: Vec<GeneratedRoute>,
    /// (HTTP method, segment count) → candidate indices.
    by_shape: HashMap<(String, usize), Vec<u16>>,
    by_name: HashMap<String, u16>,
}

/// The SDK names of the four seed endpoints, which keep their own routes and state
/// machines (and their fixed [`Endpoint`] variants).
pub(crate) const SEEDS: [(&str, Endpoint); 4] = [
    (
        "corehr.v2.pre_hires.withdraw_onboarding",
        Endpoint::WithdrawOnboarding,
    ),
    (
        "corehr.v2.pre_hires.restore_flow_instance",
        Endpoint::RestoreFlowInstance,
    ),
    ("corehr.v2.offboardings.revoke", Endpoint::RevokeOffboarding),
    (
        "hire.v1.applications.cancel_onboard",
        Endpoint::CancelOnboard,
    ),
];

/// The table, parsed on first use. `routes.json` is part of the build (and checked by
/// the unit tests below), so a parse failure is a build defect, not a request's doing.
pub(crate) fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let file: RawFile = serde_json::from_str(ROUTES_JSON)
            .expect("sandbox/routes.json (tools/gen_routes.py's output) is valid");
        Table::build(file.routes)
    })
}

impl Table {
    fn build(raw: Vec<RawRoute>) -> Table {
        let routes: Vec<GeneratedRoute> = raw
            .into_iter()
            .filter(|r| SEEDS.iter().all(|(seed, _)| *seed != r.name))
            .map(|r| {
                let segments = split(&r.path)
                    .into_iter()
                    .map(|s| match s.strip_prefix(':') {
                        Some(name) => Segment::Param(name.to_string()),
                        None => Segment::Literal(s.to_string()),
                    })
                    .collect();
                let fields = |list: Vec<RawField>| -> Vec<Field> {
                    list.into_iter()
                        .map(|f| Field {
                            ty: FieldType::parse(&f.ty),
                            name: f.name,
                        })
                        .collect()
                };
                GeneratedRoute {
                    method_id: method_id(&r.name),
                    tenant: r.tokens.iter().any(|t| t == "tenant"),
                    segments,
                    query: fields(r.query),
                    body: fields(r.body),
                    data: r.data,
                    http_method: r.http_method.to_ascii_uppercase(),
                    name: r.name,
                }
            })
            .collect();
        assert!(
            routes.len() <= usize::from(u16::MAX),
            "more generated routes than Endpoint::Route can index"
        );
        let mut by_shape: HashMap<(String, usize), Vec<u16>> = HashMap::new();
        let mut by_name = HashMap::new();
        for (i, r) in (0u16..).zip(&routes) {
            by_shape
                .entry((r.http_method.clone(), r.segments.len()))
                .or_default()
                .push(i);
            by_name.insert(r.name.clone(), i);
        }
        Table {
            routes,
            by_shape,
            by_name,
        }
    }

    pub fn get(&self, index: u16) -> Option<&GeneratedRoute> {
        self.routes.get(usize::from(index))
    }

    pub fn index_of(&self, name: &str) -> Option<u16> {
        self.by_name.get(name).copied()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// The route a request is for, and its decoded path parameters.
    pub fn find(&self, method: &str, raw_path: &str) -> Option<(u16, Vec<(String, String)>)> {
        let raw = split(raw_path);
        let candidates = self.by_shape.get(&(method.to_string(), raw.len()))?;
        candidates
            .iter()
            .filter_map(|&i| {
                let route = self.get(i)?;
                let params = route.matches(&raw)?;
                Some((route.literal_mask(), i, params))
            })
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, i, params)| (i, params))
    }
}

/// The segments after the leading `/` (a path without one matches nothing).
fn split(path: &str) -> Vec<&str> {
    match path.strip_prefix('/') {
        Some(rest) => rest.split('/').collect(),
        None => vec![""],
    }
}

/// A 19-digit number derived from the name (FNV-1a), stable across runs and builds.
fn method_id(name: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("7{:018}", h % 1_000_000_000_000_000_000)
}

/// Feishu's checks before the business logic: a body that is a JSON object when the
/// endpoint has body fields, and every declared query or body field of its JSON type.
/// Undeclared fields are ignored, as Feishu ignores them.
pub(crate) fn check(
    route: &'static GeneratedRoute,
    query: Option<&str>,
    body: Option<&Value>,
) -> Result<(), FieldViolation> {
    for pair in query.unwrap_or_default().split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(k);
        let Some(field) = route.query.iter().find(|f| f.name == name) else {
            continue;
        };
        let value = decode(v);
        if !field.ty.admits_text(&value) {
            return Err(violation(field, value));
        }
    }
    if route.body.is_empty() {
        return Ok(());
    }
    let Some(obj) = body.and_then(Value::as_object) else {
        return Err(FieldViolation {
            field: "body",
            value: None,
            description: "request body must be a JSON object".to_string(),
        });
    };
    check_body(route, obj)
}

fn check_body(
    route: &'static GeneratedRoute,
    obj: &Map<String, Value>,
) -> Result<(), FieldViolation> {
    for field in &route.body {
        if let Some(v) = obj.get(&field.name) {
            if !field.ty.admits_json(v) {
                return Err(violation(field, v.to_string()));
            }
        }
    }
    Ok(())
}

fn violation(field: &'static Field, value: String) -> FieldViolation {
    FieldViolation {
        field: &field.name,
        value: Some(value),
        description: format!("{} must be {}", field.name, field.ty.expected()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(name: &str) -> &'static GeneratedRoute {
        let t = table();
        t.index_of(name).and_then(|i| t.get(i)).expect(name)
    }

    #[test]
    fn every_route_but_the_seeds_is_in_the_table() {
        let file: RawFile = serde_json::from_str(ROUTES_JSON).expect("routes.json parses");
        let names: Vec<&str> = file.routes.iter().map(|r| r.name.as_str()).collect();
        for (seed, _) in SEEDS {
            assert!(names.contains(&seed), "{seed} is in routes.json");
            assert!(
                table().index_of(seed).is_none(),
                "{seed} keeps its own route"
            );
        }
        assert_eq!(table().len(), names.len() - SEEDS.len());
        for r in &file.routes {
            if SEEDS.iter().any(|(s, _)| *s == r.name) {
                continue;
            }
            let raw_path = r.path.replace(':', "x");
            let (i, _) = table()
                .find(&r.http_method, &raw_path)
                .unwrap_or_else(|| panic!("{} does not match its own path", r.name));
            // Where a literal route shadows this one at a parameter, the literal one wins.
            let found = table().get(i).map(|f| f.name.as_str());
            let literal_twin = table()
                .find(&r.http_method, &r.path)
                .and_then(|(j, _)| table().get(j))
                .map(|f| f.name.as_str());
            assert!(
                found == Some(r.name.as_str()) || found == literal_twin,
                "{}",
                r.name
            );
        }
    }

    #[test]
    fn params_take_one_raw_segment_and_literals_win() {
        let t = table();
        let (i, params) = t
            .find("GET", "/open-apis/corehr/v2/jobs/a%2Fb")
            .expect("jobs.get");
        assert_eq!(
            t.get(i).map(|r| r.name.as_str()),
            Some("corehr.v2.jobs.get")
        );
        assert_eq!(params, vec![("job_id".to_string(), "a/b".to_string())]);
        let (i, params) = t
            .find("GET", "/open-apis/corehr/v2/jobs/query_recent_change")
            .expect("query_recent_change");
        assert_eq!(
            t.get(i).map(|r| r.name.as_str()),
            Some("corehr.v2.jobs.query_recent_change")
        );
        assert!(params.is_empty());
        assert!(t.find("GET", "/open-apis/corehr/v2/jobs/").is_none());
        assert!(t.find("GET", "/open-apis/corehr/v2/jobs/a/b").is_none());
        assert!(t.find("DELETE", "/open-apis/corehr/v2/jobs/x").is_none());
        assert!(t.find("GET", "open-apis/corehr/v2/jobs/x").is_none());
    }

    #[test]
    fn field_types_are_checked_and_unknown_fields_ignored() {
        let search = route("corehr.v2.pre_hires.search");
        assert!(check(search, Some("page_size=10&nonsense=x"), Some(&json!({}))).is_ok());
        let bad = check(search, Some("page_size=ten"), Some(&json!({}))).expect_err("int");
        assert_eq!(
            (bad.field, bad.value.as_deref()),
            ("page_size", Some("ten"))
        );
        let bad = check(search, None, Some(&json!([]))).expect_err("not an object");
        assert_eq!(bad.field, "body");
        assert!(check(search, None, None).is_err());
        let unknown = json!({"worker_ids": ["1"], "not_a_field": 3, "onboarding_date": null});
        assert!(check(search, None, Some(&unknown)).is_ok());
        let bad = check(search, None, Some(&json!({"worker_ids": "1"}))).expect_err("list");
        assert_eq!(
            (bad.field, bad.value.as_deref()),
            ("worker_ids", Some("\"1\""))
        );
        // A route without body fields ignores whatever body it gets.
        let get = route("corehr.v2.jobs.get");
        assert!(check(get, None, None).is_ok());
    }

    #[test]
    fn json_and_text_types() {
        assert!(FieldType::Int.admits_json(&json!(3)));
        assert!(!FieldType::Int.admits_json(&json!(3.5)));
        assert!(!FieldType::Int.admits_json(&json!("3")));
        assert!(FieldType::Float.admits_json(&json!(3)));
        assert!(!FieldType::String.admits_json(&json!(3)));
        assert!(FieldType::Bool.admits_text("false"));
        assert!(!FieldType::Bool.admits_text("1"));
        assert!(!FieldType::Float.admits_text("NaN"));
        assert_eq!(method_id("x").len(), 19);
        assert_eq!(method_id("x"), method_id("x"));
    }
}
