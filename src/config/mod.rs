//! Settings: one TOML file (`--config`) with every key overridable from the
//! environment (`FEISHU_*` for the Feishu side, `GATEWAY_*` for the gateway).
//!
//! Loading never prints a secret: the app secret is a [`SecretString`] from
//! the moment it is read, and errors name the setting, never its value.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use figment::{
    providers::{Env, Format, Toml},
    Figment,
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Default Feishu origin; Lark (international) is `https://open.larksuite.com`.
pub const DEFAULT_BASE_URL: &str = "https://open.feishu.cn";

/// Everything the gateway reads at start-up.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub feishu: FeishuSettings,
    #[serde(default)]
    pub gateway: GatewaySettings,
}

/// The Feishu app the gateway acts as, and how it reaches Feishu.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeishuSettings {
    /// Origin of the open platform (`FEISHU_BASE_URL`).
    pub base_url: String,
    /// The self-built app's ID, `cli_…` (`FEISHU_APP_ID`).
    pub app_id: Option<String>,
    /// The app secret (`FEISHU_APP_SECRET`); redacted in `Debug`.
    pub app_secret: Option<SecretString>,
    /// A file holding the app secret, e.g. a mounted Kubernetes secret (`FEISHU_APP_SECRET_FILE`).
    pub app_secret_file: Option<PathBuf>,
    /// Bound on one upstream HTTP exchange when the caller sets no tighter deadline.
    pub request_timeout_ms: u64,
    /// Bound on opening a connection to Feishu.
    pub connect_timeout_ms: u64,
    /// Plain `http` upstreams (loopback only) get HTTP/1.1 with a keep-alive
    /// pool unless this is set (`FEISHU_HTTP2_PRIOR_KNOWLEDGE`): most local
    /// Feishu doubles, egress sidecars and proxies speak only HTTP/1.1 and
    /// answer an HTTP/2 greeting with 505. `https` always offers both by ALPN.
    pub http2_prior_knowledge: bool,
    /// Extra root certificates (PEM) trusted for Feishu's TLS, besides the
    /// system's (`FEISHU_CA_FILE`): an egress proxy that re-signs, or a test upstream.
    pub ca_file: Option<PathBuf>,
    /// Largest answer body read from Feishu, in bytes (`FEISHU_MAX_RESPONSE_BYTES`).
    /// Feishu's answers are a few KiB; without a bound, one huge (or endless)
    /// body would be buffered whole, in every call that meets it, and its
    /// strings carried on into statuses and logs.
    pub max_response_bytes: usize,
    /// Requests in flight to Feishu at once, and so connections to it
    /// (`FEISHU_MAX_CONNECTIONS`). HTTP/1.1 carries one exchange per
    /// connection: without a bound, 1,000 waiting callers opened ~800
    /// connections, each with its buffers, for no more throughput (the
    /// bound took RSS holding 1,000 streams from 77 to 63 MB). A call waits
    /// for its turn before anything is sent.
    pub max_connections: usize,
    /// More apps, selected by callers with `x-feishu-app` metadata (TOML only).
    pub apps: Vec<AppSettings>,
}

/// How an app obtains its tenant tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppKind {
    /// A self-built app (企业自建应用): `tenant_access_token/internal` with the secret.
    #[default]
    SelfBuilt,
    /// A store app (商店应用): app_ticket → app_access_token → a tenant token per `tenant_key`.
    Store,
}

/// One more app the gateway may act as.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    /// The name callers put in `x-feishu-app`.
    pub name: String,
    pub app_id: String,
    pub app_secret: Option<SecretString>,
    pub app_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub kind: AppKind,
    /// The Verification Token of the app's event subscription (store apps):
    /// an app_ticket push is believed only if it carries this token. Without
    /// one, the app's pushes are refused.
    pub verification_token: Option<SecretString>,
    /// A file holding the Verification Token (a mounted Secret); the value wins when both are set.
    pub verification_token_file: Option<PathBuf>,
    /// The Encrypt Key of the app's event subscription, when one is set in
    /// Feishu: pushes are then encrypted and signed, and only signed, fresh
    /// pushes are accepted (stops forged and replayed ones).
    pub encrypt_key: Option<SecretString>,
    /// A file holding the Encrypt Key; the value wins when both are set.
    pub encrypt_key_file: Option<PathBuf>,
}

impl Default for FeishuSettings {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            app_id: None,
            app_secret: None,
            app_secret_file: None,
            request_timeout_ms: 10_000,
            connect_timeout_ms: 2_000,
            http2_prior_knowledge: false,
            ca_file: None,
            max_response_bytes: 1024 * 1024,
            max_connections: 128,
            apps: Vec::new(),
        }
    }
}

/// How the gateway serves its callers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySettings {
    /// gRPC listen address (`GATEWAY_LISTEN`).
    pub listen: SocketAddr,
    /// HTTP admin address for `/healthz`, `/readyz`, `/metrics` and Feishu's pushes (`GATEWAY_ADMIN_LISTEN`).
    pub admin_listen: SocketAddr,
    /// Largest gRPC request message accepted, in bytes.
    pub max_request_bytes: usize,
    /// Longest a call without a gRPC deadline may wait for a quota slot.
    pub max_quota_wait_ms: u64,
    /// Calls that may wait for a slot per (app, tenant, endpoint); more are refused at once.
    pub max_queue_per_key: usize,
    /// Frequency limit for endpoints whose document states none, per minute.
    pub default_limit_per_minute: u32,
    /// Time allowed for in-flight calls to finish after SIGTERM.
    pub shutdown_grace_ms: u64,
    /// Redis shared by all replicas for the quota (`GATEWAY_REDIS_URL`); in-process when unset.
    pub redis_url: Option<SecretString>,
    /// How long the first outcome of an `idempotency-key` is kept, in
    /// seconds (`GATEWAY_IDEMPOTENCY_TTL_SECS`): in Redis when `redis_url` is
    /// set, so every replica sees it, else in process.
    pub idempotency_ttl_secs: u64,
    /// Replicas sharing the quota: each takes 1/replicas of a limit while Redis is unreachable.
    pub replicas: u32,
    /// Audit lines that may wait for the writer thread, running calls'
    /// reserved places included (`GATEWAY_AUDIT_QUEUE`); when it is full,
    /// calls are refused with nothing sent.
    pub audit_queue: usize,
    /// Limits that replace the documented ones, by endpoint name (TOML only), e.g.
    /// `"hire.v1.applications.cancel_onboard" = [{ limit = 10, per_ms = 1000 }]`.
    pub limits: std::collections::HashMap<String, Vec<WindowSetting>>,
    /// The services allowed to call, with how each proves who it is (TOML only).
    pub callers: Vec<CallerSettings>,
    /// Serve TLS, and with `client_ca_file` require client certificates (mTLS).
    pub tls: Option<TlsSettings>,
    /// Whether `grpc.health.v1` answers without credentials (Kubernetes probes).
    pub health_public: bool,
    /// Whether server reflection answers without credentials.
    pub reflection_public: bool,
    /// Calls served at once, all callers together; more are shed with RESOURCE_EXHAUSTED.
    pub max_concurrent_calls: usize,
    /// Calls served at once for one caller.
    pub max_concurrent_per_caller: usize,
    /// Streams a client may open at once on one gRPC connection (HTTP/2
    /// SETTINGS_MAX_CONCURRENT_STREAMS): before authentication, each costs
    /// the buffers of a request body.
    pub max_streams_per_connection: u32,
    /// Connections open at once, per port; more are closed as they arrive.
    pub max_connections: usize,
    /// Connections open at once from one peer address (IPv6: one /64), per port.
    pub max_connections_per_peer: usize,
    /// Time a new connection gets to open: TLS handshake, HTTP/2 preface and
    /// SETTINGS (admin port: a request's headers, and again its body).
    pub handshake_timeout_ms: u64,
    /// A gRPC connection with no call open for this long is closed.
    pub idle_timeout_ms: u64,
    /// Set only by `serve --insecure-no-auth`: a mesh in front already authenticates.
    #[serde(skip)]
    pub insecure_no_auth: bool,
}

/// A service allowed to call the gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerSettings {
    /// How audit records and traces name the caller.
    pub name: String,
    /// SHA-256 (hex) of the caller's bearer key: the key itself is never stored.
    pub key_sha256: Option<String>,
    /// The SPIFFE URI SAN of the caller's client certificate, e.g. `spiffe://corp/ns/hr/sa/portal`.
    pub spiffe_id: Option<String>,
    /// A DNS SAN of the caller's client certificate.
    pub dns_name: Option<String>,
    /// Full method names it may call; `pkg.Service/*` allows a whole service, `*` everything.
    pub allow: Vec<String>,
}

/// TLS for the gRPC port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA that signs the callers' certificates; when set, a client certificate is required.
    pub client_ca_file: Option<PathBuf>,
}

/// One limit window in configuration.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSetting {
    pub limit: u32,
    pub per_ms: u64,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            max_request_bytes: 64 * 1024,
            max_quota_wait_ms: 5_000,
            max_queue_per_key: 1_000,
            default_limit_per_minute: 1_000,
            shutdown_grace_ms: 20_000,
            redis_url: None,
            idempotency_ttl_secs: 86_400,
            replicas: 1,
            audit_queue: 4096,
            limits: std::collections::HashMap::new(),
            callers: Vec::new(),
            tls: None,
            health_public: true,
            reflection_public: false,
            max_concurrent_calls: 4096,
            max_concurrent_per_caller: 1024,
            max_streams_per_connection: 100,
            max_connections: 10_000,
            max_connections_per_peer: 1_000,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 300_000,
            insecure_no_auth: false,
        }
    }
}

/// Environment variables read, and the setting each one overrides.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("FEISHU_BASE_URL", "feishu.base_url"),
    ("FEISHU_APP_ID", "feishu.app_id"),
    ("FEISHU_APP_SECRET", "feishu.app_secret"),
    ("FEISHU_APP_SECRET_FILE", "feishu.app_secret_file"),
    ("FEISHU_REQUEST_TIMEOUT_MS", "feishu.request_timeout_ms"),
    ("FEISHU_CONNECT_TIMEOUT_MS", "feishu.connect_timeout_ms"),
    (
        "FEISHU_HTTP2_PRIOR_KNOWLEDGE",
        "feishu.http2_prior_knowledge",
    ),
    ("FEISHU_CA_FILE", "feishu.ca_file"),
    ("FEISHU_MAX_RESPONSE_BYTES", "feishu.max_response_bytes"),
    ("FEISHU_MAX_CONNECTIONS", "feishu.max_connections"),
    ("GATEWAY_LISTEN", "gateway.listen"),
    ("GATEWAY_ADMIN_LISTEN", "gateway.admin_listen"),
    ("GATEWAY_MAX_REQUEST_BYTES", "gateway.max_request_bytes"),
    ("GATEWAY_MAX_QUOTA_WAIT_MS", "gateway.max_quota_wait_ms"),
    ("GATEWAY_MAX_QUEUE_PER_KEY", "gateway.max_queue_per_key"),
    (
        "GATEWAY_DEFAULT_LIMIT_PER_MINUTE",
        "gateway.default_limit_per_minute",
    ),
    ("GATEWAY_SHUTDOWN_GRACE_MS", "gateway.shutdown_grace_ms"),
    ("GATEWAY_REDIS_URL", "gateway.redis_url"),
    (
        "GATEWAY_IDEMPOTENCY_TTL_SECS",
        "gateway.idempotency_ttl_secs",
    ),
    ("GATEWAY_REPLICAS", "gateway.replicas"),
    ("GATEWAY_AUDIT_QUEUE", "gateway.audit_queue"),
    ("GATEWAY_TLS_CERT_FILE", "gateway.tls.cert_file"),
    ("GATEWAY_TLS_KEY_FILE", "gateway.tls.key_file"),
    ("GATEWAY_TLS_CLIENT_CA_FILE", "gateway.tls.client_ca_file"),
    ("GATEWAY_HEALTH_PUBLIC", "gateway.health_public"),
    ("GATEWAY_REFLECTION_PUBLIC", "gateway.reflection_public"),
    (
        "GATEWAY_MAX_CONCURRENT_CALLS",
        "gateway.max_concurrent_calls",
    ),
    (
        "GATEWAY_MAX_CONCURRENT_PER_CALLER",
        "gateway.max_concurrent_per_caller",
    ),
    (
        "GATEWAY_MAX_STREAMS_PER_CONNECTION",
        "gateway.max_streams_per_connection",
    ),
    ("GATEWAY_MAX_CONNECTIONS", "gateway.max_connections"),
    (
        "GATEWAY_MAX_CONNECTIONS_PER_PEER",
        "gateway.max_connections_per_peer",
    ),
    (
        "GATEWAY_HANDSHAKE_TIMEOUT_MS",
        "gateway.handshake_timeout_ms",
    ),
    ("GATEWAY_IDLE_TIMEOUT_MS", "gateway.idle_timeout_ms"),
];

/// A setting that is missing or wrong; its `Display` is the one line printed at start-up.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

/// The app credentials, checked: both present and non-empty.
#[derive(Debug, Clone)]
pub struct AppCredentials {
    pub app_id: String,
    pub app_secret: SecretString,
    pub kind: AppKind,
    /// What authenticates the app's event pushes (store apps' app_tickets).
    pub events: EventSecrets,
}

/// The security settings of an app's event subscription in Feishu's console.
/// Carried beside the credentials so that the admin port can tell Feishu's
/// pushes from anyone else's; `Debug` shows neither value.
#[derive(Debug, Clone, Default)]
pub struct EventSecrets {
    /// Feishu's Verification Token: every push carries it. None: pushes refused.
    pub verification_token: Option<SecretString>,
    /// Feishu's Encrypt Key: pushes are then encrypted and signed with it.
    pub encrypt_key: Option<SecretString>,
}

impl AppCredentials {
    /// A self-built app's credentials.
    pub fn self_built(app_id: impl Into<String>, app_secret: impl Into<String>) -> Self {
        Self {
            app_id: app_id.into(),
            app_secret: SecretString::from(app_secret.into()),
            kind: AppKind::SelfBuilt,
            events: EventSecrets::default(),
        }
    }
}

/// The name of the app configured by `FEISHU_APP_ID` (the one used without `x-feishu-app`).
pub const DEFAULT_APP: &str = "default";

impl Settings {
    /// Reads the optional TOML file, then the environment on top of it.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        Self::from_figment(file, Env::raw())
    }

    fn from_figment(file: Option<&std::path::Path>, env: Env) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        let env = env.filter_map(|key| {
            ENV_KEYS
                .iter()
                .find(|(var, _)| key.as_str().eq_ignore_ascii_case(var))
                .map(|(_, path)| (*path).into())
        });
        let settings: Settings = figment
            .merge(env.split("."))
            .extract()
            .map_err(|e| ConfigError(describe(&e)))?;
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let base = &self.feishu.base_url;
        let bad = |why: &str| {
            ConfigError(format!(
                "FEISHU_BASE_URL (feishu.base_url) {why}, got {base:?} (expected an origin like {DEFAULT_BASE_URL})"
            ))
        };
        let url = url::Url::parse(base).map_err(|_| bad("is not a URL"))?;
        if url.path() != "/" || base.ends_with('/') || url.query().is_some() {
            return Err(bad("must be an origin without a path"));
        }
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(&url) => {}
            "http" => return Err(bad("must use https unless it is a loopback address")),
            _ => return Err(bad("must be http(s)")),
        }
        for (name, windows) in &self.gateway.limits {
            if crate::catalog::by_name(name).is_none() {
                return Err(ConfigError(format!(
                    "gateway.limits names an unknown endpoint {name:?}"
                )));
            }
            if windows.is_empty() || windows.iter().any(|w| w.limit == 0 || w.per_ms == 0) {
                return Err(ConfigError(format!(
                    "gateway.limits.{name:?} needs windows with limit > 0 and per_ms > 0"
                )));
            }
        }
        for (i, caller) in self.gateway.callers.iter().enumerate() {
            let at = format!("gateway.callers[{i}] ({:?})", caller.name);
            if caller.name.trim().is_empty() {
                return Err(ConfigError(format!("{at}: name must not be empty")));
            }
            if let Some(hash) = &caller.key_sha256 {
                if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(ConfigError(format!(
                        "{at}: key_sha256 must be 64 hex digits (sha256sum of the key)"
                    )));
                }
            }
            if caller.key_sha256.is_none()
                && caller.spiffe_id.is_none()
                && caller.dns_name.is_none()
            {
                return Err(ConfigError(format!(
                    "{at}: needs key_sha256, spiffe_id or dns_name"
                )));
            }
            if caller.allow.is_empty() {
                return Err(ConfigError(format!("{at}: allow lists no method")));
            }
        }
        if self.gateway.max_concurrent_calls == 0 || self.gateway.max_concurrent_per_caller == 0 {
            return Err(ConfigError(
                "GATEWAY_MAX_CONCURRENT_CALLS and GATEWAY_MAX_CONCURRENT_PER_CALLER must be greater than zero".into(),
            ));
        }
        let g = &self.gateway;
        if g.max_streams_per_connection == 0
            || g.max_connections == 0
            || g.max_connections_per_peer == 0
            || g.handshake_timeout_ms == 0
            || g.idle_timeout_ms == 0
        {
            return Err(ConfigError(
                "GATEWAY_MAX_STREAMS_PER_CONNECTION, GATEWAY_MAX_CONNECTIONS, GATEWAY_MAX_CONNECTIONS_PER_PEER, GATEWAY_HANDSHAKE_TIMEOUT_MS and GATEWAY_IDLE_TIMEOUT_MS must be greater than zero".into(),
            ));
        }
        if self.gateway.default_limit_per_minute == 0 || self.gateway.replicas == 0 {
            return Err(ConfigError(
                "GATEWAY_DEFAULT_LIMIT_PER_MINUTE and GATEWAY_REPLICAS must be greater than zero"
                    .into(),
            ));
        }
        if self.gateway.audit_queue == 0 {
            return Err(ConfigError(
                "GATEWAY_AUDIT_QUEUE must be greater than zero".into(),
            ));
        }
        if self.gateway.idempotency_ttl_secs == 0 {
            return Err(ConfigError(
                "GATEWAY_IDEMPOTENCY_TTL_SECS must be greater than zero".into(),
            ));
        }
        if self.feishu.request_timeout_ms == 0
            || self.gateway.max_request_bytes == 0
            || self.feishu.max_response_bytes == 0
            || self.feishu.max_connections == 0
        {
            return Err(ConfigError(
                "timeouts and size limits must be greater than zero".into(),
            ));
        }
        Ok(())
    }

    /// The app credentials, required unless the gateway runs against its sandbox.
    pub fn credentials(&self) -> Result<AppCredentials, ConfigError> {
        let f = &self.feishu;
        read_app(
            (
                "FEISHU_APP_ID (feishu.app_id)",
                "FEISHU_APP_SECRET or FEISHU_APP_SECRET_FILE (feishu.app_secret)",
            ),
            f.app_id.as_deref(),
            f.app_secret.as_ref(),
            f.app_secret_file.as_deref(),
            AppKind::SelfBuilt,
        )
    }

    /// Every app by name: the default app first, then `[[feishu.apps]]`.
    pub fn apps(
        &self,
        default: AppCredentials,
    ) -> Result<Vec<(String, AppCredentials)>, ConfigError> {
        let mut apps = vec![(DEFAULT_APP.to_owned(), default)];
        for (i, a) in self.feishu.apps.iter().enumerate() {
            let name = a.name.trim();
            if name.is_empty() || apps.iter().any(|(n, _)| n == name) {
                return Err(ConfigError(format!(
                    "feishu.apps[{i}].name must be non-empty and unique, got {name:?}"
                )));
            }
            let id_key = format!("feishu.apps[{i}].app_id");
            let secret_key = format!("feishu.apps[{i}].app_secret");
            let mut creds = read_app(
                (&id_key, &secret_key),
                Some(&a.app_id),
                a.app_secret.as_ref(),
                a.app_secret_file.as_deref(),
                a.kind,
            )?;
            creds.events = EventSecrets {
                verification_token: read_secret(
                    &format!("feishu.apps[{i}].verification_token"),
                    a.verification_token.as_ref(),
                    a.verification_token_file.as_deref(),
                )?,
                encrypt_key: read_secret(
                    &format!("feishu.apps[{i}].encrypt_key"),
                    a.encrypt_key.as_ref(),
                    a.encrypt_key_file.as_deref(),
                )?,
            };
            let has_events =
                creds.events.verification_token.is_some() || creds.events.encrypt_key.is_some();
            if has_events && creds.kind != AppKind::Store {
                return Err(ConfigError(format!(
                    "feishu.apps[{i}] ({name:?}): verification_token and encrypt_key are for store apps (kind = \"store\"), whose app_ticket Feishu pushes"
                )));
            }
            apps.push((name.to_owned(), creds));
        }
        Ok(apps)
    }

    /// Bound on one upstream exchange.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.feishu.request_timeout_ms)
    }
}

/// Checks one app's ID and secret (from the value or the file), naming the setting on failure.
fn read_app(
    (id_key, secret_key): (&str, &str),
    app_id: Option<&str>,
    secret: Option<&SecretString>,
    secret_file: Option<&std::path::Path>,
    kind: AppKind,
) -> Result<AppCredentials, ConfigError> {
    let app_id = match app_id.map(str::trim) {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ => return Err(ConfigError(format!("{id_key} is not set"))),
    };
    let Some(secret) = read_secret(secret_key, secret, secret_file)? else {
        return Err(ConfigError(format!("{secret_key} is not set")));
    };
    Ok(AppCredentials {
        app_id,
        app_secret: secret,
        kind,
        events: EventSecrets::default(),
    })
}

/// A secret from its value or, failing that, its file (trimmed, as mounted
/// Kubernetes secrets often end with a newline); one set but empty is an error.
fn read_secret(
    key: &str,
    value: Option<&SecretString>,
    file: Option<&std::path::Path>,
) -> Result<Option<SecretString>, ConfigError> {
    let secret = match (value, file) {
        (Some(secret), _) => secret.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|s| SecretString::from(s.trim().to_owned()))
            .map_err(|e| {
                ConfigError(format!(
                    "{key} file {} cannot be read: {}",
                    path.display(),
                    e.kind()
                ))
            })?,
        (None, None) => return Ok(None),
    };
    if secret.expose_secret().trim().is_empty() {
        return Err(ConfigError(format!("{key} is empty")));
    }
    Ok(Some(secret))
}

/// Plain HTTP is allowed only where no network is crossed (the sandbox, tests).
fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

/// Names the setting (and its variable) without echoing the value, which may be a secret.
fn describe(e: &figment::Error) -> String {
    let path = e.path.join(".");
    let var = ENV_KEYS
        .iter()
        .find(|(_, p)| *p == path)
        .map(|(v, _)| format!("{v} ({path})"))
        .unwrap_or(path);
    let what = match &e.kind {
        figment::error::Kind::InvalidType(_, expected) => format!("expected {expected}"),
        figment::error::Kind::InvalidValue(_, expected) => format!("expected {expected}"),
        figment::error::Kind::UnknownField(field, _) => format!("unknown key {field:?}"),
        figment::error::Kind::MissingField(field) => format!("missing key {field:?}"),
        figment::error::Kind::Message(m) if !path_is_secret(&e.path) => m.clone(),
        _ => "is not valid".to_owned(),
    };
    if var.is_empty() {
        what
    } else {
        format!("{var}: {what}")
    }
}

fn path_is_secret(path: &[String]) -> bool {
    path.iter()
        .any(|p| p.contains("secret") || p.contains("token") || p.contains("key"))
}

#[cfg(test)]
mod tests;
