//! Command parsing and validation: from a request topic, its payload, the
//! retain flag and the [`CommandRules`] to a typed [`Command`] or a
//! [`CommandError`] with a precise message and a stable code.
//!
//! Pure: no IO, no clock, no logging. Everything that could reach a TRiNG URL
//! is checked here first (plain ASCII numbers only, allowed queues, `clean`
//! enabled), so a refused request never produces an upstream call. The MQTT
//! dispatcher and the CLI both call [`parse_request`]: there is no second
//! validation path.
//!
//! Payloads: `{"agent":"alice"}` or `{"extension":"201"}` (a number is fine),
//! optional `"type":"custom"` and `"transaction"` (string or number); a bare
//! number `201` on `add`/`remove` means `{"extension":"201"}`; `{}` or empty
//! for `list` and agent queues. `clean` needs `{}` (non-empty): an empty
//! message is what clearing a retained topic looks like, and must never empty
//! a queue.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value};

use super::{Command, CommandError, ErrorCode, Member, Transaction};
use crate::config::{is_plain_number, Config};
use crate::model::AgentId;
use crate::mqtt::topics::RequestTopic;
use crate::text::{quoted, with_article};

/// What commands may do, from `[commands]` and `[[agents]]`, prepared once.
#[derive(Debug, Clone, Default)]
pub struct CommandRules {
    /// `commands.allowed_queues`; empty allows every queue.
    pub allowed_queues: HashSet<String>,
    /// `commands.allow_clean`.
    pub allow_clean: bool,
    /// `commands.max_payload_bytes`.
    pub max_payload_bytes: usize,
    /// Configured agent id → its `queue_extension` (if any).
    pub agents: BTreeMap<AgentId, Option<String>>,
}

impl CommandRules {
    /// The rules of a loaded configuration.
    pub fn from_config(config: &Config) -> Self {
        Self {
            allowed_queues: config.commands.allowed_queues.iter().cloned().collect(),
            allow_clean: config.commands.allow_clean,
            max_payload_bytes: config.commands.max_payload_bytes,
            agents: config
                .agents
                .iter()
                .map(|agent| (agent.id.clone(), agent.queue_extension.clone()))
                .collect(),
        }
    }
}

/// The result of parsing one request: the transaction (echoed even when the
/// request is refused, if it could be read) and the command or the error.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRequest {
    /// The request's `transaction`, when the payload was a JSON object with
    /// a string or number `transaction`.
    pub transaction: Option<Transaction>,
    /// The validated command, or why it was refused.
    pub outcome: Result<Command, CommandError>,
}

/// The payload, decoded but not yet validated against the action.
#[derive(Debug, Clone, PartialEq)]
enum Body {
    /// Nothing (or only whitespace).
    Empty,
    /// A JSON object.
    Object(Map<String, Value>),
    /// Valid JSON that is not an object (`[1]`, `"201"`, `true`).
    OtherJson,
    /// Plain text that does not start like JSON (the `201` shorthand).
    Plain(String),
}

/// The queue actions (the `<action>` segment of a queue topic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueueAction {
    Add,
    Remove,
    Clean,
    List,
    /// `{"agent":..,"member":true|false}`: add or remove (a Home Assistant
    /// switch has one command topic).
    Set,
}

impl QueueAction {
    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "add" => Some(Self::Add),
            "remove" => Some(Self::Remove),
            "clean" => Some(Self::Clean),
            "list" => Some(Self::List),
            "set" => Some(Self::Set),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Remove => "remove",
            Self::Clean => "clean",
            Self::List => "list",
            Self::Set => "set",
        }
    }
}

/// Parses and validates one request. See the module documentation for the
/// payloads and the README's "Error codes" table for the codes.
pub fn parse_request(
    topic: &RequestTopic,
    payload: &[u8],
    retain: bool,
    rules: &CommandRules,
) -> ParsedRequest {
    let too_large = payload.len() > rules.max_payload_bytes;
    let mut transaction = None;
    let body = if too_large {
        Err(CommandError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the payload is {} bytes, more than commands.max_payload_bytes ({}); send a smaller request",
                payload.len(),
                rules.max_payload_bytes
            ),
        ))
    } else {
        decode_body(payload).and_then(|mut body| {
            if let Body::Object(object) = &mut body {
                transaction = take_transaction(object)?;
            }
            Ok(body)
        })
    };
    let outcome = if retain {
        // Refused whatever it holds; the transaction is echoed if readable.
        Err(CommandError::new(
            ErrorCode::RetainedRequest,
            "retained requests are refused (they would run again after every broker restart); \
             the request was cleared, publish it again without the retain flag",
        ))
    } else {
        body.and_then(|body| validate(topic, body, rules))
    };
    ParsedRequest {
        transaction,
        outcome,
    }
}

/// Decodes the payload into a [`Body`]: JSON when it starts like JSON
/// (`{`, `[` or `"`), plain text otherwise.
fn decode_body(payload: &[u8]) -> Result<Body, CommandError> {
    let text = std::str::from_utf8(payload).map_err(|_| {
        CommandError::new(
            ErrorCode::InvalidJson,
            "the payload is not UTF-8 text; send a JSON object like {\"extension\":\"201\"}",
        )
    })?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(Body::Empty);
    }
    if !text.starts_with(['{', '[', '"']) {
        return Ok(Body::Plain(text.to_owned()));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => Ok(Body::Object(object)),
        Ok(_) => Ok(Body::OtherJson),
        Err(error) => Err(CommandError::new(
            ErrorCode::InvalidJson,
            format!("the payload is not valid JSON ({error}); send a JSON object like {{\"extension\":\"201\"}}"),
        )),
    }
}

/// Removes and checks `transaction` (string or number; `null` is none).
fn take_transaction(object: &mut Map<String, Value>) -> Result<Option<Transaction>, CommandError> {
    match object.remove("transaction") {
        None | Some(Value::Null) => Ok(None),
        Some(value) => Transaction::from_json(value).map(Some).ok_or_else(|| {
            CommandError::new(
                ErrorCode::InvalidRequest,
                "`transaction` must be a string or a number",
            )
        }),
    }
}

/// Validates the topic and the body (without `transaction`) into a command.
fn validate(
    topic: &RequestTopic,
    body: Body,
    rules: &CommandRules,
) -> Result<Command, CommandError> {
    match topic {
        RequestTopic::Queue { queue, action } => {
            let action = QueueAction::parse(action).ok_or_else(|| {
                CommandError::new(
                    ErrorCode::UnknownAction,
                    format!(
                        "unknown action {}; use add, remove, clean, list or set",
                        quoted(action)
                    ),
                )
            })?;
            check_queue(queue, rules)?;
            let queue = queue.clone();
            match action {
                QueueAction::Add => {
                    let (member, custom) = member_body(action, body, rules)?;
                    Ok(Command::Add {
                        queue,
                        member,
                        custom,
                    })
                }
                QueueAction::Remove => {
                    let (member, _custom) = member_body(action, body, rules)?;
                    Ok(Command::Remove { queue, member })
                }
                QueueAction::Clean => {
                    if !rules.allow_clean {
                        return Err(CommandError::new(
                            ErrorCode::CleanNotAllowed,
                            "clean is disabled; set commands.allow_clean = true to allow emptying queues",
                        ));
                    }
                    if body == Body::Empty {
                        return Err(CommandError::new(
                            ErrorCode::InvalidRequest,
                            "clean needs the payload {} (an empty message is what clearing a retained \
                             topic looks like, so it never empties a queue)",
                        ));
                    }
                    no_fields_body("clean", body)?;
                    Ok(Command::Clean { queue })
                }
                QueueAction::List => {
                    no_fields_body("list", body)?;
                    Ok(Command::List { queue })
                }
                QueueAction::Set => {
                    let Body::Object(mut object) = body else {
                        return Err(CommandError::new(
                            ErrorCode::InvalidRequest,
                            "set needs {\"agent\":\"<id>\",\"member\":true} or false",
                        ));
                    };
                    let member = match object.remove("member") {
                        Some(Value::Bool(member)) => member,
                        _ => {
                            return Err(CommandError::new(
                                ErrorCode::InvalidRequest,
                                "set needs `member`: true to add, false to remove",
                            ))
                        }
                    };
                    let (who, custom) = member_body(action, Body::Object(object), rules)?;
                    Ok(if member {
                        Command::Add {
                            queue,
                            member: who,
                            custom,
                        }
                    } else {
                        Command::Remove { queue, member: who }
                    })
                }
            }
        }
        RequestTopic::AgentQueues { agent } => {
            no_fields_body("queues", body)?;
            let member = match rules.agents.get_key_value(agent.as_str()) {
                Some(configured) => configured_member(configured)?,
                None if is_plain_number(agent) => Member {
                    agent: None,
                    extension: agent.clone(),
                },
                None => {
                    return Err(CommandError::new(
                        ErrorCode::UnknownAgent,
                        format!(
                            "{} is neither a configured agent nor an extension number",
                            quoted(agent)
                        ),
                    ))
                }
            };
            Ok(Command::AgentQueues { member })
        }
    }
}

/// The queue must be a plain number and allowed.
fn check_queue(queue: &str, rules: &CommandRules) -> Result<(), CommandError> {
    if !is_plain_number(queue) {
        return Err(CommandError::new(
            ErrorCode::InvalidQueue,
            format!(
                "queue {} in the topic is not a queue number (1 to 20 ASCII digits)",
                quoted(queue)
            ),
        ));
    }
    if !rules.allowed_queues.is_empty() && !rules.allowed_queues.contains(queue) {
        return Err(CommandError::new(
            ErrorCode::QueueNotAllowed,
            format!("queue {queue} is not in commands.allowed_queues"),
        ));
    }
    Ok(())
}

/// The body of `add`/`remove`: the member and the `custom` flag.
fn member_body(
    action: QueueAction,
    body: Body,
    rules: &CommandRules,
) -> Result<(Member, bool), CommandError> {
    let name = action.name();
    let mut object = match body {
        Body::Plain(text) => return Ok((extension_member(&text)?, false)),
        Body::Object(object) => object,
        Body::Empty => {
            return Err(CommandError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "{name} needs a member: send {{\"agent\":\"<id>\"}}, {{\"extension\":\"201\"}} or the bare extension number"
                ),
            ))
        }
        Body::OtherJson => return Err(not_an_object(name)),
    };
    let agent = object.remove("agent");
    let extension = object.remove("extension");
    let kind = object.remove("type");
    if let Some(field) = object.keys().next() {
        return Err(CommandError::new(
            ErrorCode::InvalidRequest,
            format!(
                "unknown field {} in {} request; the fields are agent, extension, type and transaction",
                quoted(field),
                with_article(name)
            ),
        ));
    }
    let custom =
        match kind {
            None => false,
            Some(Value::String(kind)) if kind == "custom" => true,
            Some(_) => return Err(CommandError::new(
                ErrorCode::InvalidRequest,
                "`type` must be \"custom\" (a custom destination) or left out (an agent extension)",
            )),
        };
    let member = match (agent, extension) {
        (Some(_), Some(_)) => {
            return Err(CommandError::new(
                ErrorCode::InvalidRequest,
                "give either `agent` or `extension`, not both",
            ))
        }
        (None, None) => {
            return Err(CommandError::new(
                ErrorCode::InvalidRequest,
                format!("{name} needs `agent` or `extension`"),
            ))
        }
        (Some(Value::String(agent)), None) => match rules.agents.get_key_value(agent.as_str()) {
            Some(configured) => configured_member(configured)?,
            None => {
                return Err(CommandError::new(
                    ErrorCode::UnknownAgent,
                    format!(
                        "no agent {} is configured; name a configured agent or give `extension`",
                        quoted(&agent)
                    ),
                ))
            }
        },
        (Some(_), None) => {
            return Err(CommandError::new(
                ErrorCode::InvalidRequest,
                "`agent` must be a string (a configured agent id)",
            ))
        }
        (None, Some(Value::String(extension))) => extension_member(&extension)?,
        (None, Some(Value::Number(number))) => extension_member(&number.to_string())?,
        (None, Some(_)) => {
            return Err(CommandError::new(
                ErrorCode::InvalidRequest,
                "`extension` must be a string or a number, like \"201\"",
            ))
        }
    };
    Ok((member, custom))
}

/// A raw extension, which must be a plain number.
fn extension_member(extension: &str) -> Result<Member, CommandError> {
    if is_plain_number(extension) {
        Ok(Member {
            agent: None,
            extension: extension.to_owned(),
        })
    } else {
        Err(CommandError::new(
            ErrorCode::InvalidExtension,
            format!(
                "extension {} is not an extension number (1 to 20 ASCII digits)",
                quoted(extension)
            ),
        ))
    }
}

/// A configured agent's member, which needs a `queue_extension`.
fn configured_member(
    (agent, queue_extension): (&AgentId, &Option<String>),
) -> Result<Member, CommandError> {
    match queue_extension {
        Some(extension) => Ok(Member {
            agent: Some(agent.clone()),
            extension: extension.clone(),
        }),
        None => Err(CommandError::new(
            ErrorCode::AgentHasNoExtension,
            format!(
                "agent {agent} has no queue_extension configured; add it to its [[agents]] entry"
            ),
        )),
    }
}

/// The body of an action without fields: empty or `{}` (only `transaction`).
fn no_fields_body(name: &str, body: Body) -> Result<(), CommandError> {
    match body {
        Body::Empty => Ok(()),
        Body::Object(object) => match object.keys().next() {
            None => Ok(()),
            Some(field) => Err(CommandError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "unknown field {} in {} request; it takes only transaction",
                    quoted(field),
                    with_article(name)
                ),
            )),
        },
        Body::OtherJson | Body::Plain(_) => Err(not_an_object(name)),
    }
}

fn not_an_object(name: &str) -> CommandError {
    CommandError::new(
        ErrorCode::InvalidRequest,
        format!(
            "{} request must be a JSON object (or, for add and remove, a bare extension number)",
            with_article(name)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rules() -> CommandRules {
        let config = Config::from_toml_str(
            r#"
            [commands]
            allowed_queues = ["500", "501", 502]
            allow_clean = true
            max_payload_bytes = 256
            [[agents]]
            id = "alice"
            extension_id = 1001
            queue_extension = 201
            [[agents]]
            id = "bob"
            extension_id = 1002
            "#,
        )
        .unwrap();
        CommandRules::from_config(&config)
    }

    fn queue(queue: &str, action: &str) -> RequestTopic {
        RequestTopic::Queue {
            queue: queue.into(),
            action: action.into(),
        }
    }

    fn agent(agent: &str) -> RequestTopic {
        RequestTopic::AgentQueues {
            agent: agent.into(),
        }
    }

    fn member(agent: Option<&str>, extension: &str) -> Member {
        Member {
            agent: agent.map(|a| AgentId::parse(a).unwrap()),
            extension: extension.into(),
        }
    }

    /// Parses with `rules` and compares the outcome with `expected`: a
    /// command, or an error code (whose message must mention `needle`).
    fn check_with(
        rules: &CommandRules,
        topic: RequestTopic,
        payload: &str,
        retain: bool,
        expected: Result<Command, (ErrorCode, &str)>,
    ) {
        let parsed = parse_request(&topic, payload.as_bytes(), retain, rules);
        match (&parsed.outcome, &expected) {
            (Ok(actual), Ok(expected)) => assert_eq!(actual, expected, "{topic:?} {payload:?}"),
            (Err(actual), Err((code, needle))) => {
                assert_eq!(
                    actual.code, *code,
                    "{topic:?} {payload:?}: {}",
                    actual.message
                );
                assert!(
                    actual.message.contains(needle),
                    "{topic:?} {payload:?}: {:?} lacks {needle:?}",
                    actual.message
                );
                assert!(
                    actual.message.len() < 400,
                    "message too long: {}",
                    actual.message
                );
            }
            (actual, expected) => {
                panic!("{topic:?} {payload:?}: {actual:?}, expected {expected:?}")
            }
        }
    }

    fn check(topic: RequestTopic, payload: &str, expected: Result<Command, (ErrorCode, &str)>) {
        check_with(&rules(), topic, payload, false, expected);
    }

    #[test]
    fn valid_requests() {
        let add = |m: Member, custom| Command::Add {
            queue: "500".into(),
            member: m,
            custom,
        };
        check(
            queue("500", "add"),
            r#"{"agent":"alice"}"#,
            Ok(add(member(Some("alice"), "201"), false)),
        );
        check(
            queue("500", "add"),
            r#"{"extension":"202"}"#,
            Ok(add(member(None, "202"), false)),
        );
        check(
            queue("500", "add"),
            r#"{"extension":202}"#,
            Ok(add(member(None, "202"), false)),
        );
        check(
            queue("500", "add"),
            "202",
            Ok(add(member(None, "202"), false)),
        );
        check(
            queue("500", "add"),
            " 202\n",
            Ok(add(member(None, "202"), false)),
        );
        check(
            queue("500", "add"),
            r#"{"extension":"0612345678","type":"custom","transaction":"t1"}"#,
            Ok(add(member(None, "0612345678"), true)),
        );
        check(
            queue("500", "remove"),
            r#"{"agent":"alice","transaction":5}"#,
            Ok(Command::Remove {
                queue: "500".into(),
                member: member(Some("alice"), "201"),
            }),
        );
        check(
            queue("501", "remove"),
            "0612345678",
            Ok(Command::Remove {
                queue: "501".into(),
                member: member(None, "0612345678"),
            }),
        );
        check(
            queue("502", "clean"),
            "{}",
            Ok(Command::Clean {
                queue: "502".into(),
            }),
        );
        check(
            queue("500", "list"),
            "",
            Ok(Command::List {
                queue: "500".into(),
            }),
        );
        check(
            queue("500", "list"),
            r#"{"transaction":null}"#,
            Ok(Command::List {
                queue: "500".into(),
            }),
        );
        check(
            agent("alice"),
            "",
            Ok(Command::AgentQueues {
                member: member(Some("alice"), "201"),
            }),
        );
        check(
            agent("203"),
            "{}",
            Ok(Command::AgentQueues {
                member: member(None, "203"),
            }),
        );
    }

    #[test]
    fn every_rejection_class_has_its_code() {
        use ErrorCode::*;
        let long = "1".repeat(10_000);
        let cases: Vec<(RequestTopic, &str, ErrorCode, &str)> = vec![
            // Malformed JSON and bad shapes.
            (
                queue("500", "add"),
                r#"{"agent":"#,
                InvalidJson,
                "not valid JSON",
            ),
            (
                queue("500", "add"),
                r#"{"agent":"alice",}"#,
                InvalidJson,
                "not valid JSON",
            ),
            (queue("500", "list"), "[1,", InvalidJson, "not valid JSON"),
            (queue("500", "add"), "[201]", InvalidRequest, "JSON object"),
            (
                queue("500", "add"),
                r#""201""#,
                InvalidRequest,
                "an add request must be a JSON object",
            ),
            (queue("500", "add"), "", InvalidRequest, "needs a member"),
            (
                queue("500", "add"),
                "{}",
                InvalidRequest,
                "needs `agent` or `extension`",
            ),
            (
                queue("500", "add"),
                r#"{"agent":"alice","extension":"201"}"#,
                InvalidRequest,
                "not both",
            ),
            (
                queue("500", "add"),
                r#"{"extension":"201","queue":"501"}"#,
                InvalidRequest,
                "unknown field \"queue\" in an add request",
            ),
            (
                queue("500", "add"),
                r#"{"agent":7}"#,
                InvalidRequest,
                "`agent` must be a string",
            ),
            (
                queue("500", "add"),
                r#"{"extension":true}"#,
                InvalidRequest,
                "`extension` must be",
            ),
            (
                queue("500", "add"),
                r#"{"extension":null}"#,
                InvalidRequest,
                "`extension` must be",
            ),
            (
                queue("500", "add"),
                r#"{"extension":"201","type":"CU"}"#,
                InvalidRequest,
                "`type`",
            ),
            (
                queue("500", "add"),
                r#"{"extension":"201","transaction":{}}"#,
                InvalidRequest,
                "`transaction`",
            ),
            (
                queue("500", "add"),
                r#"{"extension":"201","transaction":[1]}"#,
                InvalidRequest,
                "`transaction`",
            ),
            (
                queue("500", "list"),
                r#"{"agent":"alice"}"#,
                InvalidRequest,
                "unknown field \"agent\"",
            ),
            (
                queue("500", "list"),
                "201",
                InvalidRequest,
                "a list request must be a JSON object",
            ),
            (
                queue("500", "clean"),
                "",
                InvalidRequest,
                "clean needs the payload {}",
            ),
            (
                queue("500", "clean"),
                "   ",
                InvalidRequest,
                "clean needs the payload {}",
            ),
            (
                agent("alice"),
                r#"{"extension":"201"}"#,
                InvalidRequest,
                "unknown field",
            ),
            // Unknown action.
            (
                queue("500", "delete"),
                r#"{"extension":"201"}"#,
                UnknownAction,
                "\"delete\"",
            ),
            (
                queue("500", "ADD"),
                r#"{"extension":"201"}"#,
                UnknownAction,
                "add, remove, clean, list or set",
            ),
            (queue("500", ""), "", UnknownAction, "unknown action"),
            // Unknown agent / no extension.
            (
                queue("500", "add"),
                r#"{"agent":"mallory"}"#,
                UnknownAgent,
                "\"mallory\"",
            ),
            (
                queue("500", "add"),
                r#"{"agent":"../alice"}"#,
                UnknownAgent,
                "no agent",
            ),
            (agent("mallory"), "", UnknownAgent, "\"mallory\""),
            (agent("201&action=clean"), "", UnknownAgent, "neither"),
            (
                queue("500", "add"),
                r#"{"agent":"bob"}"#,
                AgentHasNoExtension,
                "bob",
            ),
            (agent("bob"), "", AgentHasNoExtension, "queue_extension"),
            // Extensions that are not plain numbers.
            (
                queue("500", "add"),
                r#"{"extension":"201&action=clean"}"#,
                InvalidExtension,
                "201&action=clean",
            ),
            (
                queue("500", "add"),
                "201&action=clean",
                InvalidExtension,
                "201&action=clean",
            ),
            (
                queue("500", "add"),
                r#"{"extension":"../"}"#,
                InvalidExtension,
                "\"../\"",
            ),
            (
                queue("500", "add"),
                r#"{"extension":"٢٠١"}"#,
                InvalidExtension,
                "not an extension number",
            ),
            (
                queue("500", "add"),
                r#"{"extension":""}"#,
                InvalidExtension,
                "\"\"",
            ),
            (
                queue("500", "add"),
                r#"{"extension":" 201"}"#,
                InvalidExtension,
                "\" 201\"",
            ),
            (
                queue("500", "add"),
                r#"{"extension":-201}"#,
                InvalidExtension,
                "-201",
            ),
            (
                queue("500", "add"),
                r#"{"extension":20.1}"#,
                InvalidExtension,
                "20.1",
            ),
            (
                queue("500", "add"),
                r#"{"extension":"123456789012345678901"}"#,
                InvalidExtension,
                "not an extension",
            ),
            (
                queue("500", "remove"),
                "alice",
                InvalidExtension,
                "\"alice\"",
            ),
            (queue("500", "remove"), "null", InvalidExtension, "\"null\""),
            // Queues that are not plain numbers.
            (
                queue("500&action=clean", "add"),
                "201",
                InvalidQueue,
                "500&action=clean",
            ),
            (queue("..", "list"), "", InvalidQueue, "\"..\""),
            (queue("٥٠٠", "list"), "", InvalidQueue, "not a queue number"),
            (queue("", "list"), "", InvalidQueue, "\"\""),
            (queue(&long, "list"), "", InvalidQueue, "(10000 characters)"),
            (queue("5 00", "list"), "", InvalidQueue, "\"5 00\""),
            // Policy.
            (queue("600", "add"), "201", QueueNotAllowed, "600"),
            (
                queue("0500", "list"),
                "",
                QueueNotAllowed,
                "commands.allowed_queues",
            ),
        ];
        for (topic, payload, code, needle) in cases {
            check(topic, payload, Err((code, needle)));
        }
    }

    #[test]
    fn policy_and_size_limits() {
        let mut strict = rules();
        strict.allow_clean = false;
        check_with(
            &strict,
            queue("500", "clean"),
            "{}",
            false,
            Err((ErrorCode::CleanNotAllowed, "commands.allow_clean")),
        );
        let oversized = format!(r#"{{"extension":"{}"}}"#, "1".repeat(10_000));
        check_with(
            &rules(),
            queue("500", "add"),
            &oversized,
            false,
            Err((ErrorCode::PayloadTooLarge, "10016 bytes")),
        );
        // Exactly at the limit is fine.
        let at_limit = format!("{:<256}", r#"{"extension":"201"}"#);
        assert_eq!(at_limit.len(), 256);
        check_with(
            &rules(),
            queue("500", "add"),
            &at_limit,
            false,
            Ok(Command::Add {
                queue: "500".into(),
                member: member(None, "201"),
                custom: false,
            }),
        );
        // An empty allow-list allows every queue.
        let mut open = rules();
        open.allowed_queues.clear();
        check_with(
            &open,
            queue("999", "list"),
            "",
            false,
            Ok(Command::List {
                queue: "999".into(),
            }),
        );
    }

    #[test]
    fn retained_requests_are_refused_even_when_valid() {
        check_with(
            &rules(),
            queue("500", "list"),
            r#"{"transaction":"r1"}"#,
            true,
            Err((ErrorCode::RetainedRequest, "retain")),
        );
        let parsed = parse_request(
            &queue("500", "clean"),
            br#"{"transaction":"r1"}"#,
            true,
            &rules(),
        );
        assert_eq!(parsed.transaction, Transaction::from_json("r1".into()));
        // Whatever it holds: garbage, oversized, bad topic.
        let oversized = "9".repeat(1000);
        for (topic, payload) in [
            (queue("500", "add"), "{not json"),
            (queue("500", "add"), oversized.as_str()),
            (queue("x", "nope"), ""),
        ] {
            check_with(
                &rules(),
                topic,
                payload,
                true,
                Err((ErrorCode::RetainedRequest, "retain")),
            );
        }
    }

    #[test]
    fn non_utf8_is_invalid_json() {
        let parsed = parse_request(&queue("500", "add"), b"\xff\xfe201", false, &rules());
        assert_eq!(parsed.outcome.unwrap_err().code, ErrorCode::InvalidJson);
    }

    #[test]
    fn the_transaction_is_echoed_even_when_refused() {
        let check_transaction = |topic: RequestTopic, payload: &str, expected: Option<Value>| {
            let parsed = parse_request(&topic, payload.as_bytes(), false, &rules());
            assert_eq!(
                parsed.transaction.map(|t| t.as_json().clone()),
                expected,
                "{payload}"
            );
        };
        check_transaction(
            queue("600", "add"),
            r#"{"extension":"201","transaction":"abc"}"#,
            Some("abc".into()),
        );
        check_transaction(
            queue("500", "nope"),
            r#"{"transaction":42}"#,
            Some(42.into()),
        );
        check_transaction(
            queue("500", "add"),
            r#"{"transaction":-1.5,"agent":"x"}"#,
            Some((-1.5).into()),
        );
        check_transaction(queue("500", "add"), r#"{"transaction":true}"#, None);
        check_transaction(queue("500", "add"), r#"{"transaction":"abc""#, None);
        check_transaction(queue("500", "add"), "201", None);
    }

    #[test]
    fn long_input_is_quoted_short() {
        let long = "x".repeat(10_000);
        let parsed = parse_request(
            &queue("500", "add"),
            format!(r#"{{"agent":"{}"}}"#, &long[..200]).as_bytes(),
            false,
            &rules(),
        );
        let error = parsed.outcome.unwrap_err();
        assert!(
            error.message.contains("(200 characters)"),
            "{}",
            error.message
        );
        assert!(error.message.len() < 200, "{}", error.message);
        // Characters a quote escapes count as wide as their escapes.
        let escaped = "\\u0001".repeat(100);
        let mut rules = rules();
        rules.max_payload_bytes = 4096;
        let parsed = parse_request(
            &queue("500", "add"),
            format!(r#"{{"agent":"{escaped}"}}"#).as_bytes(),
            false,
            &rules,
        );
        let error = parsed.outcome.unwrap_err();
        assert!(
            error.message.contains("(100 characters)"),
            "{}",
            error.message
        );
        assert!(error.message.chars().count() < 200, "{}", error.message);
    }

    proptest! {
        #[test]
        fn never_panics_and_only_plain_numbers_pass(
            queue_segment in ".{0,30}",
            action in "(add|remove|clean|list|[a-z]{0,6})",
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            retain in any::<bool>(),
        ) {
            let rules = rules();
            let topic = queue(&queue_segment, &action);
            let parsed = parse_request(&topic, &payload, retain, &rules);
            if let Ok(command) = parsed.outcome {
                prop_assert!(!retain);
                let queue = command.queue().unwrap_or_default();
                prop_assert!(is_plain_number(queue) && rules.allowed_queues.contains(queue));
                if let Some(member) = command.member() {
                    prop_assert!(is_plain_number(&member.extension));
                }
            }
        }

        #[test]
        fn any_json_extension_is_accepted_only_as_a_plain_number(extension in ".{0,30}") {
            let payload = serde_json::json!({ "extension": extension }).to_string();
            let parsed = parse_request(&queue("500", "add"), payload.as_bytes(), false, &rules());
            match parsed.outcome {
                Ok(command) => prop_assert_eq!(&command.member().unwrap().extension, &extension),
                Err(error) => prop_assert!(matches!(
                    error.code,
                    ErrorCode::InvalidExtension | ErrorCode::PayloadTooLarge
                )),
            }
            prop_assert_eq!(parse_request(&queue("500", "add"), payload.as_bytes(), false, &rules())
                .outcome.is_ok(), is_plain_number(&extension));
        }
    }

    /// Any JSON value, nested a few levels, with hostile strings and numbers.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("JSON has no NaN or infinity", |n| n.is_finite())
                .prop_map(Value::from),
            "\\PC{0,24}".prop_map(Value::String),
            "[0-9]{1,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z_]{0,10}", inner, 0..4)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    /// The codes a request can be refused with before anything runs.
    fn is_parse_refusal(code: ErrorCode) -> bool {
        matches!(
            code,
            ErrorCode::InvalidJson
                | ErrorCode::InvalidRequest
                | ErrorCode::UnknownAction
                | ErrorCode::UnknownAgent
                | ErrorCode::AgentHasNoExtension
                | ErrorCode::InvalidQueue
                | ErrorCode::InvalidExtension
                | ErrorCode::QueueNotAllowed
                | ErrorCode::CleanNotAllowed
                | ErrorCode::PayloadTooLarge
                | ErrorCode::RetainedRequest
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// A JSON object of any shape under the payload limit: accepted, or
        /// refused with a parse-time code and a short message; the
        /// transaction is echoed back either way when it is a string.
        #[test]
        fn hostile_json_is_refused_with_a_code_and_the_transaction_echoed(
            transaction in "\\PC{0,40}",
            fields in proptest::collection::btree_map(
                "(extension|agent|member|queue|custom|[a-z]{1,8})",
                json_value(),
                0..4,
            ),
            queue_segment in "(500|501|999|0|-1|5 0|[0-9]{1,30}|\\PC{0,12})",
            action in "(add|remove|clean|list|set|[a-z]{0,6})",
            retain in any::<bool>(),
        ) {
            let mut object: Map<String, Value> = fields.into_iter().collect();
            object.insert("transaction".into(), Value::String(transaction.clone()));
            let payload = Value::Object(object).to_string();
            let mut rules = rules();
            rules.max_payload_bytes = 4096;
            prop_assume!(payload.len() <= rules.max_payload_bytes);
            let parsed = parse_request(&queue(&queue_segment, &action), payload.as_bytes(), retain, &rules);
            prop_assert_eq!(
                parsed.transaction.as_ref().map(Transaction::json_text),
                Some(Value::String(transaction).to_string())
            );
            if let Err(error) = &parsed.outcome {
                prop_assert!(is_parse_refusal(error.code), "{:?}", error);
                prop_assert!(!error.message.is_empty());
                prop_assert!(error.message.chars().count() <= 400, "{}", error.message);
            } else {
                prop_assert!(!retain);
            }
            // The same request on the agent topic: never a panic either.
            let agent = RequestTopic::AgentQueues { agent: queue_segment };
            let parsed = parse_request(&agent, payload.as_bytes(), retain, &rules);
            if let Err(error) = &parsed.outcome {
                prop_assert!(is_parse_refusal(error.code), "{:?}", error);
            }
        }

        /// Deeply nested or oversized payloads are refused with a code,
        /// never a stack overflow or a panic.
        #[test]
        fn deep_and_large_payloads_are_refused_not_crashed(
            depth in 1usize..20_000,
            open in "(\\[|\\{\"a\":)",
            closed in any::<bool>(),
        ) {
            let mut payload = open.repeat(depth);
            if closed {
                let close = if open == "[" { "]" } else { "}" };
                payload.push_str(&close.repeat(depth));
            }
            let mut rules = rules();
            rules.max_payload_bytes = 1 << 20;
            let parsed = parse_request(&queue("500", "add"), payload.as_bytes(), false, &rules);
            let error = parsed.outcome.expect_err("nested brackets are no command");
            prop_assert!(is_parse_refusal(error.code), "{:?}", error);
        }
    }
}
