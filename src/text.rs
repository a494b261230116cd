//! Small text helpers shared across the bridge: quoting untrusted text short
//! for an error message, capping an upstream value, and writing an error
//! with its causes.
//!
//! Pure; it knows nothing of secrets. Callers redact before they cut, so a
//! cut cannot leave half a secret behind.

/// How many characters of untrusted text an error message quotes.
pub(crate) const QUOTE_CHARS: usize = 40;

/// Cuts `text` for an error message to at most `max_chars` characters as a
/// quote would show them, marking a cut with `...`.
///
/// Messages quote such texts with `{:?}`, which writes a control or unusual
/// character as an escape up to ten characters long (`\u{10ffff}`); each
/// character counts as wide as its escape, so a quote of binary garbage is
/// as short as a quote of plain text.
pub(crate) fn shorten(text: &str, max_chars: usize) -> String {
    match quote_cut(text, max_chars) {
        Some(cut) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Untrusted `text` quoted for an error message as `{:?}` writes it, at most
/// [`QUOTE_CHARS`] characters of it; when cut, with its full length:
/// `"abc"… (1234 characters)`.
pub(crate) fn quoted(text: &str) -> String {
    match quote_cut(text, QUOTE_CHARS) {
        None => format!("{text:?}"),
        Some(cut) => format!("{:?}… ({} characters)", &text[..cut], text.chars().count()),
    }
}

/// Where to cut `text` so that at most `max_chars` characters remain as a
/// `{:?}` quote writes them (see [`shorten`]); `None` when it fits whole.
pub(crate) fn quote_cut(text: &str, max_chars: usize) -> Option<usize> {
    let mut width = 0;
    for (at, character) in text.char_indices() {
        width += character.escape_debug().len();
        if width > max_chars {
            return Some(at);
        }
    }
    None
}

/// At most `max_chars` characters of `text`, cut on a character boundary
/// without a marker: for values (not messages) that must stay bounded.
pub(crate) fn cap(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => text[..cut].to_owned(),
        None => text.to_owned(),
    }
}

/// `word` with its indefinite article: `an add`, `a remove`, `an array`.
pub(crate) fn with_article(word: &str) -> String {
    let vowel = word
        .chars()
        .next()
        .is_some_and(|c| "aeiouAEIOU".contains(c));
    format!("{} {word}", if vowel { "an" } else { "a" })
}

/// `1 agent`, `2 agents`.
pub(crate) fn count(number: usize, noun: &str) -> String {
    if number == 1 {
        format!("1 {noun}")
    } else {
        format!("{number} {noun}s")
    }
}

/// The error and its causes, `: `-separated; a cause whose text the message
/// already contains is not repeated.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorten_cuts_on_characters() {
        let check = |text: &str, max: usize, expected: &str| {
            assert_eq!(shorten(text, max), expected, "{text:?} {max}");
        };
        check("abc", 3, "abc");
        check("abcd", 3, "abc...");
        check("ééééé", 2, "éé...");
        check("", 0, "");
        // Characters a quote escapes count as wide as their escapes.
        check("a\u{7f}b", 7, "a\u{7f}...");
        check("a\u{7f}b", 6, "a...");
        check("\u{3347a}\u{3347a}", 12, "\u{3347a}...");
        check("a\nb", 4, "a\nb");
        check("a\nb", 3, "a\n...");
        let garbage = "\u{1dc0}\u{3347a}\0\u{10}\u{100000}\u{7f}".repeat(20);
        let quote = quoted(&garbage);
        assert!(quote.ends_with("… (120 characters)"), "{quote}");
        assert!(quote.chars().count() <= QUOTE_CHARS + 25, "{quote}");
        assert_eq!(quoted("a\nb"), r#""a\nb""#);
        assert_eq!(quote_cut("abc", 3), None);
        assert_eq!(quote_cut("a\u{7f}", 6), Some(1));
        assert_eq!(cap("ééé", 2), "éé");
        assert_eq!(cap("ab", 5), "ab");
    }

    #[test]
    fn articles_and_counts_read_right() {
        assert_eq!(with_article("add"), "an add");
        assert_eq!(with_article("remove"), "a remove");
        assert_eq!(with_article("array"), "an array");
        assert_eq!(count(1, "agent"), "1 agent");
        assert_eq!(count(0, "agent"), "0 agents");
        assert_eq!(count(36, "agent"), "36 agents");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("{message}")]
    struct Layer {
        message: &'static str,
        #[source]
        cause: Option<Box<Layer>>,
    }

    #[test]
    fn error_chain_names_every_new_cause_once() {
        let inner = Layer {
            message: "connection refused",
            cause: None,
        };
        let middle = Layer {
            message: "tcp connect error: connection refused",
            cause: Some(Box::new(inner)),
        };
        let outer = Layer {
            message: "error sending request",
            cause: Some(Box::new(middle)),
        };
        assert_eq!(
            error_chain(&outer),
            "error sending request: tcp connect error: connection refused"
        );
    }
}
