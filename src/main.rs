//! `callfabric`: the one command-line binary of the call-center fabric.

/// mimalloc gives freed pages back to the OS: after a load peak (400,000 completed SIP
/// transactions held for Timer J at 12,000 REGISTER/s) glibc's malloc kept the process's RSS at
/// its peak although the tables had shrunk (issue 16; docs/BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;
mod config;
mod http;
mod logging;
mod password;
mod presence;
mod voicemail;

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand};
use config::{Backend, Loaded};
use statebus::{Bus, BusEvent, Change, DeviceState, LocalBus, Mwi, XmppBus};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "callfabric", version, about = "Multi-site call-center fabric")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Log line format on standard error (default: text; env CALLFABRIC_LOG_FORMAT).
    #[arg(long, global = true, value_enum)]
    log_format: Option<logging::LogFormat>,
}

#[derive(Subcommand)]
enum Cmd {
    /// The state fabric (device state and MWI over XMPP PubSub).
    Statebus {
        #[command(subcommand)]
        cmd: StatebusCmd,
    },
    /// Run the site gateway: SIP registrar on the configured listeners, device state on the bus.
    Gateway {
        /// Config file (TOML) with a [gateway] section.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run an ACD node: answers callers on queue numbers, offers them to agents at any site.
    Acd {
        /// Config file (TOML) with an [acd] section.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a whole site in one process: the gateway and the ACD on the in-process bus (or
    /// the configured one), wired to each other.
    Site {
        /// Config file (TOML) with [gateway] and [acd] sections.
        #[arg(long)]
        config: PathBuf,
    },
    /// The device table (SQL).
    Devices {
        #[command(subcommand)]
        cmd: DevicesCmd,
    },
    /// Queues of a running node (admin API).
    Queue {
        #[command(subcommand)]
        cmd: cli::QueueCmd,
    },
    /// Agents of a running node: pause, unpause, log in and out (admin API).
    Agent {
        #[command(subcommand)]
        cmd: cli::AgentCmd,
    },
    /// Queue members of a running node: add, remove, penalty (admin API).
    Member {
        #[command(subcommand)]
        cmd: cli::MemberCmd,
    },
    /// Live calls of a running node (admin API).
    Calls {
        #[command(flatten)]
        api: cli::Api,
    },
    /// Act on a live call of a running node: a supervisor spies on it (admin API).
    Call {
        #[command(subcommand)]
        cmd: cli::CallCmd,
    },
}

// Parsed once per run: the size of the `Add` variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum DevicesCmd {
    /// Add a device or replace its password (credentials are stored as HA1 only).
    Add {
        /// Config file (TOML) with a [gateway] section naming the database.
        #[arg(long)]
        config: PathBuf,
        /// Username (also the extension's AOR user part).
        #[arg(long)]
        user: String,
        /// Password (visible to `ps` and kept in shell history: prefer a prompt,
        /// --password-file or --password-stdin). Without any of them: prompted on the terminal.
        #[arg(long, conflicts_with_all = ["password_file", "password_stdin"])]
        password: Option<String>,
        /// Read the password from this file (its first line).
        #[arg(long, conflicts_with = "password_stdin")]
        password_file: Option<PathBuf>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// The device may present identities other than its own (From, P-Asserted-Identity).
        #[arg(long)]
        present_any: bool,
        /// Extension routed to this device.
        #[arg(long)]
        extension: Option<String>,
        /// Display name.
        #[arg(long, default_value = "")]
        name: String,
        /// Site the device belongs to (only that site's gateway publishes its state);
        /// default: the config's `[node] site`.
        #[arg(long)]
        site: Option<String>,
        /// Digest algorithms to challenge this device with, comma-separated (e.g. `MD5` for
        /// phones that read only the first challenge); default: the gateway's.
        #[arg(long, default_value = "")]
        digest: String,
        /// The mailbox whose message-waiting lamp the phone shows (`1001@default`); default:
        /// `<user>@default`.
        #[arg(long, default_value = "")]
        mailbox: String,
        /// How the phone learns it: `subscribe` (it SUBSCRIBEs), `unsolicited` (NOTIFY after
        /// every registration and on every change) or `off`.
        #[arg(long, default_value = "subscribe")]
        mwi: String,
        /// The device may listen to, whisper to and barge into calls (as if listed in
        /// `[supervisors] devices`).
        #[arg(long)]
        supervisor: bool,
    },
    /// List the devices.
    List {
        /// Config file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum StatebusCmd {
    /// Print live device and MWI state (a snapshot, then every change).
    Watch {
        /// Config file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
        /// Exit after this many seconds (default: run until interrupted).
        #[arg(long)]
        duration: Option<f64>,
        /// Also publish as this node what stdin says, one command a line: `device KEY=STATE`
        /// or `mwi MAILBOX@CONTEXT=NEW/OLD` (a member whose state a script drives).
        #[arg(long)]
        stdin: bool,
    },
    /// Publish device states / MWI as this node, then exit (or keep them alive with --hold).
    Publish {
        /// Config file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// KEY=STATE, e.g. PJSIP/1000=INUSE (repeatable).
        #[arg(long = "device")]
        devices: Vec<String>,
        /// MAILBOX@CONTEXT=NEW/OLD, e.g. 1000@default=2/5 (repeatable).
        #[arg(long = "mwi")]
        mwi: Vec<String>,
        /// Stay connected (heartbeating) until interrupted.
        #[arg(long)]
        hold: bool,
    },
}

/// The trunk a site's gateway routes the ACD's numbers to (a queue reload adds new ones).
pub(crate) const SITE_ACD_TRUNK: &str = "acd";

fn main() -> Result<()> {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    // The operator commands are clients of a running node's admin API.
    let cli = match cli.cmd {
        Cmd::Queue { cmd } => return cli::queue(cmd),
        Cmd::Agent { cmd } => return cli::agent(cmd),
        Cmd::Member { cmd } => return cli::member(cmd),
        Cmd::Calls { api } => return cli::calls(api),
        Cmd::Call { cmd } => return cli::call_cmd(cmd),
        cmd => Cli { cmd, ..cli },
    };
    // Config is read (and SSL_CERT_FILE possibly set) before the runtime starts any thread.
    let loaded = Loaded::read(config_path(&cli.cmd))?;
    let gateway_cfg = match &cli.cmd {
        Cmd::Gateway { .. } | Cmd::Site { .. } => Some(loaded.gateway()?),
        _ => None,
    };
    let vm_cfg = match &gateway_cfg {
        Some(g) => loaded.voicemail(&g.database, g.t1)?,
        None => None,
    };
    let acd_cfg = match &cli.cmd {
        Cmd::Acd { .. } => Some(loaded.acd(None)?),
        Cmd::Site { .. } => {
            let gw = gateway_cfg
                .as_ref()
                .and_then(|g| g.udp.first().copied())
                .ok_or_else(|| {
                    anyhow!(
                        "{}: site mode needs a UDP listener in [gateway]",
                        config_path(&cli.cmd).display()
                    )
                })?;
            Some(loaded.acd(Some(gw))?)
        }
        _ => None,
    };
    if let Cmd::Devices { cmd } = &cli.cmd {
        let url = loaded.database_url()?;
        let realm = loaded.gateway()?.realm;
        let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
        let site = loaded.config.node.site.clone();
        return rt.block_on(devices(cmd, &url, &realm, &site));
    }
    if let Some(path) = loaded.create_token_file()? {
        println!("admin token written to {}", path.display());
    }
    let http_listen = loaded.http()?;
    let api = ApiExtras {
        reload: {
            let path = loaded.path.clone();
            let f: http::Reloader = Arc::new(move || config::Loaded::read(&path)?.acd_queues());
            Some(f)
        },
        devices: match (loaded.database_url(), &loaded.config.gateway) {
            (Ok(url), Some(g)) => Some((url, g.realm.clone())),
            _ => None,
        },
        site: loaded.config.node.site.clone(),
    };
    let shutdown = loaded.shutdown()?;
    let xmpp_cfg = match loaded.config.statebus.backend {
        Backend::Xmpp => Some(loaded.xmpp_bus()?),
        Backend::Local => None,
    };
    let presence_cfg = match &cli.cmd {
        Cmd::Statebus {
            cmd: StatebusCmd::Publish { .. },
        } => None,
        _ => loaded.presence()?,
    };
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let (bus, xmpp): (Arc<dyn Bus>, Option<XmppBus>) = match xmpp_cfg {
            Some(c) => {
                let b = XmppBus::start(c).map_err(|e| loaded.explain(&e))?;
                (Arc::new(b.clone()), Some(b))
            }
            None => (Arc::new(LocalBus::new(loaded.eid())), None),
        };
        eprintln!(
            "callfabric node {} eid {}",
            loaded.config.node.name,
            bus.eid()
        );
        let presence = presence::start(&loaded, presence_cfg, bus.clone())?;
        let result = match cli.cmd {
            Cmd::Statebus {
                cmd:
                    StatebusCmd::Watch {
                        json,
                        duration,
                        stdin,
                        ..
                    },
            } => watch(bus, xmpp, json, duration, stdin).await,
            Cmd::Statebus {
                cmd:
                    StatebusCmd::Publish {
                        devices, mwi, hold, ..
                    },
            } => publish(bus, xmpp, &devices, &mwi, hold).await,
            Cmd::Gateway { .. } => {
                let mut cfg = gateway_cfg.ok_or_else(|| anyhow!("no gateway configuration"))?;
                let _vm = voicemail::start(vm_cfg, &mut cfg, bus.clone()).await?;
                run_gateway(
                    cfg,
                    None,
                    bus,
                    xmpp,
                    (http_listen, api),
                    shutdown,
                    presence.clone(),
                )
                .await
            }
            Cmd::Acd { .. } => {
                let cfg = acd_cfg.ok_or_else(|| anyhow!("no acd configuration"))?;
                run_gateway_or_acd(
                    None,
                    Some(cfg),
                    bus,
                    xmpp,
                    (http_listen, api),
                    shutdown,
                    presence.clone(),
                )
                .await
            }
            Cmd::Site { .. } => {
                let mut gw = gateway_cfg.ok_or_else(|| anyhow!("no gateway configuration"))?;
                let acd = acd_cfg.ok_or_else(|| anyhow!("no acd configuration"))?;
                let _vm = voicemail::start(vm_cfg, &mut gw, bus.clone()).await?;
                // The gateway sends the queue numbers to the ACD and trusts it as a trunk.
                gw.trunks.push(gateway::server::TrunkConfig {
                    name: SITE_ACD_TRUNK.into(),
                    address: acd.udp,
                    prefixes: acd
                        .numbers
                        .keys()
                        .cloned()
                        .chain([
                            acd.hot_desk.login.clone(),
                            acd.hot_desk.logout.clone(),
                            acd.pause_codes.pause.clone(),
                            acd.pause_codes.unpause.clone(),
                        ])
                        .filter(|p| !p.is_empty())
                        .collect(),
                    strip: 0,
                    inbound_from: Vec::new(),
                    credentials: None,
                    register: None,
                    domain: None,
                    tls: None,
                });
                run_gateway(
                    gw,
                    Some(acd),
                    bus,
                    xmpp,
                    (http_listen, api),
                    shutdown,
                    presence.clone(),
                )
                .await
            }
            Cmd::Devices { .. }
            | Cmd::Queue { .. }
            | Cmd::Agent { .. }
            | Cmd::Member { .. }
            | Cmd::Calls { .. }
            | Cmd::Call { .. } => Ok(()),
        };
        if let Some(p) = presence {
            p.shutdown().await;
        }
        result
    })
}

fn config_path(cmd: &Cmd) -> &std::path::Path {
    match cmd {
        Cmd::Statebus {
            cmd: StatebusCmd::Watch { config, .. } | StatebusCmd::Publish { config, .. },
        }
        | Cmd::Gateway { config }
        | Cmd::Acd { config }
        | Cmd::Site { config }
        | Cmd::Devices {
            cmd: DevicesCmd::Add { config, .. } | DevicesCmd::List { config },
        } => config,
        Cmd::Queue { .. }
        | Cmd::Agent { .. }
        | Cmd::Member { .. }
        | Cmd::Calls { .. }
        | Cmd::Call { .. } => std::path::Path::new(""),
    }
}

fn line(ev: &BusEvent, json: bool) -> Option<String> {
    let (kind, text, js) = match ev {
        BusEvent::Changed(Change::Device { key, state }) => (
            "DEVICE",
            format!("{key} {state}"),
            serde_json::json!({"type": "device", "key": key, "state": state.as_wire()}),
        ),
        BusEvent::Changed(Change::Mwi(m)) => (
            "MWI",
            format!("{} new={} old={}", m.key(), m.new, m.old),
            serde_json::json!({"type": "mwi", "key": m.key(), "new": m.new, "old": m.old}),
        ),
        BusEvent::Changed(Change::PeerUp(hb)) => (
            "PEER",
            format!("{} up site={} role={}", hb.eid, hb.site, hb.role),
            serde_json::json!({"type": "peer", "eid": hb.eid.to_string(), "alive": true, "site": hb.site, "role": hb.role}),
        ),
        BusEvent::Changed(Change::PeerExpired(eid)) => (
            "PEER",
            format!("{eid} expired"),
            serde_json::json!({"type": "peer", "eid": eid.to_string(), "alive": false}),
        ),
        BusEvent::Status(s) => {
            let s = format!("{s:?}").to_lowercase();
            (
                "STATUS",
                s.clone(),
                serde_json::json!({"type": "status", "status": s}),
            )
        }
        BusEvent::Lagged(n) => (
            "LAGGED",
            format!("{n} events lost"),
            serde_json::json!({"type": "lagged", "lost": n}),
        ),
    };
    Some(if json {
        js.to_string()
    } else {
        format!("{kind} {text}")
    })
}

async fn watch(
    bus: Arc<dyn Bus>,
    xmpp: Option<XmppBus>,
    json: bool,
    duration: Option<f64>,
    stdin: bool,
) -> Result<()> {
    let mut rx = bus.subscribe();
    let commands = async {
        if !stdin {
            return std::future::pending().await;
        }
        use tokio::io::AsyncBufReadExt as _;
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            let l = l.trim();
            let done = match l.split_once(' ') {
                Some(("device", arg)) => {
                    parse_device(arg.trim()).map(|(k, st)| bus.publish_device_state(&k, st))
                }
                Some(("mwi", arg)) => parse_mwi(arg.trim()).map(|m| bus.publish_mwi(m)),
                _ if l.is_empty() => Ok(()),
                _ => Err(anyhow!(
                    "stdin: {l:?}: expected `device KEY=STATE` or `mwi MAILBOX@CONTEXT=NEW/OLD`"
                )),
            };
            if let Err(e) = done {
                eprintln!("{e}");
            }
        }
        // stdin closed: keep watching
        std::future::pending::<()>().await
    };
    let deadline = duration.map(|d| tokio::time::Instant::now() + Duration::from_secs_f64(d));
    let run = async {
        while let Some(ev) = statebus::recv(&mut rx).await {
            if let BusEvent::Lagged(_) = ev {
                // Resynchronise: print the whole snapshot again.
                for (k, s) in bus.snapshot().devices {
                    if let Some(l) = line(
                        &BusEvent::Changed(Change::Device { key: k, state: s }),
                        json,
                    ) {
                        println!("{l}");
                    }
                }
            }
            if let Some(l) = line(&ev, json) {
                println!("{l}");
            }
        }
    };
    tokio::select! {
        _ = run => {}
        _ = commands => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {}
    }
    if let Some(x) = xmpp {
        x.shutdown().await;
    }
    Ok(())
}

async fn devices(cmd: &DevicesCmd, url: &str, realm: &str, node_site: &str) -> Result<()> {
    use gateway::devices::{DeviceRecord, DeviceStore};
    let store = DeviceStore::open(url)
        .await
        .with_context(|| format!("opening {url}"))?;
    match cmd {
        DevicesCmd::Add {
            user,
            password,
            password_file,
            password_stdin,
            present_any,
            extension,
            name,
            digest,
            site,

            mailbox,
            mwi,
            supervisor,
            ..
        } => {
            let password = password::read(
                password.as_deref(),
                password_file.as_deref(),
                *password_stdin,
            )?;
            config::check_device_credentials(user, &password)?;
            for t in digest.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if gateway::registrar::digest::Algorithm::from_token(t).is_none() {
                    return Err(anyhow!("--digest: unknown algorithm {t:?} (SHA-256, MD5)"));
                }
            }
            let mut d = DeviceRecord::with_password(user, realm, &password);
            d.present_any = *present_any;
            d.extension = extension.clone();
            d.display_name = name.clone();
            d.digest_algorithms = digest.clone();
            d.site = site.clone().unwrap_or_else(|| node_site.to_string());

            if gateway::devices::MwiMode::parse(mwi).is_none() {
                return Err(anyhow!(
                    "--mwi: {mwi:?} is not subscribe, unsolicited or off"
                ));
            }
            if mailbox.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(anyhow!("--mailbox: {mailbox:?} contains white space"));
            }
            d.mailbox = mailbox.clone();
            d.mwi = mwi.to_ascii_lowercase();
            d.supervisor = *supervisor;
            store.upsert(&d).await?;
            println!("device {user} saved");
        }
        DevicesCmd::List { .. } => {
            for d in store.load_all().await? {
                println!(
                    "{} realm={} site={} extension={} name={:?} mailbox={} mwi={} supervisor={}",
                    d.username,
                    d.realm,
                    d.site,
                    d.extension.as_deref().unwrap_or("-"),
                    d.display_name,
                    d.mailbox_key(),
                    d.mwi,
                    d.supervisor
                );
            }
        }
    }
    Ok(())
}

async fn run_gateway(
    cfg: gateway::server::GatewayConfig,
    acd: Option<acd::node::NodeConfig>,
    bus: Arc<dyn Bus>,
    xmpp: Option<XmppBus>,
    http_listen: HttpSetup,
    shutdown: config::Shutdown,
    presence: Option<statebus::presence::PresenceService>,
) -> Result<()> {
    run_gateway_or_acd(Some(cfg), acd, bus, xmpp, http_listen, shutdown, presence).await
}

/// What the HTTP API needs from the config besides its section.
struct ApiExtras {
    reload: Option<http::Reloader>,
    devices: Option<(String, String)>,
    /// `[node] site`: devices created through the API belong to it unless they name one.
    site: String,
}

type HttpSetup = (Option<config::Http>, ApiExtras);

/// Runs a gateway, an ACD node or both (site mode), printing one line per event on stdout:
/// `gateway ready …`, `acd ready …`, `DEVICE <key> <STATE>`, `CALL <n> ENDED …`,
/// `QUEUELOG <queue_log line>`.
async fn run_gateway_or_acd(
    cfg: Option<gateway::server::GatewayConfig>,
    acd_cfg: Option<acd::node::NodeConfig>,
    bus: Arc<dyn Bus>,
    xmpp: Option<XmppBus>,
    (http_cfg, extras): HttpSetup,
    shutdown: config::Shutdown,
    presence: Option<statebus::presence::PresenceService>,
) -> Result<()> {
    // SIGINT and SIGTERM are ours from here on: they start a graceful shutdown.
    let mut signals = Signals::new()?;
    let mut rx = bus.subscribe();
    // Counts published before this subscription (voicemail's startup publish, items already
    // heard from the fabric) are printed as they stand now.
    for m in bus.snapshot().mwi.values() {
        println!("MWI {} new={} old={}", m.key(), m.new, m.old);
    }
    let gw = match cfg {
        Some(cfg) => Some(Arc::new(
            gateway::server::Gateway::start(cfg, bus.clone())
                .await
                .context("starting the gateway")?,
        )),
        None => None,
    };
    let fmt = |v: &[std::net::SocketAddr]| {
        v.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    if let Some(gw) = &gw {
        println!(
            "gateway ready udp={} tcp={} tls={}",
            fmt(&gw.local.udp),
            fmt(&gw.local.tcp),
            fmt(&gw.local.tls)
        );
    }
    let _hangups = reload_on_sighup(gw.as_ref().and_then(|g| g.tls_state()))?;
    let node = match acd_cfg {
        Some(c) => Some(Arc::new(
            acd::node::AcdNode::start(c, bus.clone())
                .await
                .context("starting the ACD node")?,
        )),
        None => None,
    };
    if let Some(n) = &node {
        println!("acd ready udp={}", n.local);
    }
    // Supervisors' presence shows the ACD's pause reasons, wrap-up and queues.
    let _feed = match (&node, presence) {
        (Some(n), Some(p)) => Some(AbortOnDrop(tokio::spawn(presence::feed_from_acd(
            n.clone(),
            p,
        )))),
        _ => None,
    };
    let api = async {
        match http_cfg {
            Some(h) => {
                let listen = h.listen;
                let mut sources = http::Sources::new(bus.clone(), gw.clone(), node.clone());
                sources.xmpp = xmpp.clone();
                sources.token = h.token.map(Arc::from);
                sources.reload = node.as_ref().and(extras.reload);
                sources.devices = extras.devices;
                sources.site = extras.site;
                http::serve(listen, sources)
                    .await
                    .with_context(|| format!("status API on {listen}"))
            }
            None => std::future::pending().await,
        }
    };
    let mut queue_log = node.as_ref().map(|n| n.events.subscribe());
    let print_queue_log = async {
        let Some(rx) = queue_log.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            match rx.recv().await {
                Ok(acd::node::NodeEvent::QueueLog(l)) => println!("QUEUELOG {l}"),
                Ok(acd::node::NodeEvent::Announced { caller, prompts }) => {
                    println!("ANNOUNCE {caller} {}", prompts.join(","))
                }
                Ok(acd::node::NodeEvent::Offered {
                    caller,
                    interface,
                    gateway,
                }) => println!("OFFER {caller} {interface} {gateway}"),
                Ok(acd::node::NodeEvent::OfferUnanswered { interface, gateway }) => {
                    println!("OFFER UNANSWERED {interface} {gateway}")
                }
                Ok(acd::node::NodeEvent::GlobalWaiting { queue, total }) => {
                    println!("WAITING {queue} {total}")
                }
                Ok(acd::node::NodeEvent::Reach { gateway, reachable }) => {
                    println!("REACH {gateway} {}", if reachable { "up" } else { "down" })
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "queue_log events dropped")
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    };
    let print = async {
        while let Some(ev) = statebus::recv(&mut rx).await {
            match ev {
                BusEvent::Changed(Change::Device { key, state }) => {
                    println!("DEVICE {key} {state}")
                }
                BusEvent::Changed(Change::Mwi(m)) => {
                    println!("MWI {} new={} old={}", m.key(), m.new, m.old)
                }

                // Fabric members as they come and go (queue advertisements, issue 15).
                BusEvent::Changed(Change::PeerUp(hb)) => println!(
                    "PEER {} up site={} role={} queues={}",
                    hb.eid,
                    hb.site,
                    hb.role,
                    hb.queues.join(",")
                ),
                BusEvent::Changed(Change::PeerExpired(eid)) => println!("PEER {eid} expired"),
                _ => {}
            }
        }
    };
    let mut calls = gw.as_ref().map(|g| g.events.subscribe());
    let print_calls = async {
        let Some(calls) = calls.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            match calls.recv().await {
                Ok(ev) => println!("{}", call_line(&ev)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "call events dropped")
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    };
    // A status API that cannot listen is a fatal configuration error, reported after the
    // services are stopped.
    let mut result = Ok(());
    let stop = async {
        let sig = signals.next().await;
        graceful_shutdown(sig, &mut signals, gw.as_deref(), node.as_deref(), shutdown).await
    };
    tokio::select! {
        _ = print => {}
        _ = print_calls => {}
        _ = print_queue_log => {}
        r = api => result = r,
        _ = stop => {}
    }
    // Lines produced by the shutdown itself and not printed yet.
    if let Some(rx) = queue_log.as_mut() {
        while let Ok(ev) = rx.try_recv() {
            if let acd::node::NodeEvent::QueueLog(l) = ev {
                println!("QUEUELOG {l}");
            }
        }
    }
    if let Some(calls) = calls.as_mut() {
        while let Ok(ev) = calls.try_recv() {
            println!("{}", call_line(&ev));
        }
    }
    if let Some(gw) = gw {
        gw.stop();
    }
    if let Some(n) = node {
        n.stop();
    }
    if let Some(x) = xmpp {
        x.shutdown().await;
    }
    result
}

/// On SIGHUP: the gateway's TLS certificate, key and roots reloaded from their files
/// (`TLS RELOADED` or `TLS RELOAD FAILED <why>` on stdout).
fn reload_on_sighup(
    tls: Option<Arc<gateway::transport::TlsState>>,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    use tokio::signal::unix::{signal, SignalKind};
    let Some(tls) = tls else { return Ok(None) };
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    Ok(Some(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => println!("TLS RELOADED"),
                Err(e) => {
                    println!("TLS RELOAD FAILED {e}");
                    tracing::warn!(error = %e, "TLS reload failed; the previous certificate stays");
                }
            }
        }
    })))
}

/// SIGINT and SIGTERM.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

/// The graceful shutdown (first signal): new calls refused (503 + Retry-After), the calls in
/// progress given up to the drain time (a second signal ends it at once), then the ACD hangs
/// up its callers (COMPLETECALLER / ABANDON written) and the gateway the calls left (BYE to
/// both legs, CDRs written, registrations stored, device states withdrawn). A line on stdout
/// (`SHUTDOWN …`) and in the log at each step.
async fn graceful_shutdown(
    sig: &str,
    signals: &mut Signals,
    gw: Option<&gateway::server::Gateway>,
    node: Option<&acd::node::AcdNode>,
    cfg: config::Shutdown,
) {
    let active = || gw.map_or(0, |g| g.active_calls()) + node.map_or(0, |n| n.active_calls());
    let until = std::time::Instant::now() + cfg.drain;
    println!(
        "SHUTDOWN {sig}: draining {} calls, up to {:.1} s; new calls get 503",
        active(),
        cfg.drain.as_secs_f64()
    );
    tracing::info!(
        signal = sig,
        calls = active(),
        drain_secs = cfg.drain.as_secs_f64(),
        "shutdown requested"
    );
    if let Some(g) = gw {
        g.drain(until, cfg.retry_after);
    }
    if let Some(n) = node {
        n.drain(cfg.retry_after);
    }
    loop {
        if active() == 0 {
            println!("SHUTDOWN no call left");
            break;
        }
        if std::time::Instant::now() >= until {
            println!("SHUTDOWN drain time over with {} calls", active());
            break;
        }
        tokio::select! {
            s = signals.next() => {
                println!("SHUTDOWN {s} again: drain ended, hanging up {} calls", active());
                tracing::info!(signal = s, "shutdown: second signal, drain shortened");
                if let Some(g) = gw {
                    g.drain(std::time::Instant::now(), cfg.retry_after);
                }
                break;
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    // The ACD first: its BYEs reach the phones through the gateway, which ends those calls
    // as hang-ups; then the gateway ends whatever is left.
    if let Some(n) = node {
        match n.finish().await {
            Some(r) => println!(
                "SHUTDOWN acd finished callers={} byes_unanswered={} queue_log_writes_awaited={}",
                r.callers_ended, r.byes_unanswered, r.rows_written
            ),
            None => println!("SHUTDOWN acd had stopped"),
        }
    }
    if let Some(g) = gw {
        match g.finish().await {
            Some(r) => println!(
                "SHUTDOWN gateway finished calls={} byes_unanswered={} cdr_writes_awaited={}",
                r.calls_ended, r.byes_unanswered, r.cdrs_written
            ),
            None => println!("SHUTDOWN gateway had stopped"),
        }
    }
    println!("SHUTDOWN done");
}

/// `CALL <n> ENDED <reason> a_in=… a_out=… …`: one line per ended call with the relay's
/// figures (packets and bytes each way, RFC 3550 loss and jitter, the latched source).
fn call_line(ev: &gateway::server::GatewayEvent) -> String {
    use std::fmt::Write as _;
    let (call, reason, a, b, moh) = match ev {
        gateway::server::GatewayEvent::CallEnded {
            call,
            reason,
            a,
            b,
            moh,
        } => (call, reason, a, b, moh),
        gateway::server::GatewayEvent::OfferRefused {
            device,
            reason,
            late_ms,
        } => return format!("OFFER REFUSED {device} {reason} late_ms={late_ms}"),
        gateway::server::GatewayEvent::Mwi { line } => return line.clone(),
    };
    let mut line = format!("CALL {call} ENDED {reason}");
    for (side, st, moh) in [("a", a, moh[0]), ("b", b, moh[1])] {
        if let Some(st) = st {
            // Music on hold the gateway sent to this side (counted in `_out`).
            let _ = write!(line, " {side}_moh={moh}");
            let _ = write!(
                line,
                " {side}_in={} {side}_in_bytes={} {side}_out={} {side}_out_bytes={} \
                 {side}_rtcp_in={} {side}_rtcp_out={} {side}_lost={} {side}_jitter_ms={:.2} {side}_latched={}",
                st.rtp_packets_in,
                st.rtp_bytes_in,
                st.rtp_packets_out,
                st.rtp_bytes_out,
                st.rtcp_packets_in,
                st.rtcp_packets_out,
                st.lost,
                st.jitter_ms,
                st.latched_source
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "-".into()),
            );
        }
    }
    line
}

fn parse_device(s: &str) -> Result<(String, DeviceState)> {
    let (k, v) = s
        .rsplit_once('=')
        .ok_or_else(|| anyhow!("--device {s:?}: expected KEY=STATE"))?;
    let st = DeviceState::from_wire(v);
    if st == DeviceState::Unknown && !v.eq_ignore_ascii_case("UNKNOWN") {
        return Err(anyhow!(
            "--device {s:?}: {v:?} is not a device state (NOT_INUSE, INUSE, BUSY, ...)"
        ));
    }
    Ok((k.to_string(), st))
}

fn parse_mwi(s: &str) -> Result<Mwi> {
    let bad = || anyhow!("--mwi {s:?}: expected MAILBOX@CONTEXT=NEW/OLD");
    let (k, v) = s.rsplit_once('=').ok_or_else(bad)?;
    let (n, o) = v.split_once('/').ok_or_else(bad)?;
    let (m, c) = Mwi::split_key(k);
    Ok(Mwi::new(
        m,
        c,
        n.trim().parse().map_err(|_| bad())?,
        o.trim().parse().map_err(|_| bad())?,
    ))
}

async fn publish(
    bus: Arc<dyn Bus>,
    xmpp: Option<XmppBus>,
    devices: &[String],
    mwi: &[String],
    hold: bool,
) -> Result<()> {
    let devices: Vec<_> = devices
        .iter()
        .map(|d| parse_device(d))
        .collect::<Result<_>>()?;
    let mwi: Vec<_> = mwi.iter().map(|m| parse_mwi(m)).collect::<Result<_>>()?;
    for (k, s) in &devices {
        bus.publish_device_state(k, *s);
    }
    for m in &mwi {
        bus.publish_mwi(m.clone());
    }
    if let Some(x) = &xmpp {
        if !x.wait_online(Duration::from_secs(30)).await {
            return Err(anyhow!("could not reach the XMPP server within 30 s"));
        }
        let want = (devices.len() + mwi.len()) as u64;
        let t0 = tokio::time::Instant::now();
        while x.stats().publish_acked < want {
            if t0.elapsed() > Duration::from_secs(30) {
                return Err(anyhow!(
                    "the pubsub service confirmed {} of {want} publishes",
                    x.stats().publish_acked
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        println!("published {want}");
    }
    if hold {
        tokio::signal::ctrl_c().await?;
    }
    if let Some(x) = xmpp {
        x.shutdown().await;
    }
    Ok(())
}

/// Aborts a background task when dropped (the feed ends with the node it reads).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
