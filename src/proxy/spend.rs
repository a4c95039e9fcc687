//! Model spend, enforced outside the sandbox: the gateway reads each
//! answer's `usage` ([`super::usage`]), prices it (`model.prices`) and
//! keeps tallies per run and per tenant and UTC day. A run's
//! `max_budget_usd` and a tenant's daily limits are checked before every
//! model request; past one, the gateway refuses the request
//! ([`super::Refusal::BudgetExceeded`]) and the executor ends the run with
//! `budget_exceeded`.
//!
//! The CLI inside the container gets `max_budget_usd` too, but the
//! container is untrusted: only the gateway's count is believed.
//!
//! Known limits, by design: tallies live in memory, so a daemon restart
//! starts the day's tallies again from zero; requests already in flight
//! when a limit is reached finish, so a run can overshoot by at most the
//! answers it had in flight (`proxy.max_gateway_requests_per_container`).

use super::usage::{Metered, Scanner};
use crate::config::Config;
use crate::config::ModelPrice;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

/// The price table, ready for lookups.
#[derive(Clone, Debug)]
pub struct Prices {
    /// Families, longest first: the most specific key wins.
    families: Vec<(String, ModelPrice)>,
    /// What a model no family matches pays: the dearest entry.
    unknown: ModelPrice,
}

impl Prices {
    pub fn new(table: &BTreeMap<String, ModelPrice>) -> Self {
        let mut families: Vec<(String, ModelPrice)> = table
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), *v))
            .collect();
        families.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        let unknown = families
            .iter()
            .map(|(_, p)| *p)
            .max_by(|a, b| {
                (a.output, a.input)
                    .partial_cmp(&(b.output, b.input))
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .unwrap_or(ModelPrice {
                input: 0.0,
                output: 0.0,
                cache_write: 0.0,
                cache_read: 0.0,
            });
        Self { families, unknown }
    }

    pub fn price(&self, model: Option<&str>) -> ModelPrice {
        let Some(model) = model.map(str::to_ascii_lowercase) else {
            return self.unknown;
        };
        self.families
            .iter()
            .find(|(family, _)| model.contains(family.as_str()))
            .map_or(self.unknown, |(_, p)| *p)
    }

    /// USD for one answer.
    pub fn cost(&self, m: &Metered) -> f64 {
        let p = self.price(m.model.as_deref());
        let u = &m.usage;
        (u.input_tokens as f64 * p.input
            + u.output_tokens as f64 * p.output
            + u.cache_creation_input_tokens as f64 * p.cache_write
            + u.cache_read_input_tokens as f64 * p.cache_read)
            / 1e6
    }
}

/// Tokens and cost, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Spend {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_write_tokens: u64,
    pub cache_read_tokens: u64,
    pub cost_usd: f64,
}

impl Spend {
    fn of(m: &Metered, cost_usd: f64) -> Self {
        Self {
            input_tokens: m.usage.input_tokens,
            output_tokens: m.usage.output_tokens,
            cache_write_tokens: m.usage.cache_creation_input_tokens,
            cache_read_tokens: m.usage.cache_read_input_tokens,
            cost_usd,
        }
    }

    fn add(&mut self, o: &Spend) {
        self.input_tokens = self.input_tokens.saturating_add(o.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(o.output_tokens);
        self.cache_write_tokens = self.cache_write_tokens.saturating_add(o.cache_write_tokens);
        self.cache_read_tokens = self.cache_read_tokens.saturating_add(o.cache_read_tokens);
        self.cost_usd += o.cost_usd;
    }

    /// Every token, cache tokens included.
    pub fn tokens(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.output_tokens)
            .saturating_add(self.cache_write_tokens)
            .saturating_add(self.cache_read_tokens)
    }
}

/// Which limit was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetKind {
    /// The run's `max_budget_usd`.
    Run,
    /// The tenant's `daily_token_limit`.
    TenantDailyTokens,
    /// The tenant's `daily_cost_limit_usd`.
    TenantDailyCost,
}

impl BudgetKind {
    pub fn describe(&self) -> &'static str {
        match self {
            Self::Run => "the run's max_budget_usd",
            Self::TenantDailyTokens => "the tenant's daily token limit",
            Self::TenantDailyCost => "the tenant's daily cost limit",
        }
    }
}

/// A limit reached: which, and how far.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Exceeded {
    pub kind: BudgetKind,
    pub spent: f64,
    pub limit: f64,
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = self.kind.describe();
        match self.kind {
            BudgetKind::TenantDailyTokens => write!(
                f,
                "{what} is spent: {} of {} tokens today (UTC)",
                self.spent, self.limit
            ),
            BudgetKind::Run => write!(
                f,
                "{what} is spent: ${:.4} of ${:.4}",
                self.spent, self.limit
            ),
            BudgetKind::TenantDailyCost => write!(
                f,
                "{what} is spent: ${:.4} of ${:.4} today (UTC)",
                self.spent, self.limit
            ),
        }
    }
}

/// What one run spent, and the limit it went past, if any.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RunSpend {
    pub spend: Spend,
    pub exceeded: Option<Exceeded>,
}

#[derive(Clone, Copy, Debug, Default)]
struct TenantLimits {
    tokens: Option<u64>,
    cost_usd: Option<f64>,
}

#[derive(Default)]
struct Run {
    budget_usd: Option<f64>,
    spend: Spend,
    /// The first refusal of the run, kept for its end.
    refused: Option<Exceeded>,
}

#[derive(Default)]
struct Day {
    day: u64,
    spend: Spend,
}

#[derive(Default)]
struct State {
    runs: HashMap<(String, String), Run>,
    days: HashMap<String, Day>,
}

impl State {
    /// The tenant's tally for `today`, started again on a new day.
    fn day(&mut self, tenant: &str, today: u64) -> &mut Day {
        let d = self.days.entry(tenant.to_owned()).or_default();
        if d.day != today {
            *d = Day {
                day: today,
                spend: Spend::default(),
            };
        }
        d
    }
}

pub type Clock = Box<dyn Fn() -> SystemTime + Send + Sync>;

/// The tallies, shared by the gateway (check, record) and the executor
/// (begin and end of a run).
pub struct SpendLedger {
    prices: Prices,
    /// Replaced whole on SIGHUP.
    limits: RwLock<HashMap<String, TenantLimits>>,
    state: Mutex<State>,
    clock: Clock,
}

fn limits_of(cfg: &Config) -> HashMap<String, TenantLimits> {
    cfg.tenants
        .iter()
        .map(|t| {
            let l = TenantLimits {
                tokens: t.daily_token_limit,
                cost_usd: t.daily_cost_limit_usd,
            };
            (t.id.clone(), l)
        })
        .collect()
}

/// Which limit, if any, a tally has reached. `strict` asks whether it
/// went past: reaching a limit refuses the next request, only going
/// past it fails a run that already ended.
fn over(day: &Spend, l: TenantLimits, strict: bool) -> Option<Exceeded> {
    let past = |spent: f64, limit: f64| {
        if strict {
            spent > limit
        } else {
            spent >= limit
        }
    };
    if let Some(limit) = l.tokens {
        if past(day.tokens() as f64, limit as f64) {
            return Some(Exceeded {
                kind: BudgetKind::TenantDailyTokens,
                spent: day.tokens() as f64,
                limit: limit as f64,
            });
        }
    }
    if let Some(limit) = l.cost_usd {
        if past(day.cost_usd, limit) {
            return Some(Exceeded {
                kind: BudgetKind::TenantDailyCost,
                spent: day.cost_usd,
                limit,
            });
        }
    }
    None
}

fn run_over(run: &Run, strict: bool) -> Option<Exceeded> {
    let limit = run.budget_usd?;
    let spent = run.spend.cost_usd;
    let past = if strict {
        spent > limit
    } else {
        spent >= limit
    };
    past.then_some(Exceeded {
        kind: BudgetKind::Run,
        spent,
        limit,
    })
}

impl SpendLedger {
    pub fn new(cfg: &Config) -> Self {
        Self::with_clock(cfg, Box::new(SystemTime::now))
    }

    pub fn with_clock(cfg: &Config, clock: Clock) -> Self {
        Self {
            prices: Prices::new(&cfg.model.prices),
            limits: RwLock::new(limits_of(cfg)),
            state: Mutex::default(),
            clock,
        }
    }

    /// Takes the tenants' limits of a reloaded config; tallies are kept.
    pub fn reload(&self, cfg: &Config) {
        *self.limits.write().unwrap_or_else(|e| e.into_inner()) = limits_of(cfg);
    }

    fn today(&self) -> u64 {
        (self.clock)()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 86_400)
    }

    fn tenant_limits(&self, tenant: &str) -> TenantLimits {
        self.limits
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .copied()
            .unwrap_or_default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts counting a run; refused when the tenant's day is spent
    /// already, so no agent starts only to be refused its first request.
    pub fn begin_run(
        &self,
        tenant: &str,
        conversation: &str,
        max_budget_usd: Option<f64>,
    ) -> Result<(), Exceeded> {
        let (limits, today) = (self.tenant_limits(tenant), self.today());
        let mut s = self.state();
        if let Some(e) = over(&s.day(tenant, today).spend, limits, false) {
            return Err(e);
        }
        s.runs.insert(
            (tenant.to_owned(), conversation.to_owned()),
            Run {
                budget_usd: max_budget_usd,
                ..Run::default()
            },
        );
        Ok(())
    }

    /// Stops counting the run: what it spent, and whether it went past a
    /// limit (a refused request, or spend past a limit by its last answer).
    pub fn end_run(&self, tenant: &str, conversation: &str) -> RunSpend {
        let (limits, today) = (self.tenant_limits(tenant), self.today());
        let mut s = self.state();
        let Some(run) = s.runs.remove(&(tenant.to_owned(), conversation.to_owned())) else {
            return RunSpend::default();
        };
        let exceeded = run
            .refused
            .or_else(|| run_over(&run, true))
            .or_else(|| over(&s.day(tenant, today).spend, limits, true));
        RunSpend {
            spend: run.spend,
            exceeded,
        }
    }

    /// May this container send another model request? Called before each
    /// billed request is forwarded.
    pub fn check(&self, tenant: &str, conversation: &str) -> Result<(), Exceeded> {
        let (limits, today) = (self.tenant_limits(tenant), self.today());
        let mut s = self.state();
        let day = s.day(tenant, today).spend;
        let key = (tenant.to_owned(), conversation.to_owned());
        let run = s.runs.get_mut(&key);
        let why = run
            .as_ref()
            .and_then(|r| run_over(r, false))
            .or_else(|| over(&day, limits, false));
        match (why, run) {
            (None, _) => Ok(()),
            (Some(e), Some(run)) => {
                run.refused.get_or_insert(e);
                Err(e)
            }
            (Some(e), None) => Err(e),
        }
    }

    /// Adds one answer's usage to the run's and the tenant's tallies.
    /// Answers outside a run (a process left behind in the container)
    /// still count against the tenant's day.
    pub fn record(&self, tenant: &str, conversation: &str, m: &Metered) -> Spend {
        let spend = Spend::of(m, self.prices.cost(m));
        if spend.tokens() == 0 {
            return spend;
        }
        let today = self.today();
        {
            let mut s = self.state();
            s.day(tenant, today).spend.add(&spend);
            if let Some(run) = s
                .runs
                .get_mut(&(tenant.to_owned(), conversation.to_owned()))
            {
                run.spend.add(&spend);
            }
        }
        crate::metrics::model_usage(
            tenant,
            [
                spend.input_tokens,
                spend.output_tokens,
                spend.cache_read_tokens,
                spend.cache_write_tokens,
            ],
            spend.cost_usd,
        );
        spend
    }

    /// The tenant's tally for today (UTC).
    pub fn tenant_today(&self, tenant: &str) -> Spend {
        let today = self.today();
        self.state().day(tenant, today).spend
    }
}

/// Who an answer is billed to.
pub struct Payer {
    pub ledger: Arc<SpendLedger>,
    pub tenant: String,
    pub conversation: String,
}

/// An answer body passed through unchanged while its usage is read; the
/// usage is recorded when the body ends, fails or is dropped (a client
/// that hangs up mid-answer still pays for what was generated so far).
pub struct MeteredBody<B> {
    inner: B,
    scanner: Option<Scanner>,
    payer: Option<Payer>,
}

impl<B> MeteredBody<B> {
    pub fn new(inner: B, scanner: Scanner, payer: Payer) -> Self {
        Self {
            inner,
            scanner: Some(scanner),
            payer: Some(payer),
        }
    }

    fn settle(&mut self) {
        if let (Some(s), Some(p)) = (self.scanner.take(), self.payer.take()) {
            p.ledger.record(&p.tenant, &p.conversation, &s.finish());
        }
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        self.settle();
    }
}

impl<B> Body for MeteredBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(s)) = (frame.data_ref(), this.scanner.as_mut()) {
                    s.feed(data);
                }
            }
            Poll::Ready(Some(Err(_)) | None) => this.settle(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::super::usage::Usage;
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn cfg(tenants: &str) -> Config {
        let c = Config::from_toml(tenants, Vec::new()).unwrap();
        c.validate().unwrap();
        c
    }

    fn answer(model: &str, input: u64, output: u64) -> Metered {
        Metered {
            model: Some(model.into()),
            usage: Usage {
                input_tokens: input,
                output_tokens: output,
                ..Usage::default()
            },
        }
    }

    const TENANT: &str = r#"
[[tenants]]
id = "t1"
token_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
daily_token_limit = 1000
"#;

    #[test]
    fn prices_match_the_most_specific_family_and_unknown_pays_the_most() {
        let p = Prices::new(&cfg("").model.prices);
        assert_eq!(p.price(Some("claude-sonnet-4-5-20250929")).output, 15.0);
        assert_eq!(p.price(Some("us.anthropic.claude-haiku-4-5")).input, 1.0);
        assert_eq!(p.price(Some("Claude-OPUS-4-1")).input, 15.0);
        assert_eq!(p.price(Some("mystery")).output, 75.0);
        assert_eq!(p.price(None).output, 75.0);
        let m = Metered {
            model: Some("claude-sonnet-4".into()),
            usage: Usage {
                input_tokens: 1_000_000,
                output_tokens: 1_000_000,
                cache_creation_input_tokens: 1_000_000,
                cache_read_input_tokens: 1_000_000,
            },
        };
        assert!((p.cost(&m) - (3.0 + 15.0 + 3.75 + 0.30)).abs() < 1e-9);

        let mut table = BTreeMap::new();
        table.insert(
            "claude".to_owned(),
            ModelPrice {
                input: 1.0,
                output: 1.0,
                cache_write: 1.0,
                cache_read: 1.0,
            },
        );
        table.insert(
            "claude-x".to_owned(),
            ModelPrice {
                input: 2.0,
                output: 2.0,
                cache_write: 2.0,
                cache_read: 2.0,
            },
        );
        let p = Prices::new(&table);
        assert_eq!(p.price(Some("claude-x-1")).input, 2.0);
        assert_eq!(p.price(Some("claude-y-1")).input, 1.0);
    }

    #[test]
    fn bad_prices_are_refused() {
        for bad in ["-1.0", "nan", "inf"] {
            let text = format!(
                "[model.prices.x]\ninput = {bad}\noutput = 1.0\ncache_write = 1.0\ncache_read = 1.0\n"
            );
            let err = Config::from_toml(&text, Vec::new())
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains("model.prices.x"), "{err}");
        }
        let err = Config::from_toml(
            "[[tenants]]\nid = \"a\"\ntoken_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\ndaily_cost_limit_usd = -1.0\n",
            Vec::new(),
        )
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("daily_cost_limit_usd"), "{err}");
    }

    #[test]
    fn a_run_is_refused_once_its_budget_is_reached() {
        let l = SpendLedger::new(&cfg(""));
        l.begin_run("t", "c", Some(0.01)).unwrap();
        l.check("t", "c").unwrap();
        // 1000 sonnet output tokens: $0.015, past the budget.
        l.record("t", "c", &answer("claude-sonnet-4-5", 0, 1000));
        let e = l.check("t", "c").unwrap_err();
        assert_eq!(e.kind, BudgetKind::Run);
        assert!(e.to_string().contains("$0.0150 of $0.0100"), "{e}");
        // Another conversation of the tenant is not held back.
        l.check("t", "other").unwrap();
        let end = l.end_run("t", "c");
        assert_eq!(end.spend.output_tokens, 1000);
        assert_eq!(end.exceeded.map(|e| e.kind), Some(BudgetKind::Run));
        // Without a run, only the tenant's limits apply.
        l.check("t", "c").unwrap();
    }

    #[test]
    fn a_last_answer_past_the_budget_fails_the_run_without_a_refusal() {
        let l = SpendLedger::new(&cfg(""));
        l.begin_run("t", "c", Some(1.0)).unwrap();
        l.record("t", "c", &answer("claude-opus", 0, 20_000));
        assert_eq!(
            l.end_run("t", "c").exceeded.map(|e| e.kind),
            Some(BudgetKind::Run)
        );
        l.begin_run("t", "c", Some(1.0)).unwrap();
        l.record("t", "c", &answer("claude-haiku", 10, 10));
        assert_eq!(l.end_run("t", "c").exceeded, None);
    }

    #[test]
    fn tenant_daily_limits_hold_across_runs_and_roll_over_at_utc_midnight() {
        let now = Arc::new(AtomicU64::new(86_400 * 100 + 3600));
        let clock = now.clone();
        let l = SpendLedger::with_clock(
            &cfg(TENANT),
            Box::new(move || {
                UNIX_EPOCH + std::time::Duration::from_secs(clock.load(Ordering::SeqCst))
            }),
        );
        l.begin_run("t1", "a", None).unwrap();
        l.record("t1", "a", &answer("claude-haiku", 600, 300));
        l.check("t1", "a").unwrap();
        // Background spend of another conversation, outside any run.
        l.record("t1", "b", &answer("claude-haiku", 100, 0));
        let e = l.check("t1", "a").unwrap_err();
        assert_eq!(e.kind, BudgetKind::TenantDailyTokens);
        assert_eq!(
            l.end_run("t1", "a").exceeded.map(|e| e.kind),
            Some(BudgetKind::TenantDailyTokens)
        );
        // A run that starts on a spent day is refused at once.
        assert_eq!(
            l.begin_run("t1", "c", Some(5.0)).unwrap_err().kind,
            BudgetKind::TenantDailyTokens
        );
        // Other tenants have no limit.
        l.begin_run("t2", "c", None).unwrap();
        // The next UTC day starts from zero.
        now.store(86_400 * 101, Ordering::SeqCst);
        l.begin_run("t1", "c", None).unwrap();
        l.check("t1", "c").unwrap();
        assert_eq!(l.tenant_today("t1").tokens(), 0);
    }

    #[test]
    fn reloaded_limits_apply_to_the_next_check() {
        let l = SpendLedger::new(&cfg(""));
        l.record("t1", "a", &answer("claude-haiku", 5000, 0));
        l.check("t1", "a").unwrap();
        l.reload(&cfg(TENANT));
        assert!(l.check("t1", "a").is_err());
        l.reload(&cfg(&TENANT.replace(
            "daily_token_limit = 1000",
            "daily_cost_limit_usd = 1.0",
        )));
        l.check("t1", "a").unwrap();
    }

    #[tokio::test]
    async fn a_metered_body_records_on_end_and_on_drop() {
        use http_body_util::{BodyExt, Full};
        let ledger = Arc::new(SpendLedger::new(&cfg("")));
        let sse = "data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-haiku\",\"usage\":{\"input_tokens\":7,\"output_tokens\":1}}}\n\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":3}}\n\n";
        let payer = || Payer {
            ledger: ledger.clone(),
            tenant: "t".into(),
            conversation: "c".into(),
        };
        let body = MeteredBody::new(
            Full::new(Bytes::from(sse)),
            Scanner::new(200, "text/event-stream"),
            payer(),
        );
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(got, Bytes::from(sse));
        assert_eq!(ledger.tenant_today("t").tokens(), 10);
        // Dropped unread: nothing was seen, nothing is billed, no panic.
        drop(MeteredBody::new(
            Full::new(Bytes::from(sse)),
            Scanner::new(200, "text/event-stream"),
            payer(),
        ));
        assert_eq!(ledger.tenant_today("t").tokens(), 10);
    }
}
