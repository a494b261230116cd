//! Pure building of TRiNG request URLs: one [`Operation`] becomes the
//! endpoint with the documented query (key first, then the parameters in
//! the documented order), through the URL serializer, never by
//! concatenation. Only plain numbers go in ([`check_number`]), and
//! [`redacted_url`] is the form a person may see. No HTTP.

use url::Url;

use super::TringError;
use crate::config::is_plain_number;
use crate::secret::Secret;
use crate::text::shorten;

/// The value that replaces the key in every URL shown to a person.
pub const REDACTED: &str = "REDACTED";

/// The documented query of one operation, in order, without the key (which
/// always comes first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Operation<'a> {
    /// `reqtype=queue&tenant=T&number=Q&extension=E&action=add[&type=CU]`
    Add {
        queue: &'a str,
        extension: &'a str,
        custom: bool,
    },
    /// `reqtype=queue&tenant=T&number=Q&extension=E&action=del`
    Remove { queue: &'a str, extension: &'a str },
    /// `reqtype=queue&tenant=T&number=Q&action=clean`
    Clean { queue: &'a str },
    /// `reqtype=queue&tenant=T&number=Q&action=list&format=json`
    List { queue: &'a str },
    /// `reqtype=AGENT&action=listqueues&tenant=T&format=json&extension=E`
    AgentQueues { extension: &'a str },
}

/// The full request URL of `operation` at `endpoint` for `tenant`, key
/// included: only for the wire.
pub(super) fn request_url(
    endpoint: &Url,
    tenant: &str,
    key: &Secret,
    operation: Operation<'_>,
) -> Url {
    let mut url = endpoint.clone();
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("key", key.expose());
        match operation {
            Operation::Add {
                queue,
                extension,
                custom,
            } => {
                query.extend_pairs([
                    ("reqtype", "queue"),
                    ("tenant", tenant),
                    ("number", queue),
                    ("extension", extension),
                    ("action", "add"),
                ]);
                if custom {
                    query.append_pair("type", "CU");
                }
            }
            Operation::Remove { queue, extension } => {
                query.extend_pairs([
                    ("reqtype", "queue"),
                    ("tenant", tenant),
                    ("number", queue),
                    ("extension", extension),
                    ("action", "del"),
                ]);
            }
            Operation::Clean { queue } => {
                query.extend_pairs([
                    ("reqtype", "queue"),
                    ("tenant", tenant),
                    ("number", queue),
                    ("action", "clean"),
                ]);
            }
            Operation::List { queue } => {
                query.extend_pairs([
                    ("reqtype", "queue"),
                    ("tenant", tenant),
                    ("number", queue),
                    ("action", "list"),
                    ("format", "json"),
                ]);
            }
            Operation::AgentQueues { extension } => {
                query.extend_pairs([
                    ("reqtype", "AGENT"),
                    ("action", "listqueues"),
                    ("tenant", tenant),
                    ("format", "json"),
                    ("extension", extension),
                ]);
            }
        }
    }
    url
}

/// `url` with the `key` parameter's value replaced by [`REDACTED`] (and any
/// other occurrence of the key redacted): the only form of a TRiNG URL that
/// may reach a log, an error, a response or the database.
pub fn redacted_url(url: &Url, key: &Secret) -> String {
    let mut redacted = url.clone();
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(name, value)| {
                let value = if name == "key" {
                    REDACTED.to_owned()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        redacted.query_pairs_mut().clear().extend_pairs(pairs);
    }
    key.redact_in(redacted.as_str())
}

/// Refuses anything but a plain number before it goes into a URL.
pub(super) fn check_number(what: &'static str, value: &str) -> Result<(), TringError> {
    if is_plain_number(value) {
        Ok(())
    } else {
        Err(TringError::InvalidInput {
            what,
            value: shorten(value, 40),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The URL of `operation` for tenant `ACME` with `key`.
    fn url(key: &str, operation: Operation<'_>) -> Url {
        let endpoint = Url::parse("https://api.tring.nu/pbx/proxyapi.php").unwrap();
        request_url(&endpoint, "ACME", &Secret::new(key), operation)
    }

    #[test]
    fn urls_follow_the_documented_parameter_order() {
        let check = |operation: Operation<'_>, expected_query: &str| {
            let url = url("k3y", operation);
            assert_eq!(url.query(), Some(expected_query), "{operation:?}");
        };
        check(
            Operation::Add {
                queue: "500",
                extension: "201",
                custom: false,
            },
            "key=k3y&reqtype=queue&tenant=ACME&number=500&extension=201&action=add",
        );
        check(
            Operation::Add {
                queue: "500",
                extension: "0612345678",
                custom: true,
            },
            "key=k3y&reqtype=queue&tenant=ACME&number=500&extension=0612345678&action=add&type=CU",
        );
        check(
            Operation::Remove {
                queue: "500",
                extension: "201",
            },
            "key=k3y&reqtype=queue&tenant=ACME&number=500&extension=201&action=del",
        );
        check(
            Operation::Clean { queue: "500" },
            "key=k3y&reqtype=queue&tenant=ACME&number=500&action=clean",
        );
        check(
            Operation::List { queue: "500" },
            "key=k3y&reqtype=queue&tenant=ACME&number=500&action=list&format=json",
        );
        check(
            Operation::AgentQueues { extension: "201" },
            "key=k3y&reqtype=AGENT&action=listqueues&tenant=ACME&format=json&extension=201",
        );
    }

    #[test]
    fn special_characters_in_the_key_are_encoded_and_redacted() {
        let key = "a&b=c d";
        let url = url(key, Operation::List { queue: "500" });
        assert!(url.as_str().contains("key=a%26b%3Dc+d&reqtype"), "{url}");
        let shown = redacted_url(&url, &Secret::new(key));
        assert!(shown.contains("key=REDACTED&reqtype=queue"), "{shown}");
        assert!(
            !shown.contains("a%26b") && !shown.contains("a&b=c d"),
            "{shown}"
        );
    }
}
