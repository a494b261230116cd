//! [`Secret`]: a string that never prints itself.
//!
//! The TRiNG key, the Belfabriek PIN and the MQTT password are held as
//! `Secret`s from the moment the configuration is read. `Debug` and `Display`
//! print `[redacted]`; the only way to the value is [`Secret::expose`], which
//! is called where the value goes on the wire and nowhere else.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A secret string. Cloning is allowed; printing is not.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that sends it upstream.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no value is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Replaces every occurrence of the secret in `text` as a whole token
    /// with `[redacted]`: an occurrence inside a longer word or number
    /// (`1234` in `201234`, `k` in `lookup`) is someone else's text and stays,
    /// while a numeric PIN right after a letter (`x98765`) is still caught.
    /// Used on anything upstream echoes back (URLs, error bodies) before it is
    /// logged, stored or answered.
    pub fn redact_in(&self, text: &str) -> String {
        if self.0.is_empty() {
            return text.to_owned();
        }
        let mut out = replace_tokens(text, &self.0);
        // Also the percent-encoded form, as it appears in a URL.
        let encoded: String = url::form_urlencoded::byte_serialize(self.0.as_bytes()).collect();
        if encoded != self.0 {
            out = replace_tokens(&out, &encoded);
        }
        out
    }
}

/// Letters and digits: a token does not continue into its own kind.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CharKind {
    Letter,
    Digit,
}

fn char_kind(c: char) -> Option<CharKind> {
    if c.is_alphabetic() {
        Some(CharKind::Letter)
    } else if c.is_numeric() {
        Some(CharKind::Digit)
    } else {
        None
    }
}

/// True when `neighbour` does not continue a token whose edge is `edge`:
/// punctuation, space or the text's end always ends one; a letter ends a
/// number and a digit ends a word.
fn is_boundary(edge: Option<char>, neighbour: Option<char>) -> bool {
    match edge.and_then(char_kind) {
        None => true,
        Some(kind) => neighbour.and_then(char_kind) != Some(kind),
    }
}

/// `text` with every whole-token occurrence of `needle` replaced by
/// `[redacted]` (see [`is_boundary`]).
fn replace_tokens(text: &str, needle: &str) -> String {
    let first = needle.chars().next();
    let last = needle.chars().next_back();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = text[from..].find(needle) {
        let start = from + found;
        let end = start + needle.len();
        let starts_token = is_boundary(first, text[..start].chars().next_back());
        let ends_token = is_boundary(last, text[end..].chars().next());
        if starts_token && ends_token {
            out.push_str(&text[copied..start]);
            out.push_str("[redacted]");
            copied = end;
            from = end;
        } else {
            // Try again one character further on.
            from = start + text[start..].chars().next().map_or(1, char::len_utf8);
        }
    }
    out.push_str(&text[copied..]);
    out
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    /// Accepts a string, or a number or boolean (a PIN like `1234` in TOML or
    /// in an environment variable arrives as a number), kept as written.
    /// The error never contains the value.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretVisitor;

        impl serde::de::Visitor<'_> for SecretVisitor {
            type Value = Secret;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a secret string")
            }

            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Secret, E> {
                Ok(Secret::new(value))
            }

            fn visit_string<E: serde::de::Error>(self, value: String) -> Result<Secret, E> {
                Ok(Secret(value))
            }

            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Secret, E> {
                Ok(Secret(value.to_string()))
            }

            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Secret, E> {
                Ok(Secret(value.to_string()))
            }

            fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Secret, E> {
                Ok(Secret(value.to_string()))
            }

            fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<Secret, E> {
                Ok(Secret(value.to_string()))
            }
        }

        deserializer.deserialize_any(SecretVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret} {secret:?}"), "[redacted] [redacted]");
    }

    #[test]
    fn numbers_and_booleans_are_accepted_as_written() {
        let secret: Secret = serde_json::from_str("4321").unwrap();
        assert_eq!(secret.expose(), "4321");
        let secret: Secret = serde_json::from_str("true").unwrap();
        assert_eq!(secret.expose(), "true");
        let error = serde_json::from_str::<Secret>("[1]")
            .unwrap_err()
            .to_string();
        assert!(!error.contains('1') || error.contains("line 1"), "{error}");
    }

    #[test]
    fn redacts_plain_and_url_encoded_occurrences() {
        let secret = Secret::new("k y&1");
        assert_eq!(
            secret.redact_in("a k y&1 b key=k+y%261"),
            "a [redacted] b key=[redacted]"
        );
        assert_eq!(Secret::default().redact_in("abc"), "abc");
    }

    #[test]
    fn redacts_whole_tokens_only() {
        // A one-character key must not mangle the words around it.
        let key = Secret::new("k");
        let text = "failed to lookup address information: Name or service not known (k)";
        assert_eq!(
            key.redact_in(text),
            "failed to lookup address information: Name or service not known ([redacted])"
        );
        let pin = Secret::new("1234");
        assert_eq!(
            pin.redact_in("extension 201234 and queue 1234, key=1234&x=12345"),
            "extension 201234 and queue [redacted], key=[redacted]&x=12345"
        );
        assert_eq!(pin.redact_in("1234"), "[redacted]");
        assert_eq!(pin.redact_in("12341234 1234"), "12341234 [redacted]");
        // Overlapping candidates: the second one is a token.
        assert_eq!(Secret::new("aa").redact_in("aaa aa"), "aaa [redacted]");
        // Punctuation at the secret's own edges needs no boundary.
        assert_eq!(Secret::new("-x-").redact_in("a-x-b"), "a[redacted]b");
        assert_eq!(Secret::new("é1").redact_in("né1 é1."), "né1 [redacted].");
        // A number ends at a letter and a word at a digit.
        assert_eq!(Secret::new("98765").redact_in("x98765y"), "x[redacted]y");
        assert_eq!(
            Secret::new("abc").redact_in("1abc2 xabc"),
            "1[redacted]2 xabc"
        );
    }
}
