//! Feishu's JSON from and to the caller's protobuf messages, by descriptor.
//!
//! Requests: each body field is written under its `json_name` (Feishu's
//! name); a field with presence (proto3 `optional`, messages) only when set,
//! a list only when not empty, an enum only when not its zero value (sent as
//! its `(feishu.api.wire)` string, or its number), other scalars always.
//!
//! Answers: `data` is read leniently, because Feishu adds fields and is not
//! strict about types: unknown keys and `null`s are skipped, a number where a
//! string is declared (and the reverse, when it parses) is converted, and a
//! value of another shape is dropped rather than failing an answer whose
//! write was applied.

use std::{collections::HashMap, sync::OnceLock};

use prost_reflect::ReflectMessage as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MapKey,
    MessageDescriptor, Value,
};
use serde_json::Value as Json;

/// Enum values' Feishu strings, by enum full name and number.
static WIRE_NAMES: OnceLock<HashMap<String, HashMap<i32, String>>> = OnceLock::new();

/// Reads every `(feishu.api.wire)` once, so that rendering a request does
/// not decode options per call.
pub(super) fn load_wire_names(pool: &DescriptorPool, wire: &ExtensionDescriptor) {
    let mut names: HashMap<String, HashMap<i32, String>> = HashMap::new();
    for e in pool.all_enums() {
        for v in e.values() {
            let options = v.options();
            if !options.has_extension(wire) {
                continue;
            }
            if let Some(s) = options.get_extension(wire).as_str() {
                names
                    .entry(e.full_name().to_owned())
                    .or_default()
                    .insert(v.number(), s.to_owned());
            }
        }
    }
    let _ = WIRE_NAMES.set(names);
}

fn wire_name(e: &prost_reflect::EnumDescriptor, n: i32) -> Option<&'static str> {
    WIRE_NAMES
        .get()?
        .get(e.full_name())?
        .get(&n)
        .map(String::as_str)
}

/// Whether the field goes to Feishu: set (with presence), not empty (lists
/// and maps), not the zero value (enums), and always for other scalars.
pub fn is_set(msg: &DynamicMessage, field: &FieldDescriptor) -> bool {
    if field.supports_presence() {
        return msg.has_field(field);
    }
    match &*msg.get_field(field) {
        Value::List(items) => !items.is_empty(),
        Value::Map(map) => !map.is_empty(),
        Value::EnumNumber(n) => *n != 0,
        _ => true,
    }
}

/// A scalar as text (path and query parameters, the subject, the audit):
/// `None` for messages, maps, lists and an enum's zero value.
pub fn scalar_text(field: &FieldDescriptor, value: &Value) -> Option<String> {
    Some(match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::I32(n) => n.to_string(),
        Value::I64(n) => n.to_string(),
        Value::U32(n) => n.to_string(),
        Value::U64(n) => n.to_string(),
        Value::F32(n) => n.to_string(),
        Value::F64(n) => n.to_string(),
        Value::EnumNumber(0) => return None,
        Value::EnumNumber(n) => match field.kind() {
            Kind::Enum(e) => wire_name(&e, *n).map_or_else(|| n.to_string(), str::to_owned),
            _ => n.to_string(),
        },
        Value::Bytes(_) | Value::Message(_) | Value::List(_) | Value::Map(_) => return None,
    })
}

/// The JSON object of `fields` of `msg` (the request body), each under its
/// key (Feishu's name: the field's `json_name`, or its rule's `json_key`).
pub fn object(msg: &DynamicMessage, fields: &[(FieldDescriptor, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write_object(&mut out, msg, fields.iter().map(|(f, k)| (f, k.as_str())));
    out
}

fn write_object<'a>(
    out: &mut Vec<u8>,
    msg: &DynamicMessage,
    fields: impl Iterator<Item = (&'a FieldDescriptor, &'a str)>,
) {
    out.push(b'{');
    let mut first = true;
    for (field, key) in fields {
        if !is_set(msg, field) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        write_str(out, key);
        out.push(b':');
        write_field(out, field, &msg.get_field(field));
    }
    out.push(b'}');
}

fn write_field(out: &mut Vec<u8>, field: &FieldDescriptor, value: &Value) {
    match value {
        Value::List(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, &field.kind(), item);
            }
            out.push(b']');
        }
        Value::Map(map) => {
            let value_kind = match field.kind() {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                other => other,
            };
            out.push(b'{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let key = match k {
                    MapKey::String(s) => s.clone(),
                    MapKey::Bool(b) => b.to_string(),
                    MapKey::I32(n) => n.to_string(),
                    MapKey::I64(n) => n.to_string(),
                    MapKey::U32(n) => n.to_string(),
                    MapKey::U64(n) => n.to_string(),
                };
                write_str(out, &key);
                out.push(b':');
                write_value(out, &value_kind, v);
            }
            out.push(b'}');
        }
        other => write_value(out, &field.kind(), other),
    }
}

fn write_value(out: &mut Vec<u8>, kind: &Kind, value: &Value) {
    match value {
        Value::String(s) => write_str(out, s),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::I32(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::I64(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::U32(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::U64(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::F32(n) => write_float(out, f64::from(*n)),
        Value::F64(n) => write_float(out, *n),
        Value::Bytes(b) => {
            use base64::Engine as _;
            write_str(out, &base64::engine::general_purpose::STANDARD.encode(b));
        }
        Value::EnumNumber(n) => match kind {
            Kind::Enum(e) => match wire_name(e, *n) {
                Some(s) => write_str(out, s),
                None => out.extend_from_slice(n.to_string().as_bytes()),
            },
            _ => out.extend_from_slice(n.to_string().as_bytes()),
        },
        Value::Message(m) => write_message(out, m),
        Value::List(_) | Value::Map(_) => out.extend_from_slice(b"null"),
    }
}

fn write_float(out: &mut Vec<u8>, n: f64) {
    match serde_json::Number::from_f64(n) {
        Some(n) => out.extend_from_slice(n.to_string().as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping of one string: exact, and cheap.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn write_message(out: &mut Vec<u8>, m: &DynamicMessage) {
    let desc = m.descriptor();
    match desc.full_name() {
        "google.protobuf.Struct" | "google.protobuf.Value" | "google.protobuf.ListValue" => {
            let json = well_known_to_json(m);
            let _ = serde_json::to_writer(&mut *out, &json);
        }
        _ => {
            let fields: Vec<FieldDescriptor> = desc.fields().collect();
            write_object(out, m, fields.iter().map(|f| (f, f.json_name())));
        }
    }
}

fn well_known_to_json(m: &DynamicMessage) -> Json {
    let desc = m.descriptor();
    match desc.full_name() {
        "google.protobuf.Struct" => {
            let mut map = serde_json::Map::new();
            if let Some(Value::Map(fields)) = m.get_field_by_name("fields").as_deref() {
                for (k, v) in fields {
                    if let (MapKey::String(k), Value::Message(v)) = (k, v) {
                        map.insert(k.clone(), well_known_to_json(v));
                    }
                }
            }
            Json::Object(map)
        }
        "google.protobuf.ListValue" => match m.get_field_by_name("values").as_deref() {
            Some(Value::List(items)) => Json::Array(
                items
                    .iter()
                    .filter_map(|v| match v {
                        Value::Message(v) => Some(well_known_to_json(v)),
                        _ => None,
                    })
                    .collect(),
            ),
            _ => Json::Array(Vec::new()),
        },
        _ => {
            // google.protobuf.Value: whichever of its `kind` is set.
            match m.fields().next() {
                Some((field, value)) => match (field.name(), value) {
                    ("number_value", Value::F64(n)) => {
                        serde_json::Number::from_f64(*n).map_or(Json::Null, Json::Number)
                    }
                    ("string_value", Value::String(s)) => Json::String(s.clone()),
                    ("bool_value", Value::Bool(b)) => Json::Bool(*b),
                    ("struct_value" | "list_value", Value::Message(inner)) => {
                        well_known_to_json(inner)
                    }
                    _ => Json::Null,
                },
                None => Json::Null,
            }
        }
    }
}

/// Feishu's `data` as the response message; lenient (see the module docs).
pub fn message_from_json(desc: &MessageDescriptor, json: &Json) -> DynamicMessage {
    match desc.full_name() {
        "google.protobuf.Struct" | "google.protobuf.Value" | "google.protobuf.ListValue" => {
            return well_known_from_json(desc, json);
        }
        _ => {}
    }
    let mut msg = DynamicMessage::new(desc.clone());
    let Json::Object(map) = json else {
        return msg;
    };
    for (key, value) in map {
        let Some(field) = desc
            .get_field_by_json_name(key)
            .or_else(|| desc.get_field_by_name(key))
        else {
            continue;
        };
        if value.is_null() {
            continue;
        }
        if field.is_map() {
            let (Json::Object(entries), Kind::Message(entry)) = (value, field.kind()) else {
                continue;
            };
            let value_kind = entry.map_entry_value_field().kind();
            let key_kind = entry.map_entry_key_field().kind();
            let mut out = HashMap::new();
            for (k, v) in entries {
                let key = match key_kind {
                    Kind::String => Some(MapKey::String(k.clone())),
                    Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => k.parse().ok().map(MapKey::I64),
                    Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => k.parse().ok().map(MapKey::I32),
                    Kind::Uint64 | Kind::Fixed64 => k.parse().ok().map(MapKey::U64),
                    Kind::Uint32 | Kind::Fixed32 => k.parse().ok().map(MapKey::U32),
                    Kind::Bool => k.parse().ok().map(MapKey::Bool),
                    _ => None,
                };
                if let (Some(key), Some(v)) = (key, from_json(&value_kind, v)) {
                    out.insert(key, v);
                }
            }
            msg.set_field(&field, Value::Map(out));
        } else if field.is_list() {
            let Json::Array(items) = value else {
                continue;
            };
            let kind = field.kind();
            let items: Vec<Value> = items.iter().filter_map(|i| from_json(&kind, i)).collect();
            msg.set_field(&field, Value::List(items));
        } else if let Some(v) = from_json(&field.kind(), value) {
            msg.set_field(&field, v);
        }
    }
    msg
}

fn from_json(kind: &Kind, json: &Json) -> Option<Value> {
    let number = || match json {
        Json::Number(n) => Some(n.clone()),
        Json::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    Some(match kind {
        Kind::String => Value::String(match json {
            Json::String(s) => s.clone(),
            Json::Number(n) => n.to_string(),
            Json::Bool(b) => b.to_string(),
            _ => return None,
        }),
        Kind::Bool => Value::Bool(match json {
            Json::Bool(b) => *b,
            Json::String(s) => s.parse().ok()?,
            _ => return None,
        }),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(number()?.as_i64()?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(i32::try_from(number()?.as_i64()?).ok()?)
        }
        Kind::Uint64 | Kind::Fixed64 => Value::U64(number()?.as_u64()?),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(u32::try_from(number()?.as_u64()?).ok()?),
        Kind::Double => Value::F64(number()?.as_f64()?),
        #[allow(clippy::cast_possible_truncation)]
        Kind::Float => Value::F32(number()?.as_f64()? as f32),
        Kind::Bytes => return None,
        Kind::Enum(e) => match json {
            Json::Number(n) => Value::EnumNumber(i32::try_from(n.as_i64()?).ok()?),
            Json::String(s) => {
                let by_wire = e
                    .values()
                    .find(|v| wire_name(e, v.number()) == Some(s.as_str()));
                let v = by_wire.or_else(|| e.get_value_by_name(s))?;
                Value::EnumNumber(v.number())
            }
            _ => return None,
        },
        Kind::Message(m) => match (m.full_name(), json) {
            (
                "google.protobuf.Struct" | "google.protobuf.Value" | "google.protobuf.ListValue",
                _,
            )
            | (_, Json::Object(_)) => Value::Message(message_from_json(m, json)),
            _ => return None,
        },
    })
}

fn well_known_from_json(desc: &MessageDescriptor, json: &Json) -> DynamicMessage {
    let mut msg = DynamicMessage::new(desc.clone());
    let pool = desc.parent_pool();
    let value_desc = pool.get_message_by_name("google.protobuf.Value");
    match desc.full_name() {
        "google.protobuf.Struct" => {
            if let (Json::Object(map), Some(value_desc)) = (json, value_desc) {
                let fields = map
                    .iter()
                    .map(|(k, v)| {
                        (
                            MapKey::String(k.clone()),
                            Value::Message(well_known_from_json(&value_desc, v)),
                        )
                    })
                    .collect();
                msg.set_field_by_name("fields", Value::Map(fields));
            }
        }
        "google.protobuf.ListValue" => {
            if let (Json::Array(items), Some(value_desc)) = (json, value_desc) {
                let values = items
                    .iter()
                    .map(|v| Value::Message(well_known_from_json(&value_desc, v)))
                    .collect();
                msg.set_field_by_name("values", Value::List(values));
            }
        }
        _ => match json {
            Json::Null => msg.set_field_by_name("null_value", Value::EnumNumber(0)),
            Json::Bool(b) => msg.set_field_by_name("bool_value", Value::Bool(*b)),
            Json::Number(n) => {
                msg.set_field_by_name("number_value", Value::F64(n.as_f64().unwrap_or(0.0)))
            }
            Json::String(s) => msg.set_field_by_name("string_value", Value::String(s.clone())),
            Json::Array(_) => {
                if let Some(list) = pool.get_message_by_name("google.protobuf.ListValue") {
                    msg.set_field_by_name(
                        "list_value",
                        Value::Message(well_known_from_json(&list, json)),
                    );
                }
            }
            Json::Object(_) => {
                if let Some(st) = pool.get_message_by_name("google.protobuf.Struct") {
                    msg.set_field_by_name(
                        "struct_value",
                        Value::Message(well_known_from_json(&st, json)),
                    );
                }
            }
        },
    }
    msg
}
