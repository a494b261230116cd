//! The simulated TRiNG proxy API (`GET /pbx/proxyapi.php`): in-memory call
//! queues and the answers a PHP proxy gives (`upstream-apis.md` §2).
//!
//! Behaviour, where the real service is undocumented, is chosen the way a PHP
//! script would plausibly behave, and is what the bridge must cope with:
//! - Every answer is HTTP 200 with PHP's default `text/html; charset=UTF-8`;
//!   success or failure is only in the body.
//! - Checks in order: `key` (missing or wrong: `Invalid key`), `tenant`
//!   (`Invalid tenant`), `reqtype` (case-insensitive: `queue`, `AGENT`),
//!   `action`, then the parameters; errors are plain text such as
//!   `ERROR: missing parameter number` or `ERROR: invalid extension`.
//! - A repeated query parameter counts by its last value, like PHP's `$_GET`.
//! - Queue numbers and extensions must be ASCII digits. Queues spring into
//!   existence on first use.
//! - `add` of a present member, and `del` of an absent one, are errors.
//! - `list` with `format=json` is a JSON array of `"<ext>-<TENANT>"`, or the
//!   literal `null` when empty; any other format is plain text, one entry per
//!   line. `listqueues` is the same with queue numbers (no suffix).
//!
//! Pure: no IO, no locks; the server holds [`Queues`] behind a mutex.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::is_plain_number;

/// One member of a queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueMember {
    /// The TRiNG extension (or custom destination number).
    pub extension: String,
    /// True when added with `type=CU` (a custom destination).
    pub custom: bool,
}

/// All queues of the simulated tenant.
#[derive(Debug, Clone, Default)]
pub struct Queues {
    /// Members per queue number, in the order they were added.
    members: BTreeMap<String, Vec<QueueMember>>,
}

impl Queues {
    /// The members of `queue` (empty when unknown).
    pub fn members(&self, queue: &str) -> &[QueueMember] {
        self.members.get(queue).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Replaces the members of `queue`.
    pub fn set_members(&mut self, queue: &str, members: Vec<QueueMember>) {
        self.members.insert(queue.to_owned(), members);
    }

    /// The queues `extension` is a member of, in numeric order.
    pub fn queues_of(&self, extension: &str) -> Vec<String> {
        let mut queues: Vec<String> = self
            .members
            .iter()
            .filter(|(_, members)| members.iter().any(|m| m.extension == extension))
            .map(|(queue, _)| queue.clone())
            .collect();
        queues.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
        queues
    }
}

/// The action of a TRiNG request, as counted in the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TringAction {
    /// `reqtype=queue&action=add`.
    Add,
    /// `reqtype=queue&action=del`.
    Del,
    /// `reqtype=queue&action=clean`.
    Clean,
    /// `reqtype=queue&action=list`.
    List,
    /// `reqtype=AGENT&action=listqueues`.
    ListQueues,
    /// Anything else (missing or unknown action).
    Other,
}

impl TringAction {
    /// Every action, in counter order.
    pub const ALL: [TringAction; 6] = [
        TringAction::Add,
        TringAction::Del,
        TringAction::Clean,
        TringAction::List,
        TringAction::ListQueues,
        TringAction::Other,
    ];

    /// The name used in [`super::RequestCounts`].
    pub fn as_str(self) -> &'static str {
        match self {
            TringAction::Add => "add",
            TringAction::Del => "del",
            TringAction::Clean => "clean",
            TringAction::List => "list",
            TringAction::ListQueues => "listqueues",
            TringAction::Other => "other",
        }
    }

    /// The action a request names (whether or not it is valid otherwise).
    pub fn of(request: &TringRequest) -> TringAction {
        match request
            .get("action")
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("add") => TringAction::Add,
            Some("del") => TringAction::Del,
            Some("clean") => TringAction::Clean,
            Some("list") => TringAction::List,
            Some("listqueues") => TringAction::ListQueues,
            _ => TringAction::Other,
        }
    }
}

/// A parsed query string.
#[derive(Debug, Clone, Default)]
pub struct TringRequest {
    /// The decoded `name=value` pairs, in order.
    params: Vec<(String, String)>,
}

impl TringRequest {
    /// Parses a raw (percent-encoded) query string.
    pub fn parse(query: &str) -> Self {
        Self {
            params: url::form_urlencoded::parse(query.as_bytes())
                .map(|(name, value)| (name.into_owned(), value.into_owned()))
                .collect(),
        }
    }

    /// The last value of `name`, as PHP's `$_GET` has it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// The simulated account's credentials.
#[derive(Debug, Clone)]
pub struct TringAccount {
    /// The API key the requests must carry.
    pub key: String,
    /// The tenant code.
    pub tenant: String,
}

/// What a request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TringAnswer {
    /// The response body.
    pub body: String,
}

impl TringAnswer {
    fn text(body: impl Into<String>) -> Self {
        Self { body: body.into() }
    }

    fn error(message: impl AsRef<str>) -> Self {
        Self::text(format!("ERROR: {}", message.as_ref()))
    }
}

/// Answers one request, changing `queues` when it is a valid write.
pub fn handle(request: &TringRequest, account: &TringAccount, queues: &mut Queues) -> TringAnswer {
    if request.get("key") != Some(account.key.as_str()) {
        return TringAnswer::text("Invalid key");
    }
    if request.get("tenant") != Some(account.tenant.as_str()) {
        return TringAnswer::text("Invalid tenant");
    }
    let json = request
        .get("format")
        .is_some_and(|format| format.eq_ignore_ascii_case("json"));
    let reqtype = request
        .get("reqtype")
        .unwrap_or_default()
        .to_ascii_uppercase();
    match (reqtype.as_str(), TringAction::of(request)) {
        ("", _) => TringAnswer::error("missing parameter reqtype"),
        ("QUEUE", TringAction::Add | TringAction::Del | TringAction::Clean | TringAction::List) => {
            queue_request(request, account, queues, json)
        }
        ("AGENT", TringAction::ListQueues) => {
            let extension = match digits(request, "extension", "extension") {
                Ok(extension) => extension,
                Err(answer) => return answer,
            };
            render(queues.queues_of(extension), json)
        }
        ("QUEUE" | "AGENT", _) => match request.get("action") {
            None | Some("") => TringAnswer::error("missing parameter action"),
            Some(_) => TringAnswer::error("unknown action"),
        },
        _ => TringAnswer::error("unknown reqtype"),
    }
}

fn queue_request(
    request: &TringRequest,
    account: &TringAccount,
    queues: &mut Queues,
    json: bool,
) -> TringAnswer {
    let queue = match digits(request, "number", "queue number") {
        Ok(queue) => queue,
        Err(answer) => return answer,
    };
    let action = TringAction::of(request);
    if matches!(action, TringAction::Clean | TringAction::List) {
        if action == TringAction::Clean {
            queues.members.remove(queue);
            return TringAnswer::text("OK");
        }
        let entries = queues
            .members(queue)
            .iter()
            .map(|member| format!("{}-{}", member.extension, account.tenant))
            .collect();
        return render(entries, json);
    }
    let extension = match digits(request, "extension", "extension") {
        Ok(extension) => extension,
        Err(answer) => return answer,
    };
    let members = queues.members.entry(queue.to_owned()).or_default();
    let present = members
        .iter()
        .position(|member| member.extension == extension);
    match (action, present) {
        (TringAction::Add, Some(_)) => TringAnswer::error(format!(
            "extension {extension} is already a member of queue {queue}"
        )),
        (TringAction::Add, None) => {
            let custom = match request.get("type") {
                None | Some("") => false,
                Some(kind) if kind.eq_ignore_ascii_case("CU") => true,
                Some(_) => return TringAnswer::error("invalid type"),
            };
            members.push(QueueMember {
                extension: extension.to_owned(),
                custom,
            });
            TringAnswer::text("OK")
        }
        (_, Some(index)) => {
            members.remove(index);
            TringAnswer::text("OK")
        }
        (_, None) => TringAnswer::error(format!(
            "extension {extension} is not a member of queue {queue}"
        )),
    }
}

/// The parameter `name`, which must be a plain number.
fn digits<'a>(request: &'a TringRequest, name: &str, what: &str) -> Result<&'a str, TringAnswer> {
    match request.get(name) {
        None | Some("") => Err(TringAnswer::error(format!("missing parameter {name}"))),
        Some(value) if is_plain_number(value) => Ok(value),
        Some(_) => Err(TringAnswer::error(format!("invalid {what}"))),
    }
}

/// A list as JSON (`null` when empty) or as plain lines.
fn render(entries: Vec<String>, json: bool) -> TringAnswer {
    if !json {
        let mut body = String::new();
        for entry in entries {
            body.push_str(&entry);
            body.push('\n');
        }
        return TringAnswer::text(body);
    }
    if entries.is_empty() {
        return TringAnswer::text("null");
    }
    // Serializing a Vec<String> cannot fail.
    TringAnswer::text(serde_json::to_string(&entries).unwrap_or_else(|_| "null".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> TringAccount {
        TringAccount {
            key: "k".into(),
            tenant: "SIM".into(),
        }
    }

    /// Runs `query` (prefixed with the right key and tenant unless it starts
    /// with `!`) and checks the body.
    fn check(queues: &mut Queues, query: &str, expected: &str) {
        let query = match query.strip_prefix('!') {
            Some(raw) => raw.to_owned(),
            None => format!("key=k&tenant=SIM&{query}"),
        };
        let answer = handle(&TringRequest::parse(&query), &account(), queues);
        assert_eq!(answer.body, expected, "{query}");
    }

    #[test]
    fn queue_lifecycle() {
        let queues = &mut Queues::default();
        check(
            queues,
            "reqtype=queue&number=500&action=list&format=json",
            "null",
        );
        check(queues, "reqtype=queue&number=500&action=list", "");
        check(
            queues,
            "reqtype=queue&number=500&extension=201&action=add",
            "OK",
        );
        check(
            queues,
            "reqtype=queue&number=500&extension=201&action=add",
            "ERROR: extension 201 is already a member of queue 500",
        );
        check(
            queues,
            "reqtype=queue&number=500&extension=612345678&action=add&type=CU",
            "OK",
        );
        check(
            queues,
            "reqtype=queue&number=500&action=list&format=json",
            r#"["201-SIM","612345678-SIM"]"#,
        );
        check(
            queues,
            "reqtype=queue&number=500&action=list",
            "201-SIM\n612345678-SIM\n",
        );
        assert!(queues.members("500")[1].custom);
        check(
            queues,
            "reqtype=queue&number=77&extension=201&action=add",
            "OK",
        );
        check(
            queues,
            "reqtype=AGENT&action=listqueues&format=json&extension=201",
            r#"["77","500"]"#,
        );
        check(
            queues,
            "reqtype=AGENT&action=listqueues&format=json&extension=999",
            "null",
        );
        check(
            queues,
            "reqtype=queue&number=500&extension=201&action=del",
            "OK",
        );
        check(
            queues,
            "reqtype=queue&number=500&extension=201&action=del",
            "ERROR: extension 201 is not a member of queue 500",
        );
        check(queues, "reqtype=queue&number=500&action=clean", "OK");
        check(
            queues,
            "reqtype=queue&number=500&action=list&format=json",
            "null",
        );
    }

    #[test]
    fn rejections() {
        let queues = &mut Queues::default();
        for (query, expected) in [
            (
                "!reqtype=queue&tenant=SIM&number=1&action=list",
                "Invalid key",
            ),
            (
                "!key=x&reqtype=queue&tenant=SIM&number=1&action=list",
                "Invalid key",
            ),
            (
                "!key=k&reqtype=queue&tenant=OTHER&number=1&action=list",
                "Invalid tenant",
            ),
            (
                "!key=k&reqtype=queue&number=1&action=list",
                "Invalid tenant",
            ),
            (
                "reqtype=queue&action=list",
                "ERROR: missing parameter number",
            ),
            (
                "reqtype=queue&number=5a&action=list",
                "ERROR: invalid queue number",
            ),
            (
                "reqtype=queue&number=5&action=add",
                "ERROR: missing parameter extension",
            ),
            (
                "reqtype=queue&number=5&extension=201%26action%3Dclean&action=add",
                "ERROR: invalid extension",
            ),
            (
                "reqtype=queue&number=5&extension=%D9%A1&action=add",
                "ERROR: invalid extension",
            ),
            (
                "reqtype=queue&number=5&extension=201&action=add&type=XX",
                "ERROR: invalid type",
            ),
            (
                "reqtype=queue&number=5&action=explode",
                "ERROR: unknown action",
            ),
            ("reqtype=queue&number=5", "ERROR: missing parameter action"),
            ("number=5&action=list", "ERROR: missing parameter reqtype"),
            ("reqtype=FAX&action=list", "ERROR: unknown reqtype"),
            (
                "reqtype=AGENT&action=listqueues&format=json",
                "ERROR: missing parameter extension",
            ),
        ] {
            check(queues, query, expected);
        }
        assert!(queues.members("5").is_empty());
    }

    #[test]
    fn last_repeated_parameter_wins() {
        let queues = &mut Queues::default();
        check(
            queues,
            "reqtype=queue&number=5&extension=201&extension=202&action=add",
            "OK",
        );
        assert_eq!(queues.members("5")[0].extension, "202");
    }
}
