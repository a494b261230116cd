//! The simulated Belfabriek Agent Availability API
//! (`POST /xml/agent/xml.asp`): which answer a decoded XML-RPC call gets
//! (`upstream-apis.md` §1), and the bytes the real service would send.
//!
//! - `ivr.getAgentAvail` reads the PIN from `accountCode` (the documented
//!   PHP example) or `accountPin` (the prose), the agent from `extensionId`
//!   or `extId`, and answers `available` as `<i4>`, `availReason` and
//!   `extension` (the destination number).
//! - `general.getExtensionStatus` reads `supId` and `manId` (optional, not
//!   checked), the account from `accountCode`, `custId` or `accountPin` (it
//!   must equal the PIN, as the bridge's `cust_id` defaults to it), the agent
//!   as above, and answers one member named `Available` (the quirk of the
//!   documented response) holding `calling`, `called`, `wrapup` or `idle`.
//! - Faults, with HTTP 200: `-32700` body is not an XML-RPC call, `-32601`
//!   unknown method, `-32602` missing parameter, `1` wrong or missing account
//!   PIN, `2` unknown extension.
//! - Responses are ISO-8859-1, declared `<?xml version="1.0"
//!   encoding="iso-8859-1"?>`, indented with CRLF line ends the way the
//!   documented example response is laid out.
//!
//! The XML itself is written by [`crate::xmlrpc`]; this module only decides
//! the answer and lays it out. No IO, no locks.

use crate::xmlrpc::{self, Encoding, Response, Value};

use super::agents::VirtualState;

/// `ivr.getAgentAvail`.
pub const GET_AGENT_AVAIL: &str = "ivr.getAgentAvail";
/// `general.getExtensionStatus`.
pub const GET_EXTENSION_STATUS: &str = "general.getExtensionStatus";

/// Fault code: the body is not an XML-RPC `methodCall`.
pub const FAULT_PARSE: i64 = -32700;
/// Fault code: unknown method.
pub const FAULT_UNKNOWN_METHOD: i64 = -32601;
/// Fault code: a required parameter is missing.
pub const FAULT_MISSING_PARAMETER: i64 = -32602;
/// Fault code: wrong or missing account PIN.
pub const FAULT_ACCESS_DENIED: i64 = 1;
/// Fault code: no agent with that extension id.
pub const FAULT_UNKNOWN_EXTENSION: i64 = 2;
/// Fault code used by the injected `XmlRpcFault`.
pub const FAULT_INTERNAL: i64 = 500;

/// Member names that may carry the account PIN in `ivr.getAgentAvail`.
const AVAIL_ACCOUNT_MEMBERS: [&str; 2] = ["accountCode", "accountPin"];
/// Member names that may carry the account in `general.getExtensionStatus`.
const STATUS_ACCOUNT_MEMBERS: [&str; 3] = ["accountCode", "custId", "accountPin"];
/// Member names that may carry the extension id.
const EXTENSION_MEMBERS: [&str; 2] = ["extensionId", "extId"];

/// The extension id a call asks about, if it names one (used to target
/// per-agent faults before answering).
pub fn extension_of(params: &[Value]) -> Option<String> {
    member_text(params, &EXTENSION_MEMBERS)
}

/// The answer to a decoded call. `state_of` reads an agent's current state
/// by Belfabriek extension id (`None`: no such agent).
pub fn answer(
    method: &str,
    params: &[Value],
    account_pin: &str,
    state_of: impl FnOnce(&str) -> Option<VirtualState>,
) -> Response {
    let account_members: &[&str] = match method {
        GET_AGENT_AVAIL => &AVAIL_ACCOUNT_MEMBERS,
        GET_EXTENSION_STATUS => &STATUS_ACCOUNT_MEMBERS,
        _ => return fault(FAULT_UNKNOWN_METHOD, format!("unknown method {method}")),
    };
    if params.first().and_then(Value::as_struct).is_none() {
        return fault(FAULT_MISSING_PARAMETER, "expected one struct parameter");
    }
    match member_text(params, account_members) {
        Some(pin) if pin == account_pin => {}
        Some(_) => return fault(FAULT_ACCESS_DENIED, "access denied: invalid account code"),
        None => return fault(FAULT_MISSING_PARAMETER, "missing parameter accountCode"),
    }
    let Some(extension) = extension_of(params) else {
        return fault(FAULT_MISSING_PARAMETER, "missing parameter extensionId");
    };
    let Some(state) = state_of(&extension) else {
        return fault(
            FAULT_UNKNOWN_EXTENSION,
            format!("unknown extension {extension}"),
        );
    };
    let members = if method == GET_AGENT_AVAIL {
        vec![
            (
                "available".to_owned(),
                Value::Int(i64::from(state.available)),
            ),
            ("availReason".to_owned(), Value::String(state.reason)),
            (
                "extension".to_owned(),
                Value::String(state.destination.unwrap_or_default()),
            ),
        ]
    } else {
        vec![(
            "Available".to_owned(),
            Value::String(state.extension_status),
        )]
    };
    Response::Params(vec![Value::Struct(members)])
}

/// An XML-RPC fault.
pub fn fault(code: i64, message: impl Into<String>) -> Response {
    Response::Fault {
        code,
        message: message.into(),
    }
}

/// The bytes the real service would send for `response`: ISO-8859-1,
/// declared, indented.
pub fn render(response: &Response) -> Vec<u8> {
    indent_like_real_service(&xmlrpc::encode_response(response, Encoding::Iso8859_1))
}

/// The first of `names` present in the first struct parameter, as text
/// (strings as sent; numbers accepted too), trimmed.
fn member_text(params: &[Value], names: &[&str]) -> Option<String> {
    let parameter = params.first()?;
    names.iter().find_map(|name| {
        parameter
            .member(name)
            .and_then(Value::as_text_lenient)
            .map(|text| text.trim().to_owned())
    })
}

/// Lays compact XML out one element per line, two spaces per level, CRLF
/// line ends; an element holding only text (or nothing) stays on one line,
/// so no text content changes. Relies on the encoder's guarantees: no
/// attributes containing `>`, and `<`/`>` in text always escaped.
fn indent_like_real_service(compact: &[u8]) -> Vec<u8> {
    enum Token<'a> {
        Tag(&'a [u8]),
        Text(&'a [u8]),
    }
    let mut tokens = Vec::new();
    let mut rest = compact;
    while !rest.is_empty() {
        if rest[0] == b'<' {
            let end = rest
                .iter()
                .position(|&b| b == b'>')
                .map_or(rest.len(), |i| i + 1);
            tokens.push(Token::Tag(&rest[..end]));
            rest = &rest[end..];
        } else {
            let end = rest.iter().position(|&b| b == b'<').unwrap_or(rest.len());
            tokens.push(Token::Text(&rest[..end]));
            rest = &rest[end..];
        }
    }

    let is_open =
        |tag: &[u8]| !tag.starts_with(b"</") && !tag.starts_with(b"<?") && !tag.ends_with(b"/>");
    let is_close = |tag: &[u8]| tag.starts_with(b"</");
    let mut out = Vec::with_capacity(compact.len() * 2);
    let mut depth = 0usize;
    let mut index = 0;
    let newline_and_indent = |out: &mut Vec<u8>, depth: usize| {
        out.extend_from_slice(b"\r\n");
        out.extend(std::iter::repeat_n(b' ', depth * 2));
    };
    let mut first_line = true;
    while index < tokens.len() {
        match tokens[index] {
            // Text between elements is only the encoder's trailing newline.
            Token::Text(_) => index += 1,
            Token::Tag(tag) => {
                if is_close(tag) {
                    depth = depth.saturating_sub(1);
                }
                if !first_line {
                    newline_and_indent(&mut out, depth);
                }
                first_line = false;
                out.extend_from_slice(tag);
                index += 1;
                if !is_open(tag) {
                    continue;
                }
                // `<x>text</x>` or `<x></x>` stays on one line.
                match (tokens.get(index), tokens.get(index + 1)) {
                    (Some(Token::Text(text)), Some(Token::Tag(close))) if is_close(close) => {
                        out.extend_from_slice(text);
                        out.extend_from_slice(close);
                        index += 2;
                    }
                    (Some(Token::Tag(close)), _) if is_close(close) => {
                        out.extend_from_slice(close);
                        index += 1;
                    }
                    _ => depth += 1,
                }
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(members: &[(&str, &str)]) -> Vec<Value> {
        vec![Value::Struct(
            members
                .iter()
                .map(|(name, value)| ((*name).to_owned(), Value::from(*value)))
                .collect(),
        )]
    }

    fn state_of(extension: &str) -> Option<VirtualState> {
        (extension == "1001")
            .then(|| VirtualState::unavailable("privé").with_destination("31201234567"))
    }

    /// Answers `method` with `members` and checks the fault code (or the
    /// params when `expected_fault` is `None`).
    fn check(method: &str, members: &[(&str, &str)], expected_fault: Option<i64>) -> Response {
        let response = answer(method, &call(members), "1234", state_of);
        match (&response, expected_fault) {
            (Response::Fault { code, .. }, Some(expected)) => {
                assert_eq!(*code, expected, "{members:?}")
            }
            (Response::Params(_), None) => {}
            (other, expected) => {
                panic!("{method} {members:?}: {other:?}, expected fault {expected:?}")
            }
        }
        response
    }

    #[test]
    fn answers_and_faults() {
        check(
            GET_AGENT_AVAIL,
            &[("accountCode", "1234"), ("extensionId", "1001")],
            None,
        );
        check(
            GET_AGENT_AVAIL,
            &[("accountPin", "1234"), ("extId", "1001")],
            None,
        );
        check(
            GET_AGENT_AVAIL,
            &[("accountCode", "9999"), ("extensionId", "1001")],
            Some(FAULT_ACCESS_DENIED),
        );
        check(
            GET_AGENT_AVAIL,
            &[("extensionId", "1001")],
            Some(FAULT_MISSING_PARAMETER),
        );
        check(
            GET_AGENT_AVAIL,
            &[("accountCode", "1234")],
            Some(FAULT_MISSING_PARAMETER),
        );
        check(
            GET_AGENT_AVAIL,
            &[("accountCode", "1234"), ("extensionId", "42")],
            Some(FAULT_UNKNOWN_EXTENSION),
        );
        check(
            GET_EXTENSION_STATUS,
            &[
                ("supId", "1"),
                ("manId", "2"),
                ("accountCode", "1234"),
                ("extensionId", "1001"),
            ],
            None,
        );
        check(
            GET_EXTENSION_STATUS,
            &[("custId", "1234"), ("extId", "1001")],
            None,
        );
        check(
            GET_EXTENSION_STATUS,
            &[("custId", "1"), ("extId", "1001")],
            Some(FAULT_ACCESS_DENIED),
        );
        check("system.listMethods", &[], Some(FAULT_UNKNOWN_METHOD));
        let response = answer(GET_AGENT_AVAIL, &[], "1234", state_of);
        assert!(matches!(
            response,
            Response::Fault {
                code: FAULT_MISSING_PARAMETER,
                ..
            }
        ));
    }

    #[test]
    fn rendered_response_is_latin1_indented_and_decodes_back() {
        let response = check(
            GET_AGENT_AVAIL,
            &[("accountCode", "1234"), ("extensionId", "1001")],
            None,
        );
        let bytes = render(&response);
        assert!(bytes.starts_with(
            b"<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\r\n<methodResponse>\r\n  <params>"
        ));
        let text: String = bytes.iter().map(|&b| char::from(b)).collect();
        assert!(text.contains("<name>available</name>\r\n"), "{text}");
        assert!(text.contains("<i4>0</i4>"), "{text}");
        assert!(text.contains("<string>priv\u{e9}</string>"), "{text}");
        assert!(
            bytes.windows(5).any(|w| w == b"priv\xe9"),
            "é must be one ISO-8859-1 byte"
        );
        assert_eq!(xmlrpc::decode_response(&bytes).unwrap(), response);

        let empty = Response::Params(vec![Value::Struct(vec![(
            "Available".into(),
            Value::from(""),
        )])]);
        assert_eq!(xmlrpc::decode_response(&render(&empty)).unwrap(), empty);
        let fault = fault(FAULT_ACCESS_DENIED, "a <b> & c");
        assert_eq!(xmlrpc::decode_response(&render(&fault)).unwrap(), fault);
    }
}
