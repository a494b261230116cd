//! Integration tests: the real bridge against the project's simulator over
//! HTTP, a real MQTT broker (Mosquitto at `PBX2MQTT_TEST_MQTT_URL`, else the
//! embedded rumqttd) and a real SQLite file. One binary, so it links once.

mod helpers;
mod mosquitto;
mod mqtt_client;
mod process;

mod broker_restart;
mod cli;
mod clock_jump;
mod cluster;
mod command_flood;
mod commands;
mod commands_end_to_end;
mod demo;
mod deploy;
mod fault_proxy;
mod fault_suite;
mod faults;
mod grafana;
mod homeassistant;
mod mqtt_session;
mod mqtt_tls;
mod pages;
mod pipeline;
mod report_limits;
mod restart;
mod secrets;
