//! The work-email checks restore_flow_instance runs, one error code each.

use super::wire::ApiError;

/// The tenant's mail domain: any other domain answers 1161035.
pub const TENANT_DOMAIN: &str = "example.com";

/// Why an address is already taken; each reason has its own error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TakenBy {
    /// 1161036
    ActiveIndividual,
    /// 1161118
    BusinessMailbox,
    /// 1161119
    OffboardedIndividual,
    /// 1161125
    Ldap,
    /// 1161127
    ExistingMailbox,
}

impl TakenBy {
    fn code(self) -> i64 {
        match self {
            TakenBy::ActiveIndividual => 1_161_036,
            TakenBy::BusinessMailbox => 1_161_118,
            TakenBy::OffboardedIndividual => 1_161_119,
            TakenBy::Ldap => 1_161_125,
            TakenBy::ExistingMailbox => 1_161_127,
        }
    }
}

const SENSITIVE: [&str; 2] = ["admin", "root"];

/// Checks a work email in the order Feishu reports problems; `taken` is who holds it.
pub(crate) fn check(email: &str, editable: bool, taken: Option<TakenBy>) -> Result<(), ApiError> {
    let fail = |code| Err(ApiError::of(code));
    if !editable {
        return fail(1_161_120);
    }
    if !email.contains('@') {
        return fail(1_161_034);
    }
    if email.chars().any(char::is_uppercase) {
        return fail(1_161_121);
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-@".contains(c);
    if !email.chars().all(allowed) {
        return fail(1_161_122);
    }
    if email.chars().count() > 20 {
        return fail(1_161_124);
    }
    let (local, domain) = email.split_once('@').unwrap_or((email, ""));
    if local.is_empty() || domain.contains('@') {
        return fail(1_161_123);
    }
    if domain != TENANT_DOMAIN {
        return fail(1_161_035);
    }
    if SENSITIVE.iter().any(|w| local.contains(w)) {
        return fail(1_161_126);
    }
    match taken {
        Some(by) => fail(by.code()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(email: &str) -> i64 {
        check(email, true, None).err().map_or(0, |e| e.code)
    }

    #[test]
    fn each_check_in_order() {
        assert_eq!(
            check("a@example.com", false, None).err().map(|e| e.code),
            Some(1_161_120)
        );
        assert_eq!(code("zhangsan.example.com"), 1_161_034);
        assert_eq!(code("Zs@example.com"), 1_161_121);
        assert_eq!(code("z+s@example.com"), 1_161_122);
        assert_eq!(code("zhangsan01@example.com"), 1_161_124);
        assert_eq!(code("@example.com"), 1_161_123);
        assert_eq!(code("a@b@example.com"), 1_161_123);
        assert_eq!(code("zs@example.org"), 1_161_035);
        assert_eq!(code("admin1@example.com"), 1_161_126);
        assert_eq!(code("zs@example.com"), 0);
        let taken = check("zs@example.com", true, Some(TakenBy::Ldap));
        assert_eq!(taken.err().map(|e| e.code), Some(1_161_125));
    }
}
