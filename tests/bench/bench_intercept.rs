//! HTTPS through CONNECT on loopback, seen into or not: agentbox's blind
//! tunnel (a domain-only rule), agentbox's interception (a rule with
//! methods, paths and a brokered bearer credential, so every request is
//! judged and rewritten), squid's plain tunnel and squid in ssl-bump mode,
//! against one local HTTPS upstream; no proxy at all is the floor. Run by
//! `just bench-intercept` (`tests/bench/bench-proxy.sh intercept`), which
//! makes squid's CA and starts squid; prints markdown tables and writes the
//! raw results (`tests/bench/record.rs`).
//!
//! ```text
//! bench_intercept certs DIR                  # upstream CA and leaf, token, squid's hosts file
//! bench_intercept serve PORT DIR             # agentbox's proxy on 127.0.0.1:PORT
//! bench_intercept run DIR [--agentbox ADDR] [--squid ADDR] [--squid-bump ADDR]
//!     [--squid-bump-label NAME] [--requests N] [--clients N] [--mib N] [--hosts N]
//!     [--smoke] [--out FILE]
//! ```
//!
//! `run` also times the local CA alone (a leaf issued against a cached
//! one), in its own process, to split a new host's cost.
//!
//! Every request is `GET /bench/...` and the upstream answers 401 unless it
//! carries the bearer token: the client sends it itself everywhere but
//! through agentbox's interception, where it sends a placeholder that the
//! proxy must strip and replace with the brokered one.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed bench

// Shared with the suite; this bench does not use every helper.
#[allow(dead_code)]
mod record;

use agentbox::config::Config;
use agentbox::proxy::ca::LocalCa;
use agentbox::proxy::{AwsEnv, Gateway, ProxyContext};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, HOST};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use record::{summarize, Summary};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A domain-only rule: agentbox tunnels it blind.
const BLIND_HOST: &str = "blind.test";
/// A rule with methods, paths and a credential: agentbox intercepts it.
const API_HOST: &str = "api.bench.test";
/// New names for the first-connection figures: `a<i>.` for agentbox,
/// `s<i>.` for squid, `l<i>.` for the CA alone, so none was seen before.
const FRESH_SUFFIX: &str = "fresh.test";
/// Names made for each proxy's first-connection figures (and written into
/// its name table), at most.
const MAX_HOSTS: usize = 500;
/// What the container sends for the brokered host: the proxy must drop it.
const PLACEHOLDER: &str = "Bearer placeholder-from-the-container";

#[tokio::main]
async fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: bench_intercept certs DIR | serve PORT DIR | run DIR [options]";
    match args.first().map(String::as_str) {
        Some("certs") => certs(Path::new(args.get(1).ok_or(usage)?)),
        Some("serve") => {
            let port = args.get(1).ok_or(usage)?.parse()?;
            serve(port, Path::new(args.get(2).ok_or(usage)?)).await
        }
        Some("run") => run(&args[1..]).await,
        _ => Err(usage.into()),
    }
}

/// The local CA alone, in this process: a leaf issued for a new name
/// (key, signature, TLS configuration) against one taken from the cache.
/// What the proxy adds to a new host's first connection besides its
/// upstream handshake.
fn leaf_cost(dir: &Path, hosts: usize) -> Res<()> {
    let ca = LocalCa::load_or_create(dir)?;
    let names: Vec<String> = fresh_names('l').take(hosts).collect();
    let mut issue = Vec::with_capacity(hosts);
    let mut hit = Vec::with_capacity(hosts);
    for n in &names {
        let t = Instant::now();
        ca.server_config(n)?;
        issue.push(us(t.elapsed()));
        let t = Instant::now();
        ca.server_config(n)?;
        hit.push(us(t.elapsed()));
    }
    record::table("The local CA alone, in process: a new host's leaf against a cached one (µs)");
    record::row("leaf issued (new host)", &summarize(issue));
    record::row("leaf from the cache", &summarize(hit));
    Ok(())
}

fn fresh_names(prefix: char) -> impl Iterator<Item = String> {
    (0..MAX_HOSTS).map(move |i| format!("{prefix}{i}.{FRESH_SUFFIX}"))
}

/// Writes the upstream's CA and its leaf (for every bench name), the
/// brokered token, and a hosts file for squid.
fn certs(dir: &Path) -> Res<()> {
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "bench upstream CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let names = vec![
        BLIND_HOST.to_owned(),
        API_HOST.to_owned(),
        format!("*.{FRESH_SUFFIX}"),
    ];
    let leaf = CertificateParams::new(names)?.signed_by(&key, &issuer)?;
    std::fs::write(dir.join("upstream-ca.pem"), ca.pem())?;
    std::fs::write(dir.join("upstream.pem"), leaf.pem())?;
    std::fs::write(dir.join("upstream.key"), key.serialize_pem())?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    std::fs::write(dir.join("token"), format!("bench-{nanos:x}\n"))?;
    let mut hosts = format!("127.0.0.1 {BLIND_HOST} {API_HOST}\n");
    for n in fresh_names('s') {
        hosts.push_str(&format!("127.0.0.1 {n}\n"));
    }
    std::fs::write(dir.join("hosts"), hosts)?;
    Ok(())
}

/// agentbox's proxy on TCP (what a container's socket leads to): a blind
/// rule, an intercepting rule with a brokered bearer token, and one more
/// for the fresh names; every name resolves to 127.0.0.1 from its table.
async fn serve(port: u16, dir: &Path) -> Res<()> {
    let mut resolve = format!("\"{BLIND_HOST}\" = \"127.0.0.1\"\n\"{API_HOST}\" = \"127.0.0.1\"\n");
    for n in fresh_names('a') {
        resolve.push_str(&format!("\"{n}\" = \"127.0.0.1\"\n"));
    }
    let d = dir.display();
    let text = format!(
        r#"
[proxy]
allowed_ports = []
allow_private_cidrs = ["127.0.0.0/8"]
max_connections_per_container = 4096
[proxy.resolve]
{resolve}
[egress]
ca_dir = "{d}/agentbox-ca"
extra_ca_file = "{d}/upstream-ca.pem"

[[egress.credentials]]
name = "bench-token"
format = "bearer"
secret_file = "{d}/token"

[[egress.rules]]
name = "blind"
host = "{BLIND_HOST}"

[[egress.rules]]
name = "api"
host = "{API_HOST}"
methods = ["GET"]
paths = ["/bench/**"]
credential = "bench-token"

[[egress.rules]]
name = "fresh"
host = "*.{FRESH_SUFFIX}"
methods = ["GET"]
paths = ["/bench/**"]
credential = "bench-token"
"#
    );
    let mut cfg = Config::from_toml(&text, Vec::new())?;
    // Every port: the upstream listens on an ephemeral one.
    cfg.proxy.allowed_ports = (1..=u16::MAX).collect();
    cfg.validate()?;
    let gw = Arc::new(Gateway::new(&cfg, None, AwsEnv::default())?);
    gw.ensure_ca(&cfg)?;
    let c = gw.container(ProxyContext {
        container_id: "bench".into(),
        tenant_id: "bench".into(),
        conversation_id: "bench".into(),
    });
    let l = TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("agentbox proxy listening on 127.0.0.1:{port}");
    loop {
        let (s, _) = l.accept().await?;
        let _ = s.set_nodelay(true);
        gw.accept(&c, s);
    }
}

struct Opts {
    dir: PathBuf,
    agentbox: Option<String>,
    squid: Option<String>,
    squid_bump: Option<String>,
    /// How squid bumps, for its rows' name.
    squid_bump_label: String,
    requests: usize,
    clients: usize,
    mib: usize,
    hosts: usize,
    out: Option<String>,
}

impl Opts {
    fn parse(args: &[String]) -> Res<Self> {
        let mut it = args.iter();
        let dir = PathBuf::from(it.next().ok_or("run DIR")?);
        let mut o = Opts {
            dir,
            agentbox: None,
            squid: None,
            squid_bump: None,
            squid_bump_label: "squid ssl-bump".to_owned(),
            requests: 1000,
            clients: 16,
            mib: 64,
            hosts: 200,
            out: None,
        };
        while let Some(a) = it.next() {
            let mut val = |what: &str| it.next().cloned().ok_or(format!("{a} {what}"));
            match a.as_str() {
                "--agentbox" => o.agentbox = Some(val("ADDR")?),
                "--squid" => o.squid = Some(val("ADDR")?),
                "--squid-bump" => o.squid_bump = Some(val("ADDR")?),
                "--squid-bump-label" => o.squid_bump_label = val("NAME")?,
                "--requests" => o.requests = val("N")?.parse()?,
                "--clients" => o.clients = val("N")?.parse()?,
                "--mib" => o.mib = val("N")?.parse()?,
                "--hosts" => o.hosts = val("N")?.parse()?,
                "--out" => o.out = Some(val("FILE")?),
                // A few of everything: shows the bench still works.
                "--smoke" => (o.requests, o.clients, o.mib, o.hosts) = (20, 2, 1, 3),
                other => return Err(format!("unknown argument {other}").into()),
            }
        }
        if o.hosts > MAX_HOSTS || o.hosts == 0 || o.requests < 10 || o.clients == 0 {
            return Err(
                format!("--hosts 1..={MAX_HOSTS}, --requests >= 10, --clients >= 1").into(),
            );
        }
        Ok(o)
    }
}

/// One way to the upstream: through which proxy, to which name, trusting
/// which CA, sending which `Authorization`.
#[derive(Clone)]
struct Way {
    name: String,
    proxy: Option<String>,
    host: &'static str,
    tls: Arc<rustls::ClientConfig>,
    auth: String,
    /// The prefix of this way's fresh names, when it issues certificates.
    fresh: Option<char>,
}

async fn run(args: &[String]) -> Res<()> {
    let o = Opts::parse(args)?;
    let started = record::start();
    let token = std::fs::read_to_string(o.dir.join("token"))?
        .trim_end()
        .to_owned();
    let bearer = format!("Bearer {token}");
    let up = Upstream::start(&o.dir, &bearer, o.mib).await?;
    let upstream_ca = o.dir.join("upstream-ca.pem");
    let agentbox_ca = o.dir.join("agentbox-ca/ca.pem");
    let squid_ca = o.dir.join("squid-ca.pem");
    // (name, proxy, host, CA the client trusts, Authorization it sends,
    // prefix of fresh names when the way issues certificates); a way whose
    // proxy was not given is left out.
    let candidates = [
        (
            "direct (no proxy)".to_owned(),
            Some(None),
            API_HOST,
            &upstream_ca,
            &bearer,
            None,
        ),
        (
            "agentbox tunnel".to_owned(),
            o.agentbox.as_ref().map(Some),
            BLIND_HOST,
            &upstream_ca,
            &bearer,
            None,
        ),
        (
            "squid tunnel".to_owned(),
            o.squid.as_ref().map(Some),
            BLIND_HOST,
            &upstream_ca,
            &bearer,
            None,
        ),
        (
            "agentbox intercepted".to_owned(),
            o.agentbox.as_ref().map(Some),
            API_HOST,
            &agentbox_ca,
            &PLACEHOLDER.to_owned(),
            Some('a'),
        ),
        (
            o.squid_bump_label.clone(),
            o.squid_bump.as_ref().map(Some),
            API_HOST,
            &squid_ca,
            &bearer,
            Some('s'),
        ),
    ];
    let mut ways = Vec::new();
    for (name, proxy, host, ca, auth, fresh) in candidates {
        let Some(proxy) = proxy else { continue };
        ways.push(Way {
            name,
            proxy: proxy.cloned(),
            host,
            tls: client_tls(ca)?,
            auth: auth.clone(),
            fresh,
        });
    }

    record::table("One request on a new connection: CONNECT + TLS + GET of 100 bytes (µs)");
    let mut phases = Vec::new();
    for w in &ways {
        for _ in 0..o.requests / 10 {
            fresh_request(w, w.host).await?; // warm-up
        }
        let mut total = Vec::with_capacity(o.requests);
        let mut p = [Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..o.requests {
            let t = fresh_request(w, w.host).await?;
            total.push(us(t.total()));
            p[0].push(us(t.connect));
            p[1].push(us(t.tls));
            p[2].push(us(t.request));
        }
        record::row(&w.name, &summarize(total));
        phases.push((w.name.as_str(), p.map(summarize)));
    }

    phase_table("Where a new connection's time goes (µs, p50)", &phases);

    record::table("One request on a kept-alive connection: GET of 100 bytes (µs)");
    for w in &ways {
        let mut conn = open(w, w.host).await?.sender;
        for _ in 0..o.requests / 10 {
            get(&mut conn, w, w.host, "/bench/small").await?;
        }
        let mut v = Vec::with_capacity(o.requests);
        for _ in 0..o.requests {
            let t = Instant::now();
            get(&mut conn, w, w.host, "/bench/small").await?;
            v.push(us(t.elapsed()));
        }
        record::row(&w.name, &summarize(v));
    }

    let total = o.requests * 5;
    let title = format!(
        "{} clients, each on its own kept-alive connection, {total} requests in all",
        o.clients
    );
    record::set_table(&title);
    println!("\n### {title}\n");
    println!(
        "| way | requests/s (best of 3) | median of 3 | {} MiB download, MiB/s (best of 3) | median of 3 |",
        o.mib
    );
    println!("|---|---|---|---|---|");
    for w in &ways {
        let mut rps = Vec::new();
        let mut mibps = Vec::new();
        for _ in 0..3 {
            rps.push(concurrent(w, o.clients, total / o.clients).await?);
            mibps.push(download(w, o.mib).await?);
        }
        let (rps, mibps) = (summarize(rps), summarize(mibps));
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            w.name, rps.max, rps.p50, mibps.max, mibps.p50
        );
        record::record(&format!("{}: requests/s", w.name), &rps);
        record::record(&format!("{}: download MiB/s", w.name), &mibps);
    }

    // Each new name once (the proxy issues its certificate), then at once
    // again (from its cache): pairs, so that noise falls on both alike.
    record::table(&format!(
        "First connection to a host the proxy has not seen, then the same host again, {} hosts (µs)",
        o.hosts
    ));
    let mut host_phases = Vec::new();
    for w in &ways {
        let Some(prefix) = w.fresh else { continue };
        let mut first = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        let mut again = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        for n in fresh_names(prefix).take(o.hosts) {
            for v in [&mut first, &mut again] {
                let t = fresh_request(w, &n).await?;
                v[0].push(us(t.total()));
                v[1].push(us(t.connect));
                v[2].push(us(t.tls));
                v[3].push(us(t.request));
            }
        }
        for (label, v) in [("first connection", first), ("same host again", again)] {
            let [total, c, t, r] = v.map(summarize);
            let name = format!("{}: {label}", w.name);
            record::row(&name, &total);
            host_phases.push((name, [c, t, r]));
        }
    }
    leaf_cost(&o.dir.join("leaf-ca"), o.hosts)?;

    phase_table(
        "Where a first connection's time goes (µs, p50)",
        &host_phases,
    );

    // The bench is only worth its figures if the upstream saw the right
    // credential on every request, brokered or not.
    let (ok, refused) = up.counts();
    if refused > 0 || ok == 0 {
        return Err(format!("upstream: {ok} requests with the token, {refused} without").into());
    }
    record::set_table("Checks");
    record::note(&format!(
        "upstream: {ok} requests, each with the right bearer token (through agentbox's \
         interception: the brokered one, the container's placeholder stripped)"
    ));
    record::save("intercept", started, o.out.as_deref());
    Ok(())
}

/// Microseconds to 0.1 µs: finer is noise, and keeps the raw results small.
fn us(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e7).round() / 10.0
}

/// A TLS client as a fresh process is: the given roots only, ALPN
/// http/1.1, and no session to resume (curl, git and npm start cold).
fn client_tls(ca: &Path) -> Res<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.resumption = Resumption::disabled();
    Ok(Arc::new(cfg))
}

struct Opened {
    sender: SendRequest<Empty<Bytes>>,
    connect: Duration,
    tls: Duration,
}

/// TCP to the proxy (or the upstream), CONNECT, TLS to `host`, HTTP/1.1.
async fn open(w: &Way, host: &str) -> Res<Opened> {
    let t = Instant::now();
    let upstream_port = UPSTREAM_PORT.load(Ordering::Relaxed);
    let tcp = match &w.proxy {
        None => {
            let s = TcpStream::connect(("127.0.0.1", upstream_port as u16)).await?;
            s.set_nodelay(true)?;
            s
        }
        Some(proxy) => {
            let mut s = TcpStream::connect(proxy).await?;
            s.set_nodelay(true)?;
            let target = format!("{host}:{upstream_port}");
            s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
                .await?;
            // Nothing follows the answer until the client speaks TLS, so
            // the head is all that can arrive here.
            let mut head = Vec::with_capacity(256);
            let mut b = [0u8; 256];
            while !head.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut b).await?;
                if n == 0 {
                    return Err("eof before the CONNECT answer".into());
                }
                head.extend_from_slice(&b[..n]);
            }
            if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
                return Err(format!(
                    "{}: CONNECT refused: {}",
                    w.name,
                    String::from_utf8_lossy(&head)
                )
                .into());
            }
            s
        }
    };
    let connect = t.elapsed();
    let t = Instant::now();
    let name = ServerName::try_from(host.to_owned())?;
    let tls = tokio_rustls::TlsConnector::from(w.tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("{}: TLS to {host}: {e}", w.name))?;
    let tls_time = t.elapsed();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(Opened {
        sender,
        connect,
        tls: tls_time,
    })
}

/// One GET, its body read to the end; the body's length.
async fn get(conn: &mut SendRequest<Empty<Bytes>>, w: &Way, host: &str, path: &str) -> Res<usize> {
    conn.ready().await?;
    // With its port: squid builds the URL it forwards from `Host`.
    let port = UPSTREAM_PORT.load(Ordering::Relaxed);
    let req = hyper::Request::get(path)
        .header(HOST, format!("{host}:{port}"))
        .header(AUTHORIZATION, &w.auth)
        .body(Empty::new())?;
    let resp = conn.send_request(req).await?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut n = 0;
    // The start of a refusal's body, for the error.
    let mut said = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            n += data.len();
            if status != hyper::StatusCode::OK && said.len() < 400 {
                said.extend_from_slice(&data[..data.len().min(400)]);
            }
        }
    }
    if status != hyper::StatusCode::OK {
        let said = String::from_utf8_lossy(&said);
        return Err(format!("{}: {path} on {host}: {status}: {said}", w.name).into());
    }
    Ok(n)
}

struct Timed {
    connect: Duration,
    tls: Duration,
    request: Duration,
}

impl Timed {
    fn total(&self) -> Duration {
        self.connect + self.tls + self.request
    }
}

async fn fresh_request(w: &Way, host: &str) -> Res<Timed> {
    let mut o = open(w, host).await?;
    let t = Instant::now();
    let n = get(&mut o.sender, w, host, "/bench/small").await?;
    let request = t.elapsed();
    if n != SMALL.len() {
        return Err(format!("{}: short body {n}", w.name).into());
    }
    Ok(Timed {
        connect: o.connect,
        tls: o.tls,
        request,
    })
}

/// Requests per second of `clients` connections, `each` requests each.
async fn concurrent(w: &Way, clients: usize, each: usize) -> Res<f64> {
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        let mut c = open(w, w.host).await?.sender;
        get(&mut c, w, w.host, "/bench/small").await?;
        conns.push(c);
    }
    let w = Arc::new(w.clone());
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut c in conns {
        let w = w.clone();
        tasks.spawn(async move {
            for _ in 0..each {
                get(&mut c, &w, w.host, "/bench/small").await?;
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok((clients * each) as f64 / t.elapsed().as_secs_f64())
}

/// MiB/s of one download of `mib` MiB on a new connection (its opening
/// included: it is small beside the body).
async fn download(w: &Way, mib: usize) -> Res<f64> {
    let t = Instant::now();
    let mut c = open(w, w.host).await?.sender;
    let n = get(&mut c, w, w.host, "/bench/big").await?;
    if n != mib << 20 {
        return Err(format!("{}: download of {n} bytes, not {mib} MiB", w.name).into());
    }
    Ok(mib as f64 / t.elapsed().as_secs_f64())
}

/// The small answer's body.
const SMALL: &[u8] = &[b'x'; 100];
/// The upstream's port, set once it listens (every way needs it).
static UPSTREAM_PORT: AtomicU64 = AtomicU64::new(0);

/// The HTTPS upstream: `/bench/small` (100 bytes) and `/bench/big`
/// (`mib` MiB), each only with the right bearer token (else 401).
struct Upstream {
    ok: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
}

impl Upstream {
    async fn start(dir: &Path, bearer: &str, mib: usize) -> Res<Self> {
        let certs = CertificateDer::pem_file_iter(dir.join("upstream.pem"))?
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(dir.join("upstream.key"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let l = TcpListener::bind("127.0.0.1:0").await?;
        UPSTREAM_PORT.store(u64::from(l.local_addr()?.port()), Ordering::Relaxed);
        let big = Bytes::from(vec![0x5au8; mib << 20]);
        let (ok, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let bearer = Arc::new(bearer.to_owned());
        let (ok2, refused2) = (ok.clone(), refused.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let _ = tcp.set_nodelay(true);
                let (acceptor, big, bearer) = (acceptor.clone(), big.clone(), bearer.clone());
                let (ok, refused) = (ok2.clone(), refused2.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let authorized = req
                                .headers()
                                .get(AUTHORIZATION)
                                .is_some_and(|v| v.as_bytes() == bearer.as_bytes());
                            let body = match (authorized, req.uri().path()) {
                                (false, _) => None,
                                (true, "/bench/big") => Some(big.clone()),
                                (true, _) => Some(Bytes::from_static(SMALL)),
                            };
                            let resp = match body {
                                Some(b) => {
                                    ok.fetch_add(1, Ordering::Relaxed);
                                    hyper::Response::new(Full::new(b))
                                }
                                None => {
                                    refused.fetch_add(1, Ordering::Relaxed);
                                    let mut r = hyper::Response::new(Full::new(Bytes::new()));
                                    *r.status_mut() = hyper::StatusCode::UNAUTHORIZED;
                                    r
                                }
                            };
                            async move { Ok::<_, std::convert::Infallible>(resp) }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Ok(Self { ok, refused })
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

/// Prints each way's p50 per phase (connect, handshake, request) as one
/// table and records the phases' spread; the totals keep the samples.
fn phase_table<N: AsRef<str>>(title: &str, phases: &[(N, [Summary; 3])]) {
    record::set_table(title);
    println!("\n### {title}\n");
    println!("| way | TCP + CONNECT answered | TLS handshake | GET answered |");
    println!("|---|---|---|---|");
    for (name, [c, t, r]) in phases {
        let name = name.as_ref();
        println!("| {name} | {:.0} | {:.0} | {:.0} |", c.p50, t.p50, r.p50);
        for (phase, s) in [("TCP + CONNECT", c), ("TLS handshake", t), ("GET", r)] {
            let s = Summary {
                samples: Vec::new(),
                ..s.clone()
            };
            record::record(&format!("{name}: {phase}"), &s);
        }
    }
}
