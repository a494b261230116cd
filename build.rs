//! Build script.
//!
//! 1. Rebuilds the crate when a migration is added: `sqlx::migrate!` embeds
//!    the files under `migrations/` at compile time but does not tell cargo
//!    to watch the folder.
//! 2. Tells the tests what this machine has, so a test that cannot run is
//!    built as ignored and reported as skipped, never counted as passed:
//!    `cfg(pbx2mqtt_postgres)` when `PBX2MQTT_TEST_POSTGRES_URL` is set,
//!    `cfg(pbx2mqtt_mosquitto)` when a `mosquitto` binary is installed.

use std::path::Path;

/// Where the broker-restart test looks for Mosquitto (Debian puts it in
/// /usr/sbin).
const MOSQUITTO_PATHS: [&str; 3] = [
    "/usr/sbin/mosquitto",
    "/usr/local/sbin/mosquitto",
    "/usr/bin/mosquitto",
];

fn main() {
    println!("cargo:rerun-if-changed=migrations");

    println!("cargo::rustc-check-cfg=cfg(pbx2mqtt_postgres)");
    println!("cargo:rerun-if-env-changed=PBX2MQTT_TEST_POSTGRES_URL");
    if std::env::var_os("PBX2MQTT_TEST_POSTGRES_URL").is_some_and(|url| !url.is_empty()) {
        println!("cargo::rustc-cfg=pbx2mqtt_postgres");
    }

    println!("cargo::rustc-check-cfg=cfg(pbx2mqtt_mosquitto)");
    match MOSQUITTO_PATHS.iter().find(|path| Path::new(path).exists()) {
        Some(path) => {
            println!("cargo:rerun-if-changed={path}");
            println!("cargo::rustc-cfg=pbx2mqtt_mosquitto");
        }
        None => {
            // Notice an install: watch the directories that exist.
            for path in MOSQUITTO_PATHS {
                if let Some(dir) = Path::new(path).parent().filter(|dir| dir.is_dir()) {
                    println!("cargo:rerun-if-changed={}", dir.display());
                }
            }
        }
    }
}
