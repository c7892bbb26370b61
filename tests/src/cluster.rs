//! A throwaway three-node (or n-node) NATS JetStream cluster on loopback, for tests that lose a
//! node: real `nats-server` processes with routes to each other, each with its own store.
//!
//! Ports are picked free (bound, then released) before the start, because every node's config
//! names every other node's route port. Readiness is each node's own `/healthz`, which answers
//! 200 only once JetStream is up and the node knows the cluster's meta leader.

use std::{
    fs::OpenOptions,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use tempfile::TempDir;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::{Instant, sleep, timeout},
};

/// How long the whole cluster may take to form.
const FORM_DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

/// One node of a [`NatsCluster`].
struct Node {
    name: String,
    client_port: u16,
    monitor_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A NATS cluster whose nodes can be SIGKILLed one by one.
pub struct NatsCluster {
    nodes: Vec<Node>,
    bin: PathBuf,
    // Dropped last, after `Drop::drop` killed the nodes.
    _dir: TempDir,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl NatsCluster {
    /// Starts `n` nodes named `n0`, `n1`, ... routed to each other, and waits until every node
    /// reports JetStream healthy with a meta leader.
    pub async fn start(n: usize) -> anyhow::Result<NatsCluster> {
        let bin = crate::nats::binary();
        let dir = tempfile::Builder::new()
            .prefix("testkit-nats-cluster-")
            .tempdir()
            .context("temp dir for the cluster")?;
        let ports = (0..n)
            .map(|_| Ok((free_port()?, free_port()?, free_port()?)))
            .collect::<anyhow::Result<Vec<(u16, u16, u16)>>>()?;
        let routes = ports
            .iter()
            .map(|(_, route, _)| format!("\"nats-route://127.0.0.1:{route}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut nodes = Vec::with_capacity(n);
        for (i, (client, route, monitor)) in ports.into_iter().enumerate() {
            let name = format!("n{i}");
            let store = dir.path().join(&name);
            let config = dir.path().join(format!("{name}.conf"));
            let text = format!(
                "server_name: \"{name}\"\n\
                 listen: \"127.0.0.1:{client}\"\n\
                 http: \"127.0.0.1:{monitor}\"\n\
                 jetstream {{\n  store_dir: \"{}\"\n}}\n\
                 cluster {{\n  name: \"testkit\"\n  listen: \"127.0.0.1:{route}\"\n  routes: [{routes}]\n}}\n",
                store.display()
            );
            std::fs::write(&config, text).with_context(|| format!("write {}", config.display()))?;
            nodes.push(Node {
                log: dir.path().join(format!("{name}.log")),
                name,
                client_port: client,
                monitor_port: monitor,
                config,
                child: None,
            });
        }
        let mut cluster = NatsCluster {
            nodes,
            bin,
            _dir: dir,
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        if let Err(e) = cluster.wait_formed().await {
            let logs: Vec<String> = (0..n)
                .map(|i| format!("--- {}:\n{}", cluster.nodes[i].name, cluster.log(i)))
                .collect();
            bail!("{e:#}\n{}", logs.join("\n"));
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("open {}", node.log.display()))?;
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| crate::nats::spawn_error(&self.bin, e))?;
        node.child = Some(child);
        Ok(())
    }

    async fn wait_formed(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + FORM_DEADLINE;
        for i in 0..self.nodes.len() {
            loop {
                if let Some(child) = self.nodes[i].child.as_mut()
                    && let Some(status) = child.try_wait()?
                {
                    bail!("{} exited during start with {status}", self.nodes[i].name);
                }
                if healthy(self.nodes[i].monitor_port).await {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!(
                        "{} not healthy (JetStream with a meta leader) within {FORM_DEADLINE:?}",
                        self.nodes[i].name
                    );
                }
                sleep(POLL).await;
            }
        }
        Ok(())
    }

    /// Every node's client URL, comma-separated, as `NATS_URL` takes them.
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// The index of the node called `name` (`n0`, `n1`, ...), as stream info names leaders.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Whether node `i` is running.
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// SIGKILLs node `i` and waits until it is gone; its store stays.
    pub async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let Some(mut child) = self.nodes[i].child.take() else {
            return Ok(());
        };
        child.kill().context("kill nats-server")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                bail!("{} did not exit after SIGKILL", self.nodes[i].name);
            }
            sleep(POLL).await;
        }
        Ok(())
    }

    /// Node `i`'s log so far, for a failing test.
    pub fn log(&self, i: usize) -> String {
        read(&self.nodes[i].log)
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn read(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Whether the node's `/healthz` answers 200: JetStream enabled, current, with a meta leader.
async fn healthy(monitor_port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", monitor_port)).await.ok()?;
        stream
            .write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        let text = String::from_utf8_lossy(&answer);
        text.lines()
            .next()
            .is_some_and(|status| status.contains(" 200 "))
            .then_some(())
    };
    matches!(timeout(Duration::from_secs(2), attempt).await, Ok(Some(())))
}
