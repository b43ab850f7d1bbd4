//! rtpengine (Sipwise's media relay, Debian package `rtpengine-daemon`) run by the benchmarks:
//! started in the foreground from a private directory, userspace forwarding only
//! (`--table=-1`: no kernel module), RTP ports from a given range on 127.0.0.1, its ng control
//! protocol (bencode over UDP) on a free loopback port; killed and reaped on drop. A small ng
//! client drives it directly (`rtp_bench`); Kamailio's `rtpengine` module talks to
//! [`Rtpengine::ng_addr`] (`call_bench`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A bencode value (the ng protocol's encoding).
#[derive(Debug, Clone)]
pub enum Bencode {
    /// `i…e`
    Int(i64),
    /// `len:bytes`
    Str(Vec<u8>),
    /// `l…e`
    List(Vec<Bencode>),
    /// `d…e`, keys in order
    Dict(Vec<(Vec<u8>, Bencode)>),
}

impl Bencode {
    /// A string value.
    pub fn s(v: &str) -> Self {
        Bencode::Str(v.as_bytes().to_vec())
    }

    /// A dictionary, keys sorted as bencode requires.
    pub fn dict(pairs: &[(&str, Bencode)]) -> Self {
        let mut d: Vec<(Vec<u8>, Bencode)> = pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
            .collect();
        d.sort_by(|a, b| a.0.cmp(&b.0));
        Bencode::Dict(d)
    }

    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Bencode::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            Bencode::Str(s) => {
                out.extend_from_slice(format!("{}:", s.len()).as_bytes());
                out.extend_from_slice(s);
            }
            Bencode::List(l) => {
                out.push(b'l');
                for v in l {
                    v.encode(out);
                }
                out.push(b'e');
            }
            Bencode::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    Bencode::Str(k.clone()).encode(out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    /// Decodes one value at `*pos`, advancing it.
    pub fn decode(input: &[u8], pos: &mut usize) -> Result<Bencode> {
        let byte = |p: usize| input.get(p).copied().ok_or_else(|| anyhow!("truncated"));
        match byte(*pos)? {
            b'i' => {
                let end = input[*pos..]
                    .iter()
                    .position(|&c| c == b'e')
                    .context("unterminated int")?
                    + *pos;
                let v = std::str::from_utf8(&input[*pos + 1..end])?.parse()?;
                *pos = end + 1;
                Ok(Bencode::Int(v))
            }
            b'l' => {
                *pos += 1;
                let mut l = Vec::new();
                while byte(*pos)? != b'e' {
                    l.push(Bencode::decode(input, pos)?);
                }
                *pos += 1;
                Ok(Bencode::List(l))
            }
            b'd' => {
                *pos += 1;
                let mut d = Vec::new();
                while byte(*pos)? != b'e' {
                    let Bencode::Str(k) = Bencode::decode(input, pos)? else {
                        bail!("dict key is not a string");
                    };
                    let v = Bencode::decode(input, pos)?;
                    d.push((k, v));
                }
                *pos += 1;
                Ok(Bencode::Dict(d))
            }
            b'0'..=b'9' => {
                let colon = input[*pos..]
                    .iter()
                    .position(|&c| c == b':')
                    .context("bad string length")?
                    + *pos;
                let len: usize = std::str::from_utf8(&input[*pos..colon])?.parse()?;
                let start = colon + 1;
                let end = start.checked_add(len).context("string length")?;
                let s = input.get(start..end).context("truncated string")?.to_vec();
                *pos = end;
                Ok(Bencode::Str(s))
            }
            c => bail!("unexpected bencode byte {c:#x}"),
        }
    }

    /// A dictionary's value for `key`.
    pub fn get(&self, key: &str) -> Option<&Bencode> {
        match self {
            Bencode::Dict(d) => d.iter().find(|(k, _)| k == key.as_bytes()).map(|(_, v)| v),
            _ => None,
        }
    }

    /// A dictionary's string value for `key`, as text.
    pub fn text(&self, key: &str) -> Option<String> {
        match self.get(key)? {
            Bencode::Str(s) => Some(String::from_utf8_lossy(s).into_owned()),
            _ => None,
        }
    }
}

/// A running rtpengine daemon and an ng client for it.
pub struct Rtpengine {
    ng: UdpSocket,
    ng_addr: SocketAddr,
    cookie: u64,
    calls: Vec<(String, String)>,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Rtpengine {
    /// Starts rtpengine with RTP ports `ports` (inclusive) on 127.0.0.1 and `threads` worker
    /// threads (rtpengine's default, one per core, when `None`); returns once it answers an ng
    /// `ping`.
    pub fn start(ports: (u16, u16), threads: Option<usize>) -> Result<Self> {
        Self::start_with(ports, threads, &[])
    }

    /// As [`Rtpengine::start`], with further command-line options (e.g. `--scheduling=fifo`).
    pub fn start_with(ports: (u16, u16), threads: Option<usize>, extra: &[String]) -> Result<Self> {
        let bin = crate::find_binary("rtpengine")
            .context("rtpengine not found: apt-get install -y rtpengine-daemon")?;
        let dir = tempfile::Builder::new().prefix("rtpengine-").tempdir()?;
        let ng_addr = SocketAddr::new(LOOPBACK, crate::free_udp_port());
        let log = std::fs::File::create(dir.path().join("rtpengine.log"))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--config-file=none")
            .arg("--foreground")
            .arg("--log-stderr")
            .arg("--log-level=4")
            .arg("--table=-1")
            .arg("--interface=127.0.0.1")
            .arg(format!("--listen-ng={ng_addr}"))
            .arg(format!("--port-min={}", ports.0))
            .arg(format!("--port-max={}", ports.1))
            .arg("--delete-delay=0")
            .arg(format!(
                "--pidfile={}",
                dir.path().join("rtpengine.pid").display()
            ));
        if let Some(n) = threads {
            cmd.arg(format!("--num-threads={n}"));
        }
        cmd.args(extra);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning rtpengine")?;
        let ng = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        ng.set_read_timeout(Some(Duration::from_millis(300)))?;
        let mut me = Rtpengine {
            ng,
            ng_addr,
            cookie: 0,
            calls: Vec::new(),
            child: Some(child),
            dir,
        };
        let start = Instant::now();
        loop {
            match me.request(&[("command", Bencode::s("ping"))], 1) {
                Ok(r) if r.text("result").as_deref() == Some("pong") => break,
                _ if start.elapsed() > Duration::from_secs(10) => {
                    bail!(
                        "rtpengine did not answer ng ping; log:\n{}",
                        me.log_tail(20)
                    );
                }
                _ => {
                    if let Some(Ok(Some(status))) = me.child.as_mut().map(Child::try_wait) {
                        bail!("rtpengine exited ({status}); log:\n{}", me.log_tail(20));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        Ok(me)
    }

    /// The daemon's process id (its threads are in it).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Where it takes ng commands (UDP).
    pub fn ng_addr(&self) -> SocketAddr {
        self.ng_addr
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        crate::tail_file(&self.dir.path().join("rtpengine.log"), n)
    }

    /// One ng request (a dictionary), sent up to `tries` times 300 ms apart; its reply.
    pub fn request(&mut self, pairs: &[(&str, Bencode)], tries: u32) -> Result<Bencode> {
        self.cookie += 1;
        let cookie = format!("b{}", self.cookie);
        let mut msg = format!("{cookie} ").into_bytes();
        Bencode::dict(pairs).encode(&mut msg);
        let mut buf = vec![0u8; 65536];
        for _ in 0..tries {
            self.ng.send_to(&msg, self.ng_addr)?;
            loop {
                match self.ng.recv_from(&mut buf) {
                    Ok((n, _)) => {
                        let reply = &buf[..n];
                        let Some(sp) = reply.iter().position(|&c| c == b' ') else {
                            continue;
                        };
                        if &reply[..sp] != cookie.as_bytes() {
                            continue; // a late reply to an earlier try
                        }
                        let mut pos = sp + 1;
                        return Bencode::decode(reply, &mut pos);
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        break
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        bail!("no ng reply after {tries} tries")
    }

    fn sdp(session: u64, port: u16) -> String {
        format!(
            "v=0\r\no=- {session} 1 IN IP4 127.0.0.1\r\ns=rtp_bench\r\nc=IN IP4 127.0.0.1\r\n\
             t=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
        )
    }

    /// The media address in an SDP body (session- or media-level `c=` and the `m=audio` port).
    pub fn sdp_addr(sdp: &str) -> Result<SocketAddr> {
        let mut ip: Option<IpAddr> = None;
        let mut port: Option<u16> = None;
        for line in sdp.lines() {
            if let Some(c) = line.strip_prefix("c=IN IP4 ") {
                ip = Some(c.trim().parse()?);
            } else if let Some(m) = line.strip_prefix("m=audio ") {
                port = Some(m.split_whitespace().next().context("m= port")?.parse()?);
            }
        }
        Ok(SocketAddr::new(
            ip.context("no c= in SDP")?,
            port.context("no m=audio in SDP")?,
        ))
    }

    /// A call set up over ng: offer (caller = `sender`) and answer (callee = `receiver`);
    /// returns where the sender sends. [`Rtpengine::delete_all`] ends it.
    pub fn call(
        &mut self,
        i: usize,
        sender: SocketAddr,
        receiver: SocketAddr,
    ) -> Result<SocketAddr> {
        let call_id = format!("rtp-bench-{}-{i}", self.cookie);
        let from_tag = format!("from-{i}");
        let to_tag = format!("to-{i}");
        let sdp_a = Self::sdp(2 * i as u64 + 1, sender.port());
        let offer = self.request(
            &[
                ("command", Bencode::s("offer")),
                ("call-id", Bencode::s(&call_id)),
                ("from-tag", Bencode::s(&from_tag)),
                ("sdp", Bencode::s(&sdp_a)),
            ],
            3,
        )?;
        if offer.text("result").as_deref() != Some("ok") {
            bail!("rtpengine offer failed: {offer:?}");
        }
        self.calls.push((call_id.clone(), from_tag.clone()));
        let sdp_b = Self::sdp(2 * i as u64 + 2, receiver.port());
        let answer = self.request(
            &[
                ("command", Bencode::s("answer")),
                ("call-id", Bencode::s(&call_id)),
                ("from-tag", Bencode::s(&from_tag)),
                ("to-tag", Bencode::s(&to_tag)),
                ("sdp", Bencode::s(&sdp_b)),
            ],
            3,
        )?;
        if answer.text("result").as_deref() != Some("ok") {
            bail!("rtpengine answer failed: {answer:?}");
        }
        Self::sdp_addr(&answer.text("sdp").context("answer without sdp")?)
    }

    /// Deletes every call [`Rtpengine::call`] set up.
    pub fn delete_all(&mut self) -> Result<()> {
        for (call_id, from_tag) in std::mem::take(&mut self.calls) {
            let r = self.request(
                &[
                    ("command", Bencode::s("delete")),
                    ("call-id", Bencode::s(&call_id)),
                    ("from-tag", Bencode::s(&from_tag)),
                ],
                3,
            )?;
            if r.text("result").as_deref() != Some("ok") {
                eprintln!("# rtpengine delete {call_id}: {r:?}");
            }
        }
        Ok(())
    }
}

impl Drop for Rtpengine {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
            eprintln!("# stopped rtpengine (pid {})", c.id());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Bencode, Rtpengine};

    #[test]
    fn bencode_round_trips_an_ng_reply_and_refuses_truncation() {
        let msg = Bencode::dict(&[
            ("sdp", Bencode::s("v=0\r\nm=audio 20002 RTP/AVP 0\r\n")),
            ("result", Bencode::s("ok")),
            ("n", Bencode::Int(-3)),
            ("l", Bencode::List(vec![Bencode::s("a"), Bencode::Int(7)])),
        ]);
        let mut wire = Vec::new();
        msg.encode(&mut wire);
        // Keys sorted, as bencode requires.
        assert!(
            wire.starts_with(b"d1:ll1:ai7ee1:ni-3e6:result2:ok3:sdp"),
            "{wire:?}"
        );
        let mut pos = 0;
        let back = Bencode::decode(&wire, &mut pos).expect("decodes");
        assert_eq!(pos, wire.len());
        assert_eq!(back.text("result").as_deref(), Some("ok"));
        assert!(matches!(back.get("n"), Some(Bencode::Int(-3))));
        let sdp = back.text("sdp").expect("sdp");
        assert_eq!(
            Rtpengine::sdp_addr(&format!("c=IN IP4 127.0.0.1\r\n{sdp}")).expect("addr"),
            "127.0.0.1:20002".parse().expect("literal")
        );
        // Every truncation is an error, never a panic or a wrong value.
        for cut in 0..wire.len() {
            let mut pos = 0;
            assert!(
                Bencode::decode(&wire[..cut], &mut pos).is_err(),
                "cut at {cut}"
            );
        }
    }
}
