//! Build script.
//!
//! 1. Rebuilds the crate when a migration is added: `sqlx::migrate!` embeds
//!    the files under `migrations/` at compile time but does not tell cargo
//!    to watch the folder.
//! 2. Tells the tests what this machine has, so a test that cannot run is
//!    built as ignored and reported as skipped, never counted as passed:
//!    `cfg(pbx2mqtt_postgres)` when `PBX2MQTT_TEST_POSTGRES_URL` is set,
//!    `cfg(pbx2mqtt_mqtt)` when `PBX2MQTT_TEST_MQTT_URL` is (a real broker),
//!    `cfg(pbx2mqtt_mosquitto)` when a `mosquitto` binary is installed,
//!    `cfg(pbx2mqtt_tls_tools)` when `openssl` and `mosquitto_passwd` are,
//!    `cfg(pbx2mqtt_faketime)` when Debian's libfaketime is,
//!    `cfg(pbx2mqtt_browser)` when Chromium is (`CHROMIUM`, default
//!    `/usr/bin/chromium`) and a Python that imports playwright
//!    (`PBX2MQTT_TEST_BROWSER_PYTHON`, default `python3`),
//!    `cfg(pbx2mqtt_ha)` when `PBX2MQTT_TEST_HA_PYTHON` is set,
//!    `cfg(pbx2mqtt_root)` when the build runs as root (the full-disk test
//!    mounts a tmpfs).

use std::path::Path;

/// Where the broker-restart test looks for Mosquitto (Debian puts it in
/// /usr/sbin).
const MOSQUITTO_PATHS: [&str; 3] = [
    "/usr/sbin/mosquitto",
    "/usr/local/sbin/mosquitto",
    "/usr/bin/mosquitto",
];

/// Where the TLS test looks for its tools.
const OPENSSL_PATHS: [&str; 2] = ["/usr/bin/openssl", "/usr/local/bin/openssl"];
const MOSQUITTO_PASSWD_PATHS: [&str; 2] = [
    "/usr/bin/mosquitto_passwd",
    "/usr/local/bin/mosquitto_passwd",
];

/// Where Debian puts the multi-threaded libfaketime.
const FAKETIME_PATHS: [&str; 2] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
];

/// The first of `paths` that exists, watched either way (so an install is
/// noticed at the next build).
fn installed(paths: &[&str]) -> Option<String> {
    let found = paths.iter().find(|path| Path::new(path).exists());
    match found {
        Some(path) => println!("cargo:rerun-if-changed={path}"),
        None => {
            for path in paths {
                if let Some(dir) = Path::new(path).parent().filter(|dir| dir.is_dir()) {
                    println!("cargo:rerun-if-changed={}", dir.display());
                }
            }
        }
    }
    found.map(|path| (*path).to_owned())
}

/// A non-empty environment variable, watched.
fn env_set(name: &str) -> Option<String> {
    println!("cargo:rerun-if-env-changed={name}");
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// Sets `cfg(name)` when `present`.
fn tell(name: &str, present: bool) {
    println!("cargo::rustc-check-cfg=cfg({name})");
    if present {
        println!("cargo::rustc-cfg={name}");
    }
}

fn main() {
    println!("cargo:rerun-if-changed=migrations");

    tell(
        "pbx2mqtt_postgres",
        env_set("PBX2MQTT_TEST_POSTGRES_URL").is_some(),
    );
    tell("pbx2mqtt_mqtt", env_set("PBX2MQTT_TEST_MQTT_URL").is_some());
    tell("pbx2mqtt_mosquitto", installed(&MOSQUITTO_PATHS).is_some());
    tell(
        "pbx2mqtt_tls_tools",
        installed(&OPENSSL_PATHS).is_some() && installed(&MOSQUITTO_PASSWD_PATHS).is_some(),
    );
    tell("pbx2mqtt_faketime", installed(&FAKETIME_PATHS).is_some());
    tell("pbx2mqtt_ha", env_set("PBX2MQTT_TEST_HA_PYTHON").is_some());
    let chromium = env_set("CHROMIUM").unwrap_or_else(|| "/usr/bin/chromium".to_owned());
    let python = env_set("PBX2MQTT_TEST_BROWSER_PYTHON").unwrap_or_else(|| "python3".to_owned());
    let browser = installed(&[chromium.as_str()]).is_some()
        && std::process::Command::new(&python)
            .args(["-c", "import playwright.sync_api"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
    tell("pbx2mqtt_browser", browser);
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0");
    tell("pbx2mqtt_root", root);
}
