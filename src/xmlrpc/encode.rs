//! Writing `methodCall` and `methodResponse` documents.
//!
//! Every text goes through [`write_text`], which escapes markup characters and
//! writes what the declared encoding cannot hold as numeric character
//! references, so the output is always well-formed and matches its
//! declaration.

use base64::Engine as _;

use super::{Encoding, Response, Value};

const ISO_DECLARATION: &[u8] = b"<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n";
const UTF8_DECLARATION: &[u8] = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";

/// Encodes a `methodCall` as ISO-8859-1, declared as such (like the
/// documented Belfabriek request). Each of `params` becomes one `<param>`.
pub fn encode_call(method: &str, params: &[Value]) -> Vec<u8> {
    let mut out = Vec::with_capacity(192 + 64 * params.len());
    out.extend_from_slice(ISO_DECLARATION);
    out.extend_from_slice(b"<methodCall><methodName>");
    write_text(&mut out, method, Encoding::Iso8859_1);
    out.extend_from_slice(b"</methodName><params>");
    write_params(&mut out, params, Encoding::Iso8859_1);
    out.extend_from_slice(b"</params></methodCall>\n");
    out
}

/// Encodes a `methodResponse` in `encoding` (declared in the XML
/// declaration). Integers in the 32-bit range are written as `<i4>`, as the
/// real service does; larger ones as `<i8>`.
pub fn encode_response(response: &Response, encoding: Encoding) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(match encoding {
        Encoding::Iso8859_1 => ISO_DECLARATION,
        Encoding::Utf8 => UTF8_DECLARATION,
    });
    out.extend_from_slice(b"<methodResponse>");
    match response {
        Response::Params(params) => {
            out.extend_from_slice(b"<params>");
            write_params(&mut out, params, encoding);
            out.extend_from_slice(b"</params>");
        }
        Response::Fault { code, message } => {
            out.extend_from_slice(b"<fault><value><struct><member><name>faultCode</name><value>");
            write_int(&mut out, *code);
            out.extend_from_slice(
                b"</value></member><member><name>faultString</name><value><string>",
            );
            write_text(&mut out, message, encoding);
            out.extend_from_slice(b"</string></value></member></struct></value></fault>");
        }
    }
    out.extend_from_slice(b"</methodResponse>\n");
    out
}

fn write_params(out: &mut Vec<u8>, params: &[Value], encoding: Encoding) {
    for param in params {
        out.extend_from_slice(b"<param><value>");
        write_value(out, param, encoding);
        out.extend_from_slice(b"</value></param>");
    }
}

fn write_int(out: &mut Vec<u8>, number: i64) {
    let (open, close): (&[u8], &[u8]) = if i32::try_from(number).is_ok() {
        (b"<i4>", b"</i4>")
    } else {
        (b"<i8>", b"</i8>")
    };
    out.extend_from_slice(open);
    out.extend_from_slice(number.to_string().as_bytes());
    out.extend_from_slice(close);
}

/// Writes the content of one `<value>` element.
fn write_value(out: &mut Vec<u8>, value: &Value, encoding: Encoding) {
    match value {
        Value::Int(number) => write_int(out, *number),
        Value::Bool(flag) => out.extend_from_slice(if *flag {
            b"<boolean>1</boolean>"
        } else {
            b"<boolean>0</boolean>"
        }),
        Value::Double(number) => {
            // `Display` for f64 prints the shortest text that parses back to
            // the same number, without an exponent, as XML-RPC wants.
            out.extend_from_slice(b"<double>");
            out.extend_from_slice(number.to_string().as_bytes());
            out.extend_from_slice(b"</double>");
        }
        Value::String(text) => {
            out.extend_from_slice(b"<string>");
            write_text(out, text, encoding);
            out.extend_from_slice(b"</string>");
        }
        Value::DateTime(text) => {
            out.extend_from_slice(b"<dateTime.iso8601>");
            write_text(out, text, encoding);
            out.extend_from_slice(b"</dateTime.iso8601>");
        }
        Value::Base64(bytes) => {
            out.extend_from_slice(b"<base64>");
            out.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .as_bytes(),
            );
            out.extend_from_slice(b"</base64>");
        }
        Value::Struct(members) => {
            out.extend_from_slice(b"<struct>");
            for (name, member) in members {
                out.extend_from_slice(b"<member><name>");
                write_text(out, name, encoding);
                out.extend_from_slice(b"</name><value>");
                write_value(out, member, encoding);
                out.extend_from_slice(b"</value></member>");
            }
            out.extend_from_slice(b"</struct>");
        }
        Value::Array(items) => {
            out.extend_from_slice(b"<array><data>");
            for item in items {
                out.extend_from_slice(b"<value>");
                write_value(out, item, encoding);
                out.extend_from_slice(b"</value>");
            }
            out.extend_from_slice(b"</data></array>");
        }
        Value::Nil => out.extend_from_slice(b"<nil/>"),
    }
}

/// Writes `text` escaped for element content in `encoding`.
///
/// `<`, `>`, `&`, `"` and `'` become entities; carriage returns and other
/// control characters become numeric references (so no parser normalises
/// them away); in ISO-8859-1, characters above U+00FF and the C1 controls
/// U+0080..U+009F (which readers often take as windows-1252) are numeric
/// references too. U+0000 cannot appear in XML at all and is written as
/// U+FFFD.
pub(crate) fn write_text(out: &mut Vec<u8>, text: &str, encoding: Encoding) {
    let mut clean_start = 0;
    for (index, character) in text.char_indices() {
        let code = u32::from(character);
        let plain = match code {
            0x09 | 0x0A => true,
            0x20..=0x7F => !matches!(character, '<' | '>' | '&' | '"' | '\''),
            0xA0.. => encoding == Encoding::Utf8,
            _ => false,
        };
        if plain {
            continue;
        }
        out.extend_from_slice(&text.as_bytes()[clean_start..index]);
        clean_start = index + character.len_utf8();
        match character {
            '<' => out.extend_from_slice(b"&lt;"),
            '>' => out.extend_from_slice(b"&gt;"),
            '&' => out.extend_from_slice(b"&amp;"),
            '"' => out.extend_from_slice(b"&quot;"),
            '\'' => out.extend_from_slice(b"&apos;"),
            '\0' => write_character_reference(out, 0xFFFD),
            // Latin-1 bytes are the code points themselves.
            _ if encoding == Encoding::Iso8859_1 && (0xA0..=0xFF).contains(&code) => {
                out.push(code as u8)
            }
            _ => write_character_reference(out, code),
        }
    }
    out.extend_from_slice(&text.as_bytes()[clean_start..]);
}

fn write_character_reference(out: &mut Vec<u8>, code: u32) {
    out.extend_from_slice(b"&#");
    out.extend_from_slice(code.to_string().as_bytes());
    out.push(b';');
}
