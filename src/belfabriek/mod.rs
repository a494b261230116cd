//! The Belfabriek Agent Availability API: one [`BelfabriekClient::poll`]
//! asks `ivr.getAgentAvail` and, only when the agent is available,
//! `general.getExtensionStatus`, and returns the raw
//! [`AgentReading`](crate::model::AgentReading).
//!
//! Three rooms, a protocol beside its connection:
//! - `answers`: pure. Builds the request bodies and reads the answers
//!   tolerantly ([`interpret_agent_avail`], [`interpret_extension_status`]),
//!   quoting upstream text only redacted and cut short. No HTTP, no tokio;
//!   tested with recorded answers.
//! - `client`: the HTTP side (the request timeout, the body size limit,
//!   transport failures as typed errors without the PIN);
//! - `http1`: the small keep-alive HTTP/1.1 client it posts with (reused
//!   connections, one retry when a kept-alive connection was closed under a
//!   request, TLS for `https`), chosen over reqwest for the poll's hot path.
//!
//! This file holds what both share: the error type. None of it derives
//! statuses (that is `crate::status`), schedules polls (that is
//! `crate::poller`) or lets the account PIN out: every upstream text that
//! goes into an error is passed through
//! [`Secret::redact_in`](crate::secret::Secret::redact_in) first, and request
//! bodies are never logged.

mod answers;
mod client;
#[cfg(test)]
mod fixtures;
mod http1;

use std::time::Duration;

pub use answers::{
    agent_avail_call, extension_status_call, interpret_agent_avail, interpret_extension_status,
    AgentAvail, METHOD_AGENT_AVAIL, METHOD_EXTENSION_STATUS, SNIPPET_CHARS,
};
pub use client::{BelfabriekClient, MAX_BODY_BYTES};

/// Why a poll (or building the client) failed. Every message names the
/// method, is lowercase and never contains the account PIN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BelfabriekError {
    /// No complete answer within `belfabriek.timeout`.
    #[error("belfabriek {method} timed out after {after:?}; the service is slow or unreachable: check belfabriek.url or raise belfabriek.timeout")]
    Timeout {
        /// The XML-RPC method.
        method: &'static str,
        /// The configured timeout.
        after: Duration,
    },
    /// The connection could not be made, or was refused or reset.
    #[error("belfabriek {method} could not reach the service: {detail}; check belfabriek.url and the network")]
    Connect {
        /// The XML-RPC method.
        method: &'static str,
        /// What the transport said (redacted, short).
        detail: String,
    },
    /// A non-success HTTP status (an HTML error page, a 5xx).
    #[error("belfabriek {method} answered http {status}: {snippet}")]
    Http {
        /// The XML-RPC method.
        method: &'static str,
        /// The HTTP status code.
        status: u16,
        /// The start of the body, whitespace collapsed, redacted.
        snippet: String,
    },
    /// An XML-RPC `<fault>`.
    #[error("belfabriek {method} returned fault {code}: {message}; check belfabriek.account_pin and the agent's ids")]
    Fault {
        /// The XML-RPC method.
        method: &'static str,
        /// `faultCode`.
        code: i64,
        /// `faultString` (redacted, short).
        message: String,
    },
    /// A body that is not the expected XML-RPC answer: bad XML, an empty
    /// body, a missing member.
    #[error("belfabriek {method} returned a malformed response: {detail}")]
    Malformed {
        /// The XML-RPC method.
        method: &'static str,
        /// What is wrong (redacted, short).
        detail: String,
    },
    /// The client could not be built from the configuration.
    #[error("cannot set up the belfabriek client: {detail}")]
    Setup {
        /// What is wrong.
        detail: String,
    },
}

impl BelfabriekError {
    /// A short stable name of the error kind, for metrics and log fields:
    /// `timeout`, `connect`, `http`, `fault`, `malformed` or `setup`.
    pub fn kind(&self) -> &'static str {
        match self {
            BelfabriekError::Timeout { .. } => "timeout",
            BelfabriekError::Connect { .. } => "connect",
            BelfabriekError::Http { .. } => "http",
            BelfabriekError::Fault { .. } => "fault",
            BelfabriekError::Malformed { .. } => "malformed",
            BelfabriekError::Setup { .. } => "setup",
        }
    }
}
