//! Test fixtures shared by the answer and client tests: the answers exactly
//! as the Belfabriek document shows them, a PIN, a configuration and an
//! agent, and builders of answers and faults.

use std::time::Duration;

use super::BelfabriekError;
use crate::config::{AgentConfig, BelfabriekConfig};
use crate::model::AgentId;
use crate::secret::Secret;
use crate::xmlrpc::{encode_response, Encoding, Response, Value};

/// The account PIN of every test.
pub(super) const PIN: &str = "98765";

/// The `ivr.getAgentAvail` answer exactly as the Belfabriek document shows it.
pub(super) const SEED_AGENT_AVAIL: &str = "<methodResponse>\n\n <params>\n\n   <param>\n\n     <value>\n\n       <struct>\n\n         <member>\n\n           <name>available</name>\n\n           <value>\n\n             <i4>0</i4>\n\n           </value>\n\n         </member>\n\n         <member>\n\n           <name>availReason</name>\n\n           <value>\n\n             <string>-</string>\n\n           </value>\n\n         </member>\n\n         <member>\n\n           <name>extension</name>\n\n           <value>\n\n             <string>31201234567</string>\n\n           </value>\n\n         </member>\n\n       </struct>\n\n     </value>\n\n   </param>\n\n </params>\n\n</methodResponse>\n";

/// The `general.getExtensionStatus` answer exactly as the document shows it.
pub(super) const SEED_EXTENSION_STATUS: &str = "<methodResponse>\n\n <params>\n\n   <param>\n\n     <value>\n\n       <struct>\n\n         <member>\n\n           <name>Available</name>\n\n           <value>\n\n             <string>called</string>\n\n           </value>\n\n         </member>\n\n       </struct>\n\n     </value>\n\n   </param>\n\n </params>\n\n</methodResponse>\n";

pub(super) fn pin() -> Secret {
    Secret::new(PIN)
}

pub(super) fn config(url: &str, timeout: Duration) -> BelfabriekConfig {
    // The built-in defaults (member names as documented), pointed at `url`.
    let mut config = crate::config::Config::from_toml_str("")
        .expect("the defaults are valid")
        .belfabriek;
    config.url = url.to_owned();
    config.timeout = timeout;
    config
}

pub(super) fn agent(extension_id: &str) -> AgentConfig {
    AgentConfig {
        id: AgentId::parse("alice").unwrap(),
        name: None,
        extension_id: extension_id.to_owned(),
        sup_id: Some("7".into()),
        man_id: None,
        cust_id: None,
        queue_extension: None,
    }
}

pub(super) fn answer(members: &[(&str, Value)]) -> Vec<u8> {
    let members = members
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.clone()))
        .collect();
    encode_response(
        &Response::Params(vec![Value::Struct(members)]),
        Encoding::Iso8859_1,
    )
}

pub(super) fn fault_body(code: i64, message: &str) -> Vec<u8> {
    encode_response(
        &Response::Fault {
            code,
            message: message.to_owned(),
        },
        Encoding::Iso8859_1,
    )
}

pub(super) fn assert_no_pin(error: &BelfabriekError) {
    let printed = format!("{error} {error:?}");
    assert!(!printed.contains(PIN), "the pin leaked: {printed}");
}
