//! `feishu-gateway`: a gRPC service in front of the Feishu (Lark) open
//! platform. See `ARCHITECTURE.md` for the map.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod codes;
pub mod config;
pub mod conn;
pub mod drain;
pub mod error;
pub mod events;
pub mod feishu;
pub mod gateway;
pub mod grpc;
pub mod idempotency;
pub mod latency;
pub mod metrics;
pub mod pb;
pub mod quota;
pub mod reason;
pub mod route;
pub mod telemetry;
pub mod token;
pub mod upstream;
pub mod validate;

/// The Feishu simulator (its own crate, `feishu-sandbox`), re-exported for
/// `serve --sandbox`, the benchmark and the tests.
#[cfg(feature = "sandbox")]
pub use feishu_sandbox as sandbox;
