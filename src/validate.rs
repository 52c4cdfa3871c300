//! Field rules checked before anything reaches Feishu. Each rule appends to
//! a list so that the caller learns about every bad field at once.

use crate::error::FieldViolation;

/// Longest ID accepted; Feishu's IDs are 19-digit numbers or short prefixed strings.
pub const MAX_ID_LEN: usize = 64;

/// A Feishu ID: required, 1 to 64 of `[A-Za-z0-9_-]`.
pub fn id(field: &str, value: &str, out: &mut Vec<FieldViolation>) {
    if value.is_empty() {
        out.push(FieldViolation::new(field, "required: must not be empty"));
    } else if value.len() > MAX_ID_LEN {
        out.push(FieldViolation::new(
            field,
            format!("must be at most {MAX_ID_LEN} characters"),
        ));
    } else if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        out.push(FieldViolation::new(
            field,
            "must contain only letters, digits, '_' and '-' (a Feishu ID)",
        ));
    }
}

/// Free text: optionally required, at most `max` Unicode characters (not bytes).
pub fn text(field: &str, value: &str, required: bool, max: usize, out: &mut Vec<FieldViolation>) {
    if required && value.trim().is_empty() {
        out.push(FieldViolation::new(field, "required: must not be empty"));
        return;
    }
    let chars = value.chars().count();
    if chars > max {
        out.push(FieldViolation::new(
            field,
            format!("must be at most {max} characters, got {chars}"),
        ));
    }
    if value.chars().any(|c| c == '\0') {
        out.push(FieldViolation::new(
            field,
            "must not contain NUL characters",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(f: impl FnOnce(&mut Vec<FieldViolation>)) -> Vec<FieldViolation> {
        let mut v = Vec::new();
        f(&mut v);
        v
    }

    #[test]
    fn ids() {
        assert!(check(|v| id("x", "7345005664477775407", v)).is_empty());
        assert!(check(|v| id("x", "ou_7d8a6e6df7621556ce0d21922b676706ccs", v)).is_empty());
        for bad in ["", "a/b", "..", "1 2", "a%2F", &"9".repeat(65)] {
            let v = check(|v| id("x", bad, v));
            assert_eq!(v.len(), 1, "{bad:?}");
            assert_eq!(v[0].field, "x");
        }
    }

    #[test]
    fn text_counts_characters_not_bytes() {
        assert!(check(|v| text("r", &"撤".repeat(500), true, 500, v)).is_empty());
        let v = check(|v| text("r", &"撤".repeat(501), true, 500, v));
        assert!(v[0].description.contains("501"));
        assert_eq!(check(|v| text("r", "  ", true, 500, v)).len(), 1);
        assert!(check(|v| text("r", "", false, 500, v)).is_empty());
    }
}
