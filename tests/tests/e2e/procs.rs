//! The service binaries as real child processes, for fault tests that kill, signal and restart
//! them: what a crash or a rolling deploy looks like, which in-process services cannot show.
//!
//! The binaries are the ones cargo built next to this test executable (`target/debug/`);
//! `scripts/test.sh` builds them. Each process logs (stdout and stderr) to a file in its own
//! temp dir, printed when the test panics.

use std::{
    fs::File,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use testkit::{NatsServer, eventually};
use tokio::process::{Child, Command};

/// How long a process may take to answer `/readyz` with 200.
const READY_WITHIN: Duration = Duration::from_secs(90);

/// A service binary running as a child process (SIGKILLed on drop).
pub struct Proc {
    name: String,
    child: Child,
    addr: SocketAddr,
    log_path: PathBuf,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// `target/debug/<name>`, next to the `deps/` directory holding this test executable.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|deps| {
            if deps.ends_with("deps") {
                deps.parent()
            } else {
                Some(deps)
            }
        })
        .expect("test executable has a directory");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: build the service binaries first (`cargo build --workspace --bins`; \
         scripts/test.sh does it)",
        path.display()
    );
    path
}

/// A loopback port that was free a moment ago (bound, then released).
///
/// Racy in principle; a clash shows up as the process exiting at start with a bind error in its log.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

impl Proc {
    /// Starts a `dispatcher` against `nats` and waits until it is ready.
    ///
    /// Short timeouts keep fault tests fast: a 3 s HTTP timeout makes the deliveries consumer's
    /// ack wait 9 s (three times the timeout), so work a killed process held comes back in 9 s.
    /// `env` is applied last and can override anything.
    pub async fn dispatcher(nats: &NatsServer, env: &[(&str, &str)]) -> Proc {
        Proc::dispatcher_at(&nats.url(), env).await
    }

    /// [`Proc::dispatcher`] against the NATS servers of `nats_url` (comma-separated).
    pub async fn dispatcher_at(nats_url: &str, env: &[(&str, &str)]) -> Proc {
        let addr = free_addr();
        let mut all = vec![
            ("WEBHOOKS_METRICS_LISTEN", addr.to_string()),
            ("WEBHOOKS_HTTP_TIMEOUT", "3s".to_owned()),
            ("WEBHOOKS_SHUTDOWN_GRACE", "10s".to_owned()),
        ];
        all.extend(env.iter().map(|(k, v)| (*k, (*v).to_owned())));
        Proc::start("dispatcher", nats_url, addr, &all).await
    }

    /// Starts an `ingest` against `nats` (admin token [`ADMIN_TOKEN`](crate::helpers::ADMIN_TOKEN),
    /// listening on a free loopback port) and waits until it is ready. `env` is applied last.
    pub async fn ingest(nats: &NatsServer, env: &[(&str, &str)]) -> Proc {
        Proc::ingest_at(&nats.url(), env).await
    }

    /// [`Proc::ingest`] against the NATS servers of `nats_url` (comma-separated).
    pub async fn ingest_at(nats_url: &str, env: &[(&str, &str)]) -> Proc {
        let addr = free_addr();
        let mut all = vec![
            ("WEBHOOKS_LISTEN", addr.to_string()),
            (
                "WEBHOOKS_ADMIN_TOKEN",
                crate::helpers::ADMIN_TOKEN.to_owned(),
            ),
        ];
        all.extend(env.iter().map(|(k, v)| (*k, (*v).to_owned())));
        Proc::start("ingest", nats_url, addr, &all).await
    }

    /// The address it serves HTTP on (the API for ingest, `/metrics` for a dispatcher).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn start(name: &str, nats_url: &str, addr: SocketAddr, env: &[(&str, String)]) -> Proc {
        let dir = tempfile::Builder::new()
            .prefix(&format!("e2e-{name}-"))
            .tempdir()
            .expect("temp dir");
        let log_path = dir.path().join(format!("{name}.log"));
        let log = File::create(&log_path).expect("log file");
        let mut command = Command::new(binary(name));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("NATS_URL", nats_url)
            .env("WEBHOOKS_ALLOW_HTTP", "true")
            .env("WEBHOOKS_ALLOW_PRIVATE_TARGETS", "127.0.0.0/8")
            .env("WEBHOOKS_EVENTS_MAX_BYTES", (256 * 1024 * 1024).to_string())
            .env("WEBHOOKS_MASTER_KEY", crate::helpers::master_key_base64())
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log handle")))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let child = command.spawn().expect("spawn service binary");
        let mut proc = Proc {
            name: format!("{name}[{}]", child.id().unwrap_or_default()),
            child,
            addr,
            log_path,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("http client"),
            _dir: dir,
        };
        proc.wait_ready().await;
        proc
    }

    async fn wait_ready(&mut self) {
        let url = format!("http://{}/readyz", self.addr);
        let result = eventually(READY_WITHIN, &format!("{} /readyz", self.name), || {
            let exited = self.child.try_wait().expect("poll child");
            let request = self.http.get(&url).send();
            async move {
                if let Some(status) = exited {
                    return Some(Err(status));
                }
                match request.await {
                    Ok(r) if r.status() == reqwest::StatusCode::OK => Some(Ok(())),
                    _ => None,
                }
            }
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(status)) => panic!(
                "{} exited during start with {status}; log:\n{}",
                self.name,
                self.log()
            ),
            Err(e) => panic!("{e}; {} log:\n{}", self.name, self.log()),
        }
    }

    /// The process id; `None` once reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Everything the process has logged so far.
    pub fn log(&self) -> String {
        match std::fs::read(&self.log_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("<cannot read {}: {e}>", self.log_path.display()),
        }
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let response = self
            .http
            .get(format!("http://{}/metrics", self.addr))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{} /metrics: {e}", self.name));
        assert_eq!(
            response.status(),
            reqwest::StatusCode::OK,
            "{} /metrics",
            self.name
        );
        response.text().await.expect("metrics body")
    }

    /// A crash: SIGKILL, no drain; waits until the process is gone.
    pub async fn sigkill(&mut self) -> ExitStatus {
        self.child.start_kill().expect("SIGKILL");
        self.wait_exit(Duration::from_secs(10)).await
    }

    /// Asks for a graceful stop, as an orchestrator does; returns at once.
    pub async fn sigterm(&self) {
        let pid = self.pid().expect("process still running");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid}: {status}");
    }

    /// Waits for the process to exit, failing (with its log) after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.expect("wait for child"),
            Err(_) => panic!(
                "{} still running after {within:?}; log:\n{}",
                self.name,
                self.log()
            ),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- {} log -----\n{}", self.name, self.log());
        }
    }
}

/// The sum of a Prometheus counter's samples whose labels include every one of `labels`
/// (e.g. `outcome="succeeded"`); 0 when there is none.
pub fn counter(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let have: Vec<&str> = label_text.split(',').map(str::trim).collect();
            labels
                .iter()
                .all(|l| have.contains(l))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

#[test]
fn counter_sums_the_matching_samples() {
    let text = "# HELP webhooks_deliveries_total Deliveries.\n\
                # TYPE webhooks_deliveries_total counter\n\
                webhooks_deliveries_total{outcome=\"succeeded\"} 7\n\
                webhooks_deliveries_total{outcome=\"failed\",class=\"retryable\"} 3\n\
                webhooks_deliveries_total{class=\"x\",outcome=\"succeeded\"} 2\n\
                webhooks_deliveries_total_other{outcome=\"succeeded\"} 100\n";
    assert_eq!(
        counter(
            text,
            "webhooks_deliveries_total",
            &["outcome=\"succeeded\""]
        ),
        9.0
    );
    assert_eq!(counter(text, "webhooks_deliveries_total", &[]), 12.0);
    assert_eq!(counter(text, "nope", &[]), 0.0);
}
