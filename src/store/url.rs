//! Database URLs as they may be shown: the password removed from the URL
//! itself and from any driver text that could quote it. Pure.

use crate::secret::Secret;

/// The password of a database URL (userinfo or `password=` parameter), if
/// any, percent-decoded exactly once.
pub(crate) fn url_password(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let from_userinfo = parsed.password().map(percent_decode);
    from_userinfo.or_else(|| {
        parsed
            .query_pairs()
            .find(|(key, _)| key == "password")
            .map(|(_, value)| value.into_owned())
    })
}

/// `%XX` escapes decoded, nothing else (`+`, `&` and `=` stay as they are:
/// they are ordinary characters in a userinfo password).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' && index + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[index + 1..index + 3]).ok();
            if let Some(value) = hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                out.push(value);
                index += 3;
                continue;
            }
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes the password of `url` from some text (an error message), in its
/// decoded and its URL-encoded forms.
pub(crate) fn redact_text(text: &str, url: &str) -> String {
    match url_password(url) {
        Some(password) if !password.is_empty() => Secret::new(password).redact_in(text),
        _ => text.to_owned(),
    }
}

/// A database URL safe to print: the userinfo password and any `password`
/// query parameter replaced by `[redacted]`. Unparseable URLs are cut to
/// their scheme.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        let scheme = url.split(':').next().unwrap_or_default();
        return if scheme.len() < url.len() && scheme.chars().all(|c| c.is_ascii_alphanumeric()) {
            format!("{scheme}:[unparseable]")
        } else {
            "[unparseable]".to_owned()
        };
    };
    if parsed.password().is_some() {
        // Only fails for URLs that cannot have a userinfo, which have no password.
        let _ = parsed.set_password(Some("[redacted]"));
    }
    if parsed.query_pairs().any(|(key, _)| key == "password") {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(key, value)| {
                let value = if key == "password" {
                    "[redacted]".into()
                } else {
                    value.into_owned()
                };
                (key.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, expected: &str) {
        assert_eq!(redact_url(url), expected, "{url}");
    }

    #[test]
    fn urls_never_show_a_password() {
        check(
            "postgres://bridge:s3cret@db:5432/history",
            "postgres://bridge:%5Bredacted%5D@db:5432/history",
        );
        check(
            "postgres://bridge@db/history",
            "postgres://bridge@db/history",
        );
        check(
            "postgres://db/history?user=x&password=s3cret",
            "postgres://db/history?user=x&password=%5Bredacted%5D",
        );
        check("sqlite://data/pbx2mqtt.db", "sqlite://data/pbx2mqtt.db");
        check("postgres://bridge:s3cret@[::1", "postgres:[unparseable]");
        check("nonsense with s3cret", "[unparseable]");
    }

    #[test]
    fn error_text_loses_the_password() {
        let url = "postgres://bridge:p%40ss@db/history";
        assert_eq!(url_password(url).as_deref(), Some("p@ss"));
        let text = redact_text("failed for p@ss and p%40ss", url);
        assert!(!text.contains("p@ss") && !text.contains("p%40ss"), "{text}");
    }

    #[test]
    fn passwords_with_url_punctuation_are_read_whole() {
        for (url, password) in [
            ("postgres://u:a&b=c+d@db/h", "a&b=c+d"),
            ("postgres://u:a%26b%3Dc%2Bd@db/h", "a&b=c+d"),
            ("postgres://u:100%25@db/h", "100%"),
        ] {
            assert_eq!(url_password(url).as_deref(), Some(password), "{url}");
            let text = redact_text(&format!("auth failed for {password}"), url);
            assert!(!text.contains(password), "{url}: {text}");
        }
    }
}
