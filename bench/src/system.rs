//! A fresh system per run: nats-server (JetStream, file storage, its own store directory,
//! non-default ports), ingest and one dispatcher, from release binaries; plus `/proc` readings.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;

pub const NATS_PORT: u16 = 14_422;
pub const NATS_MONITOR_PORT: u16 = 18_422;
pub const INGEST_PORT: u16 = 18_480;
pub const DISPATCHER_PORT: u16 = 18_490;
pub const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";

pub struct Bins {
    pub nats: PathBuf,
    pub ingest: PathBuf,
    pub dispatcher: PathBuf,
}

pub struct System {
    pub procs: Vec<(&'static str, Child)>,
    pub api: String,
}

fn spawn(cmd: &mut Command, dir: &Path, name: &str) -> anyhow::Result<Child> {
    let log = File::create(dir.join(format!("{name}.log")))?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {name}"))
}

async fn wait_ready(client: &reqwest::Client, url: &str, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{what} did not become ready at {url}")
}

impl System {
    /// Starts everything in `dir` (wiped first; logs stay there, the NATS store is `dir/nats`).
    /// `extra` is added to both services' environment (a scenario's own settings).
    pub async fn start(
        bins: &Bins,
        dir: &Path,
        client: &reqwest::Client,
        extra: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let mut sys = System {
            procs: Vec::new(),
            api: format!("http://127.0.0.1:{INGEST_PORT}"),
        };
        match sys.start_in(bins, dir, client, extra).await {
            Ok(()) => Ok(sys),
            Err(e) => {
                sys.stop().await;
                Err(e)
            }
        }
    }

    async fn start_in(
        &mut self,
        bins: &Bins,
        dir: &Path,
        client: &reqwest::Client,
        extra: &[(&str, String)],
    ) -> anyhow::Result<()> {
        let sys = self;
        // A second benchmark on the same ports would otherwise pass every readiness check on
        // the first one's services, and wipe its store below.
        for port in [NATS_PORT, NATS_MONITOR_PORT, INGEST_PORT, DISPATCHER_PORT] {
            std::net::TcpListener::bind(("127.0.0.1", port))
                .with_context(|| format!("port {port} is in use: is another benchmark running?"))?;
        }
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let mut nats = Command::new(&bins.nats);
        nats.args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(NATS_PORT.to_string())
            .arg("-m")
            .arg(NATS_MONITOR_PORT.to_string())
            .arg("-sd")
            .arg(dir.join("nats"));
        // `BENCH_NATS_SYNC=always`: JetStream fsyncs every write before its PubAck (the
        // default flushes every 2 minutes), to measure what that durability costs.
        if let Ok(sync) = std::env::var("BENCH_NATS_SYNC") {
            let conf = dir.join("nats.conf");
            std::fs::write(
                &conf,
                format!("jetstream {{\n  sync_interval: {sync}\n}}\n"),
            )?;
            nats.arg("-c").arg(conf);
        }
        let nats = spawn(&mut nats, dir, "nats")?;
        sys.procs.push(("nats", nats));
        wait_ready(
            client,
            &format!("http://127.0.0.1:{NATS_MONITOR_PORT}/healthz?js-enabled-only=true"),
            "nats-server",
        )
        .await?;
        sys.check_alive()?;

        let master = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
        let log = std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "info".into());
        let env = |cmd: &mut Command| {
            cmd.env("NATS_URL", format!("nats://127.0.0.1:{NATS_PORT}"))
                .env("WEBHOOKS_ALLOW_HTTP", "true")
                .env("WEBHOOKS_ALLOW_PRIVATE_TARGETS", "127.0.0.0/8")
                .env("WEBHOOKS_ADMIN_TOKEN", ADMIN_TOKEN)
                .env("WEBHOOKS_MASTER_KEY", &master)
                .env("WEBHOOKS_TENANT_RATE_LIMIT", "100000000")
                // The streams' byte caps must fit in JetStream's share of the disk (75% of
                // what is free); 1 GiB of events is far more than any scenario stores.
                .env("WEBHOOKS_EVENTS_MAX_BYTES", "1073741824")
                .env("RUST_LOG", &log)
                .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
                .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
            for (name, value) in extra {
                cmd.env(name, value);
            }
        };
        let mut ingest = Command::new(&bins.ingest);
        env(&mut ingest);
        ingest.env("WEBHOOKS_LISTEN", format!("127.0.0.1:{INGEST_PORT}"));
        sys.procs
            .push(("ingest", spawn(&mut ingest, dir, "ingest")?));
        wait_ready(client, &format!("{}/readyz", sys.api), "ingest").await?;
        sys.check_alive()?;
        // The dispatcher starts after ingest so the streams exist (either may create them).
        let mut dispatcher = Command::new(&bins.dispatcher);
        env(&mut dispatcher);
        dispatcher.env(
            "WEBHOOKS_METRICS_LISTEN",
            format!("127.0.0.1:{DISPATCHER_PORT}"),
        );
        sys.procs
            .push(("dispatcher", spawn(&mut dispatcher, dir, "dispatcher")?));
        wait_ready(
            client,
            &format!("http://127.0.0.1:{DISPATCHER_PORT}/readyz"),
            "dispatcher",
        )
        .await?;
        sys.check_alive()?;
        Ok(())
    }

    /// Fails if a started process has already exited (a port taken, a bad setting).
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for (name, child) in &mut self.procs {
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited during start ({status}); see its log");
            }
        }
        Ok(())
    }

    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        self.procs.iter().map(|(n, c)| (*n, c.id())).collect()
    }

    /// SIGTERM in reverse start order, SIGKILL after 10 s.
    pub async fn stop(mut self) {
        for (_, child) in self.procs.iter_mut().rev() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Clock ticks per second for `/proc/<pid>/stat`.
pub fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of `pid` (or `self`) in seconds.
pub fn cpu_seconds(pid: &str, tck: f64) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / tck)
}

/// Peak resident set (VmHWM) of `pid` in MiB.
pub fn peak_rss_mib(pid: &str) -> anyhow::Result<f64> {
    status_mib(pid, "VmHWM:")
}

/// Resident set now (VmRSS) of `pid` in MiB.
pub fn rss_mib(pid: &str) -> anyhow::Result<f64> {
    status_mib(pid, "VmRSS:")
}

/// A `kB` field of `/proc/<pid>/status`, in MiB.
fn status_mib(pid: &str, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field}"))?;
    let kib: f64 = line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("malformed {field}"))?
        .parse()?;
    Ok(kib / 1024.0)
}
