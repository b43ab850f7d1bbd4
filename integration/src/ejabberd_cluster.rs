//! A private two-node (or more) ejabberd cluster on loopback, for tests and benchmarks.
//!
//! ejabberd clusters through Erlang distribution: the nodes replicate Mnesia (accounts, PubSub
//! nodes and items, sessions) and route stanzas to each other. Nodes find each other through
//! `epmd`; the cluster runs its **own** epmd on a free loopback port (`epmd -port P -address
//! 127.0.0.1`, a child of this process, killed on drop), so it never touches a system epmd on
//! 4369 and several clusters can run side by side. Every node runs with `ERL_EPMD_PORT=P`, one
//! cookie, and the first node's certificates.
//!
//! Start: node 0 starts and gets the accounts; each further node starts empty and joins with
//! `ejabberd_cluster:join/1`, called over Erlang RPC from a short-lived hidden node (what
//! `ejabberdctl join_cluster` does, without `ejabberdctl`'s `su` to user `ejabberd`). The join
//! replaces the joining node's Mnesia with a copy of the cluster's and restarts ejabberd inside
//! it; the launcher then waits until its c2s port serves again and the node lists every member.
//!
//! A node killed with [`EjabberdCluster::kill`] comes back with [`EjabberdCluster::restart`]:
//! same directory, ports and node name; Mnesia rejoins the running members by itself.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::xmpp_server::{random_hex, XmppServer};
use crate::{free_tcp_port, require_binary};

/// A running ejabberd cluster and its private epmd.
pub struct EjabberdCluster {
    nodes: Vec<XmppServer>,
    cookie: String,
    epmd_port: u16,
    epmd: Child,
}

impl std::fmt::Debug for EjabberdCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EjabberdCluster")
            .field("nodes", &self.nodes)
            .field("epmd_port", &self.epmd_port)
            .finish()
    }
}

impl EjabberdCluster {
    /// Starts `size` (≥ 2) clustered ejabberd nodes for `fabric.test` with the accounts `users`
    /// (all with `password`), and returns when every node serves c2s and lists all members.
    pub fn start(size: usize, users: &[&str], password: &str) -> anyhow::Result<EjabberdCluster> {
        if size < 2 {
            bail!("a cluster needs at least two nodes, not {size}");
        }
        let epmd_port = free_tcp_port();
        let epmd = Command::new(require_binary("epmd")?)
            .args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start epmd")?;
        let token = random_hex(4);
        let mut cluster = EjabberdCluster {
            nodes: Vec::new(),
            cookie: random_hex(16),
            epmd_port,
            epmd,
        };
        cluster.wait_epmd()?;
        let first = XmppServer::start_cluster_member(
            users,
            password,
            &format!("cf{token}n0"),
            &cluster.cookie,
            epmd_port,
            None,
        )
        .context("cluster node 0")?;
        cluster.nodes.push(first);
        for i in 1..size {
            let node = XmppServer::start_cluster_member(
                &[],
                password,
                &format!("cf{token}n{i}"),
                &cluster.cookie,
                epmd_port,
                Some(&cluster.nodes[0]),
            )
            .with_context(|| format!("cluster node {i}"))?;
            cluster.nodes.push(node);
            cluster.join(i)?;
        }
        Ok(cluster)
    }

    /// The nodes (index 0 started first).
    pub fn nodes(&self) -> &[XmppServer] {
        &self.nodes
    }

    /// One node.
    pub fn node(&self, i: usize) -> &XmppServer {
        &self.nodes[i]
    }

    /// The c2s address of node `i`.
    pub fn c2s_addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].c2s_addr()
    }

    /// PEM of the CA every node's certificate is signed by.
    pub fn ca_cert(&self) -> &std::path::Path {
        self.nodes[0].ca_cert()
    }

    /// `kill -9` of node `i` (a crash: the others notice when distribution drops).
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].kill()
    }

    /// Starts the killed (or stopped) node `i` again with its data; it rejoins the cluster.
    /// Returns when it serves c2s and the others list it again.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].start_again()?;
        self.wait_members(i, Duration::from_secs(60))
    }

    /// The Erlang nodes node `i` is clustered with (itself included), as it reports them.
    pub fn members_seen_by(&self, i: usize) -> anyhow::Result<Vec<String>> {
        let out = self.rpc(
            i,
            "io:format(\"~s~n\", [string:join([atom_to_list(N) || N <- lists:sort(ejabberd_cluster:get_nodes())], \",\")])",
        )?;
        Ok(out
            .trim()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect())
    }

    fn wait_epmd(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.epmd.try_wait()? {
                bail!("epmd exited ({st}) on port {}", self.epmd_port);
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.epmd_port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("epmd does not listen on 127.0.0.1:{}", self.epmd_port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Node `i` joins node 0's cluster.
    fn join(&mut self, i: usize) -> anyhow::Result<()> {
        let target = self.nodes[0].erlang_node().to_owned();
        let out = self.rpc(
            i,
            &format!("io:format(\"~p~n\", [ejabberd_cluster:join('{target}')])"),
        )?;
        if out.trim() != "ok" {
            bail!(
                "node {i} could not join {target}: {out}\nlog tail:\n{}",
                self.nodes[i].log_tail()
            );
        }
        self.wait_members(i, Duration::from_secs(60))
    }

    /// Waits until node `i` serves c2s and both it and node 0 list every node.
    fn wait_members(&mut self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        self.nodes[i].wait_ready()?;
        let deadline = Instant::now() + timeout;
        let want = {
            let mut v: Vec<String> = self
                .nodes
                .iter()
                .map(|n| n.erlang_node().to_owned())
                .collect();
            v.sort();
            v
        };
        loop {
            let seen: Vec<_> = [0, i]
                .iter()
                .map(|&n| self.members_seen_by(n).unwrap_or_default())
                .collect();
            if seen.iter().all(|s| *s == want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("cluster members after {timeout:?}: {seen:?}, want {want:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Evaluates the Erlang expression `expr` (printing its answer) on node `i` from a hidden,
    /// short-lived node; returns what it printed.
    fn rpc(&self, i: usize, expr: &str) -> anyhow::Result<String> {
        let target = self.nodes[i].erlang_node();
        let me = format!("cfctl{}@localhost", random_hex(4));
        let code = format!(
            "R = rpc:call('{target}', erlang, apply, [fun() -> {expr} end, []], 120000), \
             case R of ok -> ok; {{badrpc, E}} -> io:format(\"badrpc ~p~n\", [E]); _ -> ok end, \
             halt()."
        );
        let out = Command::new(require_binary("erl")?)
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("HOME", self.nodes[i].dir())
            .args([
                "-sname",
                &me,
                "-setcookie",
                &self.cookie,
                "-hidden",
                "-noinput",
            ])
            .args(["-start_epmd", "false"])
            .args(["-kernel", "inet_dist_use_interface", "{127,0,0,1}"])
            .args(["-eval", &code])
            .stdin(Stdio::null())
            .output()
            .context("run erl for an RPC")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() || stdout.contains("badrpc") {
            bail!(
                "RPC to {target} failed ({}): {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    }
}

impl Drop for EjabberdCluster {
    fn drop(&mut self) {
        // nodes first (each stops itself on drop), then their epmd
        self.nodes.clear();
        let _ = self.epmd.kill();
        let _ = self.epmd.wait();
    }
}
