//! The XML-RPC codec: the [`Value`] tree, [`encode_call`] / [`decode_response`]
//! for the Belfabriek client and [`decode_call`] / [`encode_response`] for the
//! simulator.
//!
//! Pure: bytes in, values out, no IO, no logging, no configuration. Decoding
//! accepts the whole XML-RPC value spec (plus the `i8`/`nil` extensions and
//! untyped `<value>text</value>`), honours the declared encoding (ISO-8859-1 is
//! converted to UTF-8), never panics, never expands DTD entities (a
//! `<!DOCTYPE` is rejected; only the five predefined entities and numeric
//! references are understood) and refuses values nested deeper than
//! [`MAX_DEPTH`]. Encoding escapes every text, so no value can inject markup.
//! This module must not know anything about Belfabriek member names: that is
//! `crate::belfabriek`'s job.

mod decode;
mod encode;
#[cfg(test)]
mod tests;

use std::borrow::Cow;

pub use decode::{decode_call, decode_response};
pub use encode::{encode_call, encode_response};

/// The deepest nesting of values (structs and arrays inside each other) that
/// decoding accepts; deeper documents are rejected with
/// [`DecodeError::TooDeep`] so hostile input cannot exhaust the stack.
pub const MAX_DEPTH: usize = 64;

/// One XML-RPC value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `<int>`, `<i4>` or `<i8>`.
    Int(i64),
    /// `<boolean>`.
    Bool(bool),
    /// `<double>`.
    Double(f64),
    /// `<string>` or untyped `<value>text</value>`.
    String(String),
    /// `<dateTime.iso8601>`, kept as the (trimmed) text the server sent.
    DateTime(String),
    /// `<base64>`, decoded.
    Base64(Vec<u8>),
    /// `<struct>`: members in document order (duplicates kept).
    Struct(Vec<(String, Value)>),
    /// `<array>`.
    Array(Vec<Value>),
    /// `<nil/>`.
    Nil,
}

impl Value {
    /// The text of a `String` value; `None` for every other kind.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(text) => Some(text),
            _ => None,
        }
    }

    /// The number of an `Int` value; `None` for every other kind.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(number) => Some(*number),
            _ => None,
        }
    }

    /// The members of a `Struct` value; `None` for every other kind.
    pub fn as_struct(&self) -> Option<&[(String, Value)]> {
        match self {
            Value::Struct(members) => Some(members),
            _ => None,
        }
    }

    /// The items of an `Array` value; `None` for every other kind.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The first member of a struct named exactly `name`; `None` when this is
    /// not a struct or has no such member.
    pub fn member(&self, name: &str) -> Option<&Value> {
        self.as_struct()?
            .iter()
            .find(|(member, _)| member == name)
            .map(|(_, value)| value)
    }

    /// The first member of a struct whose name equals `name` ignoring ASCII
    /// case (`Available` matches `available`).
    pub fn member_ci(&self, name: &str) -> Option<&Value> {
        self.as_struct()?
            .iter()
            .find(|(member, _)| member.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    }

    /// A truth value read leniently: boolean, int 0/1, or a string `0`, `1`,
    /// `true`, `false` (trimmed, any case). `None` for anything else.
    pub fn as_bool_lenient(&self) -> Option<bool> {
        match self {
            Value::Bool(flag) => Some(*flag),
            Value::Int(0) => Some(false),
            Value::Int(1) => Some(true),
            Value::String(text) => {
                let text = text.trim();
                if text == "1" || text.eq_ignore_ascii_case("true") {
                    Some(true)
                } else if text == "0" || text.eq_ignore_ascii_case("false") {
                    Some(false)
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// The value as text when it is a scalar: strings and date-times as they
    /// are, numbers formatted, booleans as `0`/`1`. `None` for base64, nil,
    /// structs and arrays. Used where a server may send a number as `<int>`
    /// or as `<string>`.
    pub fn as_text_lenient(&self) -> Option<Cow<'_, str>> {
        match self {
            Value::String(text) | Value::DateTime(text) => Some(Cow::Borrowed(text)),
            Value::Int(number) => Some(Cow::Owned(number.to_string())),
            Value::Double(number) => Some(Cow::Owned(number.to_string())),
            Value::Bool(flag) => Some(Cow::Borrowed(if *flag { "1" } else { "0" })),
            Value::Base64(_) | Value::Struct(_) | Value::Array(_) | Value::Nil => None,
        }
    }

    /// The XML-RPC type name of this value, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Int(_) => "int",
            Value::Bool(_) => "boolean",
            Value::Double(_) => "double",
            Value::String(_) => "string",
            Value::DateTime(_) => "dateTime.iso8601",
            Value::Base64(_) => "base64",
            Value::Struct(_) => "struct",
            Value::Array(_) => "array",
            Value::Nil => "nil",
        }
    }
}

impl From<&str> for Value {
    fn from(text: &str) -> Self {
        Value::String(text.to_owned())
    }
}

impl From<String> for Value {
    fn from(text: String) -> Self {
        Value::String(text)
    }
}

impl From<i64> for Value {
    fn from(number: i64) -> Self {
        Value::Int(number)
    }
}

impl From<bool> for Value {
    fn from(flag: bool) -> Self {
        Value::Bool(flag)
    }
}

/// A decoded `methodResponse`.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// `<params>`: the returned values (XML-RPC allows exactly one; more or
    /// none are passed through as they came).
    Params(Vec<Value>),
    /// `<fault>` with its `faultCode` and `faultString`.
    Fault {
        /// `faultCode` (0 when absent or not a number).
        code: i64,
        /// `faultString` (empty when absent).
        message: String,
    },
}

/// The character encoding [`encode_response`] writes (and declares).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// ISO-8859-1, as the real Belfabriek service answers; characters outside
    /// Latin-1 become numeric character references.
    Iso8859_1,
    /// UTF-8.
    Utf8,
}

/// Why a body is not a usable XML-RPC document. Texts quoted from the input
/// are cut short; callers that may see secrets echoed back must still redact
/// the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body is empty or only whitespace.
    #[error("empty body")]
    EmptyBody,
    /// The document ends before it is complete.
    #[error("truncated document: it ends where {expected} was expected")]
    Truncated {
        /// What was still expected.
        expected: &'static str,
    },
    /// An element that does not belong here (e.g. `<html>` for an error page).
    #[error("unexpected element <{found}> where {expected} was expected")]
    UnexpectedElement {
        /// The element found (cut short).
        found: String,
        /// What was expected.
        expected: &'static str,
    },
    /// An element closed before its required content.
    #[error("unexpected </{found}> where {expected} was expected")]
    UnexpectedEnd {
        /// The element that was closed.
        found: String,
        /// What was expected.
        expected: &'static str,
    },
    /// Non-whitespace text where only elements may appear.
    #[error("unexpected text {text:?} where {expected} was expected")]
    UnexpectedText {
        /// The text (cut short).
        text: String,
        /// What was expected.
        expected: &'static str,
    },
    /// Content after the root element was closed.
    #[error("unexpected content after the end of the document")]
    TrailingContent,
    /// A scalar whose text does not parse as its type (e.g. `<int>x</int>`).
    #[error("invalid <{element}> value {text:?}")]
    InvalidValue {
        /// The type element.
        element: &'static str,
        /// The text (cut short).
        text: String,
    },
    /// A struct member without its `<name>` or `<value>`.
    #[error("struct member without {missing}")]
    IncompleteMember {
        /// `<name>` or `<value>`.
        missing: &'static str,
    },
    /// A `<!DOCTYPE ...>` (e.g. an HTML error page): DTDs and their entities
    /// are never processed. Holds the declaration's content, cut short.
    #[error("document type declarations are not accepted (found <!DOCTYPE {0}>)")]
    DoctypeNotAllowed(String),
    /// An entity other than the five predefined ones, or a bad numeric
    /// reference.
    #[error("bad entity or character reference: {0}")]
    BadReference(String),
    /// The XML declaration names an encoding this codec cannot decode.
    #[error("unsupported character encoding {0:?}")]
    UnsupportedEncoding(String),
    /// Values nested deeper than [`MAX_DEPTH`].
    #[error("values nested deeper than {limit} levels")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// Any other XML syntax error (mismatched end tag, bad markup).
    #[error("ill-formed xml: {0}")]
    IllFormed(String),
}
