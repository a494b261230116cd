//! Reading `methodResponse` and `methodCall` documents.
//!
//! The body is first turned into UTF-8 text by its declared encoding
//! ([`body_text`]; borrowed, without copying, when it is already valid UTF-8
//! or plain ASCII), then walked with quick-xml's streaming reader by a small
//! recursive-descent [`Parser`] whose recursion is bounded by
//! [`MAX_DEPTH`](super::MAX_DEPTH).

use std::borrow::Cow;

use base64::Engine as _;
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use super::{DecodeError, Response, Value, MAX_DEPTH};
use crate::text::{shorten, QUOTE_CHARS};

/// Decodes a `methodResponse`: its params, or its fault.
pub fn decode_response(body: &[u8]) -> Result<Response, DecodeError> {
    let text = body_text(body)?;
    let mut parser = Parser::new(&text);
    parser.expect_root("methodResponse", "<methodResponse>")?;
    let response = match parser.next_structural("<params> or <fault>")? {
        Structural::Open { start, empty } if start.name().as_ref() == b"params" => {
            Response::Params(if empty {
                Vec::new()
            } else {
                parser.parse_params()?
            })
        }
        Structural::Open { start, empty } if start.name().as_ref() == b"fault" => {
            if empty {
                return Err(DecodeError::IncompleteMember {
                    missing: "<value> in <fault>",
                });
            }
            let empty = parser.expect_open("value", "<value> in <fault>")?;
            let value = parser.parse_value_after_open(empty, 0)?;
            parser.expect_close("</fault>")?;
            fault_from_value(value)
        }
        other => return Err(other.unexpected("<params> or <fault>")),
    };
    parser.expect_close("</methodResponse>")?;
    parser.expect_end()?;
    Ok(response)
}

/// Decodes a `methodCall`: the method name and its params (none when
/// `<params>` is absent).
pub fn decode_call(body: &[u8]) -> Result<(String, Vec<Value>), DecodeError> {
    let text = body_text(body)?;
    let mut parser = Parser::new(&text);
    parser.expect_root("methodCall", "<methodCall>")?;
    let empty = parser.expect_open("methodName", "<methodName>")?;
    let method = if empty {
        String::new()
    } else {
        parser.read_text("</methodName>")?.trim().to_owned()
    };
    let params = match parser.next_structural("<params> or </methodCall>")? {
        Structural::Open { start, empty } if start.name().as_ref() == b"params" => {
            let params = if empty {
                Vec::new()
            } else {
                parser.parse_params()?
            };
            parser.expect_close("</methodCall>")?;
            params
        }
        Structural::Close => Vec::new(),
        other => return Err(other.unexpected("<params> or </methodCall>")),
    };
    parser.expect_end()?;
    Ok((method, params))
}

/// Reads `faultCode` and `faultString` leniently: a code sent as a string is
/// parsed, a missing code is 0, a missing message is empty.
fn fault_from_value(value: Value) -> Response {
    let code = match value.member("faultCode") {
        Some(Value::Int(code)) => *code,
        Some(Value::String(text)) => text.trim().parse().unwrap_or(0),
        _ => 0,
    };
    let message = match &value {
        Value::String(text) => text.clone(),
        _ => value
            .member("faultString")
            .and_then(Value::as_text_lenient)
            .map(Cow::into_owned)
            .unwrap_or_default(),
    };
    Response::Fault { code, message }
}

/// The body as UTF-8 text, by the encoding its XML declaration names
/// (UTF-8 when none). A byte order mark wins over the declaration. A body
/// that claims (or defaults to) UTF-8 but is not valid UTF-8 is read as
/// windows-1252, the usual real-world culprit, rather than rejected.
fn body_text(body: &[u8]) -> Result<Cow<'_, str>, DecodeError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(DecodeError::EmptyBody);
    }
    if let Some((encoding, _bom_length)) = encoding_rs::Encoding::for_bom(body) {
        let (text, _had_errors) = encoding.decode_with_bom_removal(body);
        return Ok(text);
    }
    let encoding = match declared_encoding(body) {
        None => encoding_rs::UTF_8,
        Some(label) => match encoding_rs::Encoding::for_label(label) {
            // The declaration was readable as ASCII, so the bytes are not
            // really UTF-16 whatever the label says.
            Some(encoding)
                if encoding == encoding_rs::UTF_16LE || encoding == encoding_rs::UTF_16BE =>
            {
                encoding_rs::UTF_8
            }
            Some(encoding) if encoding != encoding_rs::REPLACEMENT => encoding,
            _ => {
                return Err(DecodeError::UnsupportedEncoding(shorten(
                    &String::from_utf8_lossy(label),
                    QUOTE_CHARS,
                )))
            }
        },
    };
    if encoding == encoding_rs::UTF_8 {
        if let Ok(text) = std::str::from_utf8(body) {
            return Ok(Cow::Borrowed(text));
        }
        return Ok(encoding_rs::WINDOWS_1252
            .decode_without_bom_handling(body)
            .0);
    }
    Ok(encoding.decode_without_bom_handling(body).0)
}

/// The `encoding` pseudo-attribute of a leading `<?xml ...?>` declaration.
fn declared_encoding(body: &[u8]) -> Option<&[u8]> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    let rest = body.get(start..)?.strip_prefix(b"<?xml")?;
    let declaration = &rest[..rest.len().min(256)];
    let end = declaration.windows(2).position(|pair| pair == b"?>")?;
    let declaration = &declaration[..end];
    let after_key = declaration
        .windows(8)
        .position(|window| window == b"encoding")
        .map(|position| &declaration[position + 8..])?;
    let after_equals = after_key
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

/// One step of the document as the grammar sees it: an element opening
/// (`empty` for `<x/>`), an element closing, or the end of input.
enum Structural<'a> {
    Open { start: BytesStart<'a>, empty: bool },
    Close,
    Eof,
}

impl Structural<'_> {
    /// The error for finding this where `expected` should be.
    fn unexpected(self, expected: &'static str) -> DecodeError {
        match self {
            Structural::Open { start, .. } => DecodeError::UnexpectedElement {
                found: element_name(&start),
                expected,
            },
            // quick-xml has already matched the end tag with its start tag;
            // the name is not needed to explain the problem.
            Structural::Close => DecodeError::UnexpectedEnd {
                found: "element".to_owned(),
                expected,
            },
            Structural::Eof => DecodeError::Truncated { expected },
        }
    }
}

fn element_name(start: &BytesStart<'_>) -> String {
    shorten(&String::from_utf8_lossy(start.name().as_ref()), QUOTE_CHARS)
}

struct Parser<'a> {
    /// The streaming reader over the UTF-8 text.
    reader: Reader<&'a [u8]>,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        let mut reader = Reader::from_str(text);
        let config = reader.config_mut();
        config.trim_text(false);
        config.expand_empty_elements = false;
        config.check_end_names = true;
        Self { reader }
    }

    /// The next event that matters: comments, processing instructions and
    /// the declaration are skipped, a DTD is refused.
    fn next_event(&mut self, expected: &'static str) -> Result<Event<'a>, DecodeError> {
        loop {
            let event = self
                .reader
                .read_event()
                .map_err(|error| map_xml_error(error, expected))?;
            match event {
                Event::Comment(_) | Event::PI(_) | Event::Decl(_) => continue,
                Event::DocType(doctype) => {
                    let text = String::from_utf8_lossy(&doctype);
                    return Err(DecodeError::DoctypeNotAllowed(shorten(
                        text.trim(),
                        QUOTE_CHARS,
                    )));
                }
                other => return Ok(other),
            }
        }
    }

    /// The next element boundary, skipping whitespace; other text is an
    /// error.
    fn next_structural(&mut self, expected: &'static str) -> Result<Structural<'a>, DecodeError> {
        loop {
            match self.next_event(expected)? {
                Event::Start(start) => {
                    return Ok(Structural::Open {
                        start,
                        empty: false,
                    })
                }
                Event::Empty(start) => return Ok(Structural::Open { start, empty: true }),
                Event::End(_) => return Ok(Structural::Close),
                Event::Eof => return Ok(Structural::Eof),
                Event::Text(text) => {
                    if !is_xml_whitespace(&text) {
                        return Err(unexpected_text(&String::from_utf8_lossy(&text), expected));
                    }
                }
                Event::CData(data) => {
                    if !is_xml_whitespace(&data) {
                        return Err(unexpected_text(&String::from_utf8_lossy(&data), expected));
                    }
                }
                // Filtered by `next_event`.
                Event::Comment(_) | Event::PI(_) | Event::Decl(_) | Event::DocType(_) => {}
            }
        }
    }

    /// Expects the root element `name` (not empty).
    fn expect_root(&mut self, name: &str, expected: &'static str) -> Result<(), DecodeError> {
        match self.next_structural(expected)? {
            Structural::Open {
                start,
                empty: false,
            } if start.name().as_ref() == name.as_bytes() => Ok(()),
            Structural::Open { start, empty: true } if start.name().as_ref() == name.as_bytes() => {
                Err(DecodeError::Truncated {
                    expected: "content",
                })
            }
            other => Err(other.unexpected(expected)),
        }
    }

    /// Expects the element `name` to open; returns whether it is empty.
    fn expect_open(&mut self, name: &str, expected: &'static str) -> Result<bool, DecodeError> {
        match self.next_structural(expected)? {
            Structural::Open { start, empty } if start.name().as_ref() == name.as_bytes() => {
                Ok(empty)
            }
            other => Err(other.unexpected(expected)),
        }
    }

    /// Expects the current element to close.
    fn expect_close(&mut self, expected: &'static str) -> Result<(), DecodeError> {
        match self.next_structural(expected)? {
            Structural::Close => Ok(()),
            other => Err(other.unexpected(expected)),
        }
    }

    /// Expects nothing but whitespace, comments and processing instructions
    /// after the root element.
    fn expect_end(&mut self) -> Result<(), DecodeError> {
        match self.next_structural("the end of the document") {
            Ok(Structural::Eof) => Ok(()),
            Ok(_) | Err(DecodeError::UnexpectedText { .. }) => Err(DecodeError::TrailingContent),
            Err(error) => Err(error),
        }
    }

    /// After `<params>`: every `<param><value>...</value></param>` until
    /// `</params>`.
    fn parse_params(&mut self) -> Result<Vec<Value>, DecodeError> {
        let mut params = Vec::with_capacity(1);
        loop {
            match self.next_structural("<param> or </params>")? {
                Structural::Open {
                    start,
                    empty: false,
                } if start.name().as_ref() == b"param" => {
                    self.expect_open("value", "<value> in <param>")
                        .and_then(|empty| self.parse_value_after_open(empty, 0))
                        .map(|value| params.push(value))?;
                    self.expect_close("</param>")?;
                }
                Structural::Close => return Ok(params),
                other => return Err(other.unexpected("<param> or </params>")),
            }
        }
    }

    fn parse_value_after_open(&mut self, empty: bool, depth: usize) -> Result<Value, DecodeError> {
        if empty {
            Ok(Value::String(String::new()))
        } else {
            self.parse_value(depth)
        }
    }

    /// After `<value>`: the value up to and including `</value>`. A typed
    /// element (`<int>`, `<struct>`, ...) may be surrounded by whitespace;
    /// text alone is an untyped string.
    fn parse_value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        if depth >= MAX_DEPTH {
            return Err(DecodeError::TooDeep { limit: MAX_DEPTH });
        }
        let mut untyped = TextBuffer::default();
        loop {
            match self.next_event("a value or </value>")? {
                Event::Text(text) => untyped.push(unescape(&text)?),
                Event::CData(data) => untyped.push(cdata_text(data.into_inner())?),
                Event::Start(start) => {
                    untyped.expect_whitespace("a value type element")?;
                    let value = self.parse_typed(&start, false, depth)?;
                    self.expect_close("</value>")?;
                    return Ok(value);
                }
                Event::Empty(start) => {
                    untyped.expect_whitespace("a value type element")?;
                    let value = self.parse_typed(&start, true, depth)?;
                    self.expect_close("</value>")?;
                    return Ok(value);
                }
                Event::End(_) => return Ok(Value::String(untyped.finish())),
                Event::Eof => {
                    return Err(DecodeError::Truncated {
                        expected: "</value>",
                    })
                }
                Event::Comment(_) | Event::PI(_) | Event::Decl(_) | Event::DocType(_) => {}
            }
        }
    }

    /// A type element (its start already read) and its content, up to and
    /// including its end tag.
    fn parse_typed(
        &mut self,
        start: &BytesStart<'_>,
        empty: bool,
        depth: usize,
    ) -> Result<Value, DecodeError> {
        let name = start.name();
        let value = match name.as_ref() {
            b"string" => Value::String(self.scalar_text(empty, "</string>")?.into_owned()),
            b"int" => Value::Int(parse_int(&self.scalar_text(empty, "</int>")?, "int")?),
            b"i4" => Value::Int(parse_int(&self.scalar_text(empty, "</i4>")?, "i4")?),
            b"i8" | b"ex:i8" => Value::Int(parse_int(&self.scalar_text(empty, "</i8>")?, "i8")?),
            b"boolean" => Value::Bool(parse_bool(&self.scalar_text(empty, "</boolean>")?)?),
            b"double" => Value::Double(parse_double(&self.scalar_text(empty, "</double>")?)?),
            b"dateTime.iso8601" => Value::DateTime(
                self.scalar_text(empty, "</dateTime.iso8601>")?
                    .trim()
                    .to_owned(),
            ),
            b"base64" => Value::Base64(parse_base64(&self.scalar_text(empty, "</base64>")?)?),
            b"nil" | b"ex:nil" => {
                let text = self.scalar_text(empty, "</nil>")?;
                if !text.trim().is_empty() {
                    return Err(unexpected_text(&text, "an empty <nil/>"));
                }
                Value::Nil
            }
            b"struct" => Value::Struct(if empty {
                Vec::new()
            } else {
                self.parse_struct(depth)?
            }),
            b"array" => Value::Array(if empty {
                Vec::new()
            } else {
                self.parse_array(depth)?
            }),
            _ => {
                return Err(DecodeError::UnexpectedElement {
                    found: element_name(start),
                    expected: "a value type element",
                })
            }
        };
        Ok(value)
    }

    /// The text content of a scalar element (empty for `<x/>`).
    fn scalar_text(
        &mut self,
        empty: bool,
        expected: &'static str,
    ) -> Result<Cow<'a, str>, DecodeError> {
        if empty {
            Ok(Cow::Borrowed(""))
        } else {
            self.read_text(expected)
        }
    }

    /// Text (and CDATA) up to the end of the current element; any child
    /// element is an error.
    fn read_text(&mut self, expected: &'static str) -> Result<Cow<'a, str>, DecodeError> {
        let mut buffer = TextBuffer::default();
        loop {
            match self.next_event(expected)? {
                Event::Text(text) => buffer.push(unescape(&text)?),
                Event::CData(data) => buffer.push(cdata_text(data.into_inner())?),
                Event::End(_) => return Ok(buffer.finish_cow()),
                Event::Start(start) | Event::Empty(start) => {
                    return Err(DecodeError::UnexpectedElement {
                        found: element_name(&start),
                        expected,
                    })
                }
                Event::Eof => return Err(DecodeError::Truncated { expected }),
                Event::Comment(_) | Event::PI(_) | Event::Decl(_) | Event::DocType(_) => {}
            }
        }
    }

    /// After `<struct>`: members up to and including `</struct>`.
    fn parse_struct(&mut self, depth: usize) -> Result<Vec<(String, Value)>, DecodeError> {
        let mut members = Vec::new();
        loop {
            match self.next_structural("<member> or </struct>")? {
                Structural::Open { start, empty } if start.name().as_ref() == b"member" => {
                    if empty {
                        return Err(DecodeError::IncompleteMember { missing: "<name>" });
                    }
                    members.push(self.parse_member(depth)?);
                }
                Structural::Close => return Ok(members),
                other => return Err(other.unexpected("<member> or </struct>")),
            }
        }
    }

    /// After `<member>`: its `<name>` and `<value>` (in either order) up to
    /// and including `</member>`.
    fn parse_member(&mut self, depth: usize) -> Result<(String, Value), DecodeError> {
        let mut name = None;
        let mut value = None;
        loop {
            match self.next_structural("<name>, <value> or </member>")? {
                Structural::Open { start, empty } if start.name().as_ref() == b"name" => {
                    name = Some(self.scalar_text(empty, "</name>")?.into_owned());
                }
                Structural::Open { start, empty } if start.name().as_ref() == b"value" => {
                    value = Some(self.parse_value_after_open(empty, depth + 1)?);
                }
                Structural::Close => break,
                other => return Err(other.unexpected("<name>, <value> or </member>")),
            }
        }
        match (name, value) {
            (Some(name), Some(value)) => Ok((name, value)),
            (None, _) => Err(DecodeError::IncompleteMember { missing: "<name>" }),
            (Some(_), None) => Err(DecodeError::IncompleteMember { missing: "<value>" }),
        }
    }

    /// After `<array>`: `<data>` with its values, up to and including
    /// `</array>`.
    fn parse_array(&mut self, depth: usize) -> Result<Vec<Value>, DecodeError> {
        let empty = match self.next_structural("<data>")? {
            Structural::Open { start, empty } if start.name().as_ref() == b"data" => empty,
            // `<array></array>`: tolerated as an empty array.
            Structural::Close => return Ok(Vec::new()),
            other => return Err(other.unexpected("<data>")),
        };
        let mut items = Vec::new();
        if !empty {
            loop {
                match self.next_structural("<value> or </data>")? {
                    Structural::Open { start, empty } if start.name().as_ref() == b"value" => {
                        items.push(self.parse_value_after_open(empty, depth + 1)?);
                    }
                    Structural::Close => break,
                    other => return Err(other.unexpected("<value> or </data>")),
                }
            }
        }
        self.expect_close("</array>")?;
        Ok(items)
    }
}

/// Text pieces of one element (text and CDATA sections may alternate),
/// borrowed while there is only one.
#[derive(Default)]
struct TextBuffer<'a> {
    /// The text so far.
    text: Option<Cow<'a, str>>,
}

impl<'a> TextBuffer<'a> {
    fn push(&mut self, piece: Cow<'a, str>) {
        match &mut self.text {
            None => self.text = Some(piece),
            Some(text) => text.to_mut().push_str(&piece),
        }
    }

    fn expect_whitespace(&self, expected: &'static str) -> Result<(), DecodeError> {
        match &self.text {
            Some(text) if !text.trim().is_empty() => Err(unexpected_text(text, expected)),
            _ => Ok(()),
        }
    }

    fn finish_cow(self) -> Cow<'a, str> {
        self.text.unwrap_or(Cow::Borrowed(""))
    }

    fn finish(self) -> String {
        self.finish_cow().into_owned()
    }
}

fn is_xml_whitespace(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

fn unexpected_text(text: &str, expected: &'static str) -> DecodeError {
    DecodeError::UnexpectedText {
        text: shorten(text.trim(), QUOTE_CHARS),
        expected,
    }
}

/// Text content with the five predefined entities and numeric references
/// resolved; any other entity is an error (nothing from a DTD is expanded).
fn unescape<'a>(text: &quick_xml::events::BytesText<'a>) -> Result<Cow<'a, str>, DecodeError> {
    text.unescape()
        .map_err(|error| map_xml_error(error, "text"))
}

fn cdata_text(bytes: Cow<'_, [u8]>) -> Result<Cow<'_, str>, DecodeError> {
    // The reader works on a `&str`, so CDATA content is valid UTF-8; the
    // error arm is only there to avoid a panic path.
    match bytes {
        Cow::Borrowed(bytes) => std::str::from_utf8(bytes)
            .map(Cow::Borrowed)
            .map_err(|_| DecodeError::IllFormed("invalid utf-8 in cdata".to_owned())),
        Cow::Owned(bytes) => String::from_utf8(bytes)
            .map(Cow::Owned)
            .map_err(|_| DecodeError::IllFormed("invalid utf-8 in cdata".to_owned())),
    }
}

fn map_xml_error(error: quick_xml::Error, expected: &'static str) -> DecodeError {
    use quick_xml::errors::{IllFormedError, SyntaxError};
    match error {
        quick_xml::Error::Syntax(
            SyntaxError::UnclosedTag
            | SyntaxError::UnclosedCData
            | SyntaxError::UnclosedComment
            | SyntaxError::UnclosedPIOrXmlDecl
            | SyntaxError::UnclosedDoctype,
        ) => DecodeError::Truncated { expected },
        quick_xml::Error::IllFormed(IllFormedError::MissingEndTag(_)) => {
            DecodeError::Truncated { expected }
        }
        quick_xml::Error::Escape(error) => {
            DecodeError::BadReference(shorten(&error.to_string(), 2 * QUOTE_CHARS))
        }
        other => DecodeError::IllFormed(shorten(&other.to_string(), 2 * QUOTE_CHARS)),
    }
}

fn invalid(element: &'static str, text: &str) -> DecodeError {
    DecodeError::InvalidValue {
        element,
        text: shorten(text, QUOTE_CHARS),
    }
}

fn parse_int(text: &str, element: &'static str) -> Result<i64, DecodeError> {
    text.trim().parse().map_err(|_| invalid(element, text))
}

fn parse_bool(text: &str) -> Result<bool, DecodeError> {
    match text.trim() {
        "1" => Ok(true),
        "0" => Ok(false),
        other if other.eq_ignore_ascii_case("true") => Ok(true),
        other if other.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(invalid("boolean", text)),
    }
}

fn parse_double(text: &str) -> Result<f64, DecodeError> {
    text.trim().parse().map_err(|_| invalid("double", text))
}

fn parse_base64(text: &str) -> Result<Vec<u8>, DecodeError> {
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
    use base64::engine::DecodePaddingMode;
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let decoded = if text.bytes().any(|b| b.is_ascii_whitespace()) {
        // Servers often wrap base64 at 76 columns.
        let compact: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        LENIENT.decode(compact)
    } else {
        LENIENT.decode(text)
    };
    decoded.map_err(|_| invalid("base64", text))
}
