//! The records the four operations change, and the state machines that decide each answer.
//!
//! Every check is a pure function of the store, so each error code is produced by a
//! state a test can set up, in the order Feishu documents them.

use std::collections::{HashMap, HashSet};

use serde_json::json;

use super::config::Endpoint;
use super::email::{self, TakenBy};
use super::wire::{ApiError, FieldViolation};

/// Where a pre-hire is in the onboarding flow; decides what withdraw and restore may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PreHireStage {
    /// 待入职
    Preparing,
    /// 准备就绪
    #[default]
    ReadyToOnboard,
    /// 审批中: both operations answer 1161094.
    InApproval,
    /// 已撤销: withdraw answers 1161129; restore works.
    Withdrawn,
    /// 已入职: both operations answer 1161129.
    Onboarded,
}

impl PreHireStage {
    /// The label Feishu puts into 1161129's message.
    pub fn label(self) -> &'static str {
        match self {
            PreHireStage::Preparing => "To be onboarded",
            PreHireStage::ReadyToOnboard => "Ready for onboarding",
            PreHireStage::InApproval => "In approval",
            PreHireStage::Withdrawn => "Withdrawn",
            PreHireStage::Onboarded => "Onboarded",
        }
    }
}

/// A pre-hire (待入职人员): the target of withdraw_onboarding and restore_flow_instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreHire {
    pub stage: PreHireStage,
    /// The headcount plan is full: restore needs `confirm_workforce: true` (else 1161063).
    pub headcount_full: bool,
    /// Checked on restore (empty: the pre-hire has none, nothing to check).
    pub work_email: String,
    /// false → restore answers 1161120.
    pub email_editable: bool,
    /// Someone else is operating on it (1161116).
    pub locked_by_other: bool,
    /// The app's data permission does not cover it (1161097).
    pub restricted: bool,
}

impl PreHire {
    /// A pre-hire ready to onboard, on which withdraw succeeds.
    pub fn ready() -> PreHire {
        PreHire {
            stage: PreHireStage::ReadyToOnboard,
            headcount_full: false,
            work_email: String::new(),
            email_editable: true,
            locked_by_other: false,
            restricted: false,
        }
    }

    /// A withdrawn pre-hire with this work email, on which restore runs the email checks.
    pub fn withdrawn_with_email(email: &str) -> PreHire {
        PreHire {
            stage: PreHireStage::Withdrawn,
            work_email: email.to_string(),
            ..PreHire::ready()
        }
    }
}

impl Default for PreHire {
    fn default() -> Self {
        PreHire::ready()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OffboardingState {
    #[default]
    Offboarded,
    Revoked,
}

/// An offboarding (离职信息): the target of offboardings/revoke.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Offboarding {
    pub state: OffboardingState,
    /// The employee's department was disabled (1160203).
    pub department_disabled: bool,
    /// Someone else is revoking it (1160204).
    pub locked_by_other: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ApplicationState {
    #[default]
    ToBeOnboarded,
    Terminated,
}

/// A hire application (投递) in the to-be-onboarded stage: the target of cancel_onboard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Application {
    pub state: ApplicationState,
    /// A Feishu People pre-hire exists for it: cancel there instead (1002910).
    pub bound_to_corehr: bool,
}

/// Which kind of record a call holds while it is being processed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum RecordKey {
    PreHire(String),
    Offboarding(String),
}

/// All records, plus the records currently held by an in-flight call.
#[derive(Default)]
pub(crate) struct Records {
    pub pre_hires: HashMap<String, PreHire>,
    pub offboardings: HashMap<String, Offboarding>,
    pub applications: HashMap<String, Application>,
    pub termination_reasons: HashSet<String>,
    pub taken_emails: HashMap<String, TakenBy>,
    pub busy: HashSet<RecordKey>,
}

/// A parsed business call.
#[derive(Clone, Debug)]
pub(crate) enum Call {
    Withdraw {
        pre_hire_id: String,
    },
    Restore {
        pre_hire_id: String,
        confirm_workforce: bool,
    },
    Revoke {
        offboarding_id: String,
    },
    Cancel {
        application_id: String,
        reason_ids: Vec<String>,
    },
}

impl Call {
    /// The record a call holds while it is processed (cancel_onboard holds none:
    /// Feishu documents no conflict code for it).
    pub fn hold_key(&self) -> Option<RecordKey> {
        match self {
            Call::Withdraw { pre_hire_id } | Call::Restore { pre_hire_id, .. } => {
                Some(RecordKey::PreHire(pre_hire_id.clone()))
            }
            Call::Revoke { offboarding_id } => Some(RecordKey::Offboarding(offboarding_id.clone())),
            Call::Cancel { .. } => None,
        }
    }
}

impl Records {
    /// The checks that come before the record is held: existence, permission, conflicts.
    pub fn gate(&self, call: &Call) -> Result<(), ApiError> {
        let held = call.hold_key().is_some_and(|key| self.busy.contains(&key));
        match call {
            Call::Withdraw { pre_hire_id } | Call::Restore { pre_hire_id, .. } => {
                let p = self.pre_hire(pre_hire_id)?;
                if p.restricted {
                    Err(ApiError::of(1_161_097))
                } else if p.locked_by_other || held {
                    Err(ApiError::of(1_161_116))
                } else {
                    Ok(())
                }
            }
            Call::Revoke { offboarding_id } => {
                let o = self
                    .offboardings
                    .get(offboarding_id)
                    .ok_or_else(|| ApiError::of(1_160_201))?;
                if o.state == OffboardingState::Revoked {
                    Err(ApiError::of(1_160_202))
                } else if o.department_disabled {
                    Err(ApiError::of(1_160_203))
                } else if o.locked_by_other || held {
                    Err(ApiError::of(1_160_204))
                } else {
                    Ok(())
                }
            }
            Call::Cancel { .. } => Ok(()),
        }
    }

    /// All checks (the gate again, then the state checks) and, if they pass, the change;
    /// returns the answer's `data`. The caller has released its own hold on the record.
    pub fn apply(&mut self, call: &Call) -> Result<serde_json::Value, ApiError> {
        self.gate(call)?;
        match call {
            Call::Withdraw { pre_hire_id } => {
                let stage = self.pre_hire(pre_hire_id)?.stage;
                match stage {
                    PreHireStage::InApproval => return Err(ApiError::of(1_161_094)),
                    PreHireStage::Withdrawn | PreHireStage::Onboarded => {
                        return Err(ApiError::stage(stage.label()))
                    }
                    PreHireStage::Preparing | PreHireStage::ReadyToOnboard => {}
                }
                self.set_stage(pre_hire_id, PreHireStage::Withdrawn);
                Ok(json!({"success": true}))
            }
            Call::Restore {
                pre_hire_id,
                confirm_workforce,
            } => {
                let p = self.pre_hire(pre_hire_id)?;
                match p.stage {
                    PreHireStage::InApproval => return Err(ApiError::of(1_161_094)),
                    PreHireStage::Withdrawn => {}
                    other => return Err(ApiError::stage(other.label())),
                }
                if p.headcount_full && !confirm_workforce {
                    return Err(ApiError::of(1_161_063));
                }
                if !p.work_email.is_empty() {
                    let taken = self.taken_emails.get(&p.work_email).copied();
                    email::check(&p.work_email, p.email_editable, taken)?;
                }
                self.set_stage(pre_hire_id, PreHireStage::Preparing);
                Ok(json!({"success": true}))
            }
            Call::Revoke { offboarding_id } => {
                if let Some(o) = self.offboardings.get_mut(offboarding_id) {
                    o.state = OffboardingState::Revoked;
                }
                Ok(json!({}))
            }
            Call::Cancel {
                application_id,
                reason_ids,
                ..
            } => {
                let Some(a) = self.applications.get_mut(application_id) else {
                    return Err(cancel_param(
                        "application_id",
                        application_id,
                        "application does not exist",
                    ));
                };
                if let Some(unknown) = reason_ids
                    .iter()
                    .find(|r| !self.termination_reasons.contains(*r))
                {
                    return Err(cancel_param(
                        "termination_reason_id_list",
                        unknown,
                        "termination reason does not exist",
                    ));
                }
                if a.state == ApplicationState::Terminated {
                    return Err(ApiError::of(1_002_221));
                }
                if a.bound_to_corehr {
                    return Err(ApiError::of(1_002_910));
                }
                a.state = ApplicationState::Terminated;
                Ok(json!({}))
            }
        }
    }

    fn pre_hire(&self, id: &str) -> Result<&PreHire, ApiError> {
        self.pre_hires
            .get(id)
            .ok_or_else(|| ApiError::of(1_161_105))
    }

    fn set_stage(&mut self, id: &str, stage: PreHireStage) {
        if let Some(p) = self.pre_hires.get_mut(id) {
            p.stage = stage;
        }
    }
}

fn cancel_param(field: &'static str, value: &str, description: &str) -> ApiError {
    ApiError::param(
        Endpoint::CancelOnboard,
        FieldViolation {
            field,
            value: Some(value.to_string()),
            description: description.to_string(),
        },
    )
}
