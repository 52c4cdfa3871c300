//! Routes as data: every RPC whose method carries `(feishu.api.route)` in the
//! gateway's own descriptor set is a Feishu endpoint, served by one generic
//! path (validate, render, token, slot, send, interpret). What a route needs
//! (the REST method and path, which fields go in the path, the query and the
//! body, the field rules, the audit view) is read once at start-up from the
//! proto options, so adding an endpoint is adding a proto, not code.
//!
//! The request the caller sent is never Feishu's body as such: each field is
//! placed by its route (path, query or body) under its `json_name`, so a
//! proto rename stays a rename and the wire keeps Feishu's names.

pub mod json;

use std::{collections::HashMap, fmt::Write as _, sync::OnceLock, time::Duration};

use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor,
    Value,
};

use crate::{
    catalog::{Endpoint, Window},
    error::FieldViolation,
    gateway::AuditFacts,
    validate,
};

/// Values longer than this are kept out of the audit trail's `related`
/// list: a long string is free text, recorded by its length only (as are
/// the values of fields that name nothing, see `build`).
pub const AUDIT_VALUE_MAX: usize = 64;
/// Most `related` entries kept per call (a list of IDs can be long).
const AUDIT_RELATED_MAX: usize = 32;

/// One RPC and the Feishu endpoint it is.
#[derive(Debug)]
pub struct Route {
    /// The catalog row (name, method, path, limits, write), shared with the
    /// limiter, metrics and error details.
    pub endpoint: &'static Endpoint,
    /// Full gRPC method name, `package.Service/Method`, as metrics and the
    /// audit trail name it.
    pub grpc_method: &'static str,
    pub input: MessageDescriptor,
    pub output: MessageDescriptor,
    /// Feishu accepts a tenant_access_token here (the only kind the gateway holds).
    pub tenant_token: bool,
    /// The token types Feishu accepts, as the route names them.
    pub tokens: Vec<String>,
    path_fields: Vec<FieldDescriptor>,
    /// The path parameters no `id` rule checks already (checked as IDs anyway).
    unruled_path_fields: Vec<FieldDescriptor>,
    /// Query and body fields with Feishu's name for each.
    query_fields: Vec<(FieldDescriptor, String)>,
    body_fields: Vec<(FieldDescriptor, String)>,
    rules: Vec<Rule>,
    subject: Vec<Piece>,
    audit: Vec<AuditField>,
}

#[derive(Debug)]
struct Rule {
    field: FieldDescriptor,
    id: bool,
    required: bool,
    max_chars: Option<usize>,
    max_items: Option<usize>,
}

#[derive(Debug)]
enum Piece {
    Text(String),
    Field(FieldDescriptor),
}

#[derive(Debug)]
struct AuditField {
    field: FieldDescriptor,
    label: String,
    text: bool,
}

/// A validated request, rendered for Feishu.
#[derive(Debug)]
pub struct Rendered {
    pub path_and_query: String,
    /// JSON body (`None` for GET and DELETE, which carry none).
    pub body: Option<bytes::Bytes>,
}

impl Route {
    /// Appends every rule the request breaks: the field rules of its proto,
    /// each path parameter as a Feishu ID, and enum values the proto does not define.
    pub fn validate(&self, msg: &DynamicMessage, out: &mut Vec<FieldViolation>) {
        for rule in &self.rules {
            rule.check(msg, out);
        }
        for field in &self.unruled_path_fields {
            if let Value::String(s) = &*msg.get_field(field) {
                validate::id(field.name(), s, out);
            }
        }
        for (field, value) in msg.fields() {
            check_enum(&field, value, out);
        }
    }

    /// The REST request: path parameters percent-encoded as one segment
    /// each, query parameters, and the JSON body of every other field.
    /// `None` when the route's path names a field the request lacks (a proto bug).
    pub fn render(&self, msg: &DynamicMessage) -> Option<Rendered> {
        let params: Vec<String> = self
            .path_fields
            .iter()
            .map(|f| json::scalar_text(f, &msg.get_field(f)).unwrap_or_default())
            .collect();
        let params: Vec<&str> = params.iter().map(String::as_str).collect();
        let mut query: Vec<(&str, String)> = Vec::new();
        for (field, key) in &self.query_fields {
            if !json::is_set(msg, field) {
                continue;
            }
            match &*msg.get_field(field) {
                Value::List(items) => {
                    for item in items {
                        if let Some(text) = json::scalar_text(field, item) {
                            query.push((key, text));
                        }
                    }
                }
                value => {
                    if let Some(text) = json::scalar_text(field, value) {
                        query.push((key, text));
                    }
                }
            }
        }
        let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let path_and_query = crate::gateway::path::render(self.endpoint.path, &params, &query)?;
        let body = match self.endpoint.method {
            "GET" | "DELETE" if self.body_fields.is_empty() => None,
            _ => Some(bytes::Bytes::from(json::object(msg, &self.body_fields))),
        };
        Some(Rendered {
            path_and_query,
            body,
        })
    }

    /// The resource acted on, for error details and the audit trail.
    pub fn subject(&self, msg: &DynamicMessage) -> String {
        let mut out = String::new();
        for piece in &self.subject {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(f) => {
                    out.push_str(&json::scalar_text(f, &msg.get_field(f)).unwrap_or_default())
                }
            }
        }
        out
    }

    /// What the audit trail keeps of a request beyond its subject: short
    /// values as `label:value`, free text by its length only.
    pub fn audit(&self, msg: &DynamicMessage) -> AuditFacts {
        let mut facts = AuditFacts::default();
        for a in &self.audit {
            if !json::is_set(msg, &a.field) {
                continue;
            }
            let value = msg.get_field(&a.field);
            let items: &[Value] = match &*value {
                Value::List(items) => items,
                other => std::slice::from_ref(other),
            };
            for item in items {
                let text = match item {
                    Value::Message(_) | Value::Map(_) | Value::Bytes(_) => continue,
                    _ => json::scalar_text(&a.field, item).unwrap_or_default(),
                };
                let chars = text.chars().count();
                if a.text || chars > AUDIT_VALUE_MAX {
                    *facts.text_chars.get_or_insert(0) += chars;
                } else if facts.related.len() < AUDIT_RELATED_MAX {
                    let mut entry = String::with_capacity(a.label.len() + 1 + text.len());
                    let _ = write!(entry, "{}:{text}", a.label);
                    facts.related.push(entry);
                }
            }
        }
        facts
    }
}

impl Rule {
    fn check(&self, msg: &DynamicMessage, out: &mut Vec<FieldViolation>) {
        let name = self.field.name();
        let set = json::is_set(msg, &self.field);
        let value = msg.get_field(&self.field);
        match &*value {
            Value::List(items) => {
                if self.required && items.is_empty() {
                    out.push(FieldViolation::new(name, "required: must not be empty"));
                }
                if let Some(max) = self.max_items.filter(|m| items.len() > *m) {
                    out.push(FieldViolation::new(name, format!("at most {max} entries")));
                }
                for (i, item) in items.iter().enumerate() {
                    if let Value::String(s) = item {
                        let before = out.len();
                        self.check_text("", s, out);
                        // Named only when wrong: no allocation on the valid path.
                        for v in &mut out[before..] {
                            v.field = format!("{name}[{i}]");
                        }
                    }
                }
            }
            Value::String(s) => {
                // An optional field that is absent breaks no rule but `required`.
                if !set && self.field.supports_presence() {
                    if self.required {
                        out.push(FieldViolation::new(name, "required: must not be empty"));
                    }
                    return;
                }
                self.check_text(name, s, out);
            }
            Value::EnumNumber(0) if self.required => {
                if let Kind::Enum(e) = self.field.kind() {
                    out.push(FieldViolation::new(
                        name,
                        format!("required: one of {}", enum_choices(&e, true)),
                    ));
                }
            }
            Value::Message(_) if self.required && !set => {
                out.push(FieldViolation::new(name, "required: must be set"));
            }
            _ if self.required && !set && self.field.supports_presence() => {
                out.push(FieldViolation::new(name, "required: must be set"));
            }
            _ => {}
        }
    }

    fn check_text(&self, name: &str, s: &str, out: &mut Vec<FieldViolation>) {
        if self.id {
            validate::id(name, s, out);
        } else if self.required || self.max_chars.is_some() {
            validate::text(
                name,
                s,
                self.required,
                self.max_chars.unwrap_or(usize::MAX),
                out,
            );
        }
    }
}

/// An enum value the proto does not define (proto3 keeps unknown numbers).
fn check_enum(field: &FieldDescriptor, value: &Value, out: &mut Vec<FieldViolation>) {
    let Kind::Enum(e) = field.kind() else {
        return;
    };
    let items: &[Value] = match value {
        Value::List(items) => items,
        other => std::slice::from_ref(other),
    };
    for item in items {
        if let Value::EnumNumber(n) = item {
            if e.get_value(*n).is_none() {
                out.push(FieldViolation::new(
                    field.name(),
                    format!("unknown value {n}: must be {}", enum_choices(&e, false)),
                ));
            }
        }
    }
}

/// "WE_REJECTED (1), CANDIDATE_REJECTED (22), OTHER (27)" or "1, 22 or 27":
/// the defined values but the zero one, named without the enum's prefix.
fn enum_choices(e: &prost_reflect::EnumDescriptor, named: bool) -> String {
    let values: Vec<_> = e.values().filter(|v| v.number() != 0).collect();
    if named {
        let prefix = e
            .values()
            .find(|v| v.number() == 0)
            .and_then(|v| v.name().strip_suffix("UNSPECIFIED").map(str::to_owned))
            .unwrap_or_default();
        values
            .iter()
            .map(|v| {
                let name = v.name().strip_prefix(prefix.as_str()).unwrap_or(v.name());
                format!("{name} ({})", v.number())
            })
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        let numbers: Vec<String> = values.iter().map(|v| v.number().to_string()).collect();
        match numbers.split_last() {
            None => String::new(),
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        }
    }
}

/// Every route of the descriptor set, by gRPC path and by endpoint name.
pub struct Catalog {
    by_path: HashMap<String, &'static Route>,
    by_name: HashMap<&'static str, &'static Route>,
    routes: Vec<&'static Route>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("routes", &self.routes.len())
            .finish()
    }
}

/// The routes of the gateway's own descriptor set, loaded on first use
/// (at start-up: `app` calls it before binding).
pub fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        // The descriptor set is built into the binary from the repository's
        // protos; `every_route_loads` proves it loads, so this cannot fail in
        // a tested build.
        Catalog::load(crate::pb::ROUTES_DESCRIPTOR_SET)
            .unwrap_or_else(|e| panic!("the built-in route options are invalid: {e}"))
    })
}

impl Catalog {
    /// Reads every method carrying `(feishu.api.route)`. Routes live for the
    /// process (they are leaked once, at start-up), so that the limiter,
    /// metrics and errors can hold `&'static` names as they do for the
    /// token endpoints.
    pub fn load(descriptor_set: &[u8]) -> Result<Self, String> {
        let pool = DescriptorPool::decode(descriptor_set).map_err(|e| e.to_string())?;
        let ext = |name: &str| {
            pool.get_extension_by_name(name)
                .ok_or_else(|| format!("the descriptor set lacks {name}"))
        };
        let (route_ext, field_ext, wire_ext) = (
            ext("feishu.api.route")?,
            ext("feishu.api.field")?,
            ext("feishu.api.wire")?,
        );
        json::load_wire_names(&pool, &wire_ext);
        let mut by_path = HashMap::new();
        let mut by_name = HashMap::new();
        let mut routes = Vec::new();
        for service in pool.services() {
            for method in service.methods() {
                let options = method.options();
                if !options.has_extension(&route_ext) {
                    continue;
                }
                let grpc_method = format!("{}/{}", service.full_name(), method.name());
                let route = build(
                    &grpc_method,
                    method.input(),
                    method.output(),
                    &options.get_extension(&route_ext),
                    &field_ext,
                )
                .map_err(|e| format!("{grpc_method}: {e}"))?;
                let route: &'static Route = Box::leak(Box::new(route));
                if by_name.insert(route.endpoint.name, route).is_some() {
                    return Err(format!(
                        "{grpc_method}: endpoint name {} is used twice",
                        route.endpoint.name
                    ));
                }
                by_path.insert(format!("/{grpc_method}"), route);
                routes.push(route);
            }
        }
        Ok(Self {
            by_path,
            by_name,
            routes,
        })
    }

    /// The route of a gRPC request path (`/package.Service/Method`).
    pub fn by_path(&self, path: &str) -> Option<&'static Route> {
        self.by_path.get(path).copied()
    }

    /// The route of a stable endpoint name (limit overrides use names).
    pub fn by_name(&self, name: &str) -> Option<&'static Route> {
        self.by_name.get(name).copied()
    }

    pub fn routes(&self) -> &[&'static Route] {
        &self.routes
    }

    /// Names of the services that have at least one route, sorted.
    pub fn services(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self
            .routes
            .iter()
            .filter_map(|r| r.grpc_method.split_once('/').map(|(service, _)| service))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn build(
    grpc_method: &str,
    input: MessageDescriptor,
    output: MessageDescriptor,
    route: &Value,
    field_ext: &ExtensionDescriptor,
) -> Result<Route, String> {
    let Value::Message(route) = route else {
        return Err("(feishu.api.route) is not a message".into());
    };
    let text = |name: &str| -> String {
        route
            .get_field_by_name(name)
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let texts = |name: &str| -> Vec<String> {
        match route.get_field_by_name(name).as_deref() {
            Some(Value::List(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    };
    let name = text("name");
    let method = text("method").to_ascii_uppercase();
    let path = text("path");
    if name.is_empty() || path.is_empty() {
        return Err("the route needs a name and a path".into());
    }
    if !matches!(method.as_str(), "GET" | "POST" | "PUT" | "PATCH" | "DELETE") {
        return Err(format!("unsupported HTTP method {method:?}"));
    }
    let field = |n: &str| {
        input
            .get_field_by_name(n)
            .ok_or_else(|| format!("the route names {n}, which {} lacks", input.full_name()))
    };
    // `{field}` segments become the `:field` segments `gateway::path` fills.
    let mut path_fields = Vec::new();
    let mut template = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            template.push('/');
        }
        match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(param) => {
                let f = field(param)?;
                if f.is_list() || matches!(f.kind(), Kind::Message(_)) {
                    return Err(format!("path parameter {param} must be a scalar"));
                }
                path_fields.push(f);
                template.push(':');
                template.push_str(param);
            }
            None => template.push_str(segment),
        }
    }
    let query_names = texts("query")
        .iter()
        .map(|n| field(n))
        .collect::<Result<Vec<_>, _>>()?;
    // Feishu's name: the json_name, unless the rule's json_key says
    // otherwise (a body field whose name a path or query field took).
    let key = |f: &FieldDescriptor| -> String {
        match &*f.options().get_extension(field_ext) {
            Value::Message(rule) => rule
                .get_field_by_name("json_key")
                .and_then(|v| v.as_str().map(str::to_owned))
                .filter(|k| !k.is_empty())
                .unwrap_or_else(|| f.json_name().to_owned()),
            _ => f.json_name().to_owned(),
        }
    };
    let body_fields: Vec<(FieldDescriptor, String)> = input
        .fields()
        .filter(|f| !path_fields.contains(f) && !query_names.contains(f))
        .map(|f| {
            let k = key(&f);
            (f, k)
        })
        .collect();
    let query_fields: Vec<(FieldDescriptor, String)> = query_names
        .into_iter()
        .map(|f| {
            let k = key(&f);
            (f, k)
        })
        .collect();
    let limits = match route.get_field_by_name("limits").as_deref() {
        Some(Value::List(items)) => items
            .iter()
            .filter_map(|v| match v {
                Value::Message(m) => {
                    let get = |n: &str| m.get_field_by_name(n).and_then(|v| v.as_u32());
                    Some(Window {
                        limit: get("limit")?,
                        per: Duration::from_secs(u64::from(get("per_seconds")?)),
                    })
                }
                _ => None,
            })
            .filter(|w| w.limit > 0 && !w.per.is_zero())
            .collect(),
        _ => Vec::new(),
    };
    let already_applied: Vec<i64> = match route.get_field_by_name("already_applied").as_deref() {
        Some(Value::List(items)) => items.iter().filter_map(Value::as_i64).collect(),
        _ => Vec::new(),
    };
    let tokens = texts("tokens");
    let scopes = texts("scopes");
    let write = route
        .get_field_by_name("write")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);

    let mut rules = Vec::new();
    let mut audit = Vec::new();
    for f in input.fields() {
        let options = f.options();
        let rule = options.get_extension(field_ext);
        let rule = match &*rule {
            Value::Message(m) => Some(m.clone()),
            _ => None,
        };
        let get = |n: &str| rule.as_ref().and_then(|m| m.get_field_by_name(n));
        let flag = |n: &str| get(n).and_then(|v| v.as_bool()).unwrap_or(false);
        let count = |n: &str| {
            get(n)
                .and_then(|v| v.as_u32())
                .filter(|n| *n > 0)
                .map(|n| n as usize)
        };
        let r = Rule {
            field: f.clone(),
            id: flag("id"),
            required: flag("required"),
            max_chars: count("max_chars"),
            max_items: count("max_items"),
        };
        if r.id || r.required || r.max_chars.is_some() || r.max_items.is_some() {
            rules.push(r);
        }
        // Path parameters are in the subject already.
        let mode = get("audit").and_then(|v| v.as_enum_number()).unwrap_or(0);
        if mode == 2 || (mode == 0 && path_fields.contains(&f)) {
            continue;
        }
        let explicit = get("audit_label")
            .and_then(|v| v.as_str().map(str::to_owned))
            .filter(|l| !l.is_empty());
        // Without a label chosen in the proto, a value is kept only where it
        // names something (an ID, a type, a flag): a generated request's other
        // fields (names, phone numbers, amounts, text) go by length only.
        let identifying = explicit.is_some()
            || matches!(f.kind(), Kind::Bool | Kind::Enum(_))
            || ["_id", "_ids", "_id_list", "_type"]
                .iter()
                .any(|s| f.json_name().ends_with(s))
            || f.json_name() == "id";
        audit.push(AuditField {
            field: f.clone(),
            label: explicit.unwrap_or_else(|| f.json_name().to_owned()),
            text: mode == 1 || !identifying,
        });
    }

    let subject_template = text("subject");
    let subject_template = if subject_template.is_empty() {
        // The path after "/open-apis/<service>/<version>/".
        path.splitn(5, '/').nth(4).unwrap_or(&path).to_owned()
    } else {
        subject_template
    };
    let mut subject = Vec::new();
    let mut rest = subject_template.as_str();
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        if open > 0 {
            subject.push(Piece::Text(rest[..open].to_owned()));
        }
        subject.push(Piece::Field(field(&rest[open + 1..open + close])?));
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        subject.push(Piece::Text(rest.to_owned()));
    }

    let endpoint: &'static Endpoint = Box::leak(Box::new(Endpoint {
        name: leak(name),
        method: leak(method),
        path: leak(template),
        scope: leak(scopes.first().cloned().unwrap_or_default()),
        limits: Box::leak(limits.into_boxed_slice()),
        write,
        already_applied: Box::leak(already_applied.into_boxed_slice()),
    }));
    let unruled_path_fields = path_fields
        .iter()
        .filter(|f| !rules.iter().any(|r| r.field == **f && r.id))
        .cloned()
        .collect();
    Ok(Route {
        endpoint,
        grpc_method: leak(grpc_method.to_owned()),
        input,
        output,
        tenant_token: tokens.is_empty() || tokens.iter().any(|t| t == "tenant"),
        tokens,
        path_fields,
        unruled_path_fields,
        query_fields,
        body_fields,
        rules,
        subject,
        audit,
    })
}

#[cfg(test)]
mod tests;
