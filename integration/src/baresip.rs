//! A real softphone for tests: baresip 1.0, headless (no sound card: a sine or WAV source, a
//! null sink), started from a private config directory on free loopback ports and stopped by
//! PID. [`Ctrl`] drives it over its `ctrl_tcp` module (netstring-framed JSON): dial, hangup,
//! hold, resume, and its call events.

use anyhow::{bail, Context as _, Result};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// What the phone sends as its microphone.
#[derive(Debug, Clone, PartialEq)]
pub enum AudioSource {
    /// `ausine`: an endless sine at this frequency (48 kHz stereo).
    Sine(u32),
    /// `aufile`: this WAV file, 16-bit PCM at `rate` Hz with `channels` channels. NB: when the
    /// file ends, baresip's menu module hangs up the call, so make it longer than the call.
    Wav {
        /// The file.
        path: PathBuf,
        /// Its sample rate.
        rate: u32,
        /// Its channel count.
        channels: u16,
    },
}

/// How to start a phone (see [`Baresip::start_with`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BaresipOptions {
    /// The microphone.
    pub audio_source: AudioSource,
    /// Load the `sndfile` filter: every call's audio is dumped to
    /// `<dir>/dump-<peer>-enc.wav` (sent) and `…-dec.wav` (received, decoded).
    pub dump_audio: bool,
    /// `-s`: log every SIP message to its log (see [`Baresip::log`]).
    pub sip_trace: bool,
    /// SIP over TLS: the CA file baresip trusts (`sip_cafile`); use transport `"tls"`.
    pub tls_ca: Option<PathBuf>,
    /// SRTP with SDES keys (`srtp.so`, account `mediaenc=srtp-mand`: `RTP/SAVP`, a=crypto).
    pub srtp: bool,
    /// Message waiting: load `mwi.so` and set the account's `mwi=yes` (it SUBSCRIBEs to
    /// `message-summary` after each successful REGISTER; NOTIFY bodies arrive as ctrl_tcp
    /// `MWI_NOTIFY` events).
    pub mwi: bool,
}

impl Default for BaresipOptions {
    fn default() -> Self {
        BaresipOptions {
            audio_source: AudioSource::Sine(440),
            dump_audio: false,
            sip_trace: false,
            tls_ca: None,
            srtp: false,
            mwi: false,
        }
    }
}

/// A running baresip.
pub struct Baresip {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Its SIP port on 127.0.0.1.
    pub sip_port: u16,
    /// Its ctrl_tcp port on 127.0.0.1.
    pub ctrl_port: u16,
}

impl Baresip {
    /// Start a phone registering `user`/`password` at `registrar` (`host:port`), every
    /// `regint` seconds (0: no REGISTER), over `transport` ("udp" or "tcp").
    pub fn start(
        user: &str,
        password: &str,
        registrar: &str,
        regint: u32,
        transport: &str,
    ) -> Result<Baresip> {
        Baresip::start_with(
            user,
            password,
            registrar,
            regint,
            transport,
            &BaresipOptions::default(),
        )
    }

    /// [`start`](Self::start) with a chosen microphone and optional audio dumps.
    pub fn start_with(
        user: &str,
        password: &str,
        registrar: &str,
        regint: u32,
        transport: &str,
        options: &BaresipOptions,
    ) -> Result<Baresip> {
        let bin = crate::require_binary("baresip")?;
        let dir = tempfile::Builder::new()
            .prefix("callfabric-baresip-")
            .tempdir()?;
        let sip_port = crate::free_udp_port();
        let ctrl_port = crate::free_tcp_port();
        let rtp = crate::free_udp_port();
        let (source, srate, channels) = match &options.audio_source {
            AudioSource::Sine(hz) => (format!("ausine,{hz}"), 48000, 2),
            AudioSource::Wav {
                path,
                rate,
                channels,
            } => (format!("aufile,{}", path.display()), *rate, *channels),
        };
        let mut config = format!(
            "poll_method\tepoll\nsip_listen\t127.0.0.1:{sip_port}\nnet_interface\t127.0.0.1\n\
             dns_server\t127.0.0.1:53\naudio_player\taubridge,nullsink\naudio_source\t{source}\n\
             audio_alert\taubridge,nullsink\nausrc_srate\t{srate}\nausrc_channels\t{channels}\n\
             rtp_ports\t{rtp}-{}\nrtcp_mux\tno\nmodule_path\t/usr/lib/baresip/modules\n\
             module\tg711.so\nmodule\tausine.so\nmodule\taufile.so\nmodule\taubridge.so\n\
             module_tmp\tuuid.so\n\
             module_tmp\taccount.so\nmodule_app\tcontact.so\nmodule_app\tmenu.so\n\
             module_app\tctrl_tcp.so\nctrl_tcp_listen\t127.0.0.1:{ctrl_port}\n",
            rtp + 10
        );
        if options.dump_audio {
            config.push_str(&format!(
                "snd_path\t{}\nmodule\tsndfile.so\n",
                dir.path().display()
            ));
        }
        if let Some(ca) = &options.tls_ca {
            config.push_str(&format!("sip_cafile\t{}\n", ca.display()));
        }
        if options.srtp {
            config.push_str("module\tsrtp.so\n");
        }
        if options.mwi {
            config.push_str("module_app\tmwi.so\n");
        }
        std::fs::write(dir.path().join("config"), config)?;
        let mediaenc = if options.srtp {
            ";mediaenc=srtp-mand"
        } else {
            ""
        };
        let mwi = if options.mwi { "yes" } else { "no" };
        let account = format!(
            "<sip:{user}@{registrar};transport={transport}>;auth_pass={password};answermode=auto;\
             regint={regint};audio_codecs=PCMU,PCMA;medianat=;mwi={mwi}{mediaenc}\n"
        );
        std::fs::write(dir.path().join("accounts"), account)?;
        std::fs::write(dir.path().join("contacts"), "")?;
        let log = std::fs::File::create(dir.path().join("baresip.log"))?;
        let mut command = Command::new(bin);
        command.arg("-f").arg(dir.path()).args(["-n", "127.0.0.1"]);
        if options.sip_trace {
            command.arg("-s");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting baresip")?;
        Ok(Baresip {
            child: Some(child),
            dir,
            sip_port,
            ctrl_port,
        })
    }

    /// Its private directory (config, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("baresip.log")).unwrap_or_default()
    }

    /// Files in its directory named `dump-*-<suffix>.wav` (`"dec"`: received audio, `"enc"`:
    /// sent audio; needs [`BaresipOptions::dump_audio`]).
    pub fn dumps(&self, suffix: &str) -> Vec<PathBuf> {
        let want = format!("-{suffix}.wav");
        let mut found: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("dump-") && n.ends_with(&want))
                    })
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        found
    }

    /// Connects to its `ctrl_tcp`, retrying until `timeout` (it listens ~0.15 s after start).
    pub fn ctrl(&self, timeout: Duration) -> Result<Ctrl> {
        let deadline = Instant::now() + timeout;
        loop {
            match TcpStream::connect(("127.0.0.1", self.ctrl_port)) {
                Ok(s) => return Ctrl::new(s),
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).with_context(|| {
                        format!(
                            "ctrl_tcp on {} never answered:\n{}",
                            self.ctrl_port,
                            self.log()
                        )
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// SIGKILL: the phone goes silent without unregistering.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Path of the baresip binary used.
    pub fn binary() -> Result<PathBuf> {
        crate::require_binary("baresip")
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `ctrl_tcp` connection: commands out, responses and events in (each one JSON object).
pub struct Ctrl {
    stream: TcpStream,
    messages: Receiver<serde_json::Value>,
    /// Every message received so far (responses and events), for diagnostics and lookups.
    pub history: Vec<serde_json::Value>,
    token: u64,
}

impl Ctrl {
    fn new(stream: TcpStream) -> Result<Ctrl> {
        let mut reader = stream.try_clone()?;
        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                // Netstrings: `<len>:<json>,`.
                while let Some(colon) = buf.iter().position(|&b| b == b':') {
                    let Some(len) = std::str::from_utf8(&buf[..colon])
                        .ok()
                        .and_then(|n| n.parse::<usize>().ok())
                    else {
                        return;
                    };
                    if buf.len() < colon + 1 + len + 1 {
                        break;
                    }
                    let body = &buf[colon + 1..colon + 1 + len];
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                    buf.drain(..colon + 1 + len + 1);
                }
                match reader.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        });
        Ok(Ctrl {
            stream,
            messages,
            history: Vec::new(),
            token: 0,
        })
    }

    /// Sends a menu command (without its slash: `dial`, `hangup`, `hold`, `resume`, …) and
    /// waits for its response; fails unless the response says `ok`.
    pub fn command(&mut self, command: &str, params: &str) -> Result<serde_json::Value> {
        self.token += 1;
        let token = format!("t{}", self.token);
        let body =
            serde_json::json!({"command": command, "params": params, "token": token}).to_string();
        self.stream
            .write_all(format!("{}:{body},", body.len()).as_bytes())?;
        let response = self.wait(
            Duration::from_secs(5),
            &format!("response to {command}"),
            |m| m["response"] == true && m["token"] == token.as_str(),
        )?;
        if response["ok"] != true {
            bail!("{command} {params}: {response}");
        }
        Ok(response)
    }

    /// Waits for an event of `type` (e.g. `CALL_ESTABLISHED`), received now or earlier.
    pub fn event(&mut self, kind: &str, timeout: Duration) -> Result<serde_json::Value> {
        self.wait(timeout, kind, |m| m["event"] == true && m["type"] == kind)
    }

    /// Waits for a message satisfying `pred` (already received or not).
    pub fn wait(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        if let Some(m) = self.history.iter().find(|m| pred(m)) {
            return Ok(m.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok(m) => {
                    self.history.push(m.clone());
                    if pred(&m) {
                        return Ok(m);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "timed out after {timeout:?} waiting for {what}; got {:?}",
                        self.history
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!(
                        "ctrl_tcp closed while waiting for {what}; got {:?}",
                        self.history
                    )
                }
            }
        }
    }
}
