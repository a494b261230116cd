//! A private Mosquitto process for tests that need what the shared test
//! broker cannot give: a restart, a TLS listener, a password file, a cut
//! connection ([`Gate`]). Tests using it are built ignored where the binary
//! is missing (`cfg(pbx2mqtt_mosquitto)`, see `build.rs`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::helpers::SOON;

/// The installed `mosquitto` binary, if any (Debian puts it in /usr/sbin).
pub fn mosquitto_binary() -> Option<&'static str> {
    [
        "/usr/sbin/mosquitto",
        "/usr/local/sbin/mosquitto",
        "/usr/bin/mosquitto",
    ]
    .into_iter()
    .find(|path| Path::new(path).exists())
}

/// The binary, for a test built with `cfg(pbx2mqtt_mosquitto)`.
pub fn required_binary() -> &'static str {
    mosquitto_binary().expect("mosquitto was installed when the tests were built but is not now")
}

pub use crate::process::free_port;

/// A running Mosquitto, killed when dropped.
pub struct Mosquitto(Child);

impl Mosquitto {
    /// Mosquitto on `port` (loopback), default settings, no persistence.
    pub async fn start(binary: &str, port: u16) -> Mosquitto {
        let child = Command::new(binary)
            .args(["-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        wait_listening(&[port]).await;
        Mosquitto(child)
    }

    /// Mosquitto with `config` written to `dir/mosquitto.conf`, once every
    /// port in `ports` accepts connections. Its log goes to
    /// `dir/mosquitto.log`.
    pub async fn start_with_config(
        binary: &str,
        dir: &Path,
        config: &str,
        ports: &[u16],
    ) -> Mosquitto {
        let path = dir.join("mosquitto.conf");
        std::fs::write(&path, config).expect("write mosquitto.conf");
        let log = std::fs::File::create(dir.join("mosquitto.log")).expect("mosquitto.log");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&path)
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start mosquitto");
        let mut mosquitto = Mosquitto(child);
        let deadline = tokio::time::Instant::now() + SOON;
        for port in ports {
            let addr = SocketAddr::from(([127, 0, 0, 1], *port));
            while TcpStream::connect(addr).await.is_err() {
                if let Ok(Some(status)) = mosquitto.0.try_wait() {
                    panic!(
                        "mosquitto exited ({status}): {}",
                        std::fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default()
                    );
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "mosquitto did not listen on {port}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        mosquitto
    }

    /// Stops it with SIGTERM (Mosquitto then saves its persistence file)
    /// and waits for it to be gone.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }

    /// Kills it and waits for it to be gone.
    pub fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_listening(ports: &[u16]) {
    let deadline = tokio::time::Instant::now() + SOON;
    for port in ports {
        let addr = SocketAddr::from(([127, 0, 0, 1], *port));
        while TcpStream::connect(addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A TCP proxy to the broker that accepts connections only while open.
/// Closing it also cuts the connections it carries.
#[derive(Clone)]
pub struct Gate {
    open: Arc<AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Gate {
    pub async fn start(target: u16) -> (Gate, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let gate = Gate {
            open: Arc::new(AtomicBool::new(true)),
            generation: Arc::new(tokio::sync::watch::channel(0).0),
        };
        let state = gate.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !state.open.load(Ordering::SeqCst) {
                    continue; // dropped: the bridge sees a refused/closed connection
                }
                let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let mut cut = state.generation.subscribe();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        (gate, port)
    }

    pub fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// Certificates for a TLS listener, made with the `openssl` command in
/// `dir`: a CA, a server certificate for 127.0.0.1/localhost signed by it,
/// a client certificate (CN `bridge-client`) signed by it, and a second,
/// unrelated CA (the "wrong" one).
pub struct Certificates {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub wrong_ca: PathBuf,
}

/// The `openssl` command, if installed.
pub fn openssl_binary() -> Option<&'static str> {
    ["/usr/bin/openssl", "/usr/local/bin/openssl"]
        .into_iter()
        .find(|path| Path::new(path).exists())
}

impl Certificates {
    /// Makes everything in `dir` with `openssl`.
    pub fn make(openssl: &str, dir: &Path) -> Certificates {
        let run = |args: &[&str]| {
            let output = Command::new(openssl)
                .args(args)
                .current_dir(dir)
                .output()
                .expect("run openssl");
            assert!(
                output.status.success(),
                "openssl {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        for (name, subject) in [("ca", "/CN=pbx2mqtt test CA"), ("wrong-ca", "/CN=other CA")] {
            run(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                subject,
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
        }
        std::fs::write(
            dir.join("server.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("client.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
             extendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        for (name, subject) in [("server", "/CN=localhost"), ("client", "/CN=bridge-client")] {
            run(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                subject,
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ]);
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ]);
        }
        Certificates {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            wrong_ca: dir.join("wrong-ca.pem"),
        }
    }
}
