//! Runs a SIPp (3.6.1, `sip-tester`) scenario to completion against a target, on loopback, with
//! its own free SIP and control ports and its logs in a private temporary directory.
//!
//! ```no_run
//! use integration::sipp::{run_scenario, SippOpts, SippTransport};
//! let opts = SippOpts {
//!     transport: SippTransport::Tcp,
//!     ..SippOpts::user("1000", "secret")
//! };
//! let out = run_scenario("tests/sipp/register_ok.xml".as_ref(), "127.0.0.1:5060".parse()?, opts)?;
//! assert!(out.passed(), "{}", out.describe());
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::{free_udp_port, require_binary};

/// SIP transport SIPp uses (one socket for all calls).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SippTransport {
    /// `-t u1`
    #[default]
    Udp,
    /// `-t t1`
    Tcp,
}

impl SippTransport {
    fn flag(self) -> &'static str {
        match self {
            SippTransport::Udp => "u1",
            SippTransport::Tcp => "t1",
        }
    }
}

/// Options of one SIPp run.
#[derive(Clone, Debug)]
pub struct SippOpts {
    /// `-t u1` / `-t t1`.
    pub transport: SippTransport,
    /// `-s`: the `[service]` of the scenario (user part of the Request-URI, From, To, Contact).
    pub service: Option<String>,
    /// `-au`: digest user name (SIPp's default is the `-s` value).
    pub auth_user: Option<String>,
    /// `-ap`: digest password (SIPp's default is "password").
    pub auth_password: Option<String>,
    /// `-m`: number of calls, after which SIPp exits.
    pub calls: u32,
    /// `-r`: calls per second (SIPp's default is 10).
    pub rate: Option<f64>,
    /// `-key name value` pairs, `[name]` in the scenario.
    pub keys: Vec<(String, String)>,
    /// Whole-run limit: passed as `-timeout` (SIPp then fails with `-timeout_error`) and as
    /// `-recv_timeout` (a missing answer aborts the call), and enforced by killing SIPp shortly
    /// after.
    pub timeout: Duration,
    /// Local SIP port (`-p`); a free one when `None`.
    pub local_port: Option<u16>,
    /// Anything else, appended verbatim (e.g. `-aa`, `-nr`).
    pub extra_args: Vec<String>,
}

impl Default for SippOpts {
    fn default() -> Self {
        SippOpts {
            transport: SippTransport::Udp,
            service: None,
            auth_user: None,
            auth_password: None,
            calls: 1,
            rate: None,
            keys: Vec::new(),
            timeout: Duration::from_secs(15),
            local_port: None,
            extra_args: Vec::new(),
        }
    }
}

impl SippOpts {
    /// One call as `user` (`-s user -au user -ap password`), over UDP.
    pub fn user(user: &str, password: &str) -> Self {
        SippOpts {
            service: Some(user.to_owned()),
            auth_user: Some(user.to_owned()),
            auth_password: Some(password.to_owned()),
            ..SippOpts::default()
        }
    }
}

/// What a finished SIPp run reported.
#[derive(Clone, Debug)]
pub struct SippOutcome {
    /// SIPp's exit code: 0 = every call succeeded, 1 = at least one failed, 97 = stopped by an
    /// internal command, 99 = no call processed, 255/254 = fatal (e.g. cannot bind). `None` when
    /// killed by a signal (our wall-clock limit).
    pub exit_code: Option<i32>,
    /// `SuccessfulCall(C)` of the last `-trace_stat` line (0 when there is none).
    pub successful: u64,
    /// `FailedCall(C)` of the last `-trace_stat` line (0 when there is none).
    pub failed: u64,
    /// True when we had to kill SIPp because it outlived `timeout`.
    pub killed: bool,
    /// The `-trace_err` log (unexpected messages, failed checks, auth errors).
    pub errors: String,
    /// The `-trace_msg` log (every message sent and received).
    pub messages: String,
    /// SIPp's own stdout + stderr (the last screen; fatal errors go here).
    pub output: String,
    /// The command line, for messages.
    pub command: String,
}

impl SippOutcome {
    /// Exit code 0 and at least one successful call.
    pub fn passed(&self) -> bool {
        self.exit_code == Some(0) && self.successful > 0 && self.failed == 0
    }

    /// A multi-line summary for assertion messages: counts, error log, message log and output.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "sipp exit={:?} successful={} failed={} killed={}\n  {}",
            self.exit_code, self.successful, self.failed, self.killed, self.command
        );
        let _ = writeln!(s, "--- error log ---\n{}", tail(&self.errors, 60));
        let _ = writeln!(s, "--- message log ---\n{}", tail(&self.messages, 120));
        let _ = writeln!(s, "--- output ---\n{}", tail(&self.output, 30));
        s
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `scenario` (a `-sf` XML file) against `target` and waits for SIPp to exit (at most
/// `opts.timeout` plus a grace period, then it is killed). SIPp is bound to 127.0.0.1 on a free
/// port with its own control port, and writes its logs into a private temporary directory.
///
/// A failing scenario is an `Ok` outcome with `passed() == false`; `Err` is for SIPp that cannot
/// be found or started.
pub fn run_scenario(
    scenario: &Path,
    target: SocketAddr,
    opts: SippOpts,
) -> anyhow::Result<SippOutcome> {
    let mut running = SippProcess::spawn(scenario, Some(target), &opts)?;
    running.wait()
}

/// A SIPp started in the background (e.g. a UAS answering the gateway's OPTIONS); [`wait`]
/// collects the outcome, dropping it kills SIPp.
///
/// [`wait`]: SippProcess::wait
pub struct SippProcess {
    child: Option<Child>,
    dir: tempfile::TempDir,
    timeout: Duration,
    started: Instant,
    command: String,
    local_port: u16,
}

impl SippProcess {
    /// Starts SIPp on `scenario`; `target` is `None` for a UAS scenario that only waits for
    /// requests.
    pub fn spawn(
        scenario: &Path,
        target: Option<SocketAddr>,
        opts: &SippOpts,
    ) -> anyhow::Result<Self> {
        let sipp = require_binary("sipp")?;
        let scenario = std::fs::canonicalize(scenario)
            .with_context(|| format!("scenario {} not found", scenario.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("sipp-")
            .tempdir()
            .context("cannot create a temporary directory for SIPp")?;
        // A port free for the transport in use.
        // SIPp binds its media on -mp .. -mp+3 (audio and video, RTP and RTCP): a SIP or
        // control port picked (and released) before the media range was chosen may fall in it
        // ("Unable to bind video RTP socket", seen in CI), so the picks avoid it.
        let media = opts
            .extra_args
            .windows(2)
            .find(|w| w[0] == "-mp")
            .and_then(|w| w[1].parse::<u16>().ok());
        let clashes = |p: u16| media.is_some_and(|m| (m..m.saturating_add(4)).contains(&p));
        let local_port = opts.local_port.unwrap_or_else(|| loop {
            let p = match opts.transport {
                SippTransport::Udp => free_udp_port(),
                SippTransport::Tcp => crate::free_tcp_port(),
            };
            if !clashes(p) {
                break p;
            }
        });
        let ctrl_port = loop {
            let p = free_udp_port();
            if !clashes(p) && p != local_port {
                break p;
            }
        };
        let timeout_secs = opts.timeout.as_secs().max(1);

        let mut args: Vec<String> = vec!["-sf".into(), scenario.display().to_string()];
        if let Some(target) = target {
            args.push(target.to_string());
        }
        args.extend(
            [
                "-t",
                opts.transport.flag(),
                "-i",
                "127.0.0.1",
                "-mi",
                "127.0.0.1",
            ]
            .map(String::from),
        );
        args.extend(["-p".into(), local_port.to_string()]);
        args.extend(["-cp".into(), ctrl_port.to_string()]);
        args.extend(["-m".into(), opts.calls.to_string()]);
        if let Some(rate) = opts.rate {
            args.extend(["-r".into(), rate.to_string()]);
        }
        if let Some(s) = &opts.service {
            args.extend(["-s".into(), s.clone()]);
        }
        if let Some(u) = &opts.auth_user {
            args.extend(["-au".into(), u.clone()]);
        }
        if let Some(p) = &opts.auth_password {
            args.extend(["-ap".into(), p.clone()]);
        }
        for (k, v) in &opts.keys {
            args.extend(["-key".into(), k.clone(), v.clone()]);
        }
        args.extend([
            "-timeout".into(),
            format!("{timeout_secs}s"),
            "-timeout_error".into(),
        ]);
        if target.is_some() {
            // A UAC waits at most this long for each answer; a UAS waits for its first request
            // for the whole run instead.
            args.extend([
                "-recv_timeout".into(),
                format!("{}", opts.timeout.as_millis()),
            ]);
        }
        args.extend(
            [
                "-nostdin",
                "-trace_err",
                "-error_file",
                "errors.log",
                "-trace_msg",
                "-message_file",
                "messages.log",
                "-trace_stat",
                "-stf",
                "stat.csv",
            ]
            .map(String::from),
        );
        args.extend(opts.extra_args.iter().cloned());

        let command = format!("{} {}", sipp.display(), args.join(" "));
        let out = std::fs::File::create(dir.path().join("output.log"))?;
        let err = out.try_clone()?;
        let child = Command::new(&sipp)
            .args(&args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {command}"))?;
        Ok(SippProcess {
            child: Some(child),
            dir,
            timeout: opts.timeout,
            started: Instant::now(),
            command,
            local_port,
        })
    }

    /// The SIP port SIPp is bound to on 127.0.0.1.
    pub fn local_port(&self) -> u16 {
        self.local_port
    }

    /// Its message log (`-trace_msg`) so far, while it runs: to step a test in time with it.
    pub fn messages_so_far(&self) -> String {
        self.read("messages.log")
    }

    /// Its console output and error log so far (for a test's diagnostics while it runs).
    pub fn output_so_far(&self) -> String {
        format!(
            "--- SIPp output ---\n{}\n--- SIPp errors ---\n{}",
            self.read("output.log"),
            self.read("errors.log")
        )
    }

    /// True while SIPp has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for SIPp to exit (killing it `timeout` + 5 s after start) and collects the outcome.
    pub fn wait(&mut self) -> anyhow::Result<SippOutcome> {
        let Some(mut child) = self.child.take() else {
            bail!("SIPp outcome already collected");
        };
        let limit = self.timeout + Duration::from_secs(5);
        let mut killed = false;
        let status: ExitStatus = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if self.started.elapsed() >= limit {
                let _ = child.kill();
                killed = true;
                break child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Ok(self.outcome(status.code(), killed))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read(self.path(name))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn outcome(&self, exit_code: Option<i32>, killed: bool) -> SippOutcome {
        let (successful, failed) = parse_stat(&self.read("stat.csv"));
        SippOutcome {
            exit_code,
            successful,
            failed,
            killed,
            errors: self.read("errors.log"),
            messages: self.read("messages.log"),
            output: self.read("output.log"),
            command: self.command.clone(),
        }
    }
}

impl Drop for SippProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `(SuccessfulCall(C), FailedCall(C))` of the last data line of a `-trace_stat` CSV
/// (`;`-separated, header line first).
pub fn parse_stat(csv: &str) -> (u64, u64) {
    let s = parse_stats(csv);
    (s.successful, s.failed)
}

/// The cumulative counters of the last data line of a `-trace_stat` CSV that say whether a
/// run was clean (all 0 when the file has no data line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SippStats {
    /// `SuccessfulCall(C)`.
    pub successful: u64,
    /// `FailedCall(C)` (includes `FailedUnexpectedMessage(C)` and the other `Failed…` causes).
    pub failed: u64,
    /// `Retransmissions(C)`: messages SIPp had to send again (a late or lost answer).
    pub retransmissions: u64,
    /// `FailedUnexpectedMessage(C)`: calls aborted by a message the scenario did not expect.
    pub unexpected: u64,
    /// `OutOfCallMsgs(C)` + `DeadCallMsgs(C)`: messages that matched no live call.
    pub stray: u64,
    /// `IncomingCall(C)` + `OutgoingCall(C)`: calls created.
    pub created: u64,
}

impl SippStats {
    /// Field-wise sum (several SIPp processes of one step).
    pub fn add(&mut self, o: &SippStats) {
        self.successful += o.successful;
        self.failed += o.failed;
        self.retransmissions += o.retransmissions;
        self.unexpected += o.unexpected;
        self.stray += o.stray;
        self.created += o.created;
    }
}

/// [`SippStats`] of the last data line of a `-trace_stat` CSV (`;`-separated, header line
/// first).
pub fn parse_stats(csv: &str) -> SippStats {
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return SippStats::default();
    };
    let Some(last) = lines.next_back() else {
        return SippStats::default();
    };
    let names: Vec<&str> = header.split(';').collect();
    let values: Vec<&str> = last.split(';').collect();
    let get = |name: &str| -> u64 {
        names
            .iter()
            .position(|n| n.trim() == name)
            .and_then(|i| values.get(i))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    SippStats {
        successful: get("SuccessfulCall(C)"),
        failed: get("FailedCall(C)"),
        retransmissions: get("Retransmissions(C)"),
        unexpected: get("FailedUnexpectedMessage(C)"),
        stray: get("OutOfCallMsgs(C)") + get("DeadCallMsgs(C)"),
        created: get("IncomingCall(C)") + get("OutgoingCall(C)"),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_stat;

    #[test]
    fn parses_the_last_stat_line() {
        let csv = "StartTime;SuccessfulCall(P);SuccessfulCall(C);FailedCall(P);FailedCall(C);\n\
                   x;0;0;0;0;\n\
                   y;1;3;0;2;\n";
        assert_eq!(parse_stat(csv), (3, 2));
        assert_eq!(parse_stat(""), (0, 0));
    }

    #[test]
    fn parses_the_counters_that_make_a_run_unclean() {
        let csv = "StartTime;OutgoingCall(C);SuccessfulCall(C);FailedCall(C);\
                   FailedUnexpectedMessage(C);OutOfCallMsgs(C);DeadCallMsgs(C);Retransmissions(C);\n\
                   x;1;0;0;0;0;0;0;\n\
                   y;10;7;3;2;4;1;5;\n";
        let s = super::parse_stats(csv);
        assert_eq!(
            s,
            super::SippStats {
                successful: 7,
                failed: 3,
                retransmissions: 5,
                unexpected: 2,
                stray: 5,
                created: 10,
            }
        );
    }
}
