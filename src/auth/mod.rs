//! Who may call, and what. The rules here are pure (testable without a
//! network); `layer.rs` applies them to every gRPC request at the edge.
//!
//! A caller proves who it is with a client certificate (its SPIFFE URI SAN
//! or a DNS SAN, under mTLS) or a bearer key (stored only as a SHA-256 hash,
//! compared in constant time). Each caller has an allow-list of full method
//! names. With no callers configured the gateway is open, which `app` allows
//! only on a loopback address or with `--insecure-no-auth`.

pub mod layer;

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{CallerSettings, GatewaySettings};
use crate::reason::Reason;

/// Why a request was turned away (the status never says which keys exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No credentials, or credentials that match no caller.
    Unauthenticated { reason: Reason },
    /// A known caller asked for a method it is not allowed.
    PermissionDenied { caller: Arc<str> },
}

struct Caller {
    name: Arc<str>,
    key_hash: Option<[u8; 32]>,
    spiffe_id: Option<String>,
    dns_name: Option<String>,
    allow: Vec<String>,
}

/// The configured callers and what is public.
pub struct Policy {
    callers: Vec<Caller>,
    health_public: bool,
    reflection_public: bool,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.callers.iter().map(|c| &*c.name).collect();
        f.debug_struct("Policy").field("callers", &names).finish()
    }
}

const HEALTH: &str = "grpc.health.v1.Health/";
const REFLECTION: [&str; 2] = [
    "grpc.reflection.v1.ServerReflection/",
    "grpc.reflection.v1alpha.ServerReflection/",
];

impl Policy {
    pub fn new(settings: &GatewaySettings) -> Self {
        Self {
            callers: settings.callers.iter().map(caller).collect(),
            health_public: settings.health_public,
            reflection_public: settings.reflection_public,
        }
    }

    /// No callers configured: every request is let in, unauthenticated.
    pub fn is_open(&self) -> bool {
        self.callers.is_empty()
    }

    /// Decides on one request. `path` is the HTTP/2 path (`/pkg.Service/Method`);
    /// `bearer` the key from `authorization: Bearer …`; `peer` the client
    /// certificate's DER. Returns the caller's name when one was identified.
    pub fn check(
        &self,
        path: &str,
        bearer: Option<&str>,
        peer: Option<&[u8]>,
    ) -> Result<Option<Arc<str>>, Denial> {
        if self.is_open() {
            return Ok(None);
        }
        let method = path.strip_prefix('/').unwrap_or(path);
        let public = (self.health_public && method.starts_with(HEALTH))
            || (self.reflection_public && REFLECTION.iter().any(|p| method.starts_with(p)));
        let caller = self.identify(bearer, peer);
        let caller = match (caller, public) {
            (Ok(c), _) => c,
            (Err(_), true) => return Ok(None),
            (Err(reason), false) => return Err(Denial::Unauthenticated { reason }),
        };
        if public || caller.allow.iter().any(|pattern| allows(pattern, method)) {
            Ok(Some(caller.name.clone()))
        } else {
            Err(Denial::PermissionDenied {
                caller: caller.name.clone(),
            })
        }
    }

    fn identify(&self, bearer: Option<&str>, peer: Option<&[u8]>) -> Result<&Caller, Reason> {
        if let Some(der) = peer {
            let (uris, dns) = subject_alt_names(der);
            let by_cert = self.callers.iter().find(|c| {
                c.spiffe_id
                    .as_ref()
                    .is_some_and(|id| uris.iter().any(|u| u == id))
                    || c.dns_name
                        .as_ref()
                        .is_some_and(|d| dns.iter().any(|n| n.eq_ignore_ascii_case(d)))
            });
            if let Some(c) = by_cert {
                return Ok(c);
            }
        }
        let Some(key) = bearer else {
            return Err(if peer.is_some() {
                Reason::CertificateNotRecognized
            } else {
                Reason::CredentialsMissing
            });
        };
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        // Compare with every caller, without stopping at a match, so that
        // timing says nothing about which keys exist.
        let mut found = None;
        for c in &self.callers {
            if let Some(expected) = &c.key_hash {
                if bool::from(expected.ct_eq(&hash)) && found.is_none() {
                    found = Some(c);
                }
            }
        }
        found.ok_or(Reason::CredentialsInvalid)
    }
}

fn caller(s: &CallerSettings) -> Caller {
    Caller {
        name: Arc::from(s.name.as_str()),
        key_hash: s.key_sha256.as_deref().and_then(decode_hex),
        spiffe_id: s.spiffe_id.clone(),
        dns_name: s.dns_name.clone(),
        allow: s.allow.clone(),
    }
}

fn decode_hex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// `*`, `pkg.Service/*` or an exact `pkg.Service/Method`.
fn allows(pattern: &str, method: &str) -> bool {
    let pattern = pattern.strip_prefix('/').unwrap_or(pattern);
    match pattern.strip_suffix('*') {
        Some("") => true,
        Some(prefix) => prefix.ends_with('/') && method.starts_with(prefix),
        None => pattern == method,
    }
}

/// URI and DNS subject alternative names of a DER certificate.
fn subject_alt_names(der: &[u8]) -> (Vec<String>, Vec<String>) {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (mut uris, mut dns) = (Vec::new(), Vec::new());
    if let Ok((_, cert)) = X509Certificate::from_der(der) {
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => uris.push((*u).to_owned()),
                    GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                    _ => {}
                }
            }
        }
    }
    (uris, dns)
}

/// The hex SHA-256 of a bearer key, as `key_sha256` wants it.
pub fn key_hash(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        let s = GatewaySettings {
            callers: vec![
                CallerSettings {
                    name: "hr-portal".into(),
                    key_sha256: Some(key_hash("portal-key")),
                    spiffe_id: None,
                    dns_name: None,
                    allow: vec!["feishu.corehr.v2.PreHireService/*".into()],
                },
                CallerSettings {
                    name: "ats".into(),
                    key_sha256: Some(key_hash("ats-key")),
                    spiffe_id: Some("spiffe://corp/ats".into()),
                    dns_name: None,
                    allow: vec!["/feishu.hire.v1.ApplicationService/CancelOnboard".into()],
                },
            ],
            ..GatewaySettings::default()
        };
        Policy::new(&s)
    }

    const WITHDRAW: &str = "/feishu.corehr.v2.PreHireService/WithdrawOnboarding";
    const CANCEL: &str = "/feishu.hire.v1.ApplicationService/CancelOnboard";

    #[test]
    fn keys_identify_callers_and_allow_lists_bind_them() {
        let p = policy();
        assert_eq!(
            p.check(WITHDRAW, Some("portal-key"), None),
            Ok(Some(Arc::from("hr-portal")))
        );
        assert_eq!(
            p.check(CANCEL, Some("portal-key"), None),
            Err(Denial::PermissionDenied {
                caller: Arc::from("hr-portal")
            })
        );
        assert_eq!(
            p.check(CANCEL, Some("ats-key"), None),
            Ok(Some(Arc::from("ats")))
        );
        assert_eq!(
            p.check(WITHDRAW, Some("nope"), None),
            Err(Denial::Unauthenticated {
                reason: Reason::CredentialsInvalid
            })
        );
        assert_eq!(
            p.check(WITHDRAW, None, None),
            Err(Denial::Unauthenticated {
                reason: Reason::CredentialsMissing
            })
        );
    }

    #[test]
    fn health_is_public_and_reflection_is_not_by_default() {
        let p = policy();
        assert_eq!(
            p.check("/grpc.health.v1.Health/Check", None, None),
            Ok(None)
        );
        assert!(p
            .check(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                None,
                None
            )
            .is_err());
    }

    #[test]
    fn patterns() {
        assert!(allows("*", "a.B/C"));
        assert!(allows("a.B/*", "a.B/C"));
        assert!(!allows("a.B/*", "a.BX/C"));
        assert!(!allows("a.B*", "a.BX/C"));
        assert!(allows("/a.B/C", "a.B/C"));
        assert!(!allows("a.B/C", "a.B/CD"));
    }

    #[test]
    fn no_callers_means_open() {
        let p = Policy::new(&GatewaySettings::default());
        assert!(p.is_open());
        assert_eq!(p.check(WITHDRAW, None, None), Ok(None));
    }

    #[test]
    fn debug_names_callers_but_no_hashes() {
        let text = format!("{:?}", policy());
        assert!(text.contains("hr-portal"));
        assert!(!text.contains(&key_hash("portal-key")));
    }
}
