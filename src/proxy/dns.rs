//! Name resolution for the forward proxy, with a small cache and the
//! operator's fixed answers (`proxy.resolve`).
//!
//! Resolution goes through the system resolver (`getaddrinfo` via tokio's
//! `lookup_host`), so `/etc/hosts`, `nsswitch` and the host's DNS setup
//! apply as for any other program on the host. `getaddrinfo` does not
//! report TTLs, so answers are kept for a fixed `proxy.dns_cache_ttl_secs`
//! (30 s by default) and failures for a few seconds. hickory-resolver would
//! give real TTLs, but a scratch crate of it and tokio built cold in 17 s
//! with 79 crates here (aws-sigv4 with tokio: 8 s, 50), and the proxy's
//! safety does not depend on the TTL: every address is checked after
//! resolution and the connection goes to a checked address, never to a
//! name resolved a second time.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;
// tokio's clock, so the expiry tests can move time forward.
use tokio::time::Instant;

/// How long a failed lookup is remembered.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Upper bound on cached names, so a container cannot grow it forever.
const MAX_ENTRIES: usize = 4096;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub(super) enum DnsError {
    #[error("name does not resolve")]
    NotFound,
}

#[derive(Clone)]
struct Entry {
    answer: Result<Vec<IpAddr>, DnsError>,
    expires: Instant,
}

/// Where uncached answers come from: the system resolver, or a fake in
/// the tests.
#[async_trait::async_trait]
trait Lookup: Send + Sync {
    async fn lookup(&self, name: &str) -> std::io::Result<Vec<IpAddr>>;
}

struct SystemLookup;

#[async_trait::async_trait]
impl Lookup for SystemLookup {
    async fn lookup(&self, name: &str) -> std::io::Result<Vec<IpAddr>> {
        Ok(tokio::net::lookup_host((name, 0))
            .await?
            .map(|a| a.ip())
            .collect())
    }
}

pub(super) struct Resolver {
    overrides: std::sync::RwLock<BTreeMap<String, IpAddr>>,
    ttl: Duration,
    cache: Mutex<HashMap<String, Entry>>,
    lookup: Box<dyn Lookup>,
}

impl Resolver {
    pub(super) fn new(overrides: BTreeMap<String, IpAddr>, ttl: Duration) -> Self {
        Self::with_lookup(overrides, ttl, Box::new(SystemLookup))
    }

    fn with_lookup(
        overrides: BTreeMap<String, IpAddr>,
        ttl: Duration,
        lookup: Box<dyn Lookup>,
    ) -> Self {
        Self {
            overrides: std::sync::RwLock::new(overrides),
            ttl,
            cache: Mutex::new(HashMap::new()),
            lookup,
        }
    }

    /// Takes a reloaded `proxy.resolve` table; cached answers go, so no
    /// name keeps an answer the new table would not give.
    pub(super) fn replace_overrides(&self, overrides: BTreeMap<String, IpAddr>) {
        *self.overrides.write().unwrap_or_else(|e| e.into_inner()) = overrides;
        self.lock().clear();
    }

    /// Addresses for a normalised name; the operator's override wins.
    pub(super) async fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, DnsError> {
        let fixed = self
            .overrides
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied();
        if let Some(ip) = fixed {
            return Ok(vec![ip]);
        }
        let now = Instant::now();
        if let Some(e) = self.lock().get(name) {
            if e.expires > now {
                return e.answer.clone();
            }
        }
        let answer = match self.lookup.lookup(name).await {
            Ok(addrs) => {
                let mut ips: Vec<IpAddr> = Vec::new();
                for ip in addrs {
                    if !ips.contains(&ip) {
                        ips.push(ip);
                    }
                }
                if ips.is_empty() {
                    Err(DnsError::NotFound)
                } else {
                    Ok(ips)
                }
            }
            Err(_) => Err(DnsError::NotFound),
        };
        let ttl = if answer.is_ok() {
            self.ttl
        } else {
            NEGATIVE_TTL
        };
        if !ttl.is_zero() {
            let mut cache = self.lock();
            if cache.len() >= MAX_ENTRIES {
                cache.retain(|_, e| e.expires > now);
                if cache.len() >= MAX_ENTRIES {
                    cache.clear();
                }
            }
            cache.insert(
                name.to_owned(),
                Entry {
                    answer: answer.clone(),
                    expires: now + ttl,
                },
            );
        }
        answer
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The bench's raw-results writer, shared with `tests/bench/`, for the
/// figures test below.
#[cfg(test)]
#[allow(dead_code, unreachable_pub)]
#[path = "../../tests/bench/record.rs"]
mod bench_record;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overrides_and_cache() {
        let r = Resolver::new(
            BTreeMap::from([("allowed.test".to_owned(), "127.0.0.1".parse().unwrap())]),
            Duration::from_secs(30),
        );
        assert_eq!(
            r.resolve("allowed.test").await.unwrap(),
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        let local = r.resolve("localhost").await.unwrap();
        assert!(local.iter().all(|ip| ip.is_loopback()), "{local:?}");
        assert!(r.lock().contains_key("localhost"), "answer cached");
        assert_eq!(
            r.resolve("no-such-name.invalid").await,
            Err(DnsError::NotFound)
        );
    }

    /// A lookup that answers `10.0.0.<n>` on its n-th call, or fails.
    struct Counting {
        calls: std::sync::Arc<std::sync::atomic::AtomicU8>,
        fail: bool,
    }

    #[async_trait::async_trait]
    impl Lookup for Counting {
        async fn lookup(&self, _name: &str) -> std::io::Result<Vec<IpAddr>> {
            let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if self.fail {
                return Err(std::io::Error::other("no such name"));
            }
            Ok(vec![IpAddr::from([10, 0, 0, n])])
        }
    }

    fn counting(
        ttl_secs: u64,
        fail: bool,
    ) -> (Resolver, std::sync::Arc<std::sync::atomic::AtomicU8>) {
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(0));
        let lookup = Box::new(Counting {
            calls: calls.clone(),
            fail,
        });
        let r = Resolver::with_lookup(BTreeMap::new(), Duration::from_secs(ttl_secs), lookup);
        (r, calls)
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_is_reused_for_the_ttl_then_asked_again() {
        let (r, calls) = counting(30, false);
        let first = r.resolve("example.test").await.unwrap();
        tokio::time::advance(Duration::from_millis(29_999)).await;
        assert_eq!(r.resolve("example.test").await.unwrap(), first, "cached");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_millis(1)).await;
        let second = r.resolve("example.test").await.unwrap();
        assert_ne!(second, first, "expired at the TTL: asked again");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_is_remembered_five_seconds_and_a_zero_ttl_caches_nothing() {
        let (r, calls) = counting(30, true);
        assert_eq!(r.resolve("gone.test").await, Err(DnsError::NotFound));
        tokio::time::advance(NEGATIVE_TTL - Duration::from_millis(1)).await;
        assert_eq!(r.resolve("gone.test").await, Err(DnsError::NotFound));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(r.resolve("gone.test").await, Err(DnsError::NotFound));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);

        let (r, calls) = counting(0, false);
        r.resolve("a.test").await.unwrap();
        r.resolve("a.test").await.unwrap();
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// Figures, not a check (`just bench-dns`): what a cached answer costs
    /// against a lookup through the system resolver, for `localhost`
    /// (`/etc/hosts`: the cheapest miss there is) and for a name the
    /// host's DNS answers (`AGENTBOX_BENCH_DNS_NAME`, default `deb.debian.org`).
    /// Raw results go to `AGENTBOX_BENCH_OUT`, else `target/bench-results/`.
    #[tokio::test(flavor = "multi_thread")]
    #[ignore = "benchmark: prints figures (just bench-dns)"]
    async fn cache_hit_and_miss_figures() {
        use super::bench_record as record;
        let started = record::start();
        let name = std::env::var("AGENTBOX_BENCH_DNS_NAME").unwrap_or("deb.debian.org".to_owned());
        println!("| lookup | name | calls | p50 µs | p90 µs | p99 µs | over 1 s |");
        println!("|---|---|---|---|---|---|---|");
        record::set_table("a lookup through the proxy's resolver (µs)");
        for host in ["localhost", name.as_str()] {
            for (kind, ttl, calls) in [("miss", 0, 200), ("hit", 30, 20_000)] {
                let r = Resolver::new(BTreeMap::new(), Duration::from_secs(ttl));
                if let Err(e) = r.resolve(host).await {
                    println!("| {kind} | {host} | - | does not resolve ({e}) | | | |");
                    continue;
                }
                let mut took = Vec::with_capacity(calls);
                for _ in 0..calls {
                    let t0 = std::time::Instant::now();
                    r.resolve(host).await.unwrap();
                    took.push(t0.elapsed().as_secs_f64() * 1e6);
                }
                let slow = took.iter().filter(|&&us| us > 1e6).count();
                let s = record::summarize(took);
                println!(
                    "| {kind} | {host} | {calls} | {:.2} | {:.2} | {:.2} | {slow} |",
                    s.p50, s.p90, s.p99
                );
                record::record(&format!("{kind}: {host}"), &s);
            }
        }
        let out = std::env::var("AGENTBOX_BENCH_OUT")
            .ok()
            .filter(|p| !p.is_empty());
        record::save("dns", started, out.as_deref());
    }
}
