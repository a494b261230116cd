//! `mqtts://` against a private Mosquitto with TLS listeners and
//! certificates made in the test (`openssl`): the right CA connects and
//! publishes; an unreachable broker, a wrong CA, a wrong password and a
//! missing client certificate each end in an ERROR log naming the cause and
//! a not-ready `/readyz`; a client certificate is accepted where the broker requires
//! one. Skipped (with a message) without `mosquitto`, `mosquitto_passwd` or
//! `openssl`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::helpers::{captured_logs, prepare_app, wait_until, Options, TestApp, SOON};
use crate::mosquitto::{free_port, openssl_binary, required_binary, Certificates, Mosquitto};
use crate::mqtt_client::TestClient;

const USER: &str = "bridge";
const PASSWORD: &str = "tls-test-password-1";

fn mosquitto_passwd() -> Option<&'static str> {
    [
        "/usr/bin/mosquitto_passwd",
        "/usr/local/bin/mosquitto_passwd",
    ]
    .into_iter()
    .find(|path| Path::new(path).exists())
}

/// The broker's listeners.
struct Ports {
    /// Plain TCP, anonymous: the test's own subscriber.
    plain: u16,
    /// TLS with a password file.
    tls: u16,
    /// TLS requiring a client certificate signed by the CA.
    mutual: u16,
}

/// A bridge on `url` with these extra `[mqtt]` keys, started; `plain` is
/// where the test (and the cleanup when it is dropped) reads the broker.
async fn bridge(url: &str, plain: &str, protocol: &'static str, mqtt_toml: String) -> TestApp {
    let mut app = prepare_app(Options {
        broker_url: Some(url.to_owned()),
        protocol: Some(protocol),
        mqtt_toml,
        ..Options::default()
    })
    .await;
    app.broker_url = plain.to_owned();
    app.start_bridge().await;
    app
}

/// Waits until the bridge logged (after `from`) an ERROR containing every
/// one of `words`, and checks `/readyz` says not ready with MQTT down.
async fn fails_clearly(app: &TestApp, from: usize, words: &[&str]) -> String {
    let logs = captured_logs();
    let found = {
        let logs = logs.clone();
        let words: Vec<String> = words.iter().map(|w| (*w).to_owned()).collect();
        move || {
            logs.contents()[from..].lines().any(|line| {
                line.contains("ERROR") && words.iter().all(|word| line.contains(word.as_str()))
            })
        }
    };
    let deadline = tokio::time::Instant::now() + SOON;
    while !found() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no ERROR line with {words:?}; the bridge logged:\n{}",
            logs.contents()[from..]
                .lines()
                .filter(|line| line.contains("broker"))
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = logs.contents()[from..]
        .lines()
        .find(|line| line.contains("ERROR") && words.iter().all(|word| line.contains(word)))
        .unwrap_or_default()
        .to_owned();
    eprintln!("logged: {line}");
    let (status, body) = app.readyz().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], false, "{body}");
    assert_eq!(body["mqtt"], "disconnected", "{body}");
    assert_eq!(body["mqtt_commands"], "disconnected", "{body}");
    eprintln!("/readyz {status}: {body}");
    line
}

/// Waits for `online` and an agent's state published through the TLS
/// connection (read back on the plain listener), and a ready `/readyz`.
async fn publishes(app: &TestApp, plain: &str) {
    let mut sub = TestClient::connect(plain, &[format!("{}/#", app.base)]).await;
    sub.wait_for(SOON, "bridge online over TLS", |m| {
        m.topic == format!("{}/bridge/state", app.base) && m.text() == "online"
    })
    .await;
    app.set(1, true, "-", "idle");
    sub.wait_for(SOON, "an event over TLS", |m| {
        m.topic == app.topic(1, "/event") && m.json()["to"] == "available"
    })
    .await;
    let metrics = app.metrics.clone().expect("bridge started");
    wait_until(SOON, "both connections up", move || {
        metrics
            .mqtt_commands_connected
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    let (status, body) = app.readyz().await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(pbx2mqtt_mosquitto, pbx2mqtt_tls_tools)),
    ignore = "needs mosquitto, mosquitto_passwd and openssl (apt install mosquitto openssl; CI installs them)"
)]
async fn tls_connects_with_the_right_ca_and_fails_clearly_otherwise() {
    let binary = required_binary();
    let (Some(openssl), Some(passwd)) = (openssl_binary(), mosquitto_passwd()) else {
        panic!("the TLS test needs openssl and mosquitto_passwd");
    };
    let logs = captured_logs();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let certs = Certificates::make(openssl, path);
    let status = Command::new(passwd)
        .arg("-b")
        .arg("-c")
        .arg(path.join("passwd"))
        .args([USER, PASSWORD])
        .status()
        .expect("run mosquitto_passwd");
    assert!(status.success());
    // Mosquitto started as root drops to its own user: let it read.
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(path).unwrap() {
        let entry = entry.unwrap();
        std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ports = Ports {
        plain: free_port(),
        tls: free_port(),
        mutual: free_port(),
    };
    let tls_files = format!(
        "cafile {ca}\ncertfile {cert}\nkeyfile {key}\n",
        ca = certs.ca.display(),
        cert = certs.server_cert.display(),
        key = certs.server_key.display(),
    );
    let config = format!(
        "per_listener_settings true\npersistence false\nlog_dest stdout\n\
         listener {plain} 127.0.0.1\nallow_anonymous true\n\
         listener {tls} 127.0.0.1\n{tls_files}allow_anonymous false\npassword_file {passwd}\n\
         listener {mutual} 127.0.0.1\n{tls_files}require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n",
        plain = ports.plain,
        tls = ports.tls,
        mutual = ports.mutual,
        passwd = path.join("passwd").display(),
    );
    let _broker = Mosquitto::start_with_config(
        binary,
        path,
        &config,
        &[ports.plain, ports.tls, ports.mutual],
    )
    .await;
    let plain = format!("mqtt://127.0.0.1:{}", ports.plain);
    let tls = format!("mqtts://127.0.0.1:{}", ports.tls);
    let mutual = format!("mqtts://127.0.0.1:{}", ports.mutual);
    let ca = |file: &Path| format!("ca_file = {:?}\n", file.display().to_string());
    let login = |password: &str| format!("username = {USER:?}\npassword = {password:?}\n");

    // The right CA and password, both protocol versions.
    for protocol in ["5", "3.1.1"] {
        let mut app = bridge(&tls, &plain, protocol, ca(&certs.ca) + &login(PASSWORD)).await;
        publishes(&app, &plain).await;
        app.stop_bridge().await;
    }

    // Nobody listening.
    let from = logs.contents().len();
    let nowhere = format!("mqtt://127.0.0.1:{}", free_port());
    let app = bridge(&nowhere, &plain, "5", String::new()).await;
    fails_clearly(&app, from, &["cannot reach the broker", "mqtt.url"]).await;
    drop(app);

    // A CA that did not sign the broker's certificate.
    let from = logs.contents().len();
    let app = bridge(&tls, &plain, "5", ca(&certs.wrong_ca) + &login(PASSWORD)).await;
    let line = fails_clearly(&app, from, &["TLS with the broker failed", "mqtt.ca_file"]).await;
    assert!(
        line.contains("UnknownIssuer") || line.contains("certificate"),
        "the cause is named: {line}"
    );
    drop(app);

    // A wrong password.
    let from = logs.contents().len();
    let app = bridge(
        &tls,
        &plain,
        "5",
        ca(&certs.ca) + &login("wrong-password-1"),
    )
    .await;
    fails_clearly(
        &app,
        from,
        &["the broker refused the credentials", "mqtt.password"],
    )
    .await;
    drop(app);
    let from = logs.contents().len();
    let app = bridge(
        &tls,
        &plain,
        "3.1.1",
        ca(&certs.ca) + &login("wrong-password-1"),
    )
    .await;
    fails_clearly(&app, from, &["the broker refused the credentials"]).await;
    drop(app);

    // A broker that requires a client certificate: none is a TLS failure...
    let from = logs.contents().len();
    let app = bridge(&mutual, &plain, "5", ca(&certs.ca)).await;
    fails_clearly(
        &app,
        from,
        &["TLS with the broker failed", "CertificateRequired"],
    )
    .await;
    drop(app);

    // ...and the CA-signed one is accepted.
    let mut app = bridge(
        &mutual,
        &plain,
        "5",
        ca(&certs.ca)
            + &format!(
                "client_cert_file = {:?}\nclient_key_file = {:?}\n",
                certs.client_cert.display().to_string(),
                certs.client_key.display().to_string()
            ),
    )
    .await;
    publishes(&app, &plain).await;
    app.stop_bridge().await;
    let secret_leaked = logs.contents().contains(PASSWORD);
    assert!(!secret_leaked, "the MQTT password appeared in the logs");
}
