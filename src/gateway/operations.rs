//! How each RPC's request maps onto its catalog row: the path and query
//! parameters and the field rules. The JSON body is the request message
//! itself (its serde derive is set up in `build.rs`).

use crate::{
    catalog::{self, Endpoint},
    error::FieldViolation,
    gateway::{AuditFacts, Operation},
    pb::feishu::{
        corehr::v2::{
            RestoreFlowInstanceRequest, RestoreFlowInstanceResponse, RevokeRequest, RevokeResponse,
            UserIdType, WithdrawOnboardingRequest, WithdrawOnboardingResponse,
        },
        hire::v1::{CancelOnboardRequest, CancelOnboardResponse, TerminationType},
    },
    validate,
};

/// Feishu's limit on `withdraw_reason` ("上限为500字").
pub const WITHDRAW_REASON_MAX: usize = 500;
/// Bound on `termination_reason_notes` (Feishu documents none; this keeps abuse out).
pub const TERMINATION_NOTES_MAX: usize = 1000;
/// Bound on the number of termination reason IDs.
pub const TERMINATION_REASONS_MAX: usize = 100;

impl Operation for WithdrawOnboardingRequest {
    type Output = WithdrawOnboardingResponse;
    const ENDPOINT: &'static Endpoint = &catalog::WITHDRAW_ONBOARDING;

    fn validate(&self, out: &mut Vec<FieldViolation>) {
        validate::id("pre_hire_id", &self.pre_hire_id, out);
        validate::text(
            "withdraw_reason",
            &self.withdraw_reason,
            true,
            WITHDRAW_REASON_MAX,
            out,
        );
    }

    fn subject(&self) -> String {
        format!("pre_hires/{}", self.pre_hire_id)
    }

    fn audit(&self) -> AuditFacts {
        AuditFacts {
            related: Vec::new(),
            text_chars: Some(self.withdraw_reason.chars().count()),
        }
    }
}

impl Operation for RestoreFlowInstanceRequest {
    type Output = RestoreFlowInstanceResponse;
    const ENDPOINT: &'static Endpoint = &catalog::RESTORE_FLOW_INSTANCE;

    fn validate(&self, out: &mut Vec<FieldViolation>) {
        validate::id("pre_hire_id", &self.pre_hire_id, out);
    }

    fn subject(&self) -> String {
        format!("pre_hires/{}", self.pre_hire_id)
    }

    fn audit(&self) -> AuditFacts {
        AuditFacts {
            related: self
                .confirm_workforce
                .map(|c| vec![format!("confirm_workforce:{c}")])
                .unwrap_or_default(),
            text_chars: None,
        }
    }
}

impl Operation for RevokeRequest {
    type Output = RevokeResponse;
    const ENDPOINT: &'static Endpoint = &catalog::REVOKE_OFFBOARDING;

    fn query(&self) -> Vec<(&'static str, &'static str)> {
        let value = match UserIdType::try_from(self.user_id_type) {
            Ok(UserIdType::OpenId) => "open_id",
            Ok(UserIdType::UnionId) => "union_id",
            Ok(UserIdType::UserId) => "user_id",
            Ok(UserIdType::PeopleCoreHrId) => "people_corehr_id",
            Ok(UserIdType::Unspecified) | Err(_) => return Vec::new(),
        };
        vec![("user_id_type", value)]
    }

    fn validate(&self, out: &mut Vec<FieldViolation>) {
        validate::id("offboarding_id", &self.offboarding_id, out);
        if let Some(operator) = &self.operator_id {
            validate::id("operator_id", operator, out);
        }
        if UserIdType::try_from(self.user_id_type).is_err() {
            out.push(FieldViolation::new(
                "user_id_type",
                format!("unknown value {}", self.user_id_type),
            ));
        }
    }

    fn subject(&self) -> String {
        format!("offboardings/{}", self.offboarding_id)
    }

    fn audit(&self) -> AuditFacts {
        AuditFacts {
            related: self
                .operator_id
                .iter()
                .map(|o| format!("operator:{o}"))
                .collect(),
            text_chars: None,
        }
    }
}

impl Operation for CancelOnboardRequest {
    type Output = CancelOnboardResponse;
    const ENDPOINT: &'static Endpoint = &catalog::CANCEL_ONBOARD;

    fn path_params(&self) -> Vec<&str> {
        vec![&self.application_id]
    }

    fn validate(&self, out: &mut Vec<FieldViolation>) {
        validate::id("application_id", &self.application_id, out);
        match TerminationType::try_from(self.termination_type) {
            Ok(TerminationType::Unspecified) => out.push(FieldViolation::new(
                "termination_type",
                "required: one of WE_REJECTED (1), CANDIDATE_REJECTED (22), OTHER (27)",
            )),
            Err(_) => out.push(FieldViolation::new(
                "termination_type",
                format!(
                    "unknown value {}: must be 1, 22 or 27",
                    self.termination_type
                ),
            )),
            Ok(_) => {}
        }
        if self.termination_reason_id_list.len() > TERMINATION_REASONS_MAX {
            out.push(FieldViolation::new(
                "termination_reason_id_list",
                format!("at most {TERMINATION_REASONS_MAX} entries"),
            ));
        }
        for (i, reason) in self.termination_reason_id_list.iter().enumerate() {
            let before = out.len();
            validate::id("", reason, out);
            // Named only when wrong: no allocation on the valid path.
            for v in &mut out[before..] {
                v.field = format!("termination_reason_id_list[{i}]");
            }
        }
        if let Some(notes) = &self.termination_reason_notes {
            validate::text(
                "termination_reason_notes",
                notes,
                false,
                TERMINATION_NOTES_MAX,
                out,
            );
        }
    }

    fn subject(&self) -> String {
        format!("applications/{}", self.application_id)
    }

    fn audit(&self) -> AuditFacts {
        let mut related = vec![format!("termination_type:{}", self.termination_type)];
        related.extend(
            self.termination_reason_id_list
                .iter()
                .map(|r| format!("termination_reason:{r}")),
        );
        AuditFacts {
            related,
            text_chars: self
                .termination_reason_notes
                .as_ref()
                .map(|n| n.chars().count()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violations<O: Operation>(req: &O) -> Vec<String> {
        let mut v = Vec::new();
        req.validate(&mut v);
        v.into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn bodies_use_feishu_names_and_types_and_omit_unset_fields() {
        let withdraw = WithdrawOnboardingRequest {
            pre_hire_id: "7345005664477775407".into(),
            withdraw_reason: "r".into(),
        };
        assert_eq!(
            serde_json::to_value(&withdraw).unwrap(),
            serde_json::json!({"pre_hire_id":"7345005664477775407","withdraw_reason":"r"})
        );
        let restore = RestoreFlowInstanceRequest {
            pre_hire_id: "1".into(),
            confirm_workforce: None,
        };
        assert_eq!(
            serde_json::to_value(&restore).unwrap(),
            serde_json::json!({"pre_hire_id":"1"})
        );
        let restore = RestoreFlowInstanceRequest {
            confirm_workforce: Some(false),
            ..restore
        };
        assert_eq!(
            serde_json::to_value(&restore).unwrap(),
            serde_json::json!({"pre_hire_id":"1","confirm_workforce":false})
        );
        let revoke = RevokeRequest {
            offboarding_id: "7".into(),
            operator_id: None,
            user_id_type: UserIdType::PeopleCoreHrId as i32,
        };
        assert_eq!(
            serde_json::to_value(&revoke).unwrap(),
            serde_json::json!({"offboarding_id":"7"})
        );
        assert_eq!(revoke.query(), vec![("user_id_type", "people_corehr_id")]);
        let cancel = CancelOnboardRequest {
            application_id: "1111111111".into(),
            termination_type: TerminationType::CandidateRejected as i32,
            termination_reason_id_list: vec!["6959090661225640000".into()],
            termination_reason_notes: Some("候选人经历不匹配".into()),
        };
        assert_eq!(
            serde_json::to_value(&cancel).unwrap(),
            serde_json::json!({"termination_type":22,"termination_reason_id_list":["6959090661225640000"],"termination_reason_notes":"候选人经历不匹配"})
        );
        assert_eq!(cancel.path_params(), vec!["1111111111"]);
    }

    #[test]
    fn every_bad_field_is_named_at_once() {
        let cancel = CancelOnboardRequest {
            application_id: "../x".into(),
            termination_type: 5,
            termination_reason_id_list: vec![String::new()],
            termination_reason_notes: Some("x".repeat(TERMINATION_NOTES_MAX + 1)),
        };
        assert_eq!(
            violations(&cancel),
            vec![
                "application_id",
                "termination_type",
                "termination_reason_id_list[0]",
                "termination_reason_notes"
            ]
        );
        let revoke = RevokeRequest {
            offboarding_id: String::new(),
            operator_id: Some("a b".into()),
            user_id_type: 9,
        };
        assert_eq!(
            violations(&revoke),
            vec!["offboarding_id", "operator_id", "user_id_type"]
        );
    }
}
