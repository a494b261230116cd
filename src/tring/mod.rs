//! The TRiNG PBX proxy API (`upstream-apis.md` §2): call-queue membership
//! over HTTP GET, everything in the query string.
//!
//! Three rooms, the grammar beside the connection:
//! - `request`: pure. The URL of each operation, always built through
//!   `Url::query_pairs_mut` in the documented parameter order, the refusal
//!   of anything but a plain number, and [`redacted_url`], the only form of
//!   a TRiNG URL shown to people.
//! - `answers`: pure. Deciding success from the body (`OK`, a JSON list,
//!   `null`, a plain-text error with HTTP 200, an HTML page, PHP warnings
//!   before the answer), stripping the tenant suffix, and making upstream
//!   text safe to quote.
//! - `client`: the HTTP side ([`TringClient`]): timeouts, the body size
//!   limit, transport errors, and never following a redirect: the key is in
//!   the query string, and a redirect to another host would hand it over; a
//!   3xx answer is an error ([`TringError::Redirect`]).
//!
//! This file holds what they share: the error type and the outcomes. The
//! module keeps the API key out of every text it produces (errors, logs,
//! URLs shown to people go through [`redacted_url`] and
//! [`Secret::redact_in`](crate::secret::Secret::redact_in)). It does not
//! validate commands (that is `commands::parse`).
//!
//! `add` is not known to be idempotent upstream, so [`TringClient::add`] lists
//! the queue first and skips the add when the member is already present
//! (`already_member: true`); [`TringClient::remove`] likewise skips the `del`
//! when the member is absent (`was_member: false`). Both cost one extra
//! `list` request; a member added or removed by someone else between the two
//! requests is the only (harmless) race.

mod answers;
mod client;
mod request;

use std::time::Duration;

use serde::Serialize;

pub use answers::{interpret_ok_body, parse_member_list, split_php_warning};
pub use client::TringClient;
pub use request::{redacted_url, REDACTED};

/// Why a TRiNG call failed. Every message is already free of the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TringError {
    /// The client cannot be built from the configuration.
    #[error("tring client configuration: {0}")]
    Config(String),
    /// A queue or extension was not a plain number; nothing was sent.
    #[error("refusing to send {what} {value:?} to tring: it is not a plain number")]
    InvalidInput {
        /// `queue` or `extension`.
        what: &'static str,
        /// The refused value (shortened).
        value: String,
    },
    /// TRiNG answered (HTTP 200) with an error text instead of `OK`/JSON.
    #[error("tring rejected the request: {0}")]
    Rejected(String),
    /// TRiNG answered with a non-success HTTP status.
    #[error("tring answered HTTP {status}: {body}")]
    Http {
        /// The HTTP status code.
        status: u16,
        /// The start of the body, redacted.
        body: String,
    },
    /// TRiNG answered with a redirect, which is never followed (the key is in
    /// the URL and would go to the new address).
    #[error("tring answered HTTP {status} redirecting to {location}; redirects are not followed, so set tring.url to the final address")]
    Redirect {
        /// The HTTP status code (3xx).
        status: u16,
        /// Where it pointed, with the key redacted (or `(no location)`).
        location: String,
    },
    /// No complete answer within `tring.timeout`.
    #[error("tring did not answer within {}; check the service or raise tring.timeout", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The connection could not be made or broke.
    #[error("cannot reach tring: {0}; check tring.url and the network")]
    Connect(String),
    /// An answer that is neither `OK`, a JSON list nor an error text.
    #[error("tring sent an unexpected answer: {0}")]
    Malformed(String),
}

/// What [`TringClient::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AddOutcome {
    /// True when the member was already in the queue, so no `add` was sent.
    pub already_member: bool,
}

/// What [`TringClient::remove`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RemoveOutcome {
    /// False when the member was not in the queue, so no `del` was sent.
    pub was_member: bool,
}
