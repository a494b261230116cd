//! Queue commands (`product.md` §3): MQTT requests on
//! `<base>/request/queue/<queue>/<action>` and `<base>/request/agent/<agent>/queues`,
//! executed against TRiNG and answered on the mirror `response/` topic.
//!
//! The parts, one job each:
//! - [`parse`]: pure validation from (topic, payload, retain flag, rules) to a
//!   typed [`Command`] or a [`CommandError`]; nothing reaches TRiNG unless it
//!   passed here. The CLI uses the same parser.
//! - [`dedup`]: the memory of recent `transaction`s (pure, bounded).
//! - [`execute`]: the one place a validated command becomes TRiNG calls
//!   (IO, through [`TringClient`](crate::tring::TringClient)).
//! - [`dispatcher`]: the task that takes requests from the MQTT connection,
//!   runs commands concurrently, answers, audits and counts.
//! - [`audit`]: the `command_audit` table.
//! - [`cli`]: `pbx2mqtt queue ...`, `pbx2mqtt agent queues`, `pbx2mqtt audit`.
//!
//! This module itself holds the shared values: [`Command`], [`ErrorCode`],
//! [`CommandError`], the response payload ([`Response`]). They are plain
//! data: this file does no IO, never publishes and never touches the
//! database, so the pure parser depends on values only.
//!
//! Error codes ([`ErrorCode`], `code` in an error response) are stable and
//! machine readable; the one table of what each means is the README's
//! "Error codes" section (`README.md#error-codes`), which users read.
//!
//! Redaction: only the TRiNG key can reach TRiNG, so only the key can come
//! back in TRiNG's text, and only in text derived from TRiNG's answers (error
//! bodies, URLs, transport errors). [`CommandError::without_key`] is the one
//! pass that removes it, from upstream errors only; fields validated as
//! plain numbers, the topic and the request are never rewritten (a short
//! numeric secret would otherwise corrupt extension `201234` or queue `1234`).

pub mod audit;
pub mod cli;
pub mod dedup;
pub mod dispatcher;
pub mod execute;
pub mod membership;
pub mod parse;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::AgentId;
use crate::secret::Secret;
use crate::tring::TringError;

pub use dispatcher::{Dispatcher, SharedTransactions};
pub use parse::{parse_request, CommandRules, ParsedRequest};

/// A stable machine-readable error code (the `code` of an error response).
/// What each means for users: the README's "Error codes" table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The payload starts like JSON but does not parse, or is not UTF-8.
    InvalidJson,
    /// Wrong shape: unknown field, wrong type, both or neither member fields.
    InvalidRequest,
    /// The action segment is not `add`, `remove`, `clean` or `list`.
    UnknownAction,
    /// The agent is not configured.
    UnknownAgent,
    /// The agent is configured without `queue_extension`.
    AgentHasNoExtension,
    /// The queue segment is not a plain number.
    InvalidQueue,
    /// The extension is not a plain number.
    InvalidExtension,
    /// The queue is not in `commands.allowed_queues`.
    QueueNotAllowed,
    /// `clean` while `commands.allow_clean` is false.
    CleanNotAllowed,
    /// The payload is larger than `commands.max_payload_bytes`.
    PayloadTooLarge,
    /// The request was retained; it is cleared, not executed.
    RetainedRequest,
    /// TRiNG answered with an error text.
    UpstreamRejected,
    /// TRiNG answered an HTTP error, was unreachable or answered nonsense.
    UpstreamError,
    /// TRiNG did not answer in time.
    UpstreamTimeout,
    /// Too many commands are waiting already; nothing was sent.
    Busy,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidRequest,
        ErrorCode::UnknownAction,
        ErrorCode::UnknownAgent,
        ErrorCode::AgentHasNoExtension,
        ErrorCode::InvalidQueue,
        ErrorCode::InvalidExtension,
        ErrorCode::QueueNotAllowed,
        ErrorCode::CleanNotAllowed,
        ErrorCode::PayloadTooLarge,
        ErrorCode::RetainedRequest,
        ErrorCode::UpstreamRejected,
        ErrorCode::UpstreamError,
        ErrorCode::UpstreamTimeout,
        ErrorCode::Busy,
    ];

    /// The wire name, e.g. `invalid_queue`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::UnknownAction => "unknown_action",
            ErrorCode::UnknownAgent => "unknown_agent",
            ErrorCode::AgentHasNoExtension => "agent_has_no_extension",
            ErrorCode::InvalidQueue => "invalid_queue",
            ErrorCode::InvalidExtension => "invalid_extension",
            ErrorCode::QueueNotAllowed => "queue_not_allowed",
            ErrorCode::CleanNotAllowed => "clean_not_allowed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RetainedRequest => "retained_request",
            ErrorCode::UpstreamRejected => "upstream_rejected",
            ErrorCode::UpstreamError => "upstream_error",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::Busy => "busy",
        }
    }

    /// True for the codes whose message quotes TRiNG's answers.
    pub fn is_upstream(self) -> bool {
        matches!(
            self,
            ErrorCode::UpstreamRejected | ErrorCode::UpstreamError | ErrorCode::UpstreamTimeout
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a command was refused or failed: a code and a human message (which
/// never contains the TRiNG key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CommandError {
    /// The machine code.
    pub code: ErrorCode,
    /// What is wrong and what to do, for people.
    pub message: String,
}

impl CommandError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The `busy` refusal: too many commands wait for TRiNG already.
    pub fn busy() -> Self {
        Self::new(
            ErrorCode::Busy,
            "too many commands in progress; retry later",
        )
    }

    /// The error with the TRiNG key redacted from its message when the
    /// message quotes TRiNG ([`ErrorCode::is_upstream`]); other messages
    /// quote only the request and are returned unchanged. The one redaction
    /// pass of this module (see the module doc), applied before an error is
    /// answered, logged or audited; the client redacts its texts already, this
    /// is the second line.
    pub fn without_key(self, key: &Secret) -> Self {
        if self.code.is_upstream() {
            Self {
                message: key.redact_in(&self.message),
                ..self
            }
        } else {
            self
        }
    }
}

impl From<TringError> for CommandError {
    fn from(error: TringError) -> Self {
        let code = match &error {
            TringError::Rejected(_) => ErrorCode::UpstreamRejected,
            TringError::Timeout(_) => ErrorCode::UpstreamTimeout,
            TringError::InvalidInput { what: "queue", .. } => ErrorCode::InvalidQueue,
            TringError::InvalidInput { .. } => ErrorCode::InvalidExtension,
            TringError::Config(_)
            | TringError::Http { .. }
            | TringError::Redirect { .. }
            | TringError::Connect(_)
            | TringError::Malformed(_) => ErrorCode::UpstreamError,
        };
        // TringError messages are redacted where they are built.
        Self::new(code, error.to_string())
    }
}

/// The request's `transaction`: a JSON string or number, echoed back as it
/// came (integers exactly; other numbers as serde_json reads them).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Transaction(serde_json::Value);

impl Transaction {
    /// A transaction from a JSON value; `None` unless a string or a number.
    pub fn from_json(value: serde_json::Value) -> Option<Self> {
        match value {
            serde_json::Value::String(_) | serde_json::Value::Number(_) => Some(Self(value)),
            _ => None,
        }
    }

    /// The JSON text (`"abc"` or `42`): the dedup key and the audit column.
    pub fn json_text(&self) -> String {
        self.0.to_string()
    }

    /// The JSON value.
    pub fn as_json(&self) -> &serde_json::Value {
        &self.0
    }
}

/// The member a command names: an extension, and the configured agent it
/// came from (if it was named by agent id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The configured agent, when the request named one.
    pub agent: Option<AgentId>,
    /// The TRiNG extension (a plain number).
    pub extension: String,
}

/// A validated command: every queue and extension is a plain number, the
/// queue is allowed, `clean` is enabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Add a member to a queue (`custom`: a custom destination, `type=CU`).
    Add {
        /// The queue number.
        queue: String,
        /// The member to add.
        member: Member,
        /// True for a custom destination.
        custom: bool,
    },
    /// Remove a member from a queue.
    Remove {
        /// The queue number.
        queue: String,
        /// The member to remove.
        member: Member,
    },
    /// Remove every member of a queue.
    Clean {
        /// The queue number.
        queue: String,
    },
    /// List the members of a queue.
    List {
        /// The queue number.
        queue: String,
    },
    /// List the queues of an agent or extension.
    AgentQueues {
        /// The agent or extension.
        member: Member,
    },
}

impl Command {
    /// The action name as used in topics and the audit table.
    pub fn action(&self) -> &'static str {
        match self {
            Command::Add { .. } => "add",
            Command::Remove { .. } => "remove",
            Command::Clean { .. } => "clean",
            Command::List { .. } => "list",
            Command::AgentQueues { .. } => "queues",
        }
    }

    /// The queue, when the command has one.
    pub fn queue(&self) -> Option<&str> {
        match self {
            Command::Add { queue, .. }
            | Command::Remove { queue, .. }
            | Command::Clean { queue }
            | Command::List { queue } => Some(queue),
            Command::AgentQueues { .. } => None,
        }
    }

    /// The member, when the command has one.
    pub fn member(&self) -> Option<&Member> {
        match self {
            Command::Add { member, .. }
            | Command::Remove { member, .. }
            | Command::AgentQueues { member } => Some(member),
            Command::Clean { .. } | Command::List { .. } => None,
        }
    }
}

/// `data` of an `ok` response, one shape per action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CommandData {
    /// `add`: `{"queue":"500","extension":"201","custom":false,"already_member":false}`
    /// (plus `"agent"` when named by agent).
    Add {
        /// The queue.
        queue: String,
        /// The agent, when the request named one.
        #[serde(skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
        /// The extension added.
        extension: String,
        /// True for a custom destination.
        custom: bool,
        /// True when it was already a member (no add was sent).
        already_member: bool,
    },
    /// `remove`: `{"queue":"500","extension":"201","was_member":true}`.
    Remove {
        /// The queue.
        queue: String,
        /// The agent, when the request named one.
        #[serde(skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
        /// The extension removed.
        extension: String,
        /// False when it was not a member (no del was sent).
        was_member: bool,
    },
    /// `list`: `{"queue":"500","members":["201","202"]}`.
    List {
        /// The queue.
        queue: String,
        /// The members' extensions, without the tenant suffix.
        members: Vec<String>,
    },
    /// Agent queues: `{"agent":"alice","extension":"201","queues":["500"]}`
    /// (`agent` is null for a raw extension).
    AgentQueues {
        /// The agent, or null for a raw extension.
        agent: Option<String>,
        /// The extension asked about.
        extension: String,
        /// The queues it is a member of.
        queues: Vec<String>,
    },
    /// `clean`: `{"queue":"500"}`.
    Clean {
        /// The queue that was emptied.
        queue: String,
    },
}

/// The response payload: `{"status":"ok","data":{...},"transaction":...}` or
/// `{"status":"error","error":"...","code":"...","transaction":...}`.
/// `transaction` is left out when the request had none.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Response {
    /// `ok` or `error`.
    pub status: &'static str,
    /// The result, for `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<CommandData>,
    /// The human message, for `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The machine code, for `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    /// The request's transaction, echoed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction: Option<Transaction>,
}

impl Response {
    /// The response to a command's outcome.
    pub fn new(
        outcome: &Result<CommandData, CommandError>,
        transaction: Option<Transaction>,
    ) -> Self {
        match outcome {
            Ok(data) => Self {
                status: "ok",
                data: Some(data.clone()),
                error: None,
                code: None,
                transaction,
            },
            Err(error) => Self {
                status: "error",
                data: None,
                error: Some(error.message.clone()),
                code: Some(error.code),
                transaction,
            },
        }
    }

    /// The JSON payload.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain strings, numbers and enums cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_readme_table_documents_every_error_code() {
        let readme = include_str!("../../README.md");
        let table = readme
            .split("### Error codes")
            .nth(1)
            .and_then(|rest| rest.split("\n### ").next())
            .expect("the README has an \"Error codes\" section");
        for code in ErrorCode::ALL {
            assert!(
                table.contains(&format!("| `{code}` |")),
                "the README's error code table lacks `{code}`"
            );
        }
    }

    #[test]
    fn error_codes_serialize_to_their_wire_names() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn responses_have_the_documented_shapes() {
        let check = |outcome: Result<CommandData, CommandError>,
                     transaction: Option<serde_json::Value>,
                     expected: serde_json::Value| {
            let response = Response::new(&outcome, transaction.and_then(Transaction::from_json));
            let actual: serde_json::Value = serde_json::from_slice(&response.to_json()).unwrap();
            assert_eq!(actual, expected);
        };
        use serde_json::json;
        check(
            Ok(CommandData::Add {
                queue: "500".into(),
                agent: None,
                extension: "201".into(),
                custom: false,
                already_member: false,
            }),
            Some(json!("t-1")),
            json!({"status":"ok","data":{"queue":"500","extension":"201","custom":false,
                   "already_member":false},"transaction":"t-1"}),
        );
        check(
            Ok(CommandData::Remove {
                queue: "500".into(),
                agent: Some("alice".into()),
                extension: "201".into(),
                was_member: true,
            }),
            Some(json!(7)),
            json!({"status":"ok","data":{"queue":"500","agent":"alice","extension":"201",
                   "was_member":true},"transaction":7}),
        );
        check(
            Ok(CommandData::Clean {
                queue: "500".into(),
            }),
            None,
            json!({"status":"ok","data":{"queue":"500"}}),
        );
        check(
            Ok(CommandData::List {
                queue: "500".into(),
                members: vec!["201".into(), "202".into()],
            }),
            None,
            json!({"status":"ok","data":{"queue":"500","members":["201","202"]}}),
        );
        check(
            Ok(CommandData::AgentQueues {
                agent: None,
                extension: "201".into(),
                queues: vec!["500".into()],
            }),
            None,
            json!({"status":"ok","data":{"agent":null,"extension":"201","queues":["500"]}}),
        );
        check(
            Err(CommandError::new(ErrorCode::InvalidQueue, "bad queue")),
            Some(json!(12345678901234u64)),
            json!({"status":"error","error":"bad queue","code":"invalid_queue",
                   "transaction":12345678901234u64}),
        );
    }

    #[test]
    fn only_upstream_messages_lose_the_key() {
        // A short numeric key, as some tenants have.
        let key = Secret::new("1234");
        let check = |code: ErrorCode, message: &str, expected: &str| {
            assert_eq!(
                CommandError::new(code, message).without_key(&key).message,
                expected,
                "{code}"
            );
        };
        check(
            ErrorCode::UpstreamRejected,
            "tring rejected the request: bad key 1234",
            "tring rejected the request: bad key [redacted]",
        );
        check(
            ErrorCode::UpstreamError,
            "tring answered HTTP 500: key=1234",
            "tring answered HTTP 500: key=[redacted]",
        );
        check(
            ErrorCode::InvalidExtension,
            "extension \"201234x\" is not a plain number",
            "extension \"201234x\" is not a plain number",
        );
        check(
            ErrorCode::QueueNotAllowed,
            "queue 1234 is not in commands.allowed_queues",
            "queue 1234 is not in commands.allowed_queues",
        );
    }

    #[test]
    fn upstream_errors_map_to_codes() {
        let check = |error: TringError, code: ErrorCode| {
            assert_eq!(CommandError::from(error).code, code);
        };
        check(
            TringError::Rejected("no".into()),
            ErrorCode::UpstreamRejected,
        );
        check(
            TringError::Timeout(Duration::from_secs(1)),
            ErrorCode::UpstreamTimeout,
        );
        check(
            TringError::Http {
                status: 500,
                body: String::new(),
            },
            ErrorCode::UpstreamError,
        );
        check(
            TringError::Connect("refused".into()),
            ErrorCode::UpstreamError,
        );
        check(TringError::Malformed("x".into()), ErrorCode::UpstreamError);
    }
}
