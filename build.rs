//! Compiles every proto under `proto/` with protox (no system `protoc`) and
//! writes the descriptor set that the gateway's routes are read from and that
//! server reflection serves: the whole corehr v2 and hire v1 surface.
//!
//! Rust code is generated only for the four seed RPCs and their messages
//! (the tests, the benchmark and Rust callers use them as a typed client);
//! the gateway itself serves every RPC, seeds included, from the descriptor
//! set, so the other endpoints cost no compiled code per message.

use std::{
    collections::{BTreeSet, HashSet},
    env, fs,
    path::{Path, PathBuf},
};

use prost_types::{DescriptorProto, FileDescriptorSet};

/// The RPCs that get Rust types (full method names).
const TYPED: &[&str] = &[
    "feishu.corehr.v2.PreHireService.WithdrawOnboarding",
    "feishu.corehr.v2.PreHireService.RestoreFlowInstance",
    "feishu.corehr.v2.OffboardingService.Revoke",
    "feishu.hire.v1.ApplicationService.CancelOnboard",
];

/// Files whose comments reflection keeps: hand-written, or holding seed rpcs.
const KEEP_COMMENTS: &[&str] = &[
    "_seed.proto",
    "feishu/api/annotations.proto",
    "feishu/corehr/v2/pre_hire.proto",
    "feishu/corehr/v2/offboarding.proto",
    "feishu/hire/v1/application.proto",
];

/// Drops `source_code_info` (field 9) from the files of an encoded
/// FileDescriptorSet that `strip` names, copying every other byte as it is
/// (so that custom options survive, which decoding into `prost_types` would lose).
fn strip_source_info(set: &[u8], strip: impl Fn(&str) -> bool) -> Vec<u8> {
    use prost::encoding::{
        decode_key, decode_varint, encode_key, encode_varint, skip_field, DecodeContext, WireType,
    };
    /// Each field of a message: its number, its whole bytes (key included)
    /// and, when length-delimited, its payload.
    fn fields(mut buf: &[u8]) -> Vec<(u32, &[u8], &[u8])> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            let start = buf;
            let Ok((number, wire)) = decode_key(&mut buf) else {
                break;
            };
            let body = buf;
            if skip_field(wire, number, &mut buf, DecodeContext::default()).is_err() {
                break;
            }
            let whole = &start[..start.len() - buf.len()];
            let mut payload = &body[..body.len() - buf.len()];
            if wire == WireType::LengthDelimited && decode_varint(&mut payload).is_err() {
                break;
            }
            out.push((number, whole, payload));
        }
        out
    }
    let mut out = Vec::with_capacity(set.len());
    for (number, whole, file) in fields(set) {
        let parts = fields(file);
        let name = parts
            .iter()
            .find(|(n, _, _)| *n == 1)
            .map(|(_, _, name)| String::from_utf8_lossy(name).into_owned())
            .unwrap_or_default();
        if number != 1 || !strip(&name) {
            out.extend_from_slice(whole);
            continue;
        }
        let kept: Vec<u8> = parts
            .iter()
            .filter(|(n, _, _)| *n != 9)
            .flat_map(|(_, w, _)| w.iter().copied())
            .collect();
        encode_key(1, WireType::LengthDelimited, &mut out);
        encode_varint(kept.len() as u64, &mut out);
        out.extend_from_slice(&kept);
    }
    out
}

fn protos(dir: &Path, root: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            protos(&path, root, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            if let Ok(rel) = path.strip_prefix(root) {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto");
    let root = Path::new("proto");
    let mut files = Vec::new();
    protos(root, root, &mut files)?;
    files.sort();
    let mut compiler = protox::Compiler::new([root])?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_files(&files)?;
    // Encoded by protox itself: `prost_types` would drop the custom options
    // (`feishu.api.route`, …), which it keeps as extensions it does not know.
    // Reflection serves it with the comments of the hand-written files (the
    // seeds' error lists, the options) and without those of the generated
    // ones, which say little ("Feishu field …") and held ~10 MB at run time.
    fs::write(
        out_dir.join("feishu_gateway_descriptor.bin"),
        strip_source_info(&compiler.encode_file_descriptor_set(), |name| {
            !KEEP_COMMENTS.iter().any(|k| name.ends_with(k))
        }),
    )?;
    // The routes are read from the same protos without their comments: a
    // smaller set, decoded faster and held in less memory at run time.
    let mut bare = protox::Compiler::new([root])?;
    bare.include_imports(true)
        .include_source_info(false)
        .open_files(&files)?;
    fs::write(
        out_dir.join("feishu_gateway_routes.bin"),
        bare.encode_file_descriptor_set(),
    )?;
    let fds = compiler.file_descriptor_set();
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(typed_only(fds))?;
    Ok(())
}

/// The descriptor set pruned to the typed RPCs, the services that hold them
/// and the messages and enums they reach.
fn typed_only(mut fds: FileDescriptorSet) -> FileDescriptorSet {
    // Message and enum names (".pkg.Name") reachable from the typed RPCs.
    let mut messages = std::collections::HashMap::new();
    for file in &fds.file {
        let pkg = file.package();
        for m in &file.message_type {
            collect(&format!(".{pkg}"), m, &mut messages);
        }
    }
    let mut wanted = BTreeSet::new();
    let mut todo: Vec<String> = Vec::new();
    for file in &fds.file {
        for s in &file.service {
            for m in &s.method {
                let full = format!("{}.{}.{}", file.package(), s.name(), m.name());
                if TYPED.contains(&full.as_str()) {
                    todo.push(m.input_type().to_owned());
                    todo.push(m.output_type().to_owned());
                }
            }
        }
    }
    while let Some(name) = todo.pop() {
        if !wanted.insert(name.clone()) {
            continue;
        }
        if let Some(m) = messages.get(&name) {
            for f in &m.field {
                if !f.type_name().is_empty() {
                    todo.push(f.type_name().to_owned());
                }
            }
        }
    }
    let keep_top = |pkg: &str, name: &str| {
        let top = format!(".{pkg}.{name}");
        let nested = format!("{top}.");
        wanted.contains(&top) || wanted.iter().any(|w| w.starts_with(&nested))
    };
    fds.file
        .retain(|f| !f.package().starts_with("google.") && f.package() != "feishu.api");
    let mut used_files = HashSet::new();
    for file in &mut fds.file {
        let pkg = file.package().to_owned();
        file.message_type.retain(|m| keep_top(&pkg, m.name()));
        file.enum_type.retain(|e| keep_top(&pkg, e.name()));
        for s in &mut file.service {
            let service = s.name().to_owned();
            s.method
                .retain(|m| TYPED.contains(&format!("{pkg}.{service}.{}", m.name()).as_str()));
        }
        file.service.retain(|s| !s.method.is_empty());
        if !file.message_type.is_empty() || !file.enum_type.is_empty() || !file.service.is_empty() {
            used_files.insert(file.name().to_owned());
        }
    }
    fds.file.retain(|f| used_files.contains(f.name()));
    fds
}

fn collect<'a>(
    scope: &str,
    m: &'a DescriptorProto,
    out: &mut std::collections::HashMap<String, &'a DescriptorProto>,
) {
    let name = format!("{scope}.{}", m.name());
    for nested in &m.nested_type {
        collect(&name, nested, out);
    }
    out.insert(name, m);
}
