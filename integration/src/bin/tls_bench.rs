//! Benchmark: digest-authenticated REGISTERs per second over SIP/TLS, callfabric's gateway
//! against Kamailio 5.6 with its `tls` module (registrar + usrloc + auth, the same accounts) in
//! the same run, the two systems' steps interleaved in rounds. SIPp 3.6 here is built without
//! TLS, so the load generator is ours (rustls, in this process): `--conns` TLS connections,
//! each a closed loop of REGISTER → 401 → REGISTER with digest (MD5, qop=auth) → 200, each
//! connection its own account. The server under test runs in another process (the gateway in
//! a child of this binary, `--serve`; Kamailio forked, workers counted), so its CPU time per
//! REGISTER pair is measured apart from the generator's.
//!
//! ```text
//! cargo build --release -p integration --bin tls_bench
//! target/release/tls_bench [--conns 32] [--secs 5] [--rounds 3]
//! ```

use anyhow::{bail, Context, Result};
use gateway::devices::{DeviceRecord, DeviceStore};
use gateway::registrar::client::{answer_challenge, ClientCredentials};
use gateway::server::Gateway;
use gateway::transport::TlsConfig;
use integration::bench::{self, Kamailio, KillOnDrop};
use integration::certs::{self, Certs};
use sip_core::framing::{Frame, StreamDecoder};
use sip_core::message::{self, SipMessage};
use statebus::{Eid, LocalBus};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FIRST_USER: u32 = 1000;

fn password(user: u32) -> String {
    format!("pw{user}")
}

/// `--serve DIR UDP_PORT TLS_PORT USERS`: the gateway alone in this process until killed.
fn serve(argv: &[String]) -> Result<()> {
    let [dir, udp, tls, users] = argv else {
        bail!("--serve DIR UDP_PORT TLS_PORT USERS");
    };
    let dir = Path::new(dir);
    let users: u32 = users.parse()?;
    let udp = SocketAddr::from(([127, 0, 0, 1], udp.parse()?));
    let tls = SocketAddr::from(([127, 0, 0, 1], tls.parse()?));
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let db = format!("sqlite://{}", dir.join("bench.db").display());
        let store = DeviceStore::open(&db).await?;
        for u in 0..users {
            let user = FIRST_USER + u;
            store
                .upsert(&DeviceRecord::with_password(
                    &user.to_string(),
                    "bench",
                    &password(user),
                ))
                .await?;
        }
        let mut cfg = bench::gateway_config(udp, db);
        cfg.streams.tls = vec![tls];
        cfg.streams.tls_files = Some(TlsConfig {
            cert: dir.join("site-cert.pem"),
            key: dir.join("site-key.pem"),
            ca: None,
            reload_interval: Duration::ZERO,
        });
        cfg.streams.max_connections_per_source = 4096;
        let gw = Gateway::start(cfg, Arc::new(LocalBus::new(Eid([2, 0, 0, 0, 0, 11])))).await?;
        println!("ready");
        std::future::pending::<()>().await;
        drop(gw);
        anyhow::Ok(())
    })
}

fn kamailio_cfg(udp: u16, tls: u16, users: u32, dir: &Path) -> Result<String> {
    let tls_cfg = dir.join("kamailio-tls.cfg");
    std::fs::write(
        &tls_cfg,
        format!(
            "[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\nrequire_certificate = no\n\
             private_key = {}\ncertificate = {}\n\n[client:default]\nverify_certificate = no\n\
             require_certificate = no\n",
            dir.join("site-key.pem").display(),
            dir.join("site-cert.pem").display()
        ),
    )?;
    let children = bench::cores();
    let last = FIRST_USER + users;
    Ok(format!(
        r#"#!KAMAILIO
debug=0
log_stderror=yes
fork=yes
children={children}
tcp_children={children}
enable_tls=yes
tcp_max_connections=4096
tls_max_connections=4096
auto_aliases=no
dns=no
rev_dns=no
max_while_loops=100000
listen=udp:127.0.0.1:{udp}
listen=tls:127.0.0.1:{tls}
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "tls.so"
loadmodule "kex.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "htable.so"
loadmodule "auth.so"
loadmodule "textops.so"
modparam("tls", "config", "{tls_cfg}")
modparam("usrloc", "db_mode", 0)
modparam("htable", "htable", "users=>size=12;")
modparam("auth", "secret", "benchsecret")
event_route[htable:mod-init] {{
    $var(i) = {FIRST_USER};
    while ($var(i) < {last}) {{
        $sht(users=>$(var(i){{s.int}})) = "pw" + $(var(i){{s.int}});
        $var(i) = $var(i) + 1;
    }}
}}
request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (!is_method("REGISTER")) {{ sl_send_reply("405", "Method Not Allowed"); exit; }}
    if ($sht(users=>$fU) == $null) {{ auth_challenge("$fd", "1"); exit; }}
    if (!pv_auth_check("$fd", "$sht(users=>$fU)", "0", "1")) {{ auth_challenge("$fd", "1"); exit; }}
    if (!save("location")) {{ sl_reply_error(); }}
    exit;
}}
"#,
        tls_cfg = tls_cfg.display()
    ))
}

/// One connection's closed loop until `stop`: REGISTER pairs completed go to `done`, anything
/// else (an unexpected status, a broken connection) to `failed`.
async fn client(
    connector: tokio_rustls::TlsConnector,
    target: SocketAddr,
    user: u32,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) {
    let run = async {
        let tcp = tokio::net::TcpStream::connect(target).await?;
        tcp.set_nodelay(true)?;
        let local = tcp.local_addr()?;
        let name = rustls::pki_types::ServerName::IpAddress(target.ip().into());
        let mut s = connector.connect(name, tcp).await?;
        let mut dec = StreamDecoder::new();
        let mut buf = vec![0u8; 16 * 1024];
        let creds = ClientCredentials {
            username: user.to_string(),
            password: password(user),
        };
        let uri = format!("sip:{target}");
        let mut n: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let base = |cseq: u32, auth: &str| {
                format!(
                    "REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bK{user}x{n}x{cseq}\r\n\
                     From: <sip:{user}@{target}>;tag={user}t{n}\r\nTo: <sip:{user}@{target}>\r\n\
                     Call-ID: {user}-{n}@{local}\r\nCSeq: {cseq} REGISTER\r\n\
                     Contact: <sip:{user}@{local};transport=tls>\r\n{auth}Max-Forwards: 70\r\n\
                     Expires: 3600\r\nContent-Length: 0\r\n\r\n"
                )
            };
            s.write_all(base(1, "").as_bytes()).await?;
            let r = read_response(&mut s, &mut dec, &mut buf).await?;
            if r.status_code.code() != 401 {
                failed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Some(h) = answer_challenge(&r, "REGISTER", &uri, &creds, "bench", 1) else {
                bail!("no answerable challenge");
            };
            s.write_all(base(2, &format!("{h}\r\n")).as_bytes()).await?;
            let r = read_response(&mut s, &mut dec, &mut buf).await?;
            if r.status_code.code() == 200 {
                done.fetch_add(1, Ordering::Relaxed);
            } else {
                failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        anyhow::Ok(())
    };
    if let Err(e) = run.await {
        failed.fetch_add(1, Ordering::Relaxed);
        eprintln!("  connection {user}: {e}");
    }
}

async fn read_response<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    dec: &mut StreamDecoder,
    buf: &mut [u8],
) -> Result<message::Response> {
    loop {
        while let Some(f) = dec.next_frame() {
            if let Frame::Message(m) = f {
                if let Ok(SipMessage::Response(r)) = message::parse(&m) {
                    return Ok(r);
                }
            }
        }
        let n = s.read(buf).await?;
        if n == 0 {
            bail!("connection closed");
        }
        dec.feed(buf.get(..n).unwrap_or_default());
    }
}

struct Figures {
    rate: f64,
    cpu_us: f64,
    failed: u64,
}

/// `conns` connections against `target` for `secs`; the server is `pid` (+ children).
fn step(
    rt: &tokio::runtime::Runtime,
    connector: &tokio_rustls::TlsConnector,
    target: SocketAddr,
    (pid, children): (u32, bool),
    conns: u32,
    secs: u32,
) -> Figures {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..conns)
        .map(|i| {
            rt.spawn(client(
                connector.clone(),
                target,
                FIRST_USER + i,
                stop.clone(),
                done.clone(),
                failed.clone(),
            ))
        })
        .collect();
    // Warm-up (handshakes, first registrations), then the measured window.
    std::thread::sleep(Duration::from_secs(1));
    let (d0, c0, t0) = (
        done.load(Ordering::Relaxed),
        bench::cpu_secs(pid, children),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs(u64::from(secs)));
    let (d1, c1, el) = (
        done.load(Ordering::Relaxed),
        bench::cpu_secs(pid, children),
        t0.elapsed(),
    );
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = rt.block_on(t);
    }
    let pairs = (d1 - d0).max(1) as f64;
    Figures {
        rate: pairs / el.as_secs_f64(),
        cpu_us: (c1 - c0) * 1e6 / pairs,
        failed: failed.load(Ordering::Relaxed),
    }
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("--serve") {
        return serve(&argv[1..]);
    }
    let (mut conns, mut secs, mut rounds) = (32u32, 5u32, 3u32);
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        let v: u32 = it
            .next()
            .with_context(|| format!("{a} needs a number"))?
            .parse()?;
        match a.as_str() {
            "--conns" => conns = v,
            "--secs" => secs = v,
            "--rounds" => rounds = v,
            _ => bail!("unknown argument {a}"),
        }
    }
    let dir = tempfile::Builder::new().prefix("tls_bench-").tempdir()?;
    let Certs { ca, .. } = certs::make(dir.path(), "site")?;
    let users = conns;
    // The gateway in a child process.
    let (g_udp, g_tls) = (integration::free_udp_port(), integration::free_tcp_port());
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--serve")
        .arg(dir.path())
        .args([g_udp.to_string(), g_tls.to_string(), users.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("gateway.log"))?)
        .spawn()?;
    let mut out = child.stdout.take().context("stdout")?;
    let g_pid = child.id();
    let _gw = KillOnDrop(Some(child));
    let mut line = [0u8; 6];
    std::io::Read::read_exact(&mut out, &mut line).context("gateway did not start")?;
    let gw_target = SocketAddr::from(([127, 0, 0, 1], g_tls));
    // Kamailio with the same certificate and accounts.
    let (k_udp, k_tls) = (integration::free_udp_port(), integration::free_tcp_port());
    let kam = Kamailio::start(
        &kamailio_cfg(k_udp, k_tls, users, dir.path())?,
        SocketAddr::from(([127, 0, 0, 1], k_udp)),
        dir.path(),
    )?;
    let k_pid = kam.pid().context("kamailio has no pid")?;
    let k_target = SocketAddr::from(([127, 0, 0, 1], k_tls));
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&ca)?;
    for c in
        <rustls::pki_types::CertificateDer<'_> as rustls::pki_types::pem::PemObject>::pem_slice_iter(
            &pem,
        )
    {
        roots.add(c?)?;
    }
    let cc = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cc));
    let rt = tokio::runtime::Runtime::new()?;
    println!(
        "tls_bench: {conns} TLS connections (one account each), closed loop REGISTER -> 401 -> \
         REGISTER (MD5, qop=auth) -> 200; {secs} s per step after 1 s warm-up, {rounds} rounds, \
         systems alternated; {} cores, load {}",
        bench::cores(),
        bench::loadavg()
    );
    let mut res: [Vec<Figures>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=rounds {
        for sys in [round as usize % 2, (round as usize + 1) % 2] {
            let (name, target, who) = if sys == 0 {
                ("callfabric", gw_target, (g_pid, false))
            } else {
                ("kamailio", k_target, (k_pid, true))
            };
            let _ = bench::settle(who.0, who.1);
            let f = step(&rt, &connector, target, who, conns, secs);
            println!(
                "round {round} {name:<10} {:>8.0} REGISTER/s  {:>7.1} µs CPU per REGISTER (challenge + auth)  failed {}",
                f.rate, f.cpu_us, f.failed
            );
            res[sys].push(f);
        }
    }
    let med = |v: &[Figures], f: fn(&Figures) -> f64| bench::median(v.iter().map(f).collect());
    let (r0, r1) = (med(&res[0], |f| f.rate), med(&res[1], |f| f.rate));
    let (c0, c1) = (med(&res[0], |f| f.cpu_us), med(&res[1], |f| f.cpu_us));
    println!(
        "median: callfabric {:.0} REGISTER/s, {:.1} µs CPU each; kamailio {:.0} REGISTER/s, {:.1} µs CPU each; CPU ratio {:.2}x",
        r0.unwrap_or(0.0),
        c0.unwrap_or(0.0),
        r1.unwrap_or(0.0),
        c1.unwrap_or(0.0),
        c0.unwrap_or(0.0) / c1.unwrap_or(1.0).max(1e-9)
    );
    println!("load at the end: {}", bench::loadavg());
    drop(kam);
    Ok(())
}
