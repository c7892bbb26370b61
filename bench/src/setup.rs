//! Setting a run up through the real API: tenant keys from the admin API, subscriptions with
//! `POST /v1/subscriptions`, many at once when there are thousands (scenario 6).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::layout::Layout;
use crate::system::ADMIN_TOKEN;

pub async fn post_json(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let mut req = client.post(url).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let r = req.send().await?;
    let status = r.status();
    let text = r.text().await?;
    if !status.is_success() {
        bail!("POST {url}: {status} {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

/// Posts one event (JSON `body`) with `key`; anything but `202` is an error.
pub async fn send_event(
    client: &reqwest::Client,
    api: &str,
    key: &str,
    body: String,
) -> anyhow::Result<()> {
    post_events(client, &format!("{api}/v1/events"), key, body, 202).await
}

/// Posts one batch (JSON `body`, `{"events":[…]}`) with `key`; anything but `200` is an error.
pub async fn send_batch(
    client: &reqwest::Client,
    api: &str,
    key: &str,
    body: String,
) -> anyhow::Result<()> {
    post_events(client, &format!("{api}/v1/events/batch"), key, body, 200).await
}

async fn post_events(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: String,
    expected: u16,
) -> anyhow::Result<()> {
    let r = client
        .post(url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    if r.status().as_u16() != expected {
        bail!("POST {url}: {} {}", r.status(), r.text().await?);
    }
    Ok(())
}

/// Runs `job(i)` for every i in `0..count`, at most `in_flight` at once, and returns the results
/// in order. The first error stops the work not yet started and is returned.
pub async fn concurrently<T, F, Fut>(
    count: usize,
    in_flight: usize,
    job: F,
) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..in_flight.clamp(1, count.max(1)))
        .map(|_| {
            let (job, next, failed) = (job.clone(), next.clone(), failed.clone());
            tokio::spawn(async move {
                let mut done = Vec::new();
                loop {
                    let i = next.fetch_add(1, Relaxed);
                    if i >= count || failed.load(Relaxed) {
                        return Ok(done);
                    }
                    match job(i).await {
                        Ok(v) => done.push((i, v)),
                        Err(e) => {
                            failed.store(true, Relaxed);
                            return Err(e.context(format!("item {i} of {count}")));
                        }
                    }
                }
            })
        })
        .collect();
    let mut out: Vec<Option<T>> = (0..count).map(|_| None).collect();
    let mut first_error = None;
    for w in workers {
        match w.await {
            Ok(Ok(done)) => {
                for (i, v) in done {
                    out[i] = Some(v);
                }
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(e.into());
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    out.into_iter()
        .enumerate()
        .map(|(i, v)| v.with_context(|| format!("item {i} was not run")))
        .collect()
}

/// One API key per tenant of `layout`, issued by the admin API.
pub async fn issue_keys(
    client: &reqwest::Client,
    api: &str,
    layout: Layout,
    in_flight: usize,
) -> anyhow::Result<Vec<String>> {
    let (client, api) = (client.clone(), api.to_string());
    concurrently(layout.tenants(), in_flight, move |t| {
        let url = format!("{api}/v1/admin/tenants/{}/api-keys", layout.tenant_id(t));
        let client = client.clone();
        async move {
            let reply = post_json(&client, &url, ADMIN_TOKEN, None).await?;
            Ok(reply["key"]
                .as_str()
                .context("no key in the admin reply")?
                .to_string())
        }
    })
    .await
}

/// Creates subscription `k` of `layout` with its tenant's key; it posts to `/s/{k}` on the
/// receiver at `port`. Answers its signing secret.
async fn create_one(
    client: &reqwest::Client,
    api: &str,
    keys: &[String],
    layout: Layout,
    port: u16,
    k: usize,
) -> anyhow::Result<String> {
    let spec = layout.spec(k);
    let mut body = json!({
        "url": format!("http://127.0.0.1:{port}/s/{k}"),
        "event_types": spec.types,
        "description": format!("bench {k}"),
    });
    if !spec.agents.is_empty() {
        let agents: Vec<String> = spec
            .agents
            .iter()
            .map(|a| format!("agent_{a:03}"))
            .collect();
        body["agent_ids"] = json!(agents);
    }
    let key = keys.get(spec.tenant).context("no key for the tenant")?;
    let sub = post_json(client, &format!("{api}/v1/subscriptions"), key, Some(body)).await?;
    Ok(sub["secret"].as_str().context("no secret")?.to_string())
}

/// Creates every subscription of `layout` (at most `in_flight` requests at once), `last` after
/// all the others have been answered so that it has the highest KV revision. Not retried: a
/// create that failed after its write would leave a second subscription behind, and with it
/// duplicate deliveries. Answers the signing secrets by subscription.
pub async fn create_subscriptions(
    client: &reqwest::Client,
    api: &str,
    keys: Arc<Vec<String>>,
    layout: Layout,
    port: u16,
    in_flight: usize,
    last: usize,
) -> anyhow::Result<Vec<String>> {
    let subs = layout.subs();
    if last >= subs {
        bail!("subscription {last} of {subs}");
    }
    let (c, a, ks) = (client.clone(), api.to_string(), keys.clone());
    // Every k but `last`: i < last is k = i, i ≥ last is k = i + 1.
    let mut secrets = concurrently(subs - 1, in_flight, move |i| {
        let k = if i < last { i } else { i + 1 };
        let (c, a, ks) = (c.clone(), a.clone(), ks.clone());
        async move { create_one(&c, &a, &ks, layout, port, k).await }
    })
    .await?;
    let secret = create_one(client, api, &keys, layout, port, last).await?;
    secrets.insert(last, secret);
    Ok(secrets)
}
