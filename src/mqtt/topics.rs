//! Topic names (`product.md` §2, §3): built from the base topic, and request
//! topics parsed back into typed values. Pure.

use crate::model::AgentId;

/// The topic tree under one base topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// The base topic, e.g. `pbx2mqtt`.
    base: String,
}

/// A request topic, parsed. Segments are raw strings here: validating them
/// (a queue must be a plain number, an agent must be configured) is the
/// command parser's job, so that a bad value gets a precise error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestTopic {
    /// `request/queue/<queue>/<action>`
    Queue {
        /// The queue segment.
        queue: String,
        /// The action segment (`add`, `remove`, `clean`, `list`, or unknown).
        action: String,
    },
    /// `request/agent/<agent>/queues`
    AgentQueues {
        /// The agent segment: a configured id or a raw extension.
        agent: String,
    },
}

impl Topics {
    /// Topics under `base` (validated by the config).
    pub fn new(base: impl Into<String>) -> Self {
        Self { base: base.into() }
    }

    /// The base topic.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `<base>/bridge/state`: `online`/`offline`, retained.
    pub fn bridge_state(&self) -> String {
        format!("{}/bridge/state", self.base)
    }

    /// `<base>/bridge/<id>/state`: `online`/`offline` of one bridge among
    /// several, retained.
    pub fn bridge_member_state(&self, bridge: &str) -> String {
        format!("{}/bridge/{bridge}/state", self.base)
    }

    /// `<base>/bridge/info`: JSON, retained.
    pub fn bridge_info(&self) -> String {
        format!("{}/bridge/info", self.base)
    }

    /// `<base>/agent/<agent>`: JSON state, retained.
    pub fn agent_state(&self, agent: &AgentId) -> String {
        format!("{}/agent/{agent}", self.base)
    }

    /// `<base>/agent/<agent>/status`: bare status, retained.
    pub fn agent_status(&self, agent: &AgentId) -> String {
        format!("{}/agent/{agent}/status", self.base)
    }

    /// `<base>/agent/<agent>/event`: transition events, QoS 1, not retained.
    pub fn agent_event(&self, agent: &AgentId) -> String {
        format!("{}/agent/{agent}/event", self.base)
    }

    /// `<base>/queue/<queue>/members`: the queue's members, retained.
    pub fn queue_members(&self, queue: &str) -> String {
        format!("{}/queue/{queue}/members", self.base)
    }

    /// `<base>/agent/<agent>/queues`: the allowed queues the agent is in,
    /// retained.
    pub fn agent_queues(&self, agent: &AgentId) -> String {
        format!("{}/agent/{agent}/queues", self.base)
    }

    /// The subscription filters for requests.
    pub fn request_filters(&self) -> [String; 2] {
        [
            format!("{}/request/queue/+/+", self.base),
            format!("{}/request/agent/+/queues", self.base),
        ]
    }

    /// Parses a request topic; `None` for anything else.
    pub fn parse_request(&self, topic: &str) -> Option<RequestTopic> {
        let rest = topic.strip_prefix(&self.base)?.strip_prefix("/request/")?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["queue", queue, action] => Some(RequestTopic::Queue {
                queue: (*queue).to_owned(),
                action: (*action).to_owned(),
            }),
            ["agent", agent, "queues"] => Some(RequestTopic::AgentQueues {
                agent: (*agent).to_owned(),
            }),
            _ => None,
        }
    }

    /// The response topic for a request topic: `request/` becomes `response/`.
    pub fn response_for(&self, request: &RequestTopic) -> String {
        match request {
            RequestTopic::Queue { queue, action } => {
                format!("{}/response/queue/{queue}/{action}", self.base)
            }
            RequestTopic::AgentQueues { agent } => {
                format!("{}/response/agent/{agent}/queues", self.base)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_topics() {
        let topics = Topics::new("pbx2mqtt");
        let alice = AgentId::parse("alice").unwrap();
        assert_eq!(topics.bridge_state(), "pbx2mqtt/bridge/state");
        assert_eq!(topics.bridge_info(), "pbx2mqtt/bridge/info");
        assert_eq!(
            topics.bridge_member_state("east"),
            "pbx2mqtt/bridge/east/state"
        );
        assert_eq!(topics.agent_state(&alice), "pbx2mqtt/agent/alice");
        assert_eq!(topics.agent_status(&alice), "pbx2mqtt/agent/alice/status");
        assert_eq!(topics.agent_event(&alice), "pbx2mqtt/agent/alice/event");
    }

    #[test]
    fn request_topics_parse_and_answer_on_the_mirror_topic() {
        let topics = Topics::new("site/pbx");
        let queue = topics
            .parse_request("site/pbx/request/queue/500/add")
            .unwrap();
        assert_eq!(
            queue,
            RequestTopic::Queue {
                queue: "500".into(),
                action: "add".into()
            }
        );
        assert_eq!(
            topics.response_for(&queue),
            "site/pbx/response/queue/500/add"
        );
        let agent = topics
            .parse_request("site/pbx/request/agent/alice/queues")
            .unwrap();
        assert_eq!(
            topics.response_for(&agent),
            "site/pbx/response/agent/alice/queues"
        );
        for other in [
            "site/pbx/request/queue/500",
            "site/pbx/request/queue/500/add/x",
            "site/pbx/agent/alice",
            "other/request/queue/1/add",
            "site/pbxx/request/queue/1/add",
        ] {
            assert_eq!(topics.parse_request(other), None, "{other}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any topic at all: parsed or not, never a panic; what parses has
        /// segments without `/` and answers on the mirror topic.
        #[test]
        fn any_topic_parses_or_is_none_without_panicking(
            base in "[a-z/+#]{0,12}",
            topic in "\\PC{0,80}",
            segments in proptest::collection::vec("(request|queue|agent|queues|add|[^/]{0,6}|/|\\+|#)", 0..8),
        ) {
            let topics = Topics::new(base.clone());
            let joined = format!("{base}/{}", segments.concat());
            for candidate in [topic.as_str(), joined.as_str()] {
                if let Some(parsed) = topics.parse_request(candidate) {
                    let (first, second) = match &parsed {
                        RequestTopic::Queue { queue, action } => (queue.as_str(), action.as_str()),
                        RequestTopic::AgentQueues { agent } => (agent.as_str(), "queues"),
                    };
                    proptest::prop_assert!(!first.contains('/') && !second.contains('/'));
                    let response = topics.response_for(&parsed);
                    let rest = &candidate[base.len() + "/request/".len()..];
                    proptest::prop_assert_eq!(response, format!("{base}/response/{rest}"));
                }
            }
        }

        /// A request topic built from any segments without `/` parses back
        /// to the same segments.
        #[test]
        fn request_topics_round_trip(
            base in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}",
            queue in "[^/]{0,20}",
            action in "[^/]{0,20}",
            agent in "[^/]{0,20}",
        ) {
            let topics = Topics::new(base.clone());
            let parsed = topics.parse_request(&format!("{base}/request/queue/{queue}/{action}"));
            proptest::prop_assert_eq!(
                parsed,
                Some(RequestTopic::Queue { queue: queue.clone(), action: action.clone() })
            );
            let parsed = topics.parse_request(&format!("{base}/request/agent/{agent}/queues"));
            proptest::prop_assert_eq!(
                &parsed,
                &Some(RequestTopic::AgentQueues { agent: agent.clone() })
            );
            if let Some(parsed) = parsed {
                proptest::prop_assert_eq!(
                    topics.response_for(&parsed),
                    format!("{base}/response/agent/{agent}/queues")
                );
            }
        }
    }
}
