//! Spawning the whole system in-process against a real nats-server, and a small API client.

use std::{net::SocketAddr, sync::OnceLock, time::Duration};

use base64::Engine as _;
use common::{
    config::SharedSettings,
    crypto::{Key, MasterKeys},
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::NatsServer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// The master key of this test process: random, made once, shared by every service a test
/// starts, in-process or as a child process (`WEBHOOKS_MASTER_KEY`), so they open each other's
/// sealed secrets.
fn master_key_bytes() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
        bytes
    })
}

/// The test master key as `WEBHOOKS_MASTER_KEY` spells it.
pub fn master_key_base64() -> String {
    base64::engine::general_purpose::STANDARD.encode(master_key_bytes())
}

/// The test master keys: the shared random key, no previous ones.
pub fn master_keys() -> MasterKeys {
    MasterKeys::new(Key::from_bytes(master_key_bytes()), Vec::new())
}

/// Settings every test service shares: the test NATS, http and loopback allowed, the test
/// master key.
pub fn shared(nats: &NatsServer) -> SharedSettings {
    let mut s = SharedSettings {
        nats_url: nats.url(),
        master_keys: master_keys(),
        ..Default::default()
    };
    s.url_policy.allow_http = true;
    s.url_policy.allowed_private = vec!["127.0.0.0/8".parse().expect("cidr")];
    s.events_max_bytes = 256 * 1024 * 1024;
    s
}

/// A running service: cancelled (and so drained) on drop.
pub struct Running {
    pub addr: SocketAddr,
    pub token: CancellationToken,
    pub handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Cancels and waits for the drain to finish.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.token.cancel();
        match self.handle.take() {
            Some(handle) => handle.await?,
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

pub async fn spawn_ingest(nats: &NatsServer) -> Running {
    spawn_ingest_with(nats, |_| {}).await
}

pub async fn spawn_dispatcher(nats: &NatsServer) -> Running {
    spawn_dispatcher_with(nats, |_| {}).await
}

pub async fn spawn_dispatcher_with(
    nats: &NatsServer,
    tweak: impl FnOnce(&mut dispatcher::Settings),
) -> Running {
    let mut settings = dispatcher::Settings::new(shared(nats));
    settings.metrics_listen = "127.0.0.1:0".parse().expect("addr");
    settings.http_timeout = Duration::from_secs(5);
    settings.ack_wait = Duration::from_secs(15);
    settings.shutdown_grace = Duration::from_secs(5);
    tweak(&mut settings);
    let app = dispatcher::App::build(settings)
        .await
        .expect("dispatcher builds");
    let addr = app.local_addr().expect("addr");
    let token = CancellationToken::new();
    let handle = tokio::spawn(app.run(token.clone()));
    Running {
        addr,
        token,
        handle: Some(handle),
    }
}

/// A system whose dispatcher uses `tweak`ed settings.
pub async fn system_with(tweak: impl FnOnce(&mut dispatcher::Settings)) -> System {
    let mut sys = System::start().await;
    sys.restart_dispatcher(tweak).await;
    sys
}

/// NATS, one ingest and one dispatcher, and an HTTP client for the API.
pub struct System {
    pub ingest: Running,
    pub dispatcher: Option<Running>,
    pub http: reqwest::Client,
    // Dropped last: the services stop before the server does.
    pub nats: NatsServer,
}

impl System {
    pub async fn start() -> System {
        testkit::init_test_tracing();
        let nats = NatsServer::start().await.expect("nats-server starts");
        let ingest = spawn_ingest(&nats).await;
        let dispatcher = Some(spawn_dispatcher(&nats).await);
        System {
            ingest,
            dispatcher,
            http: reqwest::Client::new(),
            nats,
        }
    }

    /// Stops the dispatcher (draining it) and starts a new one with `tweak`ed settings.
    pub async fn restart_dispatcher(&mut self, tweak: impl FnOnce(&mut dispatcher::Settings)) {
        if let Some(d) = self.dispatcher.take() {
            d.stop().await.expect("the dispatcher stops");
        }
        self.dispatcher = Some(spawn_dispatcher_with(&self.nats, tweak).await);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.ingest.addr, path)
    }

    /// Any call; answers the status and the JSON body (`Null` when there is none).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, self.url(path))
            .bearer_auth(bearer);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let bytes = resp.bytes().await.expect("body read");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, key, Some(body)).await
    }

    pub async fn get(&self, path: &str, key: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, key, None).await
    }

    /// Issues an API key for `tenant` through the admin API.
    pub async fn tenant_key(&self, tenant: &str) -> String {
        let (status, body) = self
            .post(
                &format!("/v1/admin/tenants/{tenant}/api-keys"),
                ADMIN_TOKEN,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["key"].as_str().expect("key").to_owned()
    }

    /// Creates a subscription; answers its id and secret.
    pub async fn subscribe(&self, key: &str, body: Value) -> (String, String) {
        let (status, sub) = self.post("/v1/subscriptions", key, body).await;
        assert_eq!(status, StatusCode::CREATED, "{sub}");
        (
            sub["id"].as_str().expect("id").to_owned(),
            sub["secret"].as_str().expect("secret").to_owned(),
        )
    }

    /// Posts one event and asserts it was accepted; answers its id.
    pub async fn send_event(&self, key: &str, body: Value) -> String {
        let (status, accepted) = self.post("/v1/events", key, body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
        accepted["id"].as_str().expect("id").to_owned()
    }
}

/// A valid event of `event_type` (the catalog's example data) from `agent`.
pub fn event(event_type: &str, agent: &str) -> Value {
    let spec = proto::catalog::find(event_type).expect("known type");
    json!({
        "type": event_type,
        "agent_id": agent,
        "call_id": "call_1",
        "data": proto::catalog::example(spec),
    })
}

pub const SOON: Duration = Duration::from_secs(10);
pub const QUIET: Duration = Duration::from_millis(1500);

/// An ingest on 127.0.0.1:0 whose settings `tweak` adjusts first (a strict URL policy, say).
pub async fn spawn_ingest_with(
    nats: &NatsServer,
    tweak: impl FnOnce(&mut ingest::Settings),
) -> Running {
    let mut settings =
        ingest::Settings::new(shared(nats), ingest::config::Secret::new(ADMIN_TOKEN));
    settings.listen = "127.0.0.1:0".parse().expect("addr");
    tweak(&mut settings);
    let app = ingest::App::build(settings).await.expect("ingest builds");
    let addr = app.local_addr().expect("addr");
    let token = CancellationToken::new();
    let handle = tokio::spawn(app.run(token.clone()));
    Running {
        addr,
        token,
        handle: Some(handle),
    }
}

/// Sends `n` events of tenant `key` in one batch.
pub async fn batch(sys: &System, key: &str, n: usize) {
    let events: Vec<_> = (0..n).map(|_| event("call.started", "agent_1")).collect();
    let (status, body) = sys
        .post(
            "/v1/events/batch",
            key,
            serde_json::json!({ "events": events }),
        )
        .await;
    assert!(status.is_success(), "{body}");
}

/// Sends events until a delivery satisfies `wanted` (subscription changes reach the
/// dispatcher a moment after the API answers).
pub async fn a_delivery_where(
    sys: &System,
    key: &str,
    receiver: &testkit::TestReceiver,
    what: &str,
    wanted: impl Fn(&testkit::Received) -> bool,
) -> testkit::Received {
    let wanted = &wanted;
    testkit::eventually(SOON, what, || async move {
        sys.send_event(key, event("call.started", "agent_1")).await;
        let got = receiver.recv_within(Duration::from_secs(2)).await?;
        wanted(&got).then_some(got)
    })
    .await
    .unwrap()
}

/// The Prometheus text a service serves at `http://{addr}/metrics`.
pub async fn metrics_text(sys: &System, addr: std::net::SocketAddr) -> String {
    sys.http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("metrics answered")
        .text()
        .await
        .expect("metrics read")
}

/// The sum of the dispatcher's samples named `name` whose labels include `labels` (0 when
/// there is none), from its `/metrics`.
pub async fn dispatcher_metric(sys: &System, name: &str, labels: &[(&str, &str)]) -> f64 {
    let addr = sys.dispatcher.as_ref().expect("a dispatcher").addr;
    let text = metrics_text(sys, addr).await;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (sample, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let wanted = sample == name
                && labels
                    .iter()
                    .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
            wanted.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
