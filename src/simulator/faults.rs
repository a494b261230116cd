//! Fault injection for the simulator: which faults are armed, and which one
//! a given request gets.
//!
//! A [`Fault`] targets one API, optionally one agent, for a number of
//! requests or until cleared. [`FaultTable::take`] is asked once per request
//! and decides; the server turns the decision into a damaged response. The
//! table does no IO and knows nothing of HTTP. An atomic "any armed" flag
//! keeps the fault-free hot path off the lock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which upstream API a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// The Belfabriek XML-RPC API (`/xml/agent/xml.asp`).
    Belfabriek,
    /// The TRiNG proxy API (`/pbx/proxyapi.php`).
    Tring,
}

/// What goes wrong. JSON: `"http500"`, `{"latency":"250ms"}`,
/// `{"plain_text_error":"Database error"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The answer is delayed by this long, then served normally. Combines
    /// with one other armed fault.
    Latency(#[serde(with = "crate::config::duration_str")] Duration),
    /// HTTP 500 with a server's HTML error page; nothing is executed.
    Http500,
    /// Belfabriek: an XML-RPC `<fault>` (code 500) with HTTP 200. TRiNG has
    /// no XML-RPC, so it answers a plain-text `ERROR: internal error`.
    /// Nothing is executed.
    XmlRpcFault,
    /// A body that does not parse. Belfabriek: XML with a mismatched closing
    /// tag. TRiNG: a PHP warning printed before the normal body (the action
    /// IS executed, as when PHP warns and carries on).
    Malformed,
    /// HTTP 200 with an empty body (TRiNG: the action is executed).
    Empty,
    /// The normal body cut in half (TRiNG: the action is executed).
    Truncated,
    /// HTTP 200 with an HTML page instead of the API's answer (a proxy or
    /// maintenance page); nothing is executed.
    HtmlErrorPage,
    /// HTTP 200 with this text as the whole body, nothing executed (the way
    /// TRiNG reports errors; on Belfabriek it is a text error from the
    /// script host).
    PlainTextError(String),
}

impl FaultKind {
    /// True for latency, which delays an answer rather than replacing it.
    pub fn is_latency(&self) -> bool {
        matches!(self, FaultKind::Latency(_))
    }
}

/// One armed fault (the JSON body of `POST /control/faults`):
/// `{"api":"belfabriek","kind":"http500","agent":"1001","remaining":3}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// The API it applies to.
    pub api: Api,
    /// What goes wrong.
    pub kind: FaultKind,
    /// Only requests about this agent (Belfabriek extension id; on TRiNG,
    /// requests whose `extension` is that agent's TRiNG extension, or equals
    /// this value). `None`: every request of the API.
    #[serde(default)]
    pub agent: Option<String>,
    /// How many requests it still applies to; `None`: until cleared.
    #[serde(default)]
    pub remaining: Option<u32>,
}

impl Fault {
    /// A fault on every request of `api` until cleared.
    pub fn always(api: Api, kind: FaultKind) -> Self {
        Self {
            api,
            kind,
            agent: None,
            remaining: None,
        }
    }

    /// The same fault, only for requests about `agent`.
    pub fn for_agent(mut self, agent: &str) -> Self {
        self.agent = Some(agent.to_owned());
        self
    }

    /// The same fault, for the next `count` requests only.
    pub fn times(mut self, count: u32) -> Self {
        self.remaining = Some(count);
        self
    }
}

/// What one request gets from the armed faults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Total added latency.
    pub latency: Duration,
    /// The first non-latency fault that applies, if any.
    pub damage: Option<FaultKind>,
}

impl Decision {
    /// True when no fault applied.
    pub fn is_clean(&self) -> bool {
        self.latency.is_zero() && self.damage.is_none()
    }
}

/// The armed faults.
#[derive(Debug, Default)]
pub struct FaultTable {
    /// Set while at least one fault is armed (read without the lock).
    armed: AtomicBool,
    /// The faults, in the order they were armed.
    faults: Mutex<Vec<Fault>>,
}

impl FaultTable {
    /// Arms a fault.
    pub fn inject(&self, fault: Fault) {
        let mut faults = self.lock();
        if fault.remaining != Some(0) {
            faults.push(fault);
        }
        self.armed.store(!faults.is_empty(), Ordering::Release);
    }

    /// Disarms every fault.
    pub fn clear(&self) {
        let mut faults = self.lock();
        faults.clear();
        self.armed.store(false, Ordering::Release);
    }

    /// The armed faults.
    pub fn list(&self) -> Vec<Fault> {
        self.lock().clone()
    }

    /// Decides the faults for one request of `api`; `matches_agent` says
    /// whether the request is about a given agent. Every applied fault with a
    /// count is used up by one.
    pub fn take(&self, api: Api, matches_agent: impl Fn(&str) -> bool) -> Decision {
        if !self.armed.load(Ordering::Acquire) {
            return Decision::default();
        }
        let mut faults = self.lock();
        let mut decision = Decision::default();
        for fault in faults.iter_mut() {
            if fault.api != api {
                continue;
            }
            if let Some(agent) = &fault.agent {
                if !matches_agent(agent) {
                    continue;
                }
            }
            let applied = match &fault.kind {
                FaultKind::Latency(delay) => {
                    decision.latency += *delay;
                    true
                }
                other if decision.damage.is_none() => {
                    decision.damage = Some(other.clone());
                    true
                }
                _ => false,
            };
            if applied {
                if let Some(remaining) = &mut fault.remaining {
                    *remaining = remaining.saturating_sub(1);
                }
            }
        }
        faults.retain(|fault| fault.remaining != Some(0));
        self.armed.store(!faults.is_empty(), Ordering::Release);
        decision
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Fault>> {
        // A panic while holding this lock leaves a plain Vec in a valid
        // state, so a poisoned lock is safe to keep using.
        self.faults
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_apply_by_api_agent_and_count() {
        let table = FaultTable::default();
        assert!(table.take(Api::Belfabriek, |_| true).is_clean());
        table.inject(
            Fault::always(Api::Belfabriek, FaultKind::Http500)
                .for_agent("1001")
                .times(2),
        );
        table.inject(Fault::always(
            Api::Belfabriek,
            FaultKind::Latency(Duration::from_millis(5)),
        ));
        table.inject(Fault::always(Api::Tring, FaultKind::Empty));

        let other_agent = table.take(Api::Belfabriek, |agent| agent == "1002");
        assert_eq!(other_agent.damage, None);
        assert_eq!(other_agent.latency, Duration::from_millis(5));

        for _ in 0..2 {
            let decision = table.take(Api::Belfabriek, |agent| agent == "1001");
            assert_eq!(decision.damage, Some(FaultKind::Http500));
        }
        assert_eq!(
            table.take(Api::Belfabriek, |agent| agent == "1001").damage,
            None
        );
        assert_eq!(
            table.take(Api::Tring, |_| false).damage,
            Some(FaultKind::Empty)
        );
        table.clear();
        assert!(table.take(Api::Tring, |_| true).is_clean());
        assert!(table.list().is_empty());
    }

    #[test]
    fn fault_json_shapes() {
        let check = |json: &str, expected: Fault| {
            let parsed: Fault = serde_json::from_str(json).unwrap();
            assert_eq!(parsed, expected, "{json}");
            let again: Fault =
                serde_json::from_str(&serde_json::to_string(&parsed).unwrap()).unwrap();
            assert_eq!(again, expected);
        };
        check(
            r#"{"api":"belfabriek","kind":"http500","agent":"1001","remaining":3}"#,
            Fault::always(Api::Belfabriek, FaultKind::Http500)
                .for_agent("1001")
                .times(3),
        );
        check(
            r#"{"api":"tring","kind":{"latency":"250ms"}}"#,
            Fault::always(Api::Tring, FaultKind::Latency(Duration::from_millis(250))),
        );
        check(
            r#"{"api":"tring","kind":{"plain_text_error":"Database error"}}"#,
            Fault::always(
                Api::Tring,
                FaultKind::PlainTextError("Database error".into()),
            ),
        );
        check(
            r#"{"api":"belfabriek","kind":"xml_rpc_fault"}"#,
            Fault::always(Api::Belfabriek, FaultKind::XmlRpcFault),
        );
    }
}
