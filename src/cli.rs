//! The operator CLI over the admin API (`callfabric queue show`, `callfabric agent pause …`,
//! `callfabric member add …`, `callfabric calls`, `callfabric call spy …`): an HTTP client (hyper) of the node named by
//! `--config` (its `[http]` listen address and token) or by `--url` and `--token`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Which node, and its admin token.
#[derive(Args, Debug, Clone)]
pub struct Api {
    /// The node's config file: its [http] listen address and token.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The node's API, e.g. `http://127.0.0.1:8088` (instead of --config).
    #[arg(long)]
    url: Option<String>,
    /// The admin token (instead of the config's).
    #[arg(long)]
    token: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum QueueCmd {
    /// Queues, their members and callers, as Asterisk's `queue show`.
    Show {
        /// One queue (default: all).
        queue: Option<String>,
        #[command(flatten)]
        api: Api,
        /// The floor as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Reload queues, members and numbers from the node's config file.
    Reload {
        #[command(flatten)]
        api: Api,
    },
}

#[derive(Subcommand, Debug)]
pub enum AgentCmd {
    /// Pause an agent (in all its queues unless --queue), with a reason.
    Pause {
        /// Interface (`PJSIP/2001`; a bare user gets `PJSIP/`).
        agent: String,
        #[arg(long)]
        queue: Option<String>,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        api: Api,
    },
    /// Unpause an agent.
    Unpause {
        agent: String,
        #[arg(long)]
        queue: Option<String>,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        api: Api,
    },
    /// Log an agent into a queue (a dynamic member).
    Login {
        agent: String,
        #[arg(long)]
        queue: String,
        #[arg(long, default_value_t = 0)]
        penalty: i32,
        #[command(flatten)]
        api: Api,
    },
    /// Log an agent out of a queue.
    Logout {
        agent: String,
        #[arg(long)]
        queue: String,
        #[command(flatten)]
        api: Api,
    },
}

#[derive(Subcommand, Debug)]
pub enum MemberCmd {
    /// Add a member to a queue at run time.
    Add {
        queue: String,
        interface: String,
        #[arg(long, default_value_t = 0)]
        penalty: i32,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        api: Api,
    },
    /// Remove a (dynamic) member.
    Remove {
        queue: String,
        interface: String,
        #[command(flatten)]
        api: Api,
    },
    /// Set a member's penalty (in all its queues unless --queue).
    Penalty {
        interface: String,
        penalty: i32,
        #[arg(long)]
        queue: Option<String>,
        #[command(flatten)]
        api: Api,
    },
}

#[derive(Subcommand, Debug)]
pub enum CallCmd {
    /// A supervisor listens to, whispers to or barges into a gateway call: the gateway calls
    /// the supervisor's phone and joins it to the call once answered.
    Spy {
        /// The gateway's call number (`callfabric calls`).
        call: u64,
        /// The supervisor's device (`2001`).
        #[arg(long)]
        supervisor: String,
        /// `listen`, `whisper` (the agent hears the supervisor) or `barge` (both do).
        #[arg(long, default_value = "listen")]
        mode: String,
        /// The agent's device, when it is the calling party of the call (default: the called
        /// party hears a whisper).
        #[arg(long)]
        agent: Option<String>,
        #[command(flatten)]
        api: Api,
    },
}

fn iface(a: &str) -> String {
    if a.contains('/') {
        a.to_owned()
    } else {
        format!("PJSIP/{a}")
    }
}

/// The node's base URL (`host:port`) and token.
fn target(api: &Api) -> Result<(String, Option<String>)> {
    let (mut addr, mut token) = (None, api.token.clone());
    if let Some(path) = &api.config {
        let loaded = crate::config::Loaded::read(path)?;
        let http = loaded
            .http()?
            .ok_or_else(|| anyhow!("{}: no [http] section", path.display()))?;
        let mut a = http.listen;
        if a.ip().is_unspecified() {
            a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        addr = Some(a.to_string());
        token = token.or(http.token);
    }
    if let Some(u) = &api.url {
        let rest = u
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("--url {u:?}: expected http://host:port"))?;
        addr = Some(rest.trim_end_matches('/').to_owned());
    }
    let addr = addr.ok_or_else(|| anyhow!("name the node with --config FILE or --url URL"))?;
    Ok((addr, token))
}

/// One request; the JSON answer, or the API's error as an error.
async fn call(api: &Api, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
    use http_body_util::BodyExt as _;
    let (addr, token) = target(api)?;
    let stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    .map_err(|_| anyhow!("{addr}: no answer within 5 s"))?
    .with_context(|| format!("connecting to the node's API at {addr}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.as_str());
    if let Some(t) = &token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let body = match body {
        Some(b) => {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
            bytes::Bytes::from(b.to_string())
        }
        None => bytes::Bytes::new(),
    };
    let resp = tokio::time::timeout(
        Duration::from_secs(30),
        sender.send_request(req.body(http_body_util::Full::new(body))?),
    )
    .await
    .map_err(|_| anyhow!("{addr}: no answer within 30 s"))??;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let v: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| json!({ "error": String::from_utf8_lossy(&bytes).trim().to_owned() }));
    if !status.is_success() {
        let msg = v["error"].as_str().unwrap_or("").to_owned();
        return Err(anyhow!("{method} {path}: {status}: {msg}"));
    }
    Ok(v)
}

fn rt() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn queue(cmd: QueueCmd) -> Result<()> {
    rt()?.block_on(async {
        match cmd {
            QueueCmd::Show { queue, api, json } => {
                let floor = call(&api, "GET", "/admin/queues", None).await?;
                if json {
                    println!("{floor:#}");
                } else {
                    print!("{}", queue_show(&floor, queue.as_deref())?);
                }
            }
            QueueCmd::Reload { api } => {
                let r = call(&api, "POST", "/admin/reload", None).await?;
                println!(
                    "reloaded: added {} updated {} kept {}",
                    r["added"], r["updated"], r["kept"]
                );
            }
        }
        Ok(())
    })
}

pub fn agent(cmd: AgentCmd) -> Result<()> {
    rt()?.block_on(async {
        let (api, path, body, done) = match cmd {
            AgentCmd::Pause {
                agent,
                queue,
                reason,
                api,
            } => (
                api,
                "/admin/pause",
                json!({"interface": iface(&agent), "queue": queue, "reason": reason}),
                format!("{} paused", iface(&agent)),
            ),
            AgentCmd::Unpause {
                agent,
                queue,
                reason,
                api,
            } => (
                api,
                "/admin/unpause",
                json!({"interface": iface(&agent), "queue": queue, "reason": reason}),
                format!("{} unpaused", iface(&agent)),
            ),
            AgentCmd::Login {
                agent,
                queue,
                penalty,
                api,
            } => (
                api,
                "/admin/members",
                json!({"interface": iface(&agent), "queue": queue, "penalty": penalty}),
                format!("{} logged in to {queue}", iface(&agent)),
            ),
            AgentCmd::Logout { agent, queue, api } => (
                api,
                "/admin/members/remove",
                json!({"interface": iface(&agent), "queue": queue}),
                format!("{} logged out of {queue}", iface(&agent)),
            ),
        };
        call(&api, "POST", path, Some(body)).await?;
        println!("{done}");
        Ok(())
    })
}

pub fn member(cmd: MemberCmd) -> Result<()> {
    rt()?.block_on(async {
        let (api, path, body, done) = match cmd {
            MemberCmd::Add {
                queue,
                interface,
                penalty,
                name,
                api,
            } => (
                api,
                "/admin/members",
                json!({"interface": interface, "queue": queue, "penalty": penalty, "name": name}),
                format!("added {interface} to {queue}"),
            ),
            MemberCmd::Remove {
                queue,
                interface,
                api,
            } => (
                api,
                "/admin/members/remove",
                json!({"interface": interface, "queue": queue}),
                format!("removed {interface} from {queue}"),
            ),
            MemberCmd::Penalty {
                interface,
                penalty,
                queue,
                api,
            } => (
                api,
                "/admin/penalty",
                json!({"interface": interface, "queue": queue, "penalty": penalty}),
                format!("{interface} penalty {penalty}"),
            ),
        };
        call(&api, "POST", path, Some(body)).await?;
        println!("{done}");
        Ok(())
    })
}

pub fn calls(api: Api) -> Result<()> {
    rt()?.block_on(async {
        let v = call(&api, "GET", "/admin/calls", None).await?;
        let acd = v["acd"].as_array().cloned().unwrap_or_default();
        if acd.is_empty() {
            println!("No queue calls");
        }
        for c in acd {
            println!(
                "{} from {} in {} {} {}({}s)",
                s(&c["caller"]),
                s(&c["from"]),
                s(&c["queue"]),
                s(&c["state"]),
                c["agent"]
                    .as_str()
                    .map(|a| format!("with {a} "))
                    .unwrap_or_default(),
                c["duration_secs"]
            );
        }
        for c in v["gateway"].as_array().cloned().unwrap_or_default() {
            println!(
                "call {}: {} -> {} ({} -> {}) lost a={} b={} jitter a={:.1} ms b={:.1} ms",
                c["call"],
                s(&c["caller"]),
                s(&c["dialled"]),
                s(&c["caller_device"]),
                s(&c["callee_device"]),
                c["a"]["lost"],
                c["b"]["lost"],
                c["a"]["jitter_ms"].as_f64().unwrap_or(0.0),
                c["b"]["jitter_ms"].as_f64().unwrap_or(0.0),
            );
        }
        Ok(())
    })
}

pub fn call_cmd(cmd: CallCmd) -> Result<()> {
    rt()?.block_on(async {
        let CallCmd::Spy {
            call: n,
            supervisor,
            mode,
            agent,
            api,
        } = cmd;
        let r = call(
            &api,
            "POST",
            &format!("/admin/calls/{n}/spy"),
            Some(json!({"supervisor": supervisor, "mode": mode, "agent": agent})),
        )
        .await?;
        println!(
            "calling {} at {} to {} call {}",
            s(&r["supervisor"]),
            s(&r["calling"]),
            s(&r["mode"]),
            r["call"]
        );
        Ok(())
    })
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// Asterisk's `ast_devstate2str`.
fn devstate_text(wire: &str) -> &'static str {
    match wire {
        "NOT_INUSE" => "Not in use",
        "INUSE" => "In use",
        "BUSY" => "Busy",
        "INVALID" => "Invalid",
        "UNAVAILABLE" => "Unavailable",
        "RINGING" => "Ringing",
        "RINGINUSE" => "Ring+Inuse",
        "ONHOLD" => "On Hold",
        _ => "Unknown",
    }
}

/// The floor as app_queue's `queue show` prints it.
pub fn queue_show(floor: &Value, only: Option<&str>) -> Result<String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    let queues = floor["queues"].as_array().cloned().unwrap_or_default();
    let mut shown = 0;
    for q in &queues {
        let name = s(&q["queue"]);
        if only.is_some_and(|o| !o.eq_ignore_ascii_case(name)) {
            continue;
        }
        shown += 1;
        let waiting = q["waiting"].as_array().cloned().unwrap_or_default();
        let maxlen = match q["maxlen"].as_u64() {
            Some(0) | None => "unlimited".to_owned(),
            Some(n) => n.to_string(),
        };
        let _ = writeln!(
            out,
            "{name} has {} calls (max {maxlen}) in '{}' strategy ({}s holdtime, {}s talktime), \
             W:{}, C:{}, A:{}, SL:{:.1}% within {}s",
            waiting.len(),
            s(&q["strategy"]),
            q["holdtime_weighted_secs"],
            q["average_talk_secs"],
            q["weight"],
            q["completed"],
            q["abandoned"],
            q["service_level_pct"].as_f64().unwrap_or(0.0),
            q["servicelevel_secs"],
        );
        let agents = q["agents"].as_array().cloned().unwrap_or_default();
        if agents.is_empty() {
            out.push_str("   No Members\n");
        } else {
            out.push_str("   Members: \n");
            for a in &agents {
                let (iface, mname) = (s(&a["interface"]), s(&a["name"]));
                let _ = write!(out, "      {mname}");
                if !mname.eq_ignore_ascii_case(iface) {
                    let _ = write!(out, " ({iface})");
                }
                if let Some(p) = a["penalty"].as_i64().filter(|p| *p != 0) {
                    let _ = write!(out, " with penalty {p}");
                }
                if a["dynamic"].as_bool() == Some(true) {
                    out.push_str(" (dynamic)");
                }
                let state = s(&a["state"]);
                if matches!(state, "INUSE" | "BUSY" | "ONHOLD" | "RINGINUSE") {
                    out.push_str(" (in call)");
                }
                if a["paused"].as_bool() == Some(true) {
                    let secs = a["paused_secs"].as_u64().unwrap_or(0);
                    match a["pause_reason"].as_str().filter(|r| !r.is_empty()) {
                        Some(r) => {
                            let _ = write!(out, " (paused:{r} was {secs} secs ago)");
                        }
                        None => {
                            let _ = write!(out, " (paused was {secs} secs ago)");
                        }
                    }
                }
                if a["wrapup"].as_bool() == Some(true) {
                    out.push_str(" (in wrapup)");
                }
                let _ = write!(out, " ({})", devstate_text(state));
                match (a["calls"].as_u64(), a["last_call_secs"].as_u64()) {
                    (Some(n), Some(ago)) if n > 0 => {
                        let _ = write!(out, " has taken {n} calls (last was {ago} secs ago)");
                    }
                    _ => out.push_str(" has taken no calls yet"),
                }
                out.push('\n');
            }
        }
        if waiting.is_empty() {
            out.push_str("   No Callers\n");
        } else {
            out.push_str("   Callers: \n");
            for c in &waiting {
                let w = c["wait_secs"].as_u64().unwrap_or(0);
                let _ = writeln!(
                    out,
                    "      {}. {} (wait: {}:{:02}, prio: {})",
                    c["position"],
                    s(&c["caller"]),
                    w / 60,
                    w % 60,
                    c["priority"]
                );
            }
        }
        out.push('\n');
    }
    if let Some(o) = only {
        if shown == 0 {
            return Err(anyhow!("No such queue: {o}"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `queue show` reads as app_queue's: header, members with paused reason and state, callers
    /// with position, wait and priority.
    #[test]
    fn queue_show_like_asterisk() {
        let floor = json!({"queues": [{
            "queue": "support", "strategy": "ringall", "maxlen": 0, "weight": 0,
            "holdtime_weighted_secs": 12, "average_talk_secs": 95, "completed": 3,
            "abandoned": 1, "service_level_pct": 66.66, "servicelevel_secs": 20,
            "agents": [
                {"interface": "PJSIP/2001", "name": "PJSIP/2001", "penalty": 0, "dynamic": false,
                 "state": "NOT_INUSE", "paused": true, "pause_reason": "Lunch", "paused_secs": 75,
                 "wrapup": false, "calls": 2, "last_call_secs": 300},
                {"interface": "PJSIP/2002", "name": "Bob", "penalty": 2, "dynamic": true,
                 "state": "INUSE", "paused": false, "pause_reason": null, "wrapup": false,
                 "calls": 0, "last_call_secs": null}],
            "waiting": [
                {"position": 1, "caller": "acd-1-7", "wait_secs": 83, "priority": 5},
                {"position": 2, "caller": "acd-1-8", "wait_secs": 4, "priority": 0}]
        }]});
        let text = queue_show(&floor, None).expect("show");
        assert_eq!(
            text,
            "support has 2 calls (max unlimited) in 'ringall' strategy (12s holdtime, 95s talktime), W:0, C:3, A:1, SL:66.7% within 20s\n\
             \x20  Members: \n\
             \x20     PJSIP/2001 (paused:Lunch was 75 secs ago) (Not in use) has taken 2 calls (last was 300 secs ago)\n\
             \x20     Bob (PJSIP/2002) with penalty 2 (dynamic) (in call) (In use) has taken no calls yet\n\
             \x20  Callers: \n\
             \x20     1. acd-1-7 (wait: 1:23, prio: 5)\n\
             \x20     2. acd-1-8 (wait: 0:04, prio: 0)\n\n"
        );
        assert!(queue_show(&floor, Some("sales")).is_err());
    }
}
