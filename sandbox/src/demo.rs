//! Demo records (`seed_demo`), so that a newcomer can try every RPC and every documented
//! error without setting anything up. Happy paths use the IDs of Feishu's own examples.
//!
//! | ID | Record | What it produces |
//! | --- | --- | --- |
//! | `7345005664477775407` | pre-hire, ready to onboard | withdraw → success; then restore → success (back to "to be onboarded"); then withdraw again |
//! | `7345005664477775408` | pre-hire, onboarded | withdraw/restore → 1161129 (`"Onboarded"` stage) |
//! | `7345005664477775409` | pre-hire, withdrawn, headcount full | restore → 1161063, unless `confirm_workforce: true` |
//! | `7345005664477775410` | pre-hire, in approval | withdraw/restore → 1161094 |
//! | `7345005664477775411` | pre-hire outside the app's data permission | 1161097 |
//! | `7345005664477775412` | pre-hire locked by another operator | 1161116 |
//! | `7345005664477775413` | withdrawn, email not editable | restore → 1161120 |
//! | `7345005664477775414` | withdrawn, email `zhangsan.example.com` | restore → 1161034 |
//! | `7345005664477775415` | withdrawn, email `ZhangSan@example.com` | restore → 1161121 |
//! | `7345005664477775416` | withdrawn, email `z+s@example.com` | restore → 1161122 |
//! | `7345005664477775417` | withdrawn, email `zhangsan01@example.com` | restore → 1161124 |
//! | `7345005664477775418` | withdrawn, email `@example.com` | restore → 1161123 |
//! | `7345005664477775419` | withdrawn, email `zs@example.org` | restore → 1161035 |
//! | `7345005664477775420` | withdrawn, email `admin1@example.com` | restore → 1161126 |
//! | `7345005664477775421` | withdrawn, email `lisi@example.com` | restore → 1161036 |
//! | `7345005664477775422` | withdrawn, email `wangwu@example.com` | restore → 1161118 |
//! | `7345005664477775423` | withdrawn, email `zhaoliu@example.com` | restore → 1161119 |
//! | `7345005664477775424` | withdrawn, email `sunqi@example.com` | restore → 1161125 |
//! | `7345005664477775425` | withdrawn, email `zhouba@example.com` | restore → 1161127 |
//! | `7345005664477775426` | withdrawn, email `xiaoming@example.com` | restore → success |
//! | any other pre-hire ID | — | 1161105 |
//! | `7095671727698478604` | offboarding | revoke → success, `data: {}`; again → 1160202 |
//! | `7095671727698478605` | offboarding, already revoked | revoke → 1160202 |
//! | `7095671727698478606` | offboarding, department disabled | revoke → 1160203 |
//! | `7095671727698478607` | offboarding being revoked by someone else | revoke → 1160204 |
//! | any other offboarding ID | — | 1160201 |
//! | `1111111111` | application to be onboarded | cancel_onboard → success, `data: {}`; again → 1002221 |
//! | `1111111112` | application bound to a Feishu People pre-hire | cancel_onboard → 1002910 |
//! | `1111111113` | application already terminated | cancel_onboard → 1002221 |
//! | any other application ID | — | 1002002 |
//! | `6959090661225640000` | termination reason | usable in `termination_reason_id_list` (others → 1002002) |
//!
//! The errors Feishu produces internally (1161000, 1161204, 1161604, 1160101, 1160103,
//! 1002001) come only from injected faults.

use super::email::TakenBy;
use super::records::{
    Application, ApplicationState, Offboarding, OffboardingState, PreHire, PreHireStage, Records,
};

pub const PRE_HIRE_READY: &str = "7345005664477775407";
pub const PRE_HIRE_ONBOARDED: &str = "7345005664477775408";
pub const PRE_HIRE_HEADCOUNT_FULL: &str = "7345005664477775409";
pub const PRE_HIRE_IN_APPROVAL: &str = "7345005664477775410";
pub const PRE_HIRE_RESTRICTED: &str = "7345005664477775411";
pub const PRE_HIRE_LOCKED: &str = "7345005664477775412";
pub const PRE_HIRE_EMAIL_NOT_EDITABLE: &str = "7345005664477775413";
pub const PRE_HIRE_EMAIL_NO_AT: &str = "7345005664477775414";
pub const PRE_HIRE_EMAIL_UPPERCASE: &str = "7345005664477775415";
pub const PRE_HIRE_EMAIL_SPECIAL_CHAR: &str = "7345005664477775416";
pub const PRE_HIRE_EMAIL_TOO_LONG: &str = "7345005664477775417";
pub const PRE_HIRE_EMAIL_EMPTY_LOCAL: &str = "7345005664477775418";
pub const PRE_HIRE_EMAIL_WRONG_DOMAIN: &str = "7345005664477775419";
pub const PRE_HIRE_EMAIL_SENSITIVE: &str = "7345005664477775420";
pub const PRE_HIRE_EMAIL_ACTIVE_DUP: &str = "7345005664477775421";
pub const PRE_HIRE_EMAIL_BUSINESS_DUP: &str = "7345005664477775422";
pub const PRE_HIRE_EMAIL_OFFBOARDED_DUP: &str = "7345005664477775423";
pub const PRE_HIRE_EMAIL_LDAP_DUP: &str = "7345005664477775424";
pub const PRE_HIRE_EMAIL_MAILBOX_DUP: &str = "7345005664477775425";
pub const PRE_HIRE_WITHDRAWN: &str = "7345005664477775426";

pub const OFFBOARDING: &str = "7095671727698478604";
pub const OFFBOARDING_REVOKED: &str = "7095671727698478605";
pub const OFFBOARDING_DEPARTMENT_DISABLED: &str = "7095671727698478606";
pub const OFFBOARDING_LOCKED: &str = "7095671727698478607";

pub const APPLICATION: &str = "1111111111";
pub const APPLICATION_BOUND_TO_COREHR: &str = "1111111112";
pub const APPLICATION_TERMINATED: &str = "1111111113";

pub const TERMINATION_REASON: &str = "6959090661225640000";

/// Withdrawn pre-hires whose work email trips one check each (ID, email, taken by).
const EMAIL_CASES: [(&str, &str, Option<TakenBy>); 13] = [
    (PRE_HIRE_EMAIL_NOT_EDITABLE, "xiaohong@example.com", None),
    (PRE_HIRE_EMAIL_NO_AT, "zhangsan.example.com", None),
    (PRE_HIRE_EMAIL_UPPERCASE, "ZhangSan@example.com", None),
    (PRE_HIRE_EMAIL_SPECIAL_CHAR, "z+s@example.com", None),
    (PRE_HIRE_EMAIL_TOO_LONG, "zhangsan01@example.com", None),
    (PRE_HIRE_EMAIL_EMPTY_LOCAL, "@example.com", None),
    (PRE_HIRE_EMAIL_WRONG_DOMAIN, "zs@example.org", None),
    (PRE_HIRE_EMAIL_SENSITIVE, "admin1@example.com", None),
    (
        PRE_HIRE_EMAIL_ACTIVE_DUP,
        "lisi@example.com",
        Some(TakenBy::ActiveIndividual),
    ),
    (
        PRE_HIRE_EMAIL_BUSINESS_DUP,
        "wangwu@example.com",
        Some(TakenBy::BusinessMailbox),
    ),
    (
        PRE_HIRE_EMAIL_OFFBOARDED_DUP,
        "zhaoliu@example.com",
        Some(TakenBy::OffboardedIndividual),
    ),
    (
        PRE_HIRE_EMAIL_LDAP_DUP,
        "sunqi@example.com",
        Some(TakenBy::Ldap),
    ),
    (
        PRE_HIRE_EMAIL_MAILBOX_DUP,
        "zhouba@example.com",
        Some(TakenBy::ExistingMailbox),
    ),
];

pub(crate) fn seed(r: &mut Records) {
    let mut pre_hire = |id: &str, p: PreHire| r.pre_hires.insert(id.to_string(), p);
    let stage = |stage| PreHire {
        stage,
        ..PreHire::ready()
    };
    pre_hire(PRE_HIRE_READY, PreHire::ready());
    pre_hire(PRE_HIRE_ONBOARDED, stage(PreHireStage::Onboarded));
    pre_hire(
        PRE_HIRE_HEADCOUNT_FULL,
        PreHire {
            headcount_full: true,
            ..stage(PreHireStage::Withdrawn)
        },
    );
    pre_hire(PRE_HIRE_IN_APPROVAL, stage(PreHireStage::InApproval));
    pre_hire(
        PRE_HIRE_RESTRICTED,
        PreHire {
            restricted: true,
            ..PreHire::ready()
        },
    );
    pre_hire(
        PRE_HIRE_LOCKED,
        PreHire {
            locked_by_other: true,
            ..PreHire::ready()
        },
    );
    pre_hire(
        PRE_HIRE_WITHDRAWN,
        PreHire::withdrawn_with_email("xiaoming@example.com"),
    );
    for (id, email, _) in EMAIL_CASES {
        pre_hire(id, PreHire::withdrawn_with_email(email));
    }
    if let Some(p) = r.pre_hires.get_mut(PRE_HIRE_EMAIL_NOT_EDITABLE) {
        p.email_editable = false;
    }
    for (_, email, taken) in EMAIL_CASES {
        if let Some(by) = taken {
            r.taken_emails.insert(email.to_string(), by);
        }
    }

    let offboarding = |state, department_disabled, locked_by_other| Offboarding {
        state,
        department_disabled,
        locked_by_other,
    };
    let o = &mut r.offboardings;
    o.insert(
        OFFBOARDING.into(),
        offboarding(OffboardingState::Offboarded, false, false),
    );
    o.insert(
        OFFBOARDING_REVOKED.into(),
        offboarding(OffboardingState::Revoked, false, false),
    );
    o.insert(
        OFFBOARDING_DEPARTMENT_DISABLED.into(),
        offboarding(OffboardingState::Offboarded, true, false),
    );
    o.insert(
        OFFBOARDING_LOCKED.into(),
        offboarding(OffboardingState::Offboarded, false, true),
    );

    let application = |state, bound_to_corehr| Application {
        state,
        bound_to_corehr,
    };
    let a = &mut r.applications;
    a.insert(
        APPLICATION.into(),
        application(ApplicationState::ToBeOnboarded, false),
    );
    a.insert(
        APPLICATION_BOUND_TO_COREHR.into(),
        application(ApplicationState::ToBeOnboarded, true),
    );
    a.insert(
        APPLICATION_TERMINATED.into(),
        application(ApplicationState::Terminated, false),
    );

    r.termination_reasons.insert(TERMINATION_REASON.into());
}
