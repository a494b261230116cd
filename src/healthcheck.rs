//! `pbx2mqtt healthcheck`: one GET, exit 0 when it answers 2xx, else 1.
//! For container HEALTHCHECKs (the image has no shell and no curl): the
//! Dockerfile asks the bridge's `/healthz`, the compose file the
//! simulator's control API.

use std::time::Duration;

use anyhow::{bail, Context};

use crate::config::{Config, Purpose};

/// `pbx2mqtt healthcheck` arguments.
#[derive(Debug, clap::Args)]
pub struct HealthcheckArgs {
    /// The URL to GET [default: /healthz on the configured `http.listen`]
    #[arg(long)]
    pub url: Option<String>,
    /// How long to wait for the answer.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

impl HealthcheckArgs {
    /// Runs the check; `config` is the configuration file, if any.
    pub async fn run(&self, config: Option<&std::path::Path>) -> anyhow::Result<()> {
        let url = match &self.url {
            Some(url) => url.clone(),
            None => {
                let loaded = Config::load_for(config, Purpose::History)?;
                healthz_url(&loaded.config.http.listen)?
            }
        };
        let client = reqwest::Client::builder()
            .timeout(self.timeout)
            .build()
            .context("cannot build the HTTP client")?;
        let response = client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}: no answer"))?;
        let status = response.status();
        if !status.is_success() {
            bail!("GET {url}: {status}");
        }
        println!("ok    GET {url}: {status}");
        Ok(())
    }
}

/// `/healthz` on the address the bridge listens on; a wildcard address
/// (`0.0.0.0`, `[::]`) is asked on loopback.
pub fn healthz_url(listen: &str) -> anyhow::Result<String> {
    if listen.trim().is_empty() {
        bail!("http.listen is empty: the HTTP server is off, so there is nothing to check (give --url)");
    }
    let address: std::net::SocketAddr = listen
        .parse()
        .with_context(|| format!("http.listen {listen:?} is not an address:port"))?;
    let host = match address.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "[::1]".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        std::net::IpAddr::V4(ip) => ip.to_string(),
    };
    Ok(format!("http://{host}:{}/healthz", address.port()))
}

#[cfg(test)]
mod tests {
    use super::healthz_url;

    #[test]
    fn a_wildcard_listen_address_is_asked_on_loopback() {
        assert_eq!(
            healthz_url("0.0.0.0:8080").unwrap(),
            "http://127.0.0.1:8080/healthz"
        );
        assert_eq!(
            healthz_url("[::]:9000").unwrap(),
            "http://[::1]:9000/healthz"
        );
        assert_eq!(
            healthz_url("10.0.0.5:80").unwrap(),
            "http://10.0.0.5:80/healthz"
        );
        assert!(healthz_url("").is_err());
        assert!(healthz_url("localhost").is_err());
    }
}
