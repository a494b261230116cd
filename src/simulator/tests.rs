//! The simulator over real HTTP (port 0, reqwest): the Belfabriek and TRiNG
//! APIs as documented, the control API, fault injection, counting, auto
//! movement and shutdown.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::xmlrpc::{self, Response, Value};

fn test_config() -> SimulatorConfig {
    SimulatorConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        agents: 4,
        auto: false,
        seed: Some(1),
        ..SimulatorConfig::default()
    }
}

struct Harness {
    simulator: Simulator,
    client: reqwest::Client,
    shutdown: CancellationToken,
}

async fn start(config: SimulatorConfig) -> Harness {
    let shutdown = CancellationToken::new();
    let simulator = Simulator::start(config, shutdown.clone()).await.unwrap();
    Harness {
        simulator,
        client: reqwest::Client::new(),
        shutdown,
    }
}

/// A body as the documented PHP example sends `ivr.getAgentAvail`.
fn avail_call(pin: &str, extension: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\n<methodCall>\n<methodName>ivr.getAgentAvail</methodName>\n\
         <params>\n<param>\n<value>\n <struct>\n   <member>\n     <name>accountCode</name>\n     \
         <value><string>{pin}</string></value>\n   </member>\n   <member>\n     <name>extensionId</name>\n     \
         <value><string>{extension}</string></value>\n   </member>\n </struct>\n</value>\n</param>\n</params>\n</methodCall>"
    )
}

/// A body as the documented PHP example sends `general.getExtensionStatus`.
fn status_call(account: &str, extension: &str) -> String {
    format!(
        "<?xml version='1.0'?>\n<methodCall>\n<methodName>general.getExtensionStatus</methodName>\n<params>\n<param>\n  \
         <value>\n    <struct>\n      <member>\n        <name>supId</name>\n        <value><string>1</string></value>\n      \
         </member>\n      <member>\n        <name>manId</name>\n        <value><string>2</string></value>\n      </member>\n      \
         <member>\n        <name>accountCode</name>\n        <value><string>{account}</string></value>\n      </member>\n      \
         <member>\n        <name>extensionId</name>\n        <value><string>{extension}</string></value>\n      </member>\n    \
         </struct>\n  </value>\n  </param>\n  </params>\n</methodCall>"
    )
}

/// One HTTP answer.
struct Answer {
    status: StatusCode,
    content_type: String,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn decoded(&self) -> Response {
        xmlrpc::decode_response(&self.body)
            .unwrap_or_else(|error| panic!("{error}: {}", self.text()))
    }

    /// The struct members of a decoded params response.
    fn members(&self) -> Vec<(String, Value)> {
        match self.decoded() {
            Response::Params(params) => match params.into_iter().next() {
                Some(Value::Struct(members)) => members,
                other => panic!("expected a struct, got {other:?}"),
            },
            fault => panic!("expected params, got {fault:?}"),
        }
    }

    fn fault_code(&self) -> i64 {
        match self.decoded() {
            Response::Fault { code, .. } => code,
            other => panic!("expected a fault, got {other:?}"),
        }
    }
}

impl Harness {
    async fn answer(response: reqwest::Response) -> Answer {
        Answer {
            status: response.status(),
            content_type: response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            body: response.bytes().await.unwrap().to_vec(),
        }
    }

    async fn post_xml(&self, body: impl Into<Vec<u8>>) -> Answer {
        let response = self
            .client
            .post(self.simulator.belfabriek_url())
            .header("Content-Type", "text/xml")
            .body(body.into())
            .send()
            .await
            .unwrap();
        Self::answer(response).await
    }

    async fn avail(&self, extension: &str) -> Answer {
        self.post_xml(avail_call("1234", extension)).await
    }

    async fn tring(&self, query: &str) -> Answer {
        let url = format!("{}?{query}", self.simulator.tring_url());
        Self::answer(self.client.get(url).send().await.unwrap()).await
    }

    /// A TRiNG request with the right key and tenant; the body as text.
    async fn tring_ok(&self, query: &str) -> String {
        let answer = self.tring(&format!("key=simkey&tenant=SIM&{query}")).await;
        assert_eq!(answer.status, StatusCode::OK);
        answer.text()
    }

    async fn control(
        &self,
        method: reqwest::Method,
        path: &str,
        json: Option<serde_json::Value>,
    ) -> (StatusCode, serde_json::Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.simulator.control_url()));
        if let Some(json) = json {
            request = request
                .header("Content-Type", "application/json")
                .body(json.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let body = response.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }
}

fn text_of(members: &[(String, Value)], name: &str) -> String {
    members
        .iter()
        .find(|(member, _)| member == name)
        .and_then(|(_, value)| value.as_text_lenient())
        .unwrap_or_else(|| panic!("no member {name} in {members:?}"))
        .into_owned()
}

#[tokio::test]
async fn get_agent_avail_answers_byte_for_byte_like_the_real_service() {
    let harness = start(test_config()).await;
    harness
        .simulator
        .set_agent(
            "1001",
            VirtualState::offline().with_destination("31201234567"),
        )
        .unwrap();
    let answer = harness.avail("1001").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.content_type, "text/xml");
    let expected = "<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>\r\n\
        <methodResponse>\r\n  <params>\r\n    <param>\r\n      <value>\r\n        <struct>\r\n\
        \x20         <member>\r\n            <name>available</name>\r\n            <value>\r\n              <i4>0</i4>\r\n            </value>\r\n          </member>\r\n\
        \x20         <member>\r\n            <name>availReason</name>\r\n            <value>\r\n              <string>-</string>\r\n            </value>\r\n          </member>\r\n\
        \x20         <member>\r\n            <name>extension</name>\r\n            <value>\r\n              <string>31201234567</string>\r\n            </value>\r\n          </member>\r\n\
        \x20       </struct>\r\n      </value>\r\n    </param>\r\n  </params>\r\n</methodResponse>\r\n";
    assert_eq!(answer.text(), expected);

    // A non-ASCII reason travels as one ISO-8859-1 byte, and `<i4>1</i4>`.
    harness
        .simulator
        .set_agent("1002", VirtualState::unavailable("privé"))
        .unwrap();
    let answer = harness.avail("1002").await;
    assert!(
        answer.body.windows(5).any(|window| window == b"priv\xe9"),
        "{}",
        answer.text()
    );
    assert_eq!(text_of(&answer.members(), "availReason"), "privé");
    assert_eq!(text_of(&answer.members(), "extension"), "31201001002");

    harness
        .simulator
        .set_agent("1002", VirtualState::available("idle"))
        .unwrap();
    let answer = harness.avail("1002").await;
    assert!(answer.text().contains("<i4>1</i4>"), "{}", answer.text());
}

#[tokio::test]
async fn get_extension_status_uses_the_available_member() {
    let harness = start(test_config()).await;
    for status in ["calling", "called", "wrapup", "idle"] {
        harness
            .simulator
            .set_agent("1003", VirtualState::available(status))
            .unwrap();
        let answer = harness.post_xml(status_call("1234", "1003")).await;
        assert!(
            answer.text().contains("<name>Available</name>"),
            "{}",
            answer.text()
        );
        let members = answer.members();
        assert_eq!(members.len(), 1);
        assert_eq!(text_of(&members, "Available"), status);
    }
}

#[tokio::test]
async fn wrong_requests_get_xml_rpc_faults() {
    let harness = start(test_config()).await;
    let prose_names = "<?xml version=\"1.0\"?><methodCall><methodName>general.getExtensionStatus</methodName><params><param><value><struct>\
        <member><name>custId</name><value><string>1234</string></value></member>\
        <member><name>extId</name><value><string>1001</string></value></member></struct></value></param></params></methodCall>";
    assert_eq!(
        text_of(&harness.post_xml(prose_names).await.members(), "Available"),
        "idle"
    );

    for (body, expected_code) in [
        (avail_call("9999", "1001"), belfabriek::FAULT_ACCESS_DENIED),
        (status_call("9999", "1001"), belfabriek::FAULT_ACCESS_DENIED),
        (
            avail_call("1234", "4242"),
            belfabriek::FAULT_UNKNOWN_EXTENSION,
        ),
        (
            avail_call("1234", "x").replace("ivr.getAgentAvail", "ivr.dropTables"),
            belfabriek::FAULT_UNKNOWN_METHOD,
        ),
        ("this is not xml".to_owned(), belfabriek::FAULT_PARSE),
        (String::new(), belfabriek::FAULT_PARSE),
    ] {
        let answer = harness.post_xml(body.clone()).await;
        assert_eq!(answer.status, StatusCode::OK, "{body}");
        assert!(answer
            .text()
            .starts_with("<?xml version=\"1.0\" encoding=\"iso-8859-1\"?>"));
        assert_eq!(answer.fault_code(), expected_code, "{body}");
    }
    let counts = harness.simulator.counts();
    assert_eq!(counts.belfabriek, 7);
    assert_eq!(counts.method("ivr.getAgentAvail"), 2);
    assert_eq!(counts.method("general.getExtensionStatus"), 2);
    assert_eq!(counts.method("other"), 3);
    assert_eq!(counts.tring, 0);
}

#[tokio::test]
async fn control_api_sets_agents_and_reports() {
    let harness = start(test_config()).await;
    let (status, state) = harness
        .control(
            reqwest::Method::POST,
            "/agents/1004",
            Some(serde_json::json!({"available":true,"reason":"-","destination":"31612345678","extension_status":"called"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(state["extension_status"], "called");
    let members = harness.avail("1004").await.members();
    assert_eq!(text_of(&members, "available"), "1");
    assert_eq!(text_of(&members, "extension"), "31612345678");
    assert_eq!(
        text_of(
            &harness
                .post_xml(status_call("1234", "1004"))
                .await
                .members(),
            "Available"
        ),
        "called"
    );

    let (status, _) = harness
        .control(
            reqwest::Method::POST,
            "/agents/999",
            Some(serde_json::json!({"available":false})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, agents) = harness.control(reqwest::Method::GET, "/agents", None).await;
    assert_eq!(agents.as_array().unwrap().len(), 4);
    assert_eq!(agents[3]["ext_id"], "1004");
    assert_eq!(agents[3]["tring_extension"], "204");
    assert_eq!(agents[3]["frozen"], true);
    let (_, stats) = harness.control(reqwest::Method::GET, "/stats", None).await;
    assert_eq!(stats["belfabriek"], 2);
    assert_eq!(stats["belfabriek_methods"]["general.getExtensionStatus"], 1);

    let info = &harness.simulator.agents()[0];
    assert_eq!(
        (
            info.ext_id.as_str(),
            info.tring_extension.as_str(),
            info.name.as_str()
        ),
        ("1001", "201", "Agent 1001")
    );
}

#[tokio::test]
async fn every_belfabriek_fault_kind() {
    let harness = start(test_config()).await;
    type Check = fn(&Answer);
    let cases: Vec<(FaultKind, Check)> = vec![
        (FaultKind::Http500, |answer| {
            assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
            assert!(answer.text().contains("500 - Internal server error."));
        }),
        (FaultKind::XmlRpcFault, |answer| {
            assert_eq!(answer.status, StatusCode::OK);
            assert_eq!(answer.fault_code(), belfabriek::FAULT_INTERNAL);
        }),
        (FaultKind::Malformed, |answer| {
            assert_eq!(answer.status, StatusCode::OK);
            assert!(
                xmlrpc::decode_response(&answer.body).is_err(),
                "{}",
                answer.text()
            );
        }),
        (FaultKind::Empty, |answer| {
            assert_eq!(answer.status, StatusCode::OK);
            assert!(answer.body.is_empty());
        }),
        (FaultKind::Truncated, |answer| {
            assert!(answer.text().starts_with("<?xml"));
            assert!(
                xmlrpc::decode_response(&answer.body).is_err(),
                "{}",
                answer.text()
            );
        }),
        (FaultKind::HtmlErrorPage, |answer| {
            assert_eq!(answer.status, StatusCode::OK);
            assert_eq!(answer.content_type, "text/html");
            assert!(answer.text().starts_with("<html>"));
        }),
        (
            FaultKind::PlainTextError("Microsoft VBScript runtime error '800a000d'".into()),
            |answer| {
                assert_eq!(answer.status, StatusCode::OK);
                assert_eq!(answer.text(), "Microsoft VBScript runtime error '800a000d'");
            },
        ),
    ];
    for (kind, check) in cases {
        harness.simulator.inject(
            Fault::always(Api::Belfabriek, kind.clone())
                .for_agent("1001")
                .times(1),
        );
        // Another agent is not affected; the targeted one is, once.
        assert_eq!(harness.avail("1002").await.members().len(), 3, "{kind:?}");
        check(&harness.avail("1001").await);
        assert_eq!(
            harness.avail("1001").await.members().len(),
            3,
            "{kind:?} must be used up"
        );
    }
    assert!(harness.simulator.faults().is_empty());
    assert_eq!(harness.simulator.counts().faults_applied, 7);

    // Latency, armed over HTTP, until cleared; it combines with a normal answer.
    let (status, armed) = harness
        .control(
            reqwest::Method::POST,
            "/faults",
            Some(serde_json::json!({"api":"belfabriek","kind":{"latency":"60ms"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(armed.as_array().unwrap().len(), 1);
    for _ in 0..2 {
        let started = Instant::now();
        assert_eq!(harness.avail("1003").await.members().len(), 3);
        assert!(started.elapsed() >= Duration::from_millis(60));
    }
    // TRiNG is not affected by a Belfabriek fault.
    harness
        .simulator
        .inject(Fault::always(Api::Belfabriek, FaultKind::Http500));
    assert_eq!(
        harness
            .tring_ok("reqtype=queue&number=1&action=list&format=json")
            .await,
        "null"
    );
    let (_, remaining) = harness
        .control(reqwest::Method::DELETE, "/faults", None)
        .await;
    assert_eq!(remaining, serde_json::json!([]));
    assert_eq!(harness.avail("1003").await.status, StatusCode::OK);
}

#[tokio::test]
async fn tring_queue_actions_as_documented() {
    let harness = start(test_config()).await;
    let h = &harness;
    assert_eq!(
        h.tring_ok("reqtype=queue&number=500&action=list&format=json")
            .await,
        "null"
    );
    assert_eq!(
        h.tring_ok("reqtype=queue&number=500&extension=201&action=add")
            .await,
        "OK"
    );
    assert_eq!(
        h.tring_ok("reqtype=queue&number=500&extension=202&action=add")
            .await,
        "OK"
    );
    assert_eq!(
        h.tring_ok("reqtype=queue&number=500&extension=612345678&action=add&type=CU")
            .await,
        "OK"
    );
    assert_eq!(
        h.tring_ok("reqtype=queue&number=500&extension=201&action=add")
            .await,
        "ERROR: extension 201 is already a member of queue 500"
    );
    assert_eq!(
        h.tring_ok("reqtype=queue&number=500&action=list&format=json")
            .await,
        r#"["201-SIM","202-SIM","612345678-SIM"]"#
    );
    assert_eq!(
        h.tring_ok("reqtype=queue&number=500&action=list").await,
        "201-SIM\n202-SIM\n612345678-SIM\n"
    );
    assert_eq!(
        h.simulator.queue_members("500"),
        ["201", "202", "612345678"]
    );
    assert!(h.simulator.queue_entries("500")[2].custom);

    h.simulator.set_queue_members("600", ["201"]);
    assert_eq!(
        h.tring_ok("reqtype=AGENT&action=listqueues&format=json&extension=201")
            .await,
        r#"["500","600"]"#
    );
    assert_eq!(
        h.tring_ok("reqtype=AGENT&action=listqueues&format=json&extension=203")
            .await,
        "null"
    );

    assert_eq!(
        h.tring_ok("reqtype=queue&number=500&extension=202&action=del")
            .await,
        "OK"
    );
    assert_eq!(
        h.tring_ok("reqtype=queue&number=500&extension=202&action=del")
            .await,
        "ERROR: extension 202 is not a member of queue 500"
    );
    assert_eq!(
        h.tring_ok("reqtype=queue&number=500&action=clean").await,
        "OK"
    );
    assert_eq!(
        h.tring_ok("reqtype=queue&number=500&action=list&format=json")
            .await,
        "null"
    );
    assert!(h.simulator.queue_members("500").is_empty());

    let (_, queue) = h.control(reqwest::Method::GET, "/queues/600", None).await;
    assert_eq!(
        queue,
        serde_json::json!({"queue":"600","members":[{"extension":"201","custom":false}]})
    );
    let (status, _) = h
        .control(
            reqwest::Method::PUT,
            "/queues/700",
            Some(serde_json::json!(["205", {"extension":"699","custom":true}])),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        h.tring_ok("reqtype=queue&number=700&action=list&format=json")
            .await,
        r#"["205-SIM","699-SIM"]"#
    );

    let counts = h.simulator.counts();
    assert_eq!(counts.action("add"), 4);
    assert_eq!(counts.action("del"), 2);
    assert_eq!(counts.action("clean"), 1);
    assert_eq!(counts.action("list"), 5);
    assert_eq!(counts.action("listqueues"), 2);
    assert_eq!(counts.tring, 14);
}

#[tokio::test]
async fn tring_rejections_are_plain_text_with_http_200() {
    let harness = start(test_config()).await;
    for (query, expected) in [
        ("key=wrong&reqtype=queue&tenant=SIM&number=500&action=clean", "Invalid key"),
        ("reqtype=queue&tenant=SIM&number=500&action=clean", "Invalid key"),
        ("key=simkey&reqtype=queue&tenant=OTHER&number=500&action=clean", "Invalid tenant"),
        ("key=simkey&reqtype=queue&tenant=SIM&number=500&extension=20a&action=add", "ERROR: invalid extension"),
        ("key=simkey&reqtype=queue&tenant=SIM&number=500&extension=201%26action%3Dclean&action=add", "ERROR: invalid extension"),
        ("key=simkey&reqtype=queue&tenant=SIM&number=..%2F&action=list", "ERROR: invalid queue number"),
        ("key=simkey&reqtype=queue&tenant=SIM&action=list", "ERROR: missing parameter number"),
        ("key=simkey&reqtype=queue&tenant=SIM&number=500&action=add", "ERROR: missing parameter extension"),
        ("", "Invalid key"),
    ] {
        let answer = harness.tring(query).await;
        assert_eq!(answer.status, StatusCode::OK, "{query}");
        assert_eq!(answer.content_type, "text/html; charset=UTF-8");
        assert_eq!(answer.text(), expected, "{query}");
    }
    assert!(harness.simulator.queue_members("500").is_empty());
    assert_eq!(harness.simulator.counts().tring, 9);
}

#[tokio::test]
async fn tring_faults_and_whether_the_action_ran() {
    let harness = start(test_config()).await;
    let add =
        |extension: &str| format!("reqtype=queue&number=500&extension={extension}&action=add");
    for (kind, extension, expected_body, executed) in [
        (FaultKind::Http500, "201", None, false),
        (
            FaultKind::XmlRpcFault,
            "202",
            Some("ERROR: internal error"),
            false,
        ),
        (
            FaultKind::PlainTextError("Database error".into()),
            "203",
            Some("Database error"),
            false,
        ),
        (FaultKind::HtmlErrorPage, "204", None, false),
        (FaultKind::Empty, "205", Some(""), true),
        (FaultKind::Truncated, "206", Some("O"), true),
        (FaultKind::Malformed, "207", None, true),
    ] {
        harness
            .simulator
            .inject(Fault::always(Api::Tring, kind.clone()).times(1));
        let answer = harness
            .tring(&format!("key=simkey&tenant=SIM&{}", add(extension)))
            .await;
        if let Some(expected) = expected_body {
            assert_eq!(answer.text(), expected, "{kind:?}");
        }
        match kind {
            FaultKind::Http500 => assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR),
            FaultKind::Malformed => {
                assert!(answer.text().starts_with("<br />") && answer.text().ends_with("OK"))
            }
            FaultKind::HtmlErrorPage => assert!(answer.text().starts_with("<html>")),
            _ => assert_eq!(answer.status, StatusCode::OK),
        }
        assert_eq!(
            harness
                .simulator
                .queue_members("500")
                .contains(&extension.to_owned()),
            executed,
            "{kind:?}"
        );
    }
    // A fault for agent 1002 hits requests about its TRiNG extension 202 only.
    harness.simulator.inject(
        Fault::always(Api::Tring, FaultKind::PlainTextError("busy".into())).for_agent("1002"),
    );
    assert_eq!(harness.tring_ok(&add("208")).await, "OK");
    assert_eq!(harness.tring_ok(&add("202")).await, "busy");
    harness.simulator.clear_faults();
    assert_eq!(harness.tring_ok(&add("202")).await, "OK");
}

#[tokio::test]
async fn auto_agents_move_through_many_states_over_simulated_time() {
    let harness = start(SimulatorConfig {
        agents: 2,
        auto: true,
        mean_dwell: Duration::from_secs(10),
        ..test_config()
    })
    .await;
    let mut seen = BTreeSet::new();
    for _ in 0..400 {
        harness.simulator.advance_clock(Duration::from_secs(7));
        let members = harness.avail("1001").await.members();
        let available = text_of(&members, "available");
        let reason = text_of(&members, "availReason");
        let extension_status = if available == "1" {
            text_of(
                &harness
                    .post_xml(status_call("1234", "1001"))
                    .await
                    .members(),
                "Available",
            )
        } else {
            String::new()
        };
        seen.insert((available, reason, extension_status));
        if seen.len() >= 7 {
            break;
        }
    }
    assert!(seen.len() >= 7, "only {seen:?}");
    assert!(harness.simulator.snapshots()[0].changes > 6);
    // A frozen agent stays put however much time passes.
    harness
        .simulator
        .set_agent("1002", VirtualState::unavailable("pause"))
        .unwrap();
    harness.simulator.advance_clock(Duration::from_secs(3_600));
    assert_eq!(
        text_of(&harness.avail("1002").await.members(), "availReason"),
        "pause"
    );
}

#[tokio::test]
async fn shutdown_stops_the_server_and_misconfiguration_is_refused() {
    let harness = start(test_config()).await;
    assert_eq!(harness.avail("1001").await.status, StatusCode::OK);
    harness.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), harness.simulator.join())
        .await
        .expect("simulator did not stop")
        .unwrap();

    let error = Simulator::start(
        SimulatorConfig {
            mean_dwell: Duration::ZERO,
            ..test_config()
        },
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("mean_dwell"), "{error}");
}

#[test]
fn command_line_defaults_match_the_default_config() {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct Command {
        #[command(flatten)]
        simulator: SimulatorConfig,
    }
    let parsed = Command::parse_from(["simulate"]).simulator;
    assert_eq!(
        format!("{parsed:?}"),
        format!("{:?}", SimulatorConfig::default())
    );
    let parsed = Command::parse_from([
        "simulate",
        "--listen",
        "127.0.0.1:0",
        "--agents",
        "5000",
        "--auto",
        "false",
        "--mean-dwell",
        "5s",
        "--seed",
        "7",
        "--tenant",
        "ACME",
    ])
    .simulator;
    assert_eq!(parsed.agents, 5_000);
    assert!(!parsed.auto);
    assert_eq!(parsed.mean_dwell, Duration::from_secs(5));
    assert_eq!(parsed.seed, Some(7));
    assert_eq!(parsed.tenant, "ACME");
}

#[tokio::test]
async fn poll_log_tells_bridges_apart_and_finds_overlaps() {
    let harness = start(SimulatorConfig {
        agents: 3,
        ..test_config()
    })
    .await;
    let bridge = |id: &str| {
        reqwest::Client::builder()
            .user_agent(format!("pbx2mqtt/0.1.0 ({id})"))
            .build()
            .unwrap()
    };
    let (a, b) = (bridge("a"), bridge("b"));
    let poll = |client: &reqwest::Client, body: String| {
        let request = client
            .post(harness.simulator.belfabriek_url())
            .body(body)
            .send();
        async move { request.await.unwrap().bytes().await.unwrap() }
    };
    // Bridge a owns 1001, b owns 1002; 1003 is polled by both in turn.
    poll(&a, avail_call("1234", "1001")).await;
    poll(&a, avail_call("1234", "1001")).await;
    poll(&b, avail_call("1234", "1002")).await;
    poll(&a, avail_call("1234", "1003")).await;
    poll(&b, avail_call("1234", "1003")).await;
    // Not polls: the second request of a poll, an unknown agent.
    poll(&b, status_call("1234", "1001")).await;
    poll(&b, avail_call("1234", "4242")).await;

    let (status, log) = harness
        .control(reqwest::Method::GET, "/poll-log?window=1m", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let log: PollLog = serde_json::from_value(log).unwrap();
    assert_eq!(log.window_micros, Some(60_000_000));
    assert_eq!(log.user_agents_of("1001"), ["pbx2mqtt/0.1.0 (a)"]);
    assert_eq!(log.agents["1001"].polls, 2);
    assert_eq!(log.agents["1001"].clients[0].polls, 2);
    assert!(log.agents["1001"].clients[0].first < log.agents["1001"].clients[0].last);
    assert_eq!(log.user_agents_of("1002"), ["pbx2mqtt/0.1.0 (b)"]);
    assert_eq!(
        log.user_agents_of("1003"),
        ["pbx2mqtt/0.1.0 (a)", "pbx2mqtt/0.1.0 (b)"]
    );
    assert!(log.unpolled.is_empty());
    assert_eq!(log.overlaps.len(), 1, "{log:?}");
    let overlap = &log.overlaps[0];
    assert_eq!((overlap.agent.as_str(), overlap.handovers), ("1003", 1));
    assert_eq!(overlap.polls[0].user_agent, "pbx2mqtt/0.1.0 (a)");
    assert_eq!(overlap.polls[1].user_agent, "pbx2mqtt/0.1.0 (b)");
    assert!(overlap.polls[0].at <= overlap.polls[1].at);
    assert!(overlap.gap_micros < 60_000_000);

    // No window: any two clients count; a zero window: none can.
    assert_eq!(harness.simulator.poll_log(None).overlaps.len(), 1);
    let (_, none) = harness
        .control(reqwest::Method::GET, "/poll-log?window=0s", None)
        .await;
    assert_eq!(none["overlaps"], serde_json::json!([]));
    // The Rust accessor shows the same log.
    assert_eq!(
        harness.simulator.poll_log(Some(Duration::from_secs(60))),
        log
    );
    let (status, error) = harness
        .control(reqwest::Method::GET, "/poll-log?window=soon", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error["error"].as_str().unwrap().contains("soon"), "{error}");

    // A reset forgets it all; a client without a user agent is "".
    let (status, empty) = harness
        .control(reqwest::Method::DELETE, "/poll-log", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(empty["agents"], serde_json::json!({}));
    assert_eq!(
        empty["unpolled"],
        serde_json::json!(["1001", "1002", "1003"])
    );
    let mut raw = tokio::net::TcpStream::connect(harness.simulator.addr())
        .await
        .unwrap();
    let body = avail_call("1234", "1002");
    let request = format!(
        "POST {BELFABRIEK_PATH} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = exchange(&mut raw, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let log = harness.simulator.poll_log(None);
    assert_eq!(log.user_agents_of("1002"), [""]);
    assert_eq!(log.unpolled, ["1001", "1003"]);
    harness.simulator.reset_poll_log();
    assert!(harness.simulator.poll_log(None).agents.is_empty());
}

/// Writes `request` and reads until the server closes the connection.
async fn exchange(stream: &mut tokio::net::TcpStream, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the simulator did not close the connection")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn http_framing_over_a_real_socket() {
    let harness = start(test_config()).await;
    harness
        .simulator
        .set_agent("1001", VirtualState::available("called"))
        .unwrap();
    let connect = || tokio::net::TcpStream::connect(harness.simulator.addr());
    let avail = avail_call("1234", "1001");
    let status = status_call("1234", "1001");

    // Three pipelined requests (one chunked) answered in order; the last
    // asks to close.
    let chunked: String = status
        .as_bytes()
        .chunks(100)
        .map(|chunk| {
            format!(
                "{:x}\r\n{}\r\n",
                chunk.len(),
                String::from_utf8_lossy(chunk)
            )
        })
        .collect();
    let requests = format!(
        "POST {BELFABRIEK_PATH} HTTP/1.1\r\nContent-Length: {}\r\n\r\n{avail}\
         POST {BELFABRIEK_PATH} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}0\r\n\r\n\
         GET /control/stats HTTP/1.1\r\nConnection: close\r\n\r\n",
        avail.len()
    );
    let answer = exchange(&mut connect().await.unwrap(), requests.as_bytes()).await;
    let parts: Vec<&str> = answer.split("HTTP/1.1 200 OK\r\n").collect();
    assert_eq!(parts.len(), 4, "{answer}");
    assert!(parts[1].contains("<i4>1</i4>"), "{}", parts[1]);
    assert!(parts[2].contains("<string>called</string>"), "{}", parts[2]);
    assert!(parts[3].contains("connection: close\r\n"), "{}", parts[3]);
    assert!(parts[3].contains("\"belfabriek\":2"), "{}", parts[3]);

    // HTTP/1.0 closes by default; `Expect: 100-continue` gets its interim
    // answer before the body is sent.
    let answer = exchange(
        &mut connect().await.unwrap(),
        b"GET /control/agents/1001 HTTP/1.0\r\n\r\n",
    )
    .await;
    assert!(answer.contains("\"ext_id\":\"1001\""), "{answer}");
    let mut stream = connect().await.unwrap();
    {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let head = format!(
            "POST {BELFABRIEK_PATH} HTTP/1.1\r\nExpect: 100-continue\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            avail.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut interim = vec![0; http::CONTINUE.len()];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut interim))
            .await
            .expect("no 100 Continue")
            .unwrap();
        assert_eq!(interim, http::CONTINUE);
    }
    let answer = exchange(&mut stream, avail.as_bytes()).await;
    assert!(answer.contains("<i4>1</i4>"), "{answer}");

    // Unknown paths, wrong methods, bad JSON, garbage.
    for (request, expected) in [
        (
            "GET /nowhere HTTP/1.1\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\n",
        ),
        (
            "GET /control/agents/ HTTP/1.1\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\n",
        ),
        (
            "GET /control/agents/999 HTTP/1.1\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\n",
        ),
        (
            "GET /xml/agent/xml.asp HTTP/1.1\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 405 Method Not Allowed\r\n",
        ),
        (
            "PUT /control/stats HTTP/1.1\r\nConnection: close\r\n\r\n",
            "HTTP/1.1 405 Method Not Allowed\r\n",
        ),
        (
            "POST /control/faults HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\n{x}",
            "HTTP/1.1 400 Bad Request\r\n",
        ),
        (
            "POST /control/faults HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            "HTTP/1.1 422 Unprocessable Content\r\n",
        ),
        (
            "\x16\x03\x01 not http\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\n",
        ),
    ] {
        let answer = exchange(&mut connect().await.unwrap(), request.as_bytes()).await;
        assert!(answer.starts_with(expected), "{request:?}: {answer}");
    }
    // Nothing of that reached the APIs' counters but the requests above.
    assert_eq!(harness.simulator.counts().belfabriek, 3);
}

#[tokio::test]
async fn the_server_stops_with_the_runtime_that_started_it() {
    let (address_sender, address_receiver) = std::sync::mpsc::channel();
    let (stopped_sender, stopped_receiver) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let simulator = runtime.block_on(async {
            Simulator::start(test_config(), CancellationToken::new())
                .await
                .unwrap()
        });
        address_sender.send(simulator.addr()).unwrap();
        // Never cancelled: dropping the runtime must stop the server.
        drop(runtime);
        let _ = stopped_sender.send(simulator);
    });
    let addr = address_receiver.recv().unwrap();
    let simulator = stopped_receiver.await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), simulator.join())
        .await
        .expect("the simulator outlived its runtime")
        .unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// Prints how many agent polls (`ivr.getAgentAvail`, then
/// `general.getExtensionStatus` when available) per second the simulator
/// serves to 64 kept-alive connections, and its CPU per request (its own
/// thread, from `/proc`). Not a pass/fail check: run it by hand with
/// `cargo test --release --lib simulator::tests::throughput -- --ignored --nocapture`.
/// The client shares the machine, so on 2 cores the rate is a floor; the CPU
/// per request is the figure to compare.
#[test]
#[ignore = "manual throughput measurement"]
fn throughput() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let shutdown = CancellationToken::new();
    let simulator = runtime
        .block_on(Simulator::start(
            SimulatorConfig {
                agents: 5_000,
                auto: true,
                mean_dwell: Duration::from_secs(5),
                ..test_config()
            },
            shutdown.clone(),
        ))
        .unwrap();
    let url = simulator.belfabriek_url();
    let measured = Duration::from_secs(5);
    let cpu_before = simulator_thread_cpu_seconds();
    let total = runtime.block_on(async move {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + measured;
        let mut tasks = Vec::new();
        for worker in 0..64u32 {
            let client = client.clone();
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let mut done = 0u64;
                let mut poll = 0u32;
                while Instant::now() < deadline {
                    let extension = (1001 + (worker * 997 + poll) % 5_000).to_string();
                    poll += 1;
                    let answer = client
                        .post(&url)
                        .body(avail_call("1234", &extension))
                        .send()
                        .await
                        .unwrap()
                        .bytes()
                        .await
                        .unwrap();
                    done += 1;
                    if answer.windows(10).any(|window| window == b"<i4>1</i4>") {
                        let _ = client
                            .post(&url)
                            .body(status_call("1234", &extension))
                            .send()
                            .await
                            .unwrap()
                            .bytes()
                            .await
                            .unwrap();
                        done += 1;
                    }
                }
                done
            }));
        }
        let mut total = 0;
        for task in tasks {
            total += task.await.unwrap();
        }
        total
    });
    let server_cpu = simulator_thread_cpu_seconds() - cpu_before;
    shutdown.cancel();
    runtime.block_on(simulator.join()).unwrap();
    println!(
        "simulator: {} requests/s; its thread used {server_cpu:.2} s CPU: {:.1} µs per request",
        total / measured.as_secs(),
        server_cpu * 1e6 / total as f64
    );
}

/// CPU time (user + system) of this process's `pbx-simulator` threads, from
/// `/proc`.
fn simulator_thread_cpu_seconds() -> f64 {
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if name.trim() != "pbx-simulator" {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap();
        // Fields after the command name (which is in parentheses): utime and
        // stime are the 12th and 13th, in clock ticks (100 per second on
        // Linux).
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        ticks += fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    }
    ticks as f64 / 100.0
}
