//! pbx2mqtt bridges a call center's telephony to MQTT: it polls agent status
//! from the Belfabriek Agent Availability API, publishes every transition,
//! manages TRiNG call queues from MQTT commands, and records status history
//! for reports. See `ARCHITECTURE.md` for the map.

pub mod app;
pub mod belfabriek;
#[cfg(feature = "embedded-broker")]
pub mod broker;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod demo;
pub mod healthcheck;
pub mod history;
pub mod homeassistant;
pub mod http;
pub mod latest;
pub mod localtime;
pub mod logging;
pub mod malloc;
pub mod metrics;
pub mod model;
pub mod mqtt;
pub mod poller;
pub mod preflight;
pub mod report;
pub mod secret;
pub mod simulator;
pub mod status;
pub mod store;
pub mod text;
pub mod tring;
pub mod xmlrpc;
