//! Pure reading and writing of the Belfabriek XML-RPC calls: the two
//! request bodies, and the tolerant reading of their answers (member names
//! in any case, `available` as int, boolean or string, faults, decoding
//! errors). Every upstream text quoted in an error is redacted before it is
//! cut short, so no half PIN survives. No HTTP, no clock, no tokio: the
//! client in `client.rs` hands bodies in and gets values or errors out.

use super::BelfabriekError;
use crate::config::{AgentConfig, BelfabriekConfig};
use crate::secret::Secret;
use crate::text::{cap, quoted, shorten, with_article};
use crate::xmlrpc::{self, Response, Value};

/// The method that says whether an agent is enabled.
pub const METHOD_AGENT_AVAIL: &str = "ivr.getAgentAvail";

/// The method that says what an available agent's line is doing.
pub const METHOD_EXTENSION_STATUS: &str = "general.getExtensionStatus";

/// Longest upstream text quoted in an error.
pub const SNIPPET_CHARS: usize = 200;

/// Longest `availReason` kept (a real one is a word or two). Upstream may
/// send anything up to the body limit, and the reason goes into retained
/// state payloads and history rows.
pub const MAX_REASON_CHARS: usize = 256;

/// Longest destination (`extension`/`endpoint`: a phone number or SIP
/// address) kept.
pub const MAX_DESTINATION_CHARS: usize = 64;

/// Longest extension status kept (`idle`, `calling`, `called`, `wrapup`).
pub const MAX_EXTENSION_STATUS_CHARS: usize = 256;

/// What `ivr.getAgentAvail` says about an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentAvail {
    /// `available`.
    pub available: bool,
    /// `availReason`, trimmed (empty when absent).
    pub reason: String,
    /// `extension` (or `endpoint`), trimmed; `None` when absent or empty.
    pub destination: Option<String>,
}

/// The `ivr.getAgentAvail` request body: `{account_param: pin,
/// extension_param: agent.extension_id}`, every value a `<string>`.
pub fn agent_avail_call(config: &BelfabriekConfig, pin: &Secret, agent: &AgentConfig) -> Vec<u8> {
    let members = vec![
        (config.account_param.clone(), Value::from(pin.expose())),
        (
            config.extension_param.clone(),
            Value::from(agent.extension_id.as_str()),
        ),
    ];
    xmlrpc::encode_call(METHOD_AGENT_AVAIL, &[Value::Struct(members)])
}

/// The `general.getExtensionStatus` request body: supervisor, manager and
/// account ids (the account id defaults to the PIN, as in the documented
/// example; the others to empty) and the extension id, every value a
/// `<string>`.
pub fn extension_status_call(
    config: &BelfabriekConfig,
    pin: &Secret,
    agent: &AgentConfig,
) -> Vec<u8> {
    let names = &config.status_params;
    let members = vec![
        (
            names.sup_id.clone(),
            Value::from(agent.sup_id.as_deref().unwrap_or("")),
        ),
        (
            names.man_id.clone(),
            Value::from(agent.man_id.as_deref().unwrap_or("")),
        ),
        (
            names.cust_id.clone(),
            Value::from(agent.cust_id.as_deref().unwrap_or(pin.expose())),
        ),
        (
            names.ext_id.clone(),
            Value::from(agent.extension_id.as_str()),
        ),
    ];
    xmlrpc::encode_call(METHOD_EXTENSION_STATUS, &[Value::Struct(members)])
}

/// Reads an `ivr.getAgentAvail` answer leniently: `available` as int, i4,
/// boolean or string; `availReason` (any scalar, trimmed, at most
/// [`MAX_REASON_CHARS`]); the destination from `extension` or `endpoint`
/// (at most [`MAX_DESTINATION_CHARS`]). Member names match in any case.
pub fn interpret_agent_avail(body: &[u8], pin: &Secret) -> Result<AgentAvail, BelfabriekError> {
    let method = METHOD_AGENT_AVAIL;
    let answer = answer_struct(method, body, pin)?;
    let available = answer
        .member_ci("available")
        .ok_or_else(|| malformed(method, "the answer has no member \"available\"".to_owned()))?;
    let available = available.as_bool_lenient().ok_or_else(|| {
        let shown = available
            .as_text_lenient()
            .map(|text| quoted(&pin.redact_in(&text)))
            .unwrap_or_else(|| with_article(available.kind()));
        malformed(
            method,
            format!("member \"available\" is {shown}, expected 0 or 1"),
        )
    })?;
    let reason = answer
        .member_ci("availReason")
        .and_then(Value::as_text_lenient)
        .map(|text| cap(text.trim(), MAX_REASON_CHARS))
        .unwrap_or_default();
    let destination = answer
        .member_ci("extension")
        .or_else(|| answer.member_ci("endpoint"))
        .and_then(Value::as_text_lenient)
        .map(|text| cap(text.trim(), MAX_DESTINATION_CHARS))
        .filter(|text| !text.is_empty());
    Ok(AgentAvail {
        available,
        reason,
        destination,
    })
}

/// Reads a `general.getExtensionStatus` answer: the status from member
/// `status` or `Available` (any case), lowercased and trimmed, at most
/// [`MAX_EXTENSION_STATUS_CHARS`].
pub fn interpret_extension_status(body: &[u8], pin: &Secret) -> Result<String, BelfabriekError> {
    let method = METHOD_EXTENSION_STATUS;
    let answer = answer_struct(method, body, pin)?;
    let status = answer
        .member_ci("status")
        .or_else(|| answer.member_ci("Available"))
        .ok_or_else(|| {
            malformed(
                method,
                "the answer has no member \"status\" or \"Available\"".to_owned(),
            )
        })?;
    let text = status.as_text_lenient().ok_or_else(|| {
        malformed(
            method,
            format!(
                "the status is {}, expected a string",
                with_article(status.kind())
            ),
        )
    })?;
    Ok(cap(text.trim(), MAX_EXTENSION_STATUS_CHARS).to_lowercase())
}

/// Decodes a body and returns its first param, which must be a struct.
/// Faults and decoding errors become [`BelfabriekError`]s with every quoted
/// text redacted.
fn answer_struct(
    method: &'static str,
    body: &[u8],
    pin: &Secret,
) -> Result<Value, BelfabriekError> {
    let params = match xmlrpc::decode_response(body) {
        Ok(Response::Params(params)) => params,
        Ok(Response::Fault { code, message }) => {
            return Err(BelfabriekError::Fault {
                method,
                code,
                message: shorten(&pin.redact_in(&message), SNIPPET_CHARS),
            })
        }
        Err(error) => return Err(malformed(method, decode_error_detail(body, error, pin))),
    };
    match params.into_iter().next() {
        Some(value @ Value::Struct(_)) => Ok(value),
        Some(other) => Err(malformed(
            method,
            format!(
                "the answer is {}, expected a struct",
                with_article(other.kind())
            ),
        )),
        None => Err(malformed(method, "the answer has no params".to_owned())),
    }
}

/// The message of a decoding error, redacted. The decoder cuts quoted text
/// short, which could cut the PIN in half and defeat redaction; so when the
/// body holds the PIN, the error is taken from the body with the PIN
/// already redacted.
fn decode_error_detail(body: &[u8], error: xmlrpc::DecodeError, pin: &Secret) -> String {
    let secret = pin.expose().as_bytes();
    let holds_pin = !secret.is_empty() && body.windows(secret.len()).any(|window| window == secret);
    let message = if holds_pin {
        let redacted = pin.redact_in(&String::from_utf8_lossy(body));
        match xmlrpc::decode_response(redacted.as_bytes()) {
            Err(error) => error.to_string(),
            Ok(_) => "the document does not parse".to_owned(),
        }
    } else {
        error.to_string()
    };
    shorten(&pin.redact_in(&message), SNIPPET_CHARS)
}

fn malformed(method: &'static str, detail: String) -> BelfabriekError {
    BelfabriekError::Malformed { method, detail }
}

/// The start of an error body for a message: whitespace collapsed, the PIN
/// redacted (before cutting, so no half PIN survives), at most
/// [`SNIPPET_CHARS`] characters.
pub(super) fn snippet(body: &[u8], pin: &Secret) -> String {
    let text = String::from_utf8_lossy(body);
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.is_empty() {
        return "(empty body)".to_owned();
    }
    shorten(&pin.redact_in(&collapsed), SNIPPET_CHARS)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::belfabriek::fixtures::*;
    use crate::xmlrpc::{encode_response, Encoding};

    /// An expected `ivr.getAgentAvail` reading: available, reason,
    /// destination; or a fragment of the expected error message.
    type ExpectedAvail = Result<(bool, &'static str, Option<&'static str>), &'static str>;

    /// Interprets an `ivr.getAgentAvail` body and compares with the expected
    /// reading or a fragment of the expected error message.
    fn check_avail(body: &[u8], expected: ExpectedAvail) {
        let got = interpret_agent_avail(body, &pin());
        match (&got, expected) {
            (Ok(avail), Ok((available, reason, destination))) => {
                assert_eq!(avail.available, available, "{got:?}");
                assert_eq!(avail.reason, reason, "{got:?}");
                assert_eq!(avail.destination.as_deref(), destination, "{got:?}");
            }
            (Err(error), Err(fragment)) => {
                assert_no_pin(error);
                assert!(
                    error.to_string().contains(fragment),
                    "{error} lacks {fragment:?}"
                );
                assert!(error.to_string().contains(METHOD_AGENT_AVAIL), "{error}");
            }
            _ => panic!("got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn agent_avail_answers_are_read_leniently() {
        let html = format!("<html><body>bad pin {PIN}</body></html>");
        let cases: Vec<(Vec<u8>, ExpectedAvail)> = vec![
            (SEED_AGENT_AVAIL.as_bytes().to_vec(), Ok((false, "-", Some("31201234567")))),
            (
                answer(&[("available", Value::Int(1)), ("availReason", "".into()), ("extension", "31201234567".into())]),
                Ok((true, "", Some("31201234567"))),
            ),
            (
                answer(&[("available", Value::Bool(false)), ("availReason", " Pause ".into())]),
                Ok((false, "Pause", None)),
            ),
            (
                answer(&[("available", "1".into()), ("endpoint", "31612345678".into())]),
                Ok((true, "", Some("31612345678"))),
            ),
            (
                answer(&[("Available", "true".into()), ("AvailReason", "handling".into()), ("extension", Value::Int(31201234567))]),
                Ok((true, "handling", Some("31201234567"))),
            ),
            (
                answer(&[("available", Value::Int(0)), ("availReason", Value::Nil), ("extension", " ".into())]),
                Ok((false, "", None)),
            ),
            (answer(&[("availReason", "-".into())]), Err("no member \"available\"")),
            (answer(&[("available", "maybe".into())]), Err("\"maybe\", expected 0 or 1")),
            (answer(&[("available", PIN.into())]), Err("\"[redacted]\", expected 0 or 1")),
            (answer(&[("available", Value::Array(vec![]))]), Err("is an array")),
            (
                encode_response(&Response::Params(vec!["x".into()]), Encoding::Utf8),
                Err("the answer is a string, expected a struct"),
            ),
            (
                encode_response(&Response::Params(vec![]), Encoding::Utf8),
                Err("no params"),
            ),
            (fault_body(401, &format!("invalid accountCode {PIN}")), Err("returned fault 401: invalid accountCode [redacted]")),
            (Vec::new(), Err("malformed response: empty body")),
            (html.into_bytes(), Err("unexpected element <html>")),
            (SEED_AGENT_AVAIL.as_bytes()[..120].to_vec(), Err("truncated document")),
            (
                format!("<methodResponse><params><param><value>x{PIN}<i4>1</i4></value></param></params></methodResponse>").into_bytes(),
                Err("unexpected text \"x[redacted]\""),
            ),
        ];
        for (body, expected) in cases {
            check_avail(&body, expected);
        }
    }

    #[test]
    fn huge_upstream_strings_are_capped() {
        let huge = |c: &str| c.repeat(1 << 20);
        let body = answer(&[
            ("available", Value::Int(0)),
            ("availReason", huge("r").into()),
            ("extension", huge("3").into()),
        ]);
        let avail = interpret_agent_avail(&body, &pin()).unwrap();
        assert_eq!(avail.reason, "r".repeat(MAX_REASON_CHARS));
        assert_eq!(avail.destination, Some("3".repeat(MAX_DESTINATION_CHARS)));
        let body = answer(&[("status", format!("  {}", huge("É")).into())]);
        let status = interpret_extension_status(&body, &pin()).unwrap();
        assert_eq!(status, "é".repeat(MAX_EXTENSION_STATUS_CHARS));
        // Short values are untouched.
        let body = answer(&[
            ("available", Value::Int(0)),
            ("availReason", " Lunch ".into()),
        ]);
        assert_eq!(
            interpret_agent_avail(&body, &pin()).unwrap().reason,
            "Lunch"
        );
    }

    #[test]
    fn a_pin_cut_in_half_by_the_decoder_is_still_redacted() {
        // The decoder quotes at most 40 characters: put the PIN across that cut.
        let text = format!("{}{PIN}", "y".repeat(38));
        let body = format!("<methodResponse>{text}</methodResponse>");
        let error = interpret_agent_avail(body.as_bytes(), &pin()).unwrap_err();
        assert!(!error.to_string().contains("98"), "{error}");
    }

    #[test]
    fn extension_status_is_read_from_status_or_available_in_any_case() {
        let cases: Vec<(Vec<u8>, Result<&str, &str>)> = vec![
            (SEED_EXTENSION_STATUS.as_bytes().to_vec(), Ok("called")),
            (answer(&[("status", "idle".into())]), Ok("idle")),
            (answer(&[("STATUS", " WrapUp ".into())]), Ok("wrapup")),
            (answer(&[("available", "Calling".into())]), Ok("calling")),
            (answer(&[("status", "".into())]), Ok("")),
            (
                answer(&[("state", "idle".into())]),
                Err("no member \"status\" or \"Available\""),
            ),
            (
                answer(&[("status", Value::Struct(vec![]))]),
                Err("the status is a struct"),
            ),
            (
                fault_body(3, "unknown extension"),
                Err("returned fault 3: unknown extension"),
            ),
        ];
        for (body, expected) in cases {
            let got = interpret_extension_status(&body, &pin());
            match (&got, expected) {
                (Ok(status), Ok(want)) => assert_eq!(status, want),
                (Err(error), Err(fragment)) => {
                    assert!(
                        error.to_string().contains(fragment),
                        "{error} lacks {fragment:?}"
                    );
                    assert!(
                        error.to_string().contains(METHOD_EXTENSION_STATUS),
                        "{error}"
                    );
                }
                _ => panic!("got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn requests_carry_the_configured_members_as_strings() {
        let mut config = config("http://127.0.0.1:1/", Duration::from_secs(1));
        let mut alice = agent("10<01&");
        let (method, params) =
            xmlrpc::decode_call(&agent_avail_call(&config, &pin(), &alice)).unwrap();
        assert_eq!(method, METHOD_AGENT_AVAIL);
        assert_eq!(
            params,
            [Value::Struct(vec![
                ("accountCode".into(), PIN.into()),
                ("extensionId".into(), "10<01&".into()),
            ])]
        );

        let (method, params) =
            xmlrpc::decode_call(&extension_status_call(&config, &pin(), &alice)).unwrap();
        assert_eq!(method, METHOD_EXTENSION_STATUS);
        assert_eq!(
            params,
            [Value::Struct(vec![
                ("supId".into(), "7".into()),
                ("manId".into(), "".into()),
                ("accountCode".into(), PIN.into()),
                ("extensionId".into(), "10<01&".into()),
            ])]
        );

        config.account_param = "accountPin".into();
        config.status_params.cust_id = "custId".into();
        config.status_params.ext_id = "extId".into();
        alice.cust_id = Some("555".into());
        let body = agent_avail_call(&config, &pin(), &alice);
        assert!(String::from_utf8_lossy(&body).contains("<name>accountPin</name>"));
        let (_, params) =
            xmlrpc::decode_call(&extension_status_call(&config, &pin(), &alice)).unwrap();
        assert_eq!(
            params[0].member("custId").and_then(Value::as_str),
            Some("555")
        );
        assert_eq!(
            params[0].member("extId").and_then(Value::as_str),
            Some("10<01&")
        );
    }

    #[test]
    fn snippets_are_short_collapsed_and_redacted() {
        let body = format!(
            "<html>\n  <h1>Error</h1>\n\n {PIN} {}</html>",
            "z".repeat(500)
        );
        let text = snippet(body.as_bytes(), &pin());
        assert!(
            text.starts_with("<html> <h1>Error</h1> [redacted] zzz"),
            "{text}"
        );
        assert!(text.chars().count() <= SNIPPET_CHARS + 3, "{text}");
        assert_eq!(snippet(b" \n", &pin()), "(empty body)");
    }
}
