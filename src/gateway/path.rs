//! Renders an endpoint's path template and query. Path parameters are
//! percent-encoded as ONE segment: `/`, `?`, `#`, `%` and `.` are all encoded,
//! so no value can reach Feishu as a different path.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Everything but unreserved letters, digits, `-` and `_` (even `.`, so that
/// `..` can never be normalised into a parent segment).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_');

/// Fills the `:name` segments of `template`, in order, from `params`, and
/// appends `query`. Returns `None` when the counts do not match (a catalog bug).
pub fn render(template: &str, params: &[&str], query: &[(&str, &str)]) -> Option<String> {
    let mut out = String::with_capacity(template.len() + 32);
    let mut params = params.iter();
    for (i, segment) in template.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if segment.starts_with(':') {
            out.extend(utf8_percent_encode(params.next()?, SEGMENT));
        } else {
            out.push_str(segment);
        }
    }
    if params.next().is_some() {
        return None;
    }
    for (i, (k, v)) in query.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.extend(utf8_percent_encode(k, SEGMENT));
        out.push('=');
        out.extend(utf8_percent_encode(v, SEGMENT));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "/open-apis/hire/v1/applications/:application_id/cancel_onboard";

    #[test]
    fn plain_ids_pass_unchanged() {
        assert_eq!(
            render(T, &["1111111111"], &[]).as_deref(),
            Some("/open-apis/hire/v1/applications/1111111111/cancel_onboard")
        );
    }

    #[test]
    fn hostile_values_stay_inside_their_segment() {
        for (value, encoded) in [
            ("a/b", "a%2Fb"),
            ("..", "%2E%2E"),
            ("x?y=1", "x%3Fy%3D1"),
            ("100%", "100%25"),
            ("a#b", "a%23b"),
            ("名", "%E5%90%8D"),
        ] {
            let path = render(T, &[value], &[]).unwrap();
            assert_eq!(
                path,
                format!("/open-apis/hire/v1/applications/{encoded}/cancel_onboard")
            );
            assert_eq!(path.matches('/').count(), T.matches('/').count());
        }
    }

    #[test]
    fn query_is_appended_and_encoded() {
        assert_eq!(
            render("/a/b", &[], &[("user_id_type", "open_id"), ("x", "a&b")]).as_deref(),
            Some("/a/b?user_id_type=open_id&x=a%26b")
        );
    }

    #[test]
    fn parameter_count_must_match() {
        assert_eq!(render(T, &[], &[]), None);
        assert_eq!(render("/a", &["x"], &[]), None);
    }
}
