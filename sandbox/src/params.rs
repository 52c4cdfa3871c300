//! Request validation as Feishu does it: JSON types, required fields, lengths, enums.
//! Anything wrong is the endpoint's own parameter error, with `field_violations`.

use percent_encoding::percent_decode_str;
use serde_json::{Map, Value};

use super::config::Endpoint;
use super::records::Call;
use super::wire::{ApiError, FieldViolation};

const USER_ID_TYPES: [&str; 4] = ["open_id", "union_id", "user_id", "people_corehr_id"];
const TERMINATION_TYPES: [i64; 3] = [1, 22, 27];
const MAX_REASON_CHARS: usize = 500;

/// Turns a request (its body parsed as JSON, if it is JSON) into a [`Call`], or the
/// parameter error Feishu would answer.
pub(crate) fn parse(
    endpoint: Endpoint,
    application_id: Option<&str>,
    query: Option<&str>,
    body: Option<&Value>,
) -> Result<Call, ApiError> {
    let fields = Fields { endpoint };
    let Some(obj) = body.and_then(Value::as_object) else {
        return Err(fields.violation("body", None, "request body must be a JSON object"));
    };
    match endpoint {
        Endpoint::WithdrawOnboarding => {
            let pre_hire_id = fields.required_str(obj, "pre_hire_id")?;
            let reason = fields.required_str(obj, "withdraw_reason")?;
            if reason.chars().count() > MAX_REASON_CHARS {
                return Err(fields.violation(
                    "withdraw_reason",
                    Some(reason),
                    "withdraw_reason must be at most 500 characters",
                ));
            }
            Ok(Call::Withdraw { pre_hire_id })
        }
        Endpoint::RestoreFlowInstance => {
            let pre_hire_id = fields.required_str(obj, "pre_hire_id")?;
            let confirm_workforce = match obj.get("confirm_workforce") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    return Err(fields.violation(
                        "confirm_workforce",
                        Some(other.to_string()),
                        "confirm_workforce must be a boolean",
                    ))
                }
            };
            Ok(Call::Restore {
                pre_hire_id,
                confirm_workforce,
            })
        }
        Endpoint::RevokeOffboarding => {
            if let Some(t) = query_param(query, "user_id_type").filter(|t| !t.is_empty()) {
                if !USER_ID_TYPES.contains(&t.as_str()) {
                    let description =
                        "user_id_type must be one of open_id, union_id, user_id, people_corehr_id";
                    return Err(fields.violation("user_id_type", Some(t), description));
                }
            }
            let offboarding_id = fields.required_str(obj, "offboarding_id")?;
            fields.optional_str(obj, "operator_id")?;
            Ok(Call::Revoke { offboarding_id })
        }
        Endpoint::CancelOnboard => {
            let Some(termination_type) = obj.get("termination_type").and_then(Value::as_i64) else {
                let value = obj.get("termination_type").map(Value::to_string);
                let description = "termination_type is a required integer";
                return Err(fields.violation("termination_type", value, description));
            };
            if !TERMINATION_TYPES.contains(&termination_type) {
                let value = Some(termination_type.to_string());
                return Err(fields.violation(
                    "termination_type",
                    value,
                    "termination_type must be one of 1, 22, 27",
                ));
            }
            let reason_ids = match obj.get("termination_reason_id_list") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
                Some(other) => {
                    let value = Some(other.to_string());
                    return Err(fields.violation(
                        "termination_reason_id_list",
                        value,
                        "termination_reason_id_list must be an array of strings",
                    ));
                }
            };
            fields.optional_str(obj, "termination_reason_notes")?;
            Ok(Call::Cancel {
                application_id: application_id.unwrap_or_default().to_string(),
                reason_ids,
            })
        }
        _ => Err(fields.violation("body", None, "not a business endpoint")),
    }
}

/// Builds the endpoint's parameter errors.
struct Fields {
    endpoint: Endpoint,
}

impl Fields {
    fn violation(&self, field: &'static str, value: Option<String>, description: &str) -> ApiError {
        ApiError::param(
            self.endpoint,
            FieldViolation {
                field,
                value,
                description: description.to_string(),
            },
        )
    }

    fn required_str(
        &self,
        obj: &Map<String, Value>,
        field: &'static str,
    ) -> Result<String, ApiError> {
        match obj.get(field) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(Value::String(_)) => Err(self.violation(
                field,
                Some(String::new()),
                &format!("{field} must not be empty"),
            )),
            None | Some(Value::Null) => {
                Err(self.violation(field, None, &format!("{field} is required")))
            }
            Some(other) => Err(self.violation(
                field,
                Some(other.to_string()),
                &format!("{field} must be a string"),
            )),
        }
    }

    fn optional_str(&self, obj: &Map<String, Value>, field: &'static str) -> Result<(), ApiError> {
        match obj.get(field) {
            None | Some(Value::Null) | Some(Value::String(_)) => Ok(()),
            Some(other) => Err(self.violation(
                field,
                Some(other.to_string()),
                &format!("{field} must be a string"),
            )),
        }
    }
}

/// The first value of a query parameter, percent-decoded (`+` as space, as forms do).
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k) == name).then(|| decode(v))
    })
}

pub(crate) fn decode(s: &str) -> String {
    percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}
