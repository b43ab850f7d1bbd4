//! A real softphone for tests: baresip 1.0, headless (no sound card: a sine source, a null
//! sink), started from a private config directory on free loopback ports and stopped by PID.

use anyhow::{Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

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
        let bin = crate::require_binary("baresip")?;
        let dir = tempfile::Builder::new()
            .prefix("callfabric-baresip-")
            .tempdir()?;
        let sip_port = crate::free_udp_port();
        let ctrl_port = crate::free_tcp_port();
        let rtp = crate::free_udp_port();
        let config = format!(
            "poll_method\tepoll\nsip_listen\t127.0.0.1:{sip_port}\nnet_interface\t127.0.0.1\n\
             dns_server\t127.0.0.1:53\naudio_player\taubridge,nullsink\naudio_source\tausine,440\n\
             audio_alert\taubridge,nullsink\nausrc_srate\t48000\nausrc_channels\t2\n\
             rtp_ports\t{rtp}-{}\nrtcp_mux\tno\nmodule_path\t/usr/lib/baresip/modules\n\
             module\tg711.so\nmodule\tausine.so\nmodule\taubridge.so\nmodule_tmp\tuuid.so\n\
             module_tmp\taccount.so\nmodule_app\tcontact.so\nmodule_app\tmenu.so\n\
             module_app\tctrl_tcp.so\nctrl_tcp_listen\t127.0.0.1:{ctrl_port}\n",
            rtp + 10
        );
        std::fs::write(dir.path().join("config"), config)?;
        let account = format!(
            "<sip:{user}@{registrar};transport={transport}>;auth_pass={password};answermode=auto;\
             regint={regint};audio_codecs=PCMU,PCMA;medianat=;mwi=no\n"
        );
        std::fs::write(dir.path().join("accounts"), account)?;
        std::fs::write(dir.path().join("contacts"), "")?;
        let log = std::fs::File::create(dir.path().join("baresip.log"))?;
        let child = Command::new(bin)
            .arg("-f")
            .arg(dir.path())
            .args(["-n", "127.0.0.1"])
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
