//! What a sandbox is told at start: credentials, token lifetimes, limits, timing.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use super::surface;

/// The Feishu operations the sandbox answers, so that tests, faults, limits and
/// statistics can name one without spelling its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    WithdrawOnboarding,
    RestoreFlowInstance,
    RevokeOffboarding,
    CancelOnboard,
    TenantToken,
    AppToken,
    IsvTenantToken,
    AppTicketResend,
    /// A generated endpoint (`routes.json`, the official SDK's corehr v2 and hire v1
    /// surface without the four seeds), by its index there: an index and not a name so
    /// that the enum stays `Copy` and cheap to hash. Get one with [`Endpoint::from_name`]
    /// or [`Endpoint::generated`].
    Route(u16),
}

impl Endpoint {
    /// The fixed endpoints (seeds and token endpoints), in a stable order: statistics
    /// list them all, called or not (generated endpoints only once called).
    pub const ALL: [Endpoint; 8] = [
        Endpoint::WithdrawOnboarding,
        Endpoint::RestoreFlowInstance,
        Endpoint::RevokeOffboarding,
        Endpoint::CancelOnboard,
        Endpoint::TenantToken,
        Endpoint::AppToken,
        Endpoint::IsvTenantToken,
        Endpoint::AppTicketResend,
    ];

    /// The name used by the control API (stats keys, fault targets, `--limit`): snake_case
    /// for the fixed endpoints, the SDK's name (`corehr.v2.pre_hires.search`) for a
    /// generated one.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Route(i) => surface::table()
                .get(i)
                .map_or("unknown_route", |r| r.name.as_str()),
            Endpoint::WithdrawOnboarding => "withdraw_onboarding",
            Endpoint::RestoreFlowInstance => "restore_flow_instance",
            Endpoint::RevokeOffboarding => "revoke_offboarding",
            Endpoint::CancelOnboard => "cancel_onboard",
            Endpoint::TenantToken => "tenant_token",
            Endpoint::AppToken => "app_token",
            Endpoint::IsvTenantToken => "isv_tenant_token",
            Endpoint::AppTicketResend => "app_ticket_resend",
        }
    }

    /// The inverse of [`Endpoint::name`], for names arriving over the control API; a
    /// seed's SDK name (`hire.v1.applications.cancel_onboard`) names the seed too.
    pub fn from_name(name: &str) -> Option<Endpoint> {
        Endpoint::ALL
            .into_iter()
            .find(|e| e.name() == name)
            .or_else(|| {
                surface::SEEDS
                    .iter()
                    .find(|(sdk, _)| *sdk == name)
                    .map(|(_, e)| *e)
            })
            .or_else(|| surface::table().index_of(name).map(Endpoint::Route))
    }

    /// Every generated endpoint, in `routes.json`'s order.
    pub fn generated() -> impl Iterator<Item = Endpoint> {
        let n = u16::try_from(surface::table().len()).unwrap_or(u16::MAX);
        (0..n).map(Endpoint::Route)
    }

    /// Business endpoints (the seeds and the generated ones) need a bearer token; the
    /// others hand tokens out.
    pub fn is_business(self) -> bool {
        matches!(
            self,
            Endpoint::WithdrawOnboarding
                | Endpoint::RestoreFlowInstance
                | Endpoint::RevokeOffboarding
                | Endpoint::CancelOnboard
                | Endpoint::Route(_)
        )
    }

    /// Whether a tenant_access_token may call it (a few generated endpoints take a
    /// user_access_token only, which the sandbox never issues).
    pub(crate) fn accepts_tenant_token(self) -> bool {
        match self {
            Endpoint::Route(i) => surface::table().get(i).is_some_and(|r| r.tenant),
            _ => true,
        }
    }

    /// The permission an app must have been granted to call a business endpoint.
    pub fn scope(self) -> Option<&'static str> {
        match self {
            Endpoint::WithdrawOnboarding => Some("corehr:pre_hire:withdraw_onboarding"),
            Endpoint::RestoreFlowInstance => Some("corehr:pre_hire:restore_flow_instance"),
            Endpoint::RevokeOffboarding => Some("corehr:offboarding.revoke:write"),
            Endpoint::CancelOnboard => Some("hire:application"),
            _ => None,
        }
    }

    /// Whether store (ISV) apps may call it: the documents list revoke and cancel_onboard
    /// for self-built apps only.
    pub fn open_to_store_apps(self) -> bool {
        matches!(
            self,
            Endpoint::WithdrawOnboarding | Endpoint::RestoreFlowInstance
        )
    }

    /// The frequency limit the Feishu documents state (limit, window).
    pub fn documented_limit(self) -> Option<(u32, Duration)> {
        match self {
            Endpoint::WithdrawOnboarding | Endpoint::RestoreFlowInstance => {
                Some((100, Duration::from_secs(60)))
            }
            Endpoint::CancelOnboard => Some((10, Duration::from_secs(1))),
            _ => None,
        }
    }

    /// The number Feishu puts in `method_id` of a troubleshooter link (made up, stable).
    pub(crate) fn method_id(self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Endpoint::Route(i) => {
                return surface::table()
                    .get(i)
                    .map_or(Cow::Borrowed("0"), |r| Cow::Borrowed(r.method_id.as_str()))
            }
            Endpoint::WithdrawOnboarding => "7372186441282191388",
            Endpoint::RestoreFlowInstance => "7372186441282207772",
            Endpoint::RevokeOffboarding => "7277442498435530770",
            Endpoint::CancelOnboard => "7085620457213018115",
            Endpoint::TenantToken => "6907569523177701377",
            Endpoint::AppToken => "6907569742384087041",
            Endpoint::IsvTenantToken => "6907569524100431874",
            Endpoint::AppTicketResend => "6907569743420080129",
        })
    }
}

/// A store (ISV) app: it gets tokens through app tickets and acts for tenants.
#[derive(Clone, Default)]
pub struct StoreApp {
    pub app_id: String,
    pub app_secret: String,
    pub tenant_keys: Vec<String>,
}

impl fmt::Debug for StoreApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreApp")
            .field("app_id", &self.app_id)
            .field("app_secret", &"<redacted>")
            .field("tenant_keys", &self.tenant_keys)
            .finish()
    }
}

/// Everything a test or a newcomer may want to vary; defaults match Feishu.
#[derive(Clone)]
pub struct SandboxConfig {
    /// The self-built app's id (`tenant_access_token/internal`).
    pub app_id: String,
    /// The self-built app's secret; never printed.
    pub app_secret: String,
    /// Lifetime of a newly issued token.
    pub token_ttl: Duration,
    /// While a token has at least this much life left, the same token is returned.
    pub token_reuse_below: Duration,
    /// Enforce frequency limits at all (false also disables `limit_overrides`).
    pub rate_limits: bool,
    /// Replace an endpoint's documented limit; several rows for one endpoint all apply.
    pub limit_overrides: Vec<(Endpoint, u32, Duration)>,
    /// How long a business call holds its record, so concurrent calls really conflict
    /// (a generated endpoint, which has no record, just takes this long).
    pub processing_delay: Duration,
    /// Load the records of [`super::demo`].
    pub seed_demo: bool,
    /// ISV apps known to the sandbox.
    pub store_apps: Vec<StoreApp>,
    /// Benchmarking: every well-formed business call succeeds without looking at or
    /// changing the records (tokens, limits, parameter checks and faults still apply).
    pub stateless: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            app_id: "cli_sandbox0000001".to_string(),
            app_secret: "sandbox-app-secret".to_string(),
            token_ttl: Duration::from_secs(7200),
            token_reuse_below: Duration::from_secs(1800),
            rate_limits: true,
            limit_overrides: Vec::new(),
            processing_delay: Duration::ZERO,
            seed_demo: false,
            store_apps: Vec::new(),
            stateless: false,
        }
    }
}

impl fmt::Debug for SandboxConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxConfig")
            .field("app_id", &self.app_id)
            .field("app_secret", &"<redacted>")
            .field("token_ttl", &self.token_ttl)
            .field("token_reuse_below", &self.token_reuse_below)
            .field("rate_limits", &self.rate_limits)
            .field("limit_overrides", &self.limit_overrides)
            .field("processing_delay", &self.processing_delay)
            .field("seed_demo", &self.seed_demo)
            .field("store_apps", &self.store_apps)
            .field("stateless", &self.stateless)
            .finish()
    }
}

impl SandboxConfig {
    /// The limits in force for an endpoint: overrides if any, else the documented one.
    pub(crate) fn limits_for(&self, endpoint: Endpoint) -> Vec<(u32, Duration)> {
        if !self.rate_limits {
            return Vec::new();
        }
        let overrides: Vec<(u32, Duration)> = self
            .limit_overrides
            .iter()
            .filter(|(e, _, _)| *e == endpoint)
            .map(|(_, limit, window)| (*limit, *window))
            .collect();
        if overrides.is_empty() {
            endpoint.documented_limit().into_iter().collect()
        } else {
            overrides
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_for_fixed_seed_and_generated_endpoints() {
        for e in Endpoint::ALL.into_iter().chain(Endpoint::generated()) {
            assert_eq!(Endpoint::from_name(e.name()), Some(e), "{}", e.name());
        }
        assert_eq!(
            Endpoint::from_name("hire.v1.applications.cancel_onboard"),
            Some(Endpoint::CancelOnboard)
        );
        let search = Endpoint::from_name("corehr.v2.pre_hires.search");
        assert!(matches!(search, Some(Endpoint::Route(_))));
        assert!(search.is_some_and(Endpoint::is_business));
        assert_eq!(search.map(Endpoint::documented_limit), Some(None));
        assert_eq!(Endpoint::from_name("corehr.v2.no_such.thing"), None);
        // The one user-token-only endpoint of the surface.
        let todos = Endpoint::from_name("hire.v1.todos.list");
        assert_eq!(todos.map(Endpoint::accepts_tenant_token), Some(false));
    }

    #[test]
    fn overrides_name_generated_endpoints() {
        let search = Endpoint::from_name("corehr.v2.pre_hires.search");
        let Some(search) = search else {
            panic!("pre_hires.search is generated");
        };
        let config = SandboxConfig {
            limit_overrides: vec![(search, 2, Duration::from_secs(1))],
            ..SandboxConfig::default()
        };
        assert_eq!(config.limits_for(search), vec![(2, Duration::from_secs(1))]);
        let other = Endpoint::from_name("corehr.v2.jobs.get");
        assert_eq!(other.map(|e| config.limits_for(e)), Some(Vec::new()));
    }
}
