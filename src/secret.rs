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

    /// Replaces every occurrence of the secret in `text` with `[redacted]`.
    /// Used on anything upstream echoes back (URLs, error bodies) before it is
    /// logged, stored or answered.
    pub fn redact_in(&self, text: &str) -> String {
        if self.0.is_empty() {
            return text.to_owned();
        }
        let mut out = text.replace(&self.0, "[redacted]");
        // Also the percent-encoded form, as it appears in a URL.
        let encoded: String = url::form_urlencoded::byte_serialize(self.0.as_bytes()).collect();
        if encoded != self.0 {
            out = out.replace(&encoded, "[redacted]");
        }
        out
    }
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
}
