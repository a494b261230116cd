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
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
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
    fn redacts_plain_and_url_encoded_occurrences() {
        let secret = Secret::new("k y&1");
        assert_eq!(
            secret.redact_in("a k y&1 b key=k+y%261"),
            "a [redacted] b key=[redacted]"
        );
        assert_eq!(Secret::default().redact_in("abc"), "abc");
    }
}
