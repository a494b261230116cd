//! Pure reading of TRiNG's answers: `OK` or an error text for `add`, `del`
//! and `clean`; a JSON list, `null` or an error text for `list` and
//! `listqueues`; HTML pages (a proxy or maintenance page) and PHP warnings
//! printed before the answer. Upstream text is made safe to quote here
//! ([`clean_text`]: key redacted, one line, short). No HTTP.

use super::TringError;
use crate::secret::Secret;
use crate::text::shorten;

/// The longest upstream text kept in an error message.
pub(super) const MAX_ERROR_TEXT_CHARS: usize = 200;

/// Redacts the key from any upstream text inside an error.
pub(super) fn scrub(error: TringError, key: &Secret) -> TringError {
    match error {
        TringError::Rejected(text) => TringError::Rejected(clean_text(&text, key)),
        TringError::Malformed(text) => TringError::Malformed(clean_text(&text, key)),
        other => other,
    }
}

/// Upstream text made safe to show: key redacted, one line, shortened.
pub(super) fn clean_text(text: &str, key: &Secret) -> String {
    let redacted = key.redact_in(text.trim());
    let one_line: String = redacted
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    shorten(&one_line, MAX_ERROR_TEXT_CHARS)
}

/// Decides an `add`/`del`/`clean` answer: `OK` (any case, surrounding
/// whitespace ignored) is success, an empty body is malformed, and any other
/// text is TRiNG's error message. Pure.
pub fn interpret_ok_body(body: &str) -> Result<(), TringError> {
    let text = body.trim();
    if text.eq_ignore_ascii_case("ok") {
        Ok(())
    } else if text.is_empty() {
        Err(TringError::Malformed(
            "an empty answer where `OK` was expected".into(),
        ))
    } else if looks_like_html(text) {
        Err(html_answer(text))
    } else {
        Err(TringError::Rejected(text.to_owned()))
    }
}

/// Splits PHP's displayed warnings (`<br />\n<b>Warning</b>: ... <br />`)
/// from the script's own answer after them: `(answer, Some(warning))`. A
/// body without that shape is all answer. Pure.
pub fn split_php_warning(body: &str) -> (&str, Option<&str>) {
    let trimmed = body.trim();
    if let Some((warning, answer)) = trimmed.rsplit_once("<br />") {
        let answer = answer.trim();
        let warning = warning.trim();
        let php_message = ["Warning", "Notice", "Deprecated"]
            .iter()
            .any(|kind| warning.contains(&format!("<b>{kind}</b>:")));
        if php_message && !answer.contains('<') {
            return (answer, Some(warning));
        }
    }
    (trimmed, None)
}

/// True when an answer is an HTML page (a proxy or maintenance page), not
/// the API's plain text.
fn looks_like_html(text: &str) -> bool {
    let start = text.trim_start().to_ascii_lowercase();
    start.starts_with('<') || start.contains("<html")
}

/// The error for an HTML page where the API's answer was expected, quoting
/// its title when it has one.
fn html_answer(text: &str) -> TringError {
    let lower = text.to_ascii_lowercase();
    let title = lower
        .find("<title>")
        .and_then(|start| {
            let start = start + "<title>".len();
            lower[start..]
                .find("</title>")
                .and_then(|end| text.get(start..start + end))
        })
        .unwrap_or("untitled");
    TringError::Malformed(format!(
        "an HTML page ({title:?}) instead of the API's answer; is tring.url right and the service up?"
    ))
}

/// Decides a `list`/`listqueues` answer (`format=json`): `null` is an empty
/// list, a JSON array of strings (or numbers) is the list with any `-TENANT`
/// suffix removed, plain text is TRiNG's error message, and anything else is
/// malformed. Pure.
pub fn parse_member_list(body: &str, tenant: &str) -> Result<Vec<String>, TringError> {
    let text = body.trim();
    if text == "null" {
        return Ok(Vec::new());
    }
    if text.is_empty() {
        return Err(TringError::Malformed(
            "an empty answer where a JSON list was expected".into(),
        ));
    }
    if looks_like_html(text) {
        return Err(html_answer(text));
    }
    if !(text.starts_with('[') || text.starts_with('{')) {
        return Err(TringError::Rejected(text.to_owned()));
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|error| TringError::Malformed(format!("invalid JSON ({error}): {text}")))?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(object) => {
            let message = ["error", "message", "msg"]
                .iter()
                .find_map(|field| object.get(*field).and_then(|v| v.as_str()));
            return Err(match message {
                Some(message) => TringError::Rejected(message.to_owned()),
                None => TringError::Malformed(format!(
                    "a JSON object where a list was expected: {text}"
                )),
            });
        }
        other => {
            return Err(TringError::Malformed(format!(
                "a JSON value where a list was expected: {other}"
            )))
        }
    };
    items
        .into_iter()
        .map(|item| match item {
            serde_json::Value::String(member) => Ok(strip_tenant(&member, tenant)),
            serde_json::Value::Number(number) => Ok(number.to_string()),
            other => Err(TringError::Malformed(format!(
                "a list item that is not a string: {other}"
            ))),
        })
        .collect()
}

/// `"103-TENANT"` → `"103"`: the configured tenant suffix (any case), or
/// else everything from the first `-`.
fn strip_tenant(member: &str, tenant: &str) -> String {
    let member = member.trim();
    let suffix_start = member.len().saturating_sub(tenant.len() + 1);
    if !tenant.is_empty()
        && member.len() > tenant.len() + 1
        && member.is_char_boundary(suffix_start)
        && member[suffix_start..].eq_ignore_ascii_case(&format!("-{tenant}"))
    {
        return member[..suffix_start].to_owned();
    }
    match member.split_once('-') {
        Some((extension, _)) => extension.to_owned(),
        None => member.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_bodies_decide_success() {
        assert_eq!(interpret_ok_body("OK"), Ok(()));
        assert_eq!(interpret_ok_body(" ok\r\n"), Ok(()));
        assert!(matches!(
            interpret_ok_body(""),
            Err(TringError::Malformed(_))
        ));
        assert_eq!(
            interpret_ok_body("Queue not found"),
            Err(TringError::Rejected("Queue not found".into()))
        );
    }

    #[test]
    fn member_lists_parse() {
        let check = |body: &str, expected: Result<Vec<&str>, &str>| {
            let actual = parse_member_list(body, "ACME");
            match (actual, expected) {
                (Ok(actual), Ok(expected)) => assert_eq!(actual, expected, "{body}"),
                (Err(error), Err(kind)) => {
                    let actual_kind = match error {
                        TringError::Rejected(_) => "rejected",
                        TringError::Malformed(_) => "malformed",
                        _ => "other",
                    };
                    assert_eq!(actual_kind, kind, "{body}: {error}");
                }
                (actual, expected) => panic!("{body}: {actual:?} != {expected:?}"),
            }
        };
        check("null", Ok(vec![]));
        check(" null\n", Ok(vec![]));
        check("[]", Ok(vec![]));
        check(r#"["103-ACME","104-acme"]"#, Ok(vec!["103", "104"]));
        check(r#"["103-OTHER-TENANT", "105"]"#, Ok(vec!["103", "105"]));
        check(r#"[500, "501"]"#, Ok(vec!["500", "501"]));
        check("Invalid key", Err("rejected"));
        check(r#"{"error":"no such queue"}"#, Err("rejected"));
        check(r#"{"foo":1}"#, Err("malformed"));
        check("[\"103-ACME\"", Err("malformed"));
        check("[null]", Err("malformed"));
        check("", Err("malformed"));
    }

    #[test]
    fn php_warnings_before_the_answer_are_split_off() {
        let warning = "<br />\n<b>Warning</b>:  mysqli::query(): MySQL server has gone away in \
                       <b>/var/www/pbx/proxyapi.php</b> on line <b>214</b><br />\n";
        let body = format!("{warning}OK");
        let (answer, found) = split_php_warning(&body);
        assert_eq!(answer, "OK");
        assert!(found.is_some_and(|w| w.contains("gone away")));
        let body = format!("{warning}[\"201-SIM\"]\n");
        let (answer, _) = split_php_warning(&body);
        assert_eq!(parse_member_list(answer, "SIM"), Ok(vec!["201".to_owned()]));
        assert_eq!(split_php_warning(" OK\n"), ("OK", None));
        assert_eq!(
            split_php_warning("ERROR: a<br />b"),
            ("ERROR: a<br />b", None)
        );
    }

    #[test]
    fn html_pages_are_malformed_not_rejections() {
        let page =
            "<html>\n<head><title>Onderhoud / Maintenance</title></head><body>x</body></html>";
        for error in [
            interpret_ok_body(page),
            parse_member_list(page, "SIM").map(|_| ()),
        ] {
            match error {
                Err(TringError::Malformed(message)) => {
                    assert!(message.contains("Onderhoud / Maintenance"), "{message}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn tenant_suffix_with_dashes_is_stripped_whole() {
        assert_eq!(strip_tenant("103-ACME-NL", "ACME-NL"), "103");
        assert_eq!(strip_tenant("103", "ACME"), "103");
        assert_eq!(strip_tenant("é-ACME", "ACME"), "é");
    }
}
