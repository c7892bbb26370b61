//! The delivery benchmark (issue 7). Not a test: run it with `scripts/bench.sh`.
//!
//! `bench suite --nats-bin PATH --bin-dir target/release [--runs 3] [--only 1,3]
//!              [--work target/bench] [--out bench/results/last.json]`
//! runs every scenario `--runs` times, each run on a fresh system (nats-server with a fresh file
//! store, ingest, one dispatcher), and prints a markdown table plus writes JSON.
//!
//! `bench receiver --listen 127.0.0.1:9999 [--blackhole]` is the receiver on its own.

mod capacity;
mod layout;
mod load;
mod neighbours;
mod receiver;
mod setup;
mod soak;
mod system;
mod wide;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use layout::Layout;
use load::{Sent, Target};
use receiver::{Expect, Recv};
use system::{Bins, System};

/// Requests in flight while issuing keys and creating subscriptions.
const SETUP_IN_FLIGHT: usize = 64;
/// How long the dispatcher may take to have applied every subscription after the last create.
const CATCH_UP: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug)]
enum Load {
    Single { in_flight: usize },
    Batch { size: usize, in_flight: usize },
    Open { rate: f64 },
}

#[derive(Clone, Debug)]
struct Scenario {
    id: &'static str,
    title: &'static str,
    events: usize,
    /// The tenants, subscriptions and their filters.
    layout: Layout,
    /// The first `blackholed` subscriptions never answer.
    blackholed: usize,
    load: Load,
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            id: "1",
            title: "single events, 64 in flight, 1 subscription",
            events: 20_000,
            layout: Layout::Every { subs: 1 },
            blackholed: 0,
            load: Load::Single { in_flight: 64 },
        },
        Scenario {
            id: "2",
            title: "batches of 250, 4 in flight, 1 subscription",
            events: 50_000,
            layout: Layout::Every { subs: 1 },
            blackholed: 0,
            load: Load::Batch {
                size: 250,
                in_flight: 4,
            },
        },
        Scenario {
            id: "3",
            title: "fan-out to 10 subscriptions, single events, 64 in flight",
            events: 20_000,
            layout: Layout::Every { subs: 10 },
            blackholed: 0,
            load: Load::Single { in_flight: 64 },
        },
        Scenario {
            id: "4a",
            title: "open loop 500 events/s for 10 s, 1 subscription",
            events: 5_000,
            layout: Layout::Every { subs: 1 },
            blackholed: 0,
            load: Load::Open { rate: 500.0 },
        },
        Scenario {
            id: "4b",
            title: "open loop 5,000 events/s for 5 s, 1 subscription",
            events: 25_000,
            layout: Layout::Every { subs: 1 },
            blackholed: 0,
            load: Load::Open { rate: 5_000.0 },
        },
        Scenario {
            id: "5a",
            title: "baseline for 5b: 100 subscriptions (one agent each), open loop 500/s for 10 s",
            events: 5_000,
            layout: Layout::PerAgent { subs: 100 },
            blackholed: 0,
            load: Load::Open { rate: 500.0 },
        },
        Scenario {
            id: "5b",
            title: "as 5a with 1 of the 100 subscriptions blackholed (never answers)",
            events: 5_000,
            layout: Layout::PerAgent { subs: 100 },
            blackholed: 1,
            load: Load::Open { rate: 500.0 },
        },
        Scenario {
            id: "6",
            title: "10,000 tenants, 100,000 subscriptions (each event matches 1), single events, 64 in flight",
            events: 20_000,
            layout: Layout::Tenants { tenants: 10_000 },
            blackholed: 0,
            load: Load::Single { in_flight: 64 },
        },
    ]
}

impl Scenario {
    fn healthy(&self, sub: usize) -> bool {
        sub >= self.blackholed
    }
}

type Metrics = BTreeMap<String, f64>;

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1e6
}

async fn wait_until(what: &str, mut done: impl FnMut() -> (u64, u64), stall: Duration) -> bool {
    let mut last = (0, Instant::now());
    loop {
        let (have, want) = done();
        if have >= want {
            return true;
        }
        if have != last.0 {
            last = (have, Instant::now());
        } else if last.1.elapsed() > stall {
            eprintln!("  {what}: stalled at {have} of {want}");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run_once(
    s: &Scenario,
    bins: &Bins,
    dir: &std::path::Path,
    client: &reqwest::Client,
    tck: f64,
) -> anyhow::Result<Metrics> {
    let sys = System::start(bins, dir, client, &[]).await?;
    let result = measure(s, &sys, client, tck).await;
    sys.stop().await;
    // The store can be large; the logs stay.
    let _ = std::fs::remove_dir_all(dir.join("nats"));
    result
}

async fn measure(
    s: &Scenario,
    sys: &System,
    client: &reqwest::Client,
    tck: f64,
) -> anyhow::Result<Metrics> {
    if matches!(s.load, Load::Batch { .. }) && s.layout.tenants() > 1 {
        bail!("a batch is one tenant's, and this layout has several");
    }
    let mut m = Metrics::new();
    let setup_t0 = Instant::now();
    let keys = setup::issue_keys(client, &sys.api, s.layout, SETUP_IN_FLIGHT).await?;
    m.insert("setup_keys_s".into(), setup_t0.elapsed().as_secs_f64());
    let target = Target {
        client: client.clone(),
        api: sys.api.clone(),
        keys: Arc::new(keys),
        agents: s.layout.agents(),
    };

    let start = Instant::now();
    // The deliveries each measured event should make: its tenant's subscriptions that match it.
    let expect = Expect::new((0..s.events).map(|n| {
        let (tenant, agent) = target.place(n);
        s.layout.targets(tenant, agent)
    }));
    let blackhole = (0..s.layout.subs()).map(|k| !s.healthy(k)).collect();
    let recv = Recv::new(start, expect, blackhole);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let server = receiver::serve(recv.clone(), listener);

    let (probe_sub, probe_tenant, probe_agent) = s
        .layout
        .probe(|k| s.healthy(k))
        .context("no healthy subscription that an event reaches")?;
    let subs_t0 = Instant::now();
    let secrets = setup::create_subscriptions(
        client,
        &sys.api,
        target.keys.clone(),
        s.layout,
        port,
        SETUP_IN_FLIGHT,
        probe_sub,
    )
    .await?;
    let subs_s = subs_t0.elapsed().as_secs_f64();
    m.insert("setup_subscriptions_s".into(), subs_s);
    m.insert(
        "setup_subscriptions_per_s".into(),
        s.layout.subs() as f64 / subs_s,
    );
    *recv.secrets.write().unwrap_or_else(|e| e.into_inner()) = secrets;

    // The probe subscription was created last, so once it gets an event the dispatcher's index
    // holds every subscription; until then an event may match nothing and be dropped, so the
    // probe is sent again (a new id each time).
    let probe_key = target
        .keys
        .get(probe_tenant)
        .context("no key for the probe")?;
    let catch_up_t0 = Instant::now();
    for attempt in 0.. {
        let body = load::event_json(&format!("p{attempt}"), probe_agent);
        setup::send_event(client, &sys.api, probe_key, body)
            .await
            .context("probe event")?;
        let sent_at = Instant::now();
        while recv.probes.load(Relaxed) == 0 && sent_at.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if recv.probes.load(Relaxed) > 0 {
            break;
        }
        if catch_up_t0.elapsed() > CATCH_UP {
            bail!("the dispatcher did not deliver to the last subscription within {CATCH_UP:?}");
        }
    }
    m.insert(
        "setup_index_catch_up_s".into(),
        catch_up_t0.elapsed().as_secs_f64(),
    );

    // Warm-up: every connection is open.
    let warm = 200.max(s.layout.agents());
    let mut warm_expected = 0u64;
    for n in 0..warm {
        let (tenant, agent) = target.place(n);
        let body = load::event_json(&format!("w{n}"), agent);
        setup::send_event(client, &sys.api, target.key(n), body)
            .await
            .context("warm-up")?;
        warm_expected += s
            .layout
            .targets(tenant, agent)
            .into_iter()
            .filter(|&k| s.healthy(k))
            .count() as u64;
    }
    if !wait_until(
        "warm-up",
        || (recv.warm.load(Relaxed), warm_expected),
        Duration::from_secs(30),
    )
    .await
    {
        bail!("warm-up deliveries did not arrive");
    }

    let pids = sys.pids();
    // What the services hold once every subscription is loaded, before the load.
    for (name, pid) in &pids {
        m.insert(
            format!("rss_mib_{name}_before_load"),
            system::rss_mib(&pid.to_string())?,
        );
    }
    let cpu_before: Vec<f64> = pids
        .iter()
        .map(|(_, pid)| system::cpu_seconds(&pid.to_string(), tck))
        .collect::<anyhow::Result<_>>()?;
    let self_before = system::cpu_seconds("self", tck)?;

    let sent = Sent::new(start, s.events);
    let load_t0 = start.elapsed().as_nanos() as u64;
    match s.load {
        Load::Single { in_flight } => {
            load::closed_single(&target, &sent, s.events, in_flight).await
        }
        Load::Batch { size, in_flight } => {
            load::closed_batch(&target, &sent, s.events, size, in_flight).await
        }
        Load::Open { rate } => load::open_loop(&target, &sent, s.events, rate).await,
    }
    let accepted: Vec<bool> = sent.accepted.iter().map(|a| a.load(Relaxed)).collect();
    let expected: u64 = recv
        .expect
        .pairs()
        .filter(|&(_, k, n)| accepted[n] && s.healthy(k))
        .count() as u64;
    // Only deliveries of healthy subscriptions count towards completion.
    let healthy_delivered = || -> u64 {
        recv.first_ns
            .iter()
            .enumerate()
            .filter(|(i, t)| t.load(Relaxed) > 0 && s.healthy(recv.expect.sub(*i)))
            .count() as u64
    };
    let complete = wait_until(
        "deliveries",
        || {
            // Cheap check first; the exact count only once the total could suffice.
            if recv.delivered.load(Relaxed) < expected {
                (recv.delivered.load(Relaxed), expected)
            } else {
                (healthy_delivered(), expected)
            }
        },
        Duration::from_secs(20),
    )
    .await;
    let done_ns = start.elapsed().as_nanos() as u64;
    let cpu_after: Vec<f64> = pids
        .iter()
        .map(|(_, pid)| system::cpu_seconds(&pid.to_string(), tck))
        .collect::<anyhow::Result<_>>()?;
    let self_after = system::cpu_seconds("self", tck)?;
    // Late duplicates (redeliveries) get a second to show up.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut lat = Vec::new();
    let (mut lost, mut dups, mut delivered, mut last_ns) = (0u64, 0u64, 0u64, 0u64);
    for (slot, k, n) in recv.expect.pairs() {
        let count = recv.counts[slot].load(Relaxed) as u64;
        let first = recv.first_ns[slot].load(Relaxed);
        dups += count.saturating_sub(1);
        if !s.healthy(k) {
            continue;
        }
        if count == 0 {
            if accepted[n] {
                lost += 1;
            }
            continue;
        }
        delivered += 1;
        last_ns = last_ns.max(first);
        lat.push(first.saturating_sub(sent.send_ns[n].load(Relaxed)));
    }
    // Receipts of a measured event by a subscription it should not reach.
    let misrouted = recv.misrouted.load(Relaxed);
    lat.sort_unstable();
    let accepted_n = sent.accepted_count() as f64;
    let ack_span = (sent.last_ack_ns.load(Relaxed).saturating_sub(load_t0)) as f64 / 1e9;
    let deliver_span = (last_ns.saturating_sub(load_t0)) as f64 / 1e9;
    m.insert("events_accepted".into(), accepted_n);
    m.insert("accepted_per_s".into(), accepted_n / ack_span);
    m.insert("deliveries".into(), delivered as f64);
    m.insert("delivered_per_s".into(), delivered as f64 / deliver_span);
    m.insert("lost".into(), lost as f64);
    m.insert("duplicates".into(), dups as f64);
    m.insert("misrouted".into(), misrouted as f64);
    m.insert("complete".into(), if complete { 1.0 } else { 0.0 });
    m.insert("http_errors".into(), sent.http_errors.load(Relaxed) as f64);
    m.insert("retries".into(), sent.retries.load(Relaxed) as f64);
    m.insert("verified".into(), recv.verified.load(Relaxed) as f64);
    m.insert(
        "verify_failed".into(),
        recv.verify_failed.load(Relaxed) as f64,
    );
    m.insert("other_requests".into(), recv.other.load(Relaxed) as f64);
    m.insert("p50_ms".into(), percentile(&lat, 0.50));
    m.insert("p90_ms".into(), percentile(&lat, 0.90));
    m.insert("p99_ms".into(), percentile(&lat, 0.99));
    m.insert("max_ms".into(), percentile(&lat, 1.0));
    m.insert(
        "window_s".into(),
        (done_ns.saturating_sub(load_t0)) as f64 / 1e9,
    );
    let per = delivered.max(1) as f64;
    let mut total = 0.0;
    for (i, (name, pid)) in pids.iter().enumerate() {
        let cpu = cpu_after[i] - cpu_before[i];
        total += cpu;
        m.insert(format!("cpu_s_{name}"), cpu);
        m.insert(format!("cpu_ms_per_delivery_{name}"), cpu / per * 1e3);
        m.insert(
            format!("peak_rss_mib_{name}"),
            system::peak_rss_mib(&pid.to_string())?,
        );
    }
    // How the deliveries went (warm-up included): straight from the fan-out, or queued as
    // tasks, and how often those were set aside.
    let counter = neighbours::dispatcher_counter;
    let direct = counter(client, "webhooks_delivery_direct_first_attempts_total", "").await?;
    let all = counter(client, "webhooks_delivery_tasks_queued_total", "").await?;
    m.insert("direct_first_attempts".into(), direct);
    m.insert("queued_tasks".into(), all - direct);
    for reason in neighbours::HANDED_BACK_REASONS {
        let filter = format!("reason=\"{reason}\"");
        let n = counter(client, "webhooks_deliveries_handed_back_total", &filter).await?;
        m.insert(format!("handed_back_{reason}"), n);
    }
    m.insert("cpu_s_services".into(), total);
    m.insert("cpu_ms_per_delivery_services".into(), total / per * 1e3);
    let bench_cpu = self_after - self_before;
    m.insert("cpu_s_bench".into(), bench_cpu);
    m.insert("cpu_ms_per_delivery_bench".into(), bench_cpu / per * 1e3);
    m.insert(
        "cpu_ms_per_delivery_all".into(),
        (total + bench_cpu) / per * 1e3,
    );
    server.abort();
    Ok(m)
}

fn stats(runs: &[Metrics]) -> (Metrics, Metrics, Metrics) {
    let (mut med, mut min, mut max) = (Metrics::new(), Metrics::new(), Metrics::new());
    if let Some(first) = runs.first() {
        for key in first.keys() {
            let mut v: Vec<f64> = runs.iter().filter_map(|r| r.get(key).copied()).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            let median = if v.len() % 2 == 1 {
                v[v.len() / 2]
            } else {
                (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
            };
            med.insert(key.clone(), median);
            min.insert(key.clone(), v[0]);
            max.insert(key.clone(), v[v.len() - 1]);
        }
    }
    (med, min, max)
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_string();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "memory": mem,
        "kernel": kernel.trim(),
    })
}

fn table(results: &[(Scenario, Vec<Metrics>)]) -> String {
    let f = |m: &Metrics, k: &str, digits: usize| -> String {
        m.get(k)
            .map(|v| format!("{v:.digits$}"))
            .unwrap_or_else(|| "-".into())
    };
    let range = |runs: &[Metrics], k: &str, digits: usize| -> String {
        let (med, min, max) = stats(runs);
        if runs.len() > 1 {
            format!(
                "{} ({}–{})",
                f(&med, k, digits),
                f(&min, k, digits),
                f(&max, k, digits)
            )
        } else {
            f(&med, k, digits)
        }
    };
    let mut out = String::new();
    out.push_str("| scenario | accepted/s | delivered/s | p50 ms | p90 ms | p99 ms | max ms | lost | dup | CPU ms/delivery nats / ingest / dispatcher = total (+bench) | peak RSS MiB nats / ingest / dispatcher |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (s, runs) in results {
        let (med, _, max) = stats(runs);
        out.push_str(&format!(
            "| {} {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} = {} (+{}) | {} / {} / {} |\n",
            s.id,
            s.title,
            range(runs, "accepted_per_s", 0),
            range(runs, "delivered_per_s", 0),
            range(runs, "p50_ms", 1),
            f(&med, "p90_ms", 1),
            range(runs, "p99_ms", 1),
            f(&max, "max_ms", 0),
            f(&max, "lost", 0),
            f(&max, "duplicates", 0),
            f(&med, "cpu_ms_per_delivery_nats", 3),
            f(&med, "cpu_ms_per_delivery_ingest", 3),
            f(&med, "cpu_ms_per_delivery_dispatcher", 3),
            f(&med, "cpu_ms_per_delivery_services", 3),
            f(&med, "cpu_ms_per_delivery_bench", 3),
            f(&max, "peak_rss_mib_nats", 0),
            f(&max, "peak_rss_mib_ingest", 0),
            f(&max, "peak_rss_mib_dispatcher", 0),
        ));
    }
    out
}

struct Args {
    cmd: String,
    opts: BTreeMap<String, String>,
    flags: Vec<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut it = std::env::args().skip(1);
    let cmd = it.next().unwrap_or_default();
    let (mut opts, mut flags) = (BTreeMap::new(), Vec::new());
    let mut pending: Option<String> = None;
    for a in it {
        if let Some(name) = pending.take() {
            opts.insert(name, a);
        } else if a == "--blackhole" {
            flags.push(a);
        } else if let Some(name) = a.strip_prefix("--") {
            pending = Some(name.to_string());
        } else {
            bail!("unexpected argument {a}");
        }
    }
    if let Some(name) = pending {
        bail!("--{name} needs a value");
    }
    Ok(Args { cmd, opts, flags })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    match args.cmd.as_str() {
        "receiver" => {
            let listen = args
                .opts
                .get("listen")
                .cloned()
                .unwrap_or_else(|| "127.0.0.1:9999".into());
            receiver::standalone(&listen, args.flags.iter().any(|f| f == "--blackhole")).await
        }
        "suite" => suite(&args).await,
        _ => bail!(
            "usage: bench suite --nats-bin PATH [--bin-dir target/release] [--runs 3] [--only 1,3] [--work DIR] [--out FILE] [--soak-events N --soak-rate R --soak-svg FILE] [--wide-seconds S]\n       bench receiver [--listen ADDR] [--blackhole]"
        ),
    }
}

async fn suite(args: &Args) -> anyhow::Result<()> {
    let opt = |k: &str, d: &str| args.opts.get(k).cloned().unwrap_or_else(|| d.into());
    let bin_dir = PathBuf::from(opt("bin-dir", "target/release"));
    let bins = Bins {
        nats: PathBuf::from(
            args.opts
                .get("nats-bin")
                .context("--nats-bin is required")?,
        ),
        ingest: bin_dir.join("ingest"),
        dispatcher: bin_dir.join("dispatcher"),
    };
    let runs: usize = opt("runs", "3").parse()?;
    let work = PathBuf::from(opt("work", "target/bench"));
    let out = PathBuf::from(opt("out", "bench/results/last.json"));
    let only: Vec<String> = args
        .opts
        .get("only")
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;
    let tck = system::clk_tck();

    let mut results: Vec<(Scenario, Vec<Metrics>)> = Vec::new();
    for s in scenarios() {
        if !only.is_empty() && !only.iter().any(|o| o == s.id) {
            continue;
        }
        let mut done = Vec::new();
        for run in 1..=runs {
            eprintln!("scenario {} ({}), run {run}/{runs}", s.id, s.title);
            let dir = work.join(format!("{}-{run}", s.id));
            let m = run_once(&s, &bins, &dir, &client, tck)
                .await
                .with_context(|| {
                    format!("scenario {} run {run} (logs in {})", s.id, dir.display())
                })?;
            eprintln!(
                "  accepted/s {:.0}, delivered/s {:.0}, p50 {:.1} ms, p99 {:.1} ms, lost {}, dup {}, CPU {:.3} ms/delivery",
                m["accepted_per_s"],
                m["delivered_per_s"],
                m["p50_ms"],
                m["p99_ms"],
                m["lost"],
                m["duplicates"],
                m["cpu_ms_per_delivery_services"]
            );
            eprintln!(
                "  setup: {} keys in {:.1} s, {} subscriptions in {:.1} s ({:.0}/s), index caught up {:.1} s later; RSS MiB before load nats / ingest / dispatcher {:.0} / {:.0} / {:.0}, peak {:.0} / {:.0} / {:.0}",
                s.layout.tenants(),
                m["setup_keys_s"],
                s.layout.subs(),
                m["setup_subscriptions_s"],
                m["setup_subscriptions_per_s"],
                m["setup_index_catch_up_s"],
                m["rss_mib_nats_before_load"],
                m["rss_mib_ingest_before_load"],
                m["rss_mib_dispatcher_before_load"],
                m["peak_rss_mib_nats"],
                m["peak_rss_mib_ingest"],
                m["peak_rss_mib_dispatcher"],
            );
            done.push(m);
        }
        results.push((s, done));
    }

    let mut neighbours_done: Vec<(neighbours::Scenario, Vec<Metrics>)> = Vec::new();
    for s in neighbours::scenarios() {
        let digits = s.id.trim_end_matches(char::is_alphabetic);
        if !only.is_empty() && !only.iter().any(|o| o == s.id || o == digits) {
            continue;
        }
        let mut done = Vec::new();
        for run in 1..=runs {
            eprintln!("scenario {} ({}), run {run}/{runs}", s.id, s.title);
            let dir = work.join(format!("{}-{run}", s.id));
            let m = neighbours::run_once(&s, &bins, &dir, &client, tck)
                .await
                .with_context(|| {
                    format!("scenario {} run {run} (logs in {})", s.id, dir.display())
                })?;
            eprintln!("  {}", serde_json::to_string(&m)?);
            done.push(m);
        }
        neighbours_done.push((s, done));
    }

    let mut soak_done = Vec::new();
    if only.iter().any(|o| o == "10") {
        let opts = soak::Options {
            events: opt("soak-events", "5000000").parse()?,
            rate: opt("soak-rate", "4000").parse()?,
            svg: PathBuf::from(opt("soak-svg", "docs/soak-rss.svg")),
        };
        eprintln!(
            "scenario 10 (soak: {} events at {}/s)",
            opts.events, opts.rate
        );
        let dir = work.join("10-1");
        let m = soak::run_once(&bins, &dir, &client, &opts)
            .await
            .with_context(|| format!("scenario 10 (logs in {})", dir.display()))?;
        eprintln!("  {}", serde_json::to_string(&m)?);
        soak_done.push(m);
    }

    if only.iter().any(|o| o == "11") {
        let seconds: u64 = opt("wide-seconds", "30").parse()?;
        eprintln!(
            "scenario 11 (big fan-out: {} subscriptions, {} KiB events at {}/s for {seconds} s)",
            wide::SUBSCRIPTIONS,
            wide::EVENT_DATA_BYTES / 1024,
            wide::RATE
        );
        let dir = work.join("11-1");
        let m = wide::run_once(&bins, &dir, &client, seconds)
            .await
            .with_context(|| format!("scenario 11 (logs in {})", dir.display()))?;
        eprintln!("  {}", serde_json::to_string(&m)?);
        soak_done.push(m);
    }

    if only.iter().any(|o| o == "12") {
        eprintln!("scenario 12 (capacity: bytes stored per message of each stream)");
        let dir = work.join("12-1");
        let m = capacity::run_once(&bins, &dir, &client)
            .await
            .with_context(|| format!("scenario 12 (logs in {})", dir.display()))?;
        eprintln!("  {}", serde_json::to_string(&m)?);
        soak_done.push(m);
    }

    let t = table(&results);
    println!("\n{t}");
    let t2 = neighbours::table(&neighbours_done);
    println!("\n{t2}");
    let neighbours_json: Vec<Value> = neighbours_done
        .iter()
        .map(|(s, runs)| {
            let (med, min, max) = stats(runs);
            json!({"id": s.id, "title": s.title, "median": med, "min": min, "max": max, "runs": runs})
        })
        .collect();
    let scenarios_json: Vec<Value> = results
        .iter()
        .map(|(s, runs)| {
            let (med, min, max) = stats(runs);
            json!({
                "id": s.id,
                "title": s.title,
                "events": s.events,
                "subscriptions": s.layout.subs(),
                "tenants": s.layout.tenants(),
                "blackholed": s.blackholed,
                "load": format!("{:?}", s.load),
                "event_bytes": load::EVENT_BYTES,
                "median": med, "min": min, "max": max,
                "runs": runs,
            })
        })
        .collect();
    let doc = json!({
        "generated_unix": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "machine": machine(),
        "runs_per_scenario": runs,
        "rust_log": std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "info".into()),
        "scenarios": scenarios_json,
        "soak": soak_done,
        "table_markdown": t,
        "neighbour_scenarios": neighbours_json,
        "neighbour_table_markdown": t2,
    });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&doc)?)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
