//! The subscription index at scale (issue 7, scenario 6): `Index::matches` must cost the
//! event's matches, not the number of subscriptions (ARCHITECTURE.md, "Matching cost").
//!
//! `cargo bench -p dispatcher --bench index`
//!
//! For N in {1,000, 10,000, 100,000} subscriptions spread over N/10 tenants (ten each), the same
//! lookups are timed; flat figures across N are the claim. Every tenant has the same ten
//! subscriptions (see [`subscription`]), so the looked-up tenant's buckets are the same at every
//! N and only the size of the tenant map changes. Secrets are sealed with `MasterKeys`, as
//! ingest writes them, so building the index goes through the real `apply` (open, prepare the
//! signer, register).

use std::hint::black_box;
use std::time::Instant;

use common::crypto::MasterKeys;
use common::watch::Change;
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use dispatcher::subscriptions::Index;
use proto::v1::Subscription;

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
const PER_TENANT: usize = 10;
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn tenant(t: usize) -> String {
    format!("tenant_{t:05}")
}

fn agent(a: usize) -> String {
    format!("agent_{a:03}")
}

/// The ten catalog types, in the contract's order (`call.started` first).
fn types() -> Vec<&'static str> {
    proto::catalog::all().iter().map(|spec| spec.name).collect()
}

/// Subscription `j` (0..10) of tenant `t`. Mostly agent filters, each on a couple of types:
/// - j < 8: types `[T[j], T[j+1]]`, agent `agent_j` (an exact type for one agent);
/// - j = 8: `call.*` for `agent_000` (a prefix for one agent);
/// - j = 9: `[qa.scored, call.started]` for every agent.
///
/// So `call.started` from `agent_000` matches 0, 8 and 9 through three different buckets,
/// `T[3]` from `agent_003` matches only 3, and anything from an unknown agent that is not
/// `qa.scored` or `call.started` matches nothing.
fn subscription(keys: &MasterKeys, all: &[&str], t: usize, j: usize) -> Subscription {
    let (event_types, agent_ids): (Vec<&str>, Vec<String>) = match j {
        0..=7 => (vec![all[j], all[j + 1]], vec![agent(j)]),
        8 => (vec!["call.*"], vec![agent(0)]),
        _ => (vec!["qa.scored", "call.started"], vec![]),
    };
    let id = format!("sub_{}", ulid::Ulid::new());
    Subscription {
        secrets: vec![keys.seal_secret(&id, SECRET, None)],
        id,
        tenant_id: tenant(t),
        url: format!("https://hooks.example.com/{t}/{j}"),
        event_types: event_types.into_iter().map(str::to_owned).collect(),
        agent_ids,
        enabled: true,
        ..Default::default()
    }
}

fn put(sub: Subscription, revision: u64) -> Change<Subscription> {
    Change::Put {
        key: format!("{}.{}", sub.tenant_id, sub.id),
        revision,
        value: sub,
    }
}

/// An index of `n` subscriptions over `n / 10` tenants, and one of its subscriptions (for the
/// update benchmark).
fn build(n: usize) -> (Index, Subscription) {
    let keys = MasterKeys::generate();
    let all = types();
    let index = Index::new(keys.clone());
    let started = Instant::now();
    let resident_before = resident_mib();
    let mut last = None;
    for k in 0..n {
        let sub = subscription(&keys, &all, k / PER_TENANT, k % PER_TENANT);
        last = Some(sub.clone());
        index.apply(put(sub, k as u64 + 1));
    }
    // Not criterion figures (one run), but worth seeing next to them. The resident growth is
    // the index's memory with the system allocator (the dispatcher binary uses mimalloc).
    eprintln!(
        "index of {n} subscriptions over {} tenants built in {:.0} ms, resident memory +{:.1} MiB",
        n / PER_TENANT,
        started.elapsed().as_secs_f64() * 1e3,
        resident_mib() - resident_before,
    );
    (index, last.unwrap_or_default())
}

/// This process's resident set in MiB (Linux; 0 elsewhere).
fn resident_mib() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |pages| pages * 4096.0 / (1024.0 * 1024.0))
}

fn bench(c: &mut Criterion) {
    let all = types();
    let built: Vec<(usize, Index, Subscription)> = SIZES
        .iter()
        .map(|&n| {
            let (index, sub) = build(n);
            (n, index, sub)
        })
        .collect();

    // (name, event type, agent, expected matches), always in a tenant in the middle, so the
    // looked-up tenant exists at every N.
    let lookups: [(&str, &str, String, usize); 3] = [
        ("matches_3", "call.started", agent(0), 3),
        ("matches_1", all[3], agent(3), 1),
        ("matches_0_in_tenant", all[5], agent(999), 0),
    ];
    for (name, event_type, agent, expected) in &lookups {
        let mut group = c.benchmark_group(format!("index/{name}"));
        for (n, index, _) in &built {
            let t = tenant(n / PER_TENANT / 2);
            // A wrong layout would make the figures meaningless: check before timing.
            assert_eq!(index.matches(&t, event_type, agent).len(), *expected);
            group.bench_with_input(BenchmarkId::from_parameter(n), &t, |b, t| {
                b.iter(|| index.matches(black_box(t), black_box(event_type), black_box(agent)))
            });
        }
        group.finish();
    }

    let mut group = c.benchmark_group("index/unknown_tenant");
    let agent0 = agent(0);
    for (n, index, _) in &built {
        assert!(
            index
                .matches("tenant_none", "call.started", &agent0)
                .is_empty()
        );
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                index.matches(
                    black_box("tenant_none"),
                    black_box("call.started"),
                    black_box(&agent0),
                )
            })
        });
    }
    group.finish();

    // The watch's side: an edit of one subscription (unregister, open the secret, prepare the
    // signer, register) must not depend on N either.
    let mut group = c.benchmark_group("index/apply_update");
    for (n, index, sub) in &built {
        let mut revision = *n as u64;
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter_batched(
                || {
                    revision += 1;
                    put(sub.clone(), revision)
                },
                |change| index.apply(change),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
