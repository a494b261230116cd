//! The simulated Belfabriek Agent Availability API
//! (`POST /xml/agent/xml.asp`): which answer a call gets
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
//! This is on the hot path of every benchmark, so it avoids the generic
//! value tree where it can without changing a single answer:
//! - [`Call::read`] first scans the body with [`scan_call`], which accepts
//!   only the plain shape every known client sends (one struct of `<string>`
//!   members, ASCII, no entities, comments or CDATA) and picks out the few
//!   members the simulator reads, borrowing them from the body. Anything
//!   else goes through the full decoder ([`crate::xmlrpc::decode_call`]), so
//!   odd but valid calls, and every malformed one, are judged exactly as the
//!   decoder judges them.
//! - [`write_agent_avail`] and [`write_extension_status`] write the answer
//!   from the real service's layout ([`AVAIL_HEAD`] ...) when the texts need
//!   no escaping, and otherwise fall back to the encoder and indenter
//!   ([`render`]), which stay the reference the templates are tested against.
//!
//! No IO, no locks.

use std::borrow::Cow;

use crate::xmlrpc::{self, DecodeError, Encoding, Response, Value};

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

/// The members the simulator reads, in [`Call`] slot order.
const READ_MEMBERS: [&str; 5] = [
    "accountCode",
    "accountPin",
    "custId",
    "extensionId",
    "extId",
];
/// Slots (in [`READ_MEMBERS`]) that may carry the PIN in `ivr.getAgentAvail`:
/// `accountCode`, `accountPin`.
const AVAIL_ACCOUNT_SLOTS: [usize; 2] = [0, 1];
/// Slots that may carry the account in `general.getExtensionStatus`:
/// `accountCode`, `custId`, `accountPin`.
const STATUS_ACCOUNT_SLOTS: [usize; 3] = [0, 2, 1];
/// Slots that may carry the extension id: `extensionId`, `extId`.
const EXTENSION_SLOTS: [usize; 2] = [3, 4];

/// A request body as far as the simulator reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call<'a> {
    /// A well-formed `methodCall`.
    Method {
        /// The method name (trimmed).
        method: Cow<'a, str>,
        /// Whether the first parameter is a struct.
        struct_param: bool,
        /// Per [`READ_MEMBERS`] name: the text of the first member with that
        /// name, when it is a scalar (trimmed).
        members: [Option<Cow<'a, str>>; 5],
    },
    /// Not an XML-RPC call: why.
    Invalid(DecodeError),
}

impl<'a> Call<'a> {
    /// Reads a request body: the fast scan when it applies, the full decoder
    /// otherwise.
    pub fn read(body: &'a [u8]) -> Self {
        if let Some(call) = scan_call(body) {
            return call;
        }
        match xmlrpc::decode_call(body) {
            Ok((method, params)) => Call::from_params(Cow::Owned(method), &params),
            Err(error) => Call::Invalid(error),
        }
    }

    /// The call made of a decoded method and params.
    pub fn from_params(method: Cow<'a, str>, params: &[Value]) -> Call<'a> {
        let first = params.first();
        let members = READ_MEMBERS.map(|name| {
            first
                .and_then(|param| param.member(name))
                .and_then(Value::as_text_lenient)
                .map(|text| Cow::Owned(text.trim().to_owned()))
        });
        Call::Method {
            method,
            struct_param: first.and_then(Value::as_struct).is_some(),
            members,
        }
    }

    /// The method name (`None` for an invalid body).
    pub fn method(&self) -> Option<&str> {
        match self {
            Call::Method { method, .. } => Some(method),
            Call::Invalid(_) => None,
        }
    }

    /// The extension id the call asks about, if it names one (used to target
    /// per-agent faults and to log polls before answering).
    pub fn extension(&self) -> Option<&str> {
        self.first_of(&EXTENSION_SLOTS)
    }

    /// The first of the member `slots` present.
    fn first_of(&self, slots: &[usize]) -> Option<&str> {
        match self {
            Call::Method { members, .. } => slots.iter().find_map(|&slot| members[slot].as_deref()),
            Call::Invalid(_) => None,
        }
    }
}

/// What the service answers to a call; `A` is how the agent was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<A> {
    /// `ivr.getAgentAvail` about this agent.
    AgentAvail(A),
    /// `general.getExtensionStatus` about this agent.
    ExtensionStatus(A),
    /// An XML-RPC fault.
    Fault {
        /// `faultCode`.
        code: i64,
        /// `faultString`.
        message: String,
    },
}

/// Decides the answer to `call`. `find` looks an agent up by Belfabriek
/// extension id (`None`: no such agent).
pub fn decide<A>(
    call: &Call<'_>,
    account_pin: &str,
    find: impl FnOnce(&str) -> Option<A>,
) -> Answer<A> {
    let fault = |code, message: String| Answer::Fault { code, message };
    let (method, struct_param) = match call {
        Call::Method {
            method,
            struct_param,
            ..
        } => (method.as_ref(), *struct_param),
        Call::Invalid(error) => return fault(FAULT_PARSE, format!("parse error: {error}")),
    };
    let account_slots: &[usize] = match method {
        GET_AGENT_AVAIL => &AVAIL_ACCOUNT_SLOTS,
        GET_EXTENSION_STATUS => &STATUS_ACCOUNT_SLOTS,
        _ => return fault(FAULT_UNKNOWN_METHOD, format!("unknown method {method}")),
    };
    if !struct_param {
        return fault(
            FAULT_MISSING_PARAMETER,
            "expected one struct parameter".to_owned(),
        );
    }
    match call.first_of(account_slots) {
        Some(pin) if pin == account_pin => {}
        Some(_) => {
            return fault(
                FAULT_ACCESS_DENIED,
                "access denied: invalid account code".to_owned(),
            )
        }
        None => {
            return fault(
                FAULT_MISSING_PARAMETER,
                "missing parameter accountCode".to_owned(),
            )
        }
    }
    let Some(extension) = call.extension() else {
        return fault(
            FAULT_MISSING_PARAMETER,
            "missing parameter extensionId".to_owned(),
        );
    };
    let Some(agent) = find(extension) else {
        return fault(
            FAULT_UNKNOWN_EXTENSION,
            format!("unknown extension {extension}"),
        );
    };
    if method == GET_AGENT_AVAIL {
        Answer::AgentAvail(agent)
    } else {
        Answer::ExtensionStatus(agent)
    }
}

/// The extension id a decoded call asks about, if it names one.
pub fn extension_of(params: &[Value]) -> Option<String> {
    Call::from_params(Cow::Borrowed(""), params)
        .extension()
        .map(str::to_owned)
}

/// The answer to a decoded call as an XML-RPC response. `state_of` reads an
/// agent's current state by Belfabriek extension id (`None`: no such agent).
/// The reference for what the server writes with [`write_agent_avail`] and
/// [`write_extension_status`].
pub fn answer(
    method: &str,
    params: &[Value],
    account_pin: &str,
    state_of: impl FnOnce(&str) -> Option<VirtualState>,
) -> Response {
    let call = Call::from_params(Cow::Borrowed(method), params);
    match decide(&call, account_pin, state_of) {
        Answer::AgentAvail(state) => agent_avail_response(
            state.available,
            &state.reason,
            state.destination.as_deref().unwrap_or_default(),
        ),
        Answer::ExtensionStatus(state) => extension_status_response(&state.extension_status),
        Answer::Fault { code, message } => fault(code, message),
    }
}

fn agent_avail_response(available: bool, reason: &str, destination: &str) -> Response {
    Response::Params(vec![Value::Struct(vec![
        ("available".to_owned(), Value::Int(i64::from(available))),
        ("availReason".to_owned(), Value::from(reason)),
        ("extension".to_owned(), Value::from(destination)),
    ])])
}

fn extension_status_response(status: &str) -> Response {
    Response::Params(vec![Value::Struct(vec![(
        "Available".to_owned(),
        Value::from(status),
    )])])
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

/// The `ivr.getAgentAvail` answer up to the `available` digit, as the real
/// service lays it out.
pub const AVAIL_HEAD: &str = "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\r\n<methodResponse>\r\n  <params>\r\n    <param>\r\n      <value>\r\n        <struct>\r\n          <member>\r\n            <name>available</name>\r\n            <value>\r\n              <i4>";
/// From after the `available` digit to the `availReason` text.
pub const AVAIL_BEFORE_REASON: &str = "</i4>\r\n            </value>\r\n          </member>\r\n          <member>\r\n            <name>availReason</name>\r\n            <value>\r\n              <string>";
/// From after the reason to the `extension` text.
pub const AVAIL_BEFORE_EXTENSION: &str = "</string>\r\n            </value>\r\n          </member>\r\n          <member>\r\n            <name>extension</name>\r\n            <value>\r\n              <string>";
/// The `general.getExtensionStatus` answer up to the `Available` text.
pub const STATUS_HEAD: &str = "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\r\n<methodResponse>\r\n  <params>\r\n    <param>\r\n      <value>\r\n        <struct>\r\n          <member>\r\n            <name>Available</name>\r\n            <value>\r\n              <string>";
/// The end of both answers, after the last text.
pub const ANSWER_TAIL: &str = "</string>\r\n            </value>\r\n          </member>\r\n        </struct>\r\n      </value>\r\n    </param>\r\n  </params>\r\n</methodResponse>\r\n";

/// Appends the `ivr.getAgentAvail` answer to `out`.
pub fn write_agent_avail(out: &mut Vec<u8>, available: bool, reason: &str, destination: &str) {
    if is_plain(reason) && is_plain(destination) {
        out.extend_from_slice(AVAIL_HEAD.as_bytes());
        out.push(if available { b'1' } else { b'0' });
        out.extend_from_slice(AVAIL_BEFORE_REASON.as_bytes());
        out.extend_from_slice(reason.as_bytes());
        out.extend_from_slice(AVAIL_BEFORE_EXTENSION.as_bytes());
        out.extend_from_slice(destination.as_bytes());
        out.extend_from_slice(ANSWER_TAIL.as_bytes());
    } else {
        out.extend(render(&agent_avail_response(
            available,
            reason,
            destination,
        )));
    }
}

/// Appends the `general.getExtensionStatus` answer to `out`.
pub fn write_extension_status(out: &mut Vec<u8>, status: &str) {
    if is_plain(status) {
        out.extend_from_slice(STATUS_HEAD.as_bytes());
        out.extend_from_slice(status.as_bytes());
        out.extend_from_slice(ANSWER_TAIL.as_bytes());
    } else {
        out.extend(render(&extension_status_response(status)));
    }
}

/// True when the encoder writes `text` as it is: printable ASCII without the
/// five characters it escapes.
fn is_plain(text: &str) -> bool {
    text.bytes()
        .all(|b| matches!(b, 0x20..=0x7E) && !matches!(b, b'<' | b'>' | b'&' | b'"' | b'\''))
}

/// The plain shape of a call, scanned without building values: `None` when
/// the body is anything else (the full decoder then decides).
///
/// Accepted: an optional XML declaration naming an ASCII-compatible encoding
/// (or none), then `<methodCall><methodName>NAME</methodName><params><param>
/// <value><struct>` with members `<member><name>N</name><value>V</value>
/// </member>` where `V` is `<string>TEXT</string>`, `<string/>` or untyped
/// `TEXT`, and the closing tags; whitespace between elements; the whole body
/// ASCII; texts without `<`, `&`, `>` or carriage returns. For such a body
/// the decoder would give the same method and member texts.
pub fn scan_call(body: &[u8]) -> Option<Call<'_>> {
    if !body.is_ascii() {
        return None;
    }
    let mut scanner = Scanner { rest: body };
    scanner.declaration()?;
    scanner.skip_whitespace();
    scanner.tag(b"<methodCall>")?;
    scanner.skip_whitespace();
    scanner.tag(b"<methodName>")?;
    let method = scanner.text()?.trim();
    scanner.tag(b"</methodName>")?;
    for tag in [&b"<params>"[..], b"<param>", b"<value>", b"<struct>"] {
        scanner.skip_whitespace();
        scanner.tag(tag)?;
    }
    let mut members: [Option<Cow<'_, str>>; 5] = Default::default();
    loop {
        scanner.skip_whitespace();
        if scanner.tag(b"</struct>").is_some() {
            break;
        }
        scanner.tag(b"<member>")?;
        scanner.skip_whitespace();
        scanner.tag(b"<name>")?;
        let name = scanner.text()?;
        scanner.tag(b"</name>")?;
        scanner.skip_whitespace();
        let value = scanner.string_value()?;
        scanner.skip_whitespace();
        scanner.tag(b"</member>")?;
        if let Some(slot) = READ_MEMBERS.iter().position(|known| *known == name) {
            if members[slot].is_none() {
                members[slot] = Some(Cow::Borrowed(value.trim()));
            }
        }
    }
    for tag in [
        &b"</value>"[..],
        b"</param>",
        b"</params>",
        b"</methodCall>",
    ] {
        scanner.skip_whitespace();
        scanner.tag(tag)?;
    }
    scanner.skip_whitespace();
    if !scanner.rest.is_empty() {
        return None;
    }
    Some(Call::Method {
        method: Cow::Borrowed(method),
        struct_param: true,
        members,
    })
}

/// The cursor of [`scan_call`]; every method returns `None` where the body
/// leaves the plain shape.
struct Scanner<'a> {
    /// What is left to scan (ASCII).
    rest: &'a [u8],
}

impl<'a> Scanner<'a> {
    fn skip_whitespace(&mut self) {
        let end = self
            .rest
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
            .unwrap_or(self.rest.len());
        self.rest = &self.rest[end..];
    }

    /// Consumes exactly `tag`.
    fn tag(&mut self, tag: &[u8]) -> Option<()> {
        self.rest = self.rest.strip_prefix(tag)?;
        Some(())
    }

    /// Text up to the next `<`: printable ASCII, tabs and line feeds, no
    /// `&` or `>`.
    fn text(&mut self) -> Option<&'a str> {
        let end = self.rest.iter().position(|&b| b == b'<')?;
        let (text, rest) = self.rest.split_at(end);
        if !text
            .iter()
            .all(|&b| matches!(b, 0x20..=0x7E | b'\t' | b'\n') && b != b'&' && b != b'>')
        {
            return None;
        }
        self.rest = rest;
        // ASCII, checked by the caller of `scan_call` for the whole body.
        std::str::from_utf8(text).ok()
    }

    /// `<value>...</value>` holding a string: typed (possibly empty) or
    /// untyped.
    fn string_value(&mut self) -> Option<&'a str> {
        self.tag(b"<value>")?;
        let inside = self.rest;
        self.skip_whitespace();
        let value = if self.tag(b"<string/>").is_some() {
            ""
        } else if self.tag(b"<string>").is_some() {
            let text = self.text()?;
            self.tag(b"</string>")?;
            text
        } else {
            self.rest = inside;
            let untyped = self.text()?;
            self.tag(b"</value>")?;
            return Some(untyped);
        };
        self.skip_whitespace();
        self.tag(b"</value>")?;
        Some(value)
    }

    /// An optional `<?xml ...?>` declaration whose encoding (if named) reads
    /// ASCII as ASCII; the decoder would refuse an unknown one.
    fn declaration(&mut self) -> Option<()> {
        let Some(rest) = self.rest.strip_prefix(b"<?xml") else {
            return Some(());
        };
        let end = rest.windows(2).position(|pair| pair == b"?>")?;
        let declaration = &rest[..end];
        if declaration.iter().any(|&b| b == b'<' || b == b'>') {
            return None;
        }
        if let Some(label) = encoding_label(declaration) {
            let encoding = encoding_rs::Encoding::for_label(label)?;
            if !encoding.is_ascii_compatible() || encoding == encoding_rs::REPLACEMENT {
                return None;
            }
        } else if declaration.windows(8).any(|window| window == b"encoding") {
            return None;
        }
        self.rest = &rest[end + 2..];
        Some(())
    }
}

/// The quoted value of `encoding=` in a declaration's content.
fn encoding_label(declaration: &[u8]) -> Option<&[u8]> {
    let position = declaration
        .windows(8)
        .position(|window| window == b"encoding")?;
    let after_equals = declaration[position + 8..]
        .trim_ascii_start()
        .strip_prefix(b"=")?
        .trim_ascii_start();
    let (&quote, value) = after_equals.split_first()?;
    if quote != b'"' && quote != b'\'' {
        return None;
    }
    let close = value.iter().position(|&b| b == quote)?;
    Some(&value[..close])
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

    /// What the full decoder makes of `body`, as a [`Call`].
    fn decoded(body: &[u8]) -> Call<'static> {
        match xmlrpc::decode_call(body) {
            Ok((method, params)) => Call::from_params(Cow::Owned(method), &params),
            Err(error) => Call::Invalid(error),
        }
    }

    /// A call in the plain shape, from its method and members.
    fn plain_call(method: &str, members: &[(&str, &str)]) -> Vec<u8> {
        let members: String = members
            .iter()
            .map(|(name, value)| {
                format!(
                    "<member><name>{name}</name><value><string>{value}</string></value></member>"
                )
            })
            .collect();
        format!(
            "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n<methodCall><methodName>{method}</methodName><params><param><value><struct>{members}</struct></value></param></params></methodCall>\n"
        )
        .into_bytes()
    }

    #[test]
    fn the_fast_scan_reads_what_the_decoder_reads() {
        let bridge = xmlrpc::encode_call(
            GET_EXTENSION_STATUS,
            &[Value::Struct(vec![
                ("supId".into(), Value::from("")),
                ("manId".into(), Value::from("7")),
                ("accountCode".into(), Value::from("1234")),
                ("extensionId".into(), Value::from("1001")),
            ])],
        );
        let php = "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n<methodCall>\n<methodName>ivr.getAgentAvail</methodName>\n\
            <params>\n<param>\n<value>\n <struct>\n   <member>\n     <name>accountCode</name>\n     \
            <value><string>1234</string></value>\n   </member>\n   <member>\n     <name>extensionId</name>\n     \
            <value><string> 1001 </string></value>\n   </member>\n </struct>\n</value>\n</param>\n</params>\n</methodCall>";
        let python = "<?xml version='1.0'?>\r\n<methodCall>\r\n<methodName>ivr.getAgentAvail</methodName>\r\n<params>\r\n<param>\r\n\
            <value><struct>\r\n<member>\r\n<name>accountPin</name>\r\n<value><string>1234</string></value>\r\n</member>\r\n\
            <member>\r\n<name>extId</name>\r\n<value>1001</value>\r\n</member>\r\n</struct></value>\r\n</param>\r\n</params>\r\n</methodCall>\r\n";
        let fast_bodies: Vec<Vec<u8>> = vec![
            bridge,
            php.into(),
            python.into(),
            plain_call(GET_AGENT_AVAIL, &[("accountCode", "1234"), ("extensionId", "1001")]),
            // Duplicates: the first wins. Empty and untyped values.
            plain_call(
                GET_AGENT_AVAIL,
                &[("extId", "1"), ("extId", "2"), ("accountCode", ""), ("other", "x y")],
            ),
            b"<methodCall><methodName> ivr.getAgentAvail\n</methodName><params><param><value><struct>\
              <member><name>extensionId</name><value><string/></value></member>\
              <member><name>accountCode</name><value></value></member>\
              <member><name>x</name><value>  </value></member></struct></value></param></params></methodCall>"
                .to_vec(),
            plain_call("ivr.dropTables", &[]),
            b"<?xml version=\"1.0\" encoding=\"windows-1252\"?><methodCall><methodName>m</methodName><params><param><value><struct></struct></value></param></params></methodCall>".to_vec(),
        ];
        for body in &fast_bodies {
            let text = String::from_utf8_lossy(body);
            let fast = scan_call(body).unwrap_or_else(|| panic!("not scanned: {text}"));
            assert_eq!(fast, decoded(body), "{text}");
            assert_eq!(Call::read(body), fast, "{text}");
        }

        // Everything else is left to the decoder, which then decides.
        let decoder_bodies: Vec<&[u8]> = vec![
            b"",
            b"this is not xml",
            b"<methodCall><methodName>m</methodName></methodCall>",
            b"<methodCall><methodName>m</methodName><params/></methodCall>",
            "<methodCall><methodName>m</methodName><params><param><value><struct><member><name>extId</name><value><string>é</string></value></member></struct></value></param></params></methodCall>".as_bytes(),
            b"<methodCall><methodName>m</methodName><params><param><value><struct><member><name>extId</name><value><string>1&amp;2</string></value></member></struct></value></param></params></methodCall>",
            b"<methodCall><methodName>m</methodName><params><param><value><struct><member><name>extId</name><value><i4>1001</i4></value></member></struct></value></param></params></methodCall>",
            b"<methodCall><methodName>m</methodName><params><param><value><struct><member><value><string>1</string></value><name>extId</name></member></struct></value></param></params></methodCall>",
            b"<methodCall><methodName>m</methodName><params><param><value><struct><!-- c --></struct></value></param></params></methodCall>",
            b"<methodCall><methodName>m</methodName><params><param><value><struct></struct></value></param></params></methodCall><x/>",
            b"<methodCall><methodName>m</methodName><params><param><value><struct></struct></value></param></params>",
            b"<methodCall><methodName>m</methodName><params><param><value><struct></struct></value></param><param><value>x</value></param></params></methodCall>",
            b"<methodCall><methodName>m</methodName><params><param><value>x</value></param></params></methodCall>",
            b"<?xml version=\"1.0\" encoding=\"klingon\"?><methodCall><methodName>m</methodName><params><param><value><struct></struct></value></param></params></methodCall>",
            b"<?xml version=\"1.0\" encoding=\"utf-16\"?><methodCall><methodName>m</methodName><params><param><value><struct></struct></value></param></params></methodCall>",
            b"<methodCall><methodName>m</methodName><params><param><value><struct><member><name>extId</name><value>a\rb</value></member></struct></value></param></params></methodCall>",
        ];
        for body in decoder_bodies {
            let text = String::from_utf8_lossy(body);
            assert_eq!(scan_call(body), None, "{text}");
            assert_eq!(Call::read(body), decoded(body), "{text}");
        }
    }

    proptest::proptest! {
        /// Whatever the fast scan accepts, the decoder reads the same way.
        #[test]
        fn the_fast_scan_never_disagrees_with_the_decoder(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec![
                    "<methodCall>", "</methodCall>", "<methodName>", "</methodName>", "<params>",
                    "</params>", "<param>", "</param>", "<value>", "</value>", "<struct>",
                    "</struct>", "<member>", "</member>", "<name>", "</name>", "<string>",
                    "</string>", "<string/>", "<i4>", "</i4>", "extId", "accountCode", "1001",
                    " 12 ", "\r\n", "\n", "\t", " ", "&amp;", "é", "<!-- -->", "<?xml version='1.0'?>",
                    "ivr.getAgentAvail",
                ]),
                0..60,
            )
        ) {
            let body = pieces.concat();
            if let Some(fast) = scan_call(body.as_bytes()) {
                proptest::prop_assert_eq!(fast, decoded(body.as_bytes()), "{}", body);
            }
        }
    }

    /// A call from generated parts: declaration, whitespace between every
    /// element, member names and values (with characters the fast scan
    /// must leave to the decoder), value forms.
    fn generated_call(
        declaration: &str,
        method: &str,
        members: &[(String, String, u8)],
        spaces: &[&str],
    ) -> String {
        let mut space = spaces.iter().cycle();
        let mut out = declaration.to_owned();
        let mut open = |out: &mut String, tag: &str| {
            out.push_str(space.next().unwrap_or(&""));
            out.push_str(tag);
        };
        open(&mut out, "<methodCall>");
        open(&mut out, &format!("<methodName>{method}</methodName>"));
        for tag in ["<params>", "<param>", "<value>", "<struct>"] {
            open(&mut out, tag);
        }
        for (name, value, form) in members {
            open(&mut out, "<member>");
            open(&mut out, &format!("<name>{name}</name>"));
            let value = match form % 3 {
                0 => format!("<value><string>{value}</string></value>"),
                1 => format!("<value>{value}</value>"),
                _ => "<value><string/></value>".to_owned(),
            };
            open(&mut out, &value);
            open(&mut out, "</member>");
        }
        for tag in [
            "</struct>",
            "</value>",
            "</param>",
            "</params>",
            "</methodCall>",
        ] {
            open(&mut out, tag);
        }
        out
    }

    proptest::proptest! {
        /// Generated calls: the fast scan takes every plain one, and reads
        /// exactly what the decoder reads.
        #[test]
        fn generated_calls_are_read_as_the_decoder_reads_them(
            declaration in proptest::sample::select(vec![
                "", "<?xml version=\"1.0\"?>", "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n",
                "<?xml version='1.0' encoding='UTF-8'?>\r\n", "<?xml version=\"1.0\" encoding=\"bogus\"?>",
            ]),
            method in "[ a-zA-Z.]{0,20}",
            members in proptest::collection::vec(
                (
                    proptest::sample::select(vec![
                        "accountCode".to_owned(), "accountPin".to_owned(), "custId".to_owned(),
                        "extensionId".to_owned(), "extId".to_owned(), "supId".to_owned(), "x y".to_owned(),
                    ]),
                    "[ 0-9a-z\\-\t\n\r&<>é\"']{0,8}",
                    0u8..3,
                ),
                0..7,
            ),
            spaces in proptest::collection::vec(
                proptest::sample::select(vec!["", " ", "\n", "\r\n", "\t  "]),
                1..8,
            ),
        ) {
            let body = generated_call(declaration, &method, &members, &spaces);
            let plain = !declaration.contains("bogus")
                && members.iter().all(|(_, value, _)| {
                    !value.contains(['\r', '&', '<', '>', 'é'])
                });
            match scan_call(body.as_bytes()) {
                Some(fast) => proptest::prop_assert_eq!(fast, decoded(body.as_bytes()), "{}", body),
                None => proptest::prop_assert!(!plain, "plain call not scanned: {}", body),
            }
        }
    }

    #[test]
    fn a_plain_call_is_scanned_whatever_its_whitespace() {
        let body = "\n<methodCall>\t<methodName>ivr.getAgentAvail</methodName>\r\n<params> <param> <value> <struct> \
            <member> <name>accountCode</name> <value> <string>1234</string> </value> </member> \
            <member>\r\n<name>extensionId</name>\r\n<value>\r\n<string>1001</string>\r\n</value>\r\n</member> \
            </struct> </value> </param> </params> </methodCall> \r\n";
        let call = scan_call(body.as_bytes()).expect("scanned");
        assert_eq!(call, decoded(body.as_bytes()));
        assert_eq!(call.method(), Some(GET_AGENT_AVAIL));
        assert_eq!(call.extension(), Some("1001"));
    }

    #[test]
    fn decisions_follow_the_documented_members() {
        let find = |extension: &str| (extension == "1001").then_some(0usize);
        let check = |body: Vec<u8>, expected: Answer<usize>| {
            let call = Call::read(&body);
            let answer = decide(&call, "1234", find);
            match (&answer, &expected) {
                (Answer::Fault { code, .. }, Answer::Fault { code: want, .. }) => {
                    assert_eq!(code, want, "{}", String::from_utf8_lossy(&body))
                }
                _ => assert_eq!(answer, expected, "{}", String::from_utf8_lossy(&body)),
            }
        };
        let fault = |code| Answer::Fault {
            code,
            message: String::new(),
        };
        check(
            plain_call(
                GET_AGENT_AVAIL,
                &[("accountCode", "1234"), ("extensionId", "1001")],
            ),
            Answer::AgentAvail(0),
        );
        check(
            plain_call(
                GET_EXTENSION_STATUS,
                &[("custId", "1234"), ("extId", "1001")],
            ),
            Answer::ExtensionStatus(0),
        );
        // `accountPin` is not read when `accountCode` is there.
        check(
            plain_call(
                GET_AGENT_AVAIL,
                &[
                    ("accountCode", "1"),
                    ("accountPin", "1234"),
                    ("extId", "1001"),
                ],
            ),
            fault(FAULT_ACCESS_DENIED),
        );
        // `custId` only counts for the extension status.
        check(
            plain_call(GET_AGENT_AVAIL, &[("custId", "1234"), ("extId", "1001")]),
            fault(FAULT_MISSING_PARAMETER),
        );
        check(
            plain_call(GET_AGENT_AVAIL, &[("accountCode", "1234"), ("extId", "42")]),
            fault(FAULT_UNKNOWN_EXTENSION),
        );
        check(b"<html/>".to_vec(), fault(FAULT_PARSE));
    }

    #[test]
    fn templates_write_what_the_encoder_writes() {
        for (available, reason, destination) in [
            (false, "-", "31201234567"),
            (true, "-", ""),
            (false, "pause", "3161000001"),
            (false, "privé", "31201234567"),
            (false, "a <b> & \"c\" 'd'", "x"),
            (false, "tab\there", "line\nfeed"),
            (true, "", "+31 20 123"),
        ] {
            let mut out = b"kept".to_vec();
            write_agent_avail(&mut out, available, reason, destination);
            let expected = render(&agent_avail_response(available, reason, destination));
            assert_eq!(&out[..4], b"kept");
            assert_eq!(
                String::from_utf8_lossy(&out[4..]),
                String::from_utf8_lossy(&expected),
                "{reason:?} {destination:?}"
            );
        }
        for status in [
            "idle",
            "calling",
            "called",
            "wrapup",
            "",
            "on <hold>",
            "privé",
        ] {
            let mut out = Vec::new();
            write_extension_status(&mut out, status);
            assert_eq!(
                out,
                render(&extension_status_response(status)),
                "{status:?}"
            );
        }
    }
}
