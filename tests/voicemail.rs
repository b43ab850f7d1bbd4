//! End to end: voicemail through the real `callfabric gateway` (issue 14).
//!
//! Device 1000 has a mailbox (PIN 4321, e-mail to a real SMTP server: Python `aiosmtpd` on a
//! loopback port, writing a Maildir in a private directory). Its phone is a SIPp UAS that
//! answers 486 Busy. A SIPp caller (device 1001) calls 1000; the call goes to the mailbox. The
//! test owns the caller's media (its SDP names a UDP socket of the test): it waits for the
//! greeting and the beep, sends a 5 s 440 Hz tone, presses `#` (RFC 4733), and voicemail hangs
//! up. Then: the message's WAV holds the tone (Goertzel at 440 Hz over the file, 8 kHz mono);
//! the bus shows `MWI 1000@default new=1 old=0`; an e-mail with that WAV attached (byte for
//! byte) reaches the SMTP server. Then 1000 dials `*98`, enters the PIN by RFC 4733 events,
//! hears the message (440 Hz at the caller), deletes it (`7`), records a new greeting (`5`, a
//! 2 s 880 Hz tone, `#`: the greeting's WAV holds it) and leaves (`*`): the bus goes
//! to `new=0 old=1` (heard) and `new=0 old=0` (deleted), and the file is gone. Last, a call
//! to 1001, which is not registered, goes straight to its mailbox (5001), and 1001 opens it
//! with its PIN sent by SIP INFO. And a device that rings unanswered for its `no_answer_secs`
//! is cancelled and its caller reaches its mailbox; one whose answer crosses that CANCEL is
//! ACKed and hung up (BYE) while its caller stays with the mailbox.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod voicemail_common;

use integration::free_tcp_port;
use integration::gateway::{GatewayProcess, GatewaySpec};
use integration::phones::{answering_phone, assert_passes, scenario};
use integration::sipp::{SippOpts, SippProcess};
use voicemail_common::{call, line_since, tone_frames, Media, WAIT};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_callfabric"))
}

/// `call_uac.xml` up to the ACK of the 200, then the keys `1` and `#` by SIP INFO
/// (`application/dtmf-relay`), 12 s of listening, BYE.
fn uac_info_pin(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(scenario("call_uac.xml")).expect("read call_uac.xml");
    let head = text
        .split("  <nop>")
        .next()
        .expect("call_uac.xml has a <nop>");
    let request = |method: &str, seq: u32, body: &str| {
        format!(
            r#"  <send retrans="500">
    <![CDATA[
      {method} sip:[callee]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Caller" <sip:[service]@[remote_ip]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[callee]@[remote_ip]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: {seq} {method}
      Max-Forwards: 70
{body}
    ]]>
  </send>
  <recv response="200"/>
"#
        )
    };
    let info = |seq: u32, key: &str| {
        request(
            "INFO",
            seq,
            &format!(
                "      Content-Type: application/dtmf-relay
      Content-Length: [len]

      Signal={key}
      Duration=160"
            ),
        )
    };
    let text = format!(
        r#"{head}  <pause milliseconds="300"/>
{}{}  <pause milliseconds="12000"/>
{}  <Reference variables="m_line"/>
</scenario>
"#,
        info(3, "1"),
        info(4, "#"),
        request(
            "BYE",
            5,
            "      Content-Length: 0
"
        ),
    );
    let path = dir.join("call_uac_info_pin.xml");
    std::fs::write(&path, text).expect("write scenario");
    path
}

/// The test SMTP server (aiosmtpd), killed on drop.
struct Smtp {
    child: Child,
    maildir: PathBuf,
    port: u16,
}

impl Smtp {
    fn start(dir: &Path) -> Smtp {
        let python = integration::python().expect("the peers venv");
        let port = free_tcp_port();
        let maildir = dir.join("maildir");
        let child = Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd (pip install aiosmtpd into the peers venv)");
        let smtp = Smtp {
            child,
            maildir,
            port,
        };
        integration::wait_until(WAIT, "aiosmtpd listening", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .expect("aiosmtpd");
        smtp
    }

    /// Files in the Maildir's `new/`.
    fn messages(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.maildir.join("new"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (content type, file name, bytes) of each attachment of the e-mail in `path`, read by
/// Python's `email` package.
fn attachments(path: &Path, out: &Path) -> Vec<(String, String, Vec<u8>)> {
    let script = r#"
import email, sys, os
m = email.message_from_binary_file(open(sys.argv[1], 'rb'))
print('SUBJECT', m['Subject'])
for i, part in enumerate(m.walk()):
    name = part.get_filename()
    if name:
        p = os.path.join(sys.argv[2], 'att%d' % i)
        open(p, 'wb').write(part.get_payload(decode=True))
        print('ATT', part.get_content_type(), name, p)
"#;
    let python = integration::python().expect("the peers venv");
    let o = Command::new(python)
        .args(["-c", script])
        .arg(path)
        .arg(out)
        .output()
        .expect("run python");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("ATT ")?.split(' ');
            let (ct, name, p) = (w.next()?, w.next()?, w.next()?);
            Some((ct.to_owned(), name.to_owned(), std::fs::read(p).ok()?))
        })
        .collect()
}

#[test]
fn busy_device_to_mailbox_then_retrieval_with_pin_by_rfc4733() {
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = Smtp::start(dir.path());
    let mut spec = GatewaySpec::new("vm", &["1000", "1001", "1002", "1003"]);
    // The SIPp phones cannot answer OPTIONS outside their scenarios.
    spec.qualify_interval_secs = 600.0;
    spec.extra = format!(
        "\n[voicemail]\ndir = \"vm\"\nmax_message_secs = 30\nrtp_ports = \"{lo}-{hi}\"\n\
         [voicemail.smtp]\nserver = \"127.0.0.1:{port}\"\nfrom = \"voicemail@vm.example\"\n\
         [[voicemail.mailbox]]\ndevice = \"1000\"\npin = \"4321\"\nemail = \"owner@vm.example\"\n\
         no_answer_secs = 0\n\
         [[voicemail.mailbox]]\ndevice = \"1001\"\nmailbox = \"5001\"\npin = \"1\"\n\
         [[voicemail.mailbox]]\ndevice = \"1002\"\npin = \"2\"\nno_answer_secs = 2\n\
         [[voicemail.mailbox]]\ndevice = \"1003\"\npin = \"3\"\nno_answer_secs = 2\n",
        port = smtp.port,
        lo = 31000 + (std::process::id() % 50) * 20,
        hi = 31019 + (std::process::id() % 50) * 20,
    );
    let mut gw = GatewayProcess::start(binary(), spec);

    // 1. A busy phone: the caller reaches the mailbox and leaves a 5 s tone.
    let _busy = answering_phone(&mut gw, "1000", "call_uas_busy.xml", 1);
    let mark = gw.mark();
    let mut tone_sent = None;
    call(&mut gw, dir.path(), "1001", "1000", |m| {
        m.until_after_beep();
        m.tone(5000);
        tone_sent = Some(Instant::now());
        m.key('#');
    });
    assert!(tone_sent.is_some());
    let deposit = line_since(&mut gw, mark, "the deposit", |l| {
        l.starts_with("VOICEMAIL DEPOSIT 1000 ")
    });
    let fields: Vec<&str> = deposit.split_whitespace().collect();
    let (id, wav) = (fields[3].to_owned(), PathBuf::from(fields[4]));
    let bytes = std::fs::read(&wav).expect("the message's WAV");
    // RIFF/WAVE, fmt: PCM, 1 channel, 8000 Hz, 16 bits.
    assert_eq!(&bytes[0..4], b"RIFF");
    assert_eq!(&bytes[8..12], b"WAVE");
    assert_eq!(u16::from_le_bytes([bytes[20], bytes[21]]), 1, "PCM");
    assert_eq!(u16::from_le_bytes([bytes[22], bytes[23]]), 1, "mono");
    let rate = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
    assert_eq!(rate, 8000, "8 kHz");
    let pcm = media::audio::wav::decode_wav(&bytes, "message").expect("a readable WAV");
    let frames = tone_frames(&pcm, 440.0);
    assert!(
        (225..=260).contains(&frames),
        "the message holds {frames} frames of 440 Hz, not ~250 (5 s): {}",
        wav.display()
    );
    assert!(
        tone_frames(&pcm, 1000.0) < 5,
        "the beep is not in the message"
    );
    gw.seen_since(mark, "MWI 1000@default new=1 old=0", WAIT);
    let mailed = line_since(&mut gw, mark, "the e-mail", |l| {
        l.starts_with("VOICEMAIL MAILED 1000 ")
    });
    assert!(
        mailed.ends_with(" owner@vm.example ok"),
        "{mailed}\n{}",
        gw.diag()
    );
    let mails = smtp.messages();
    assert_eq!(mails.len(), 1, "one e-mail at the SMTP server");
    let att = attachments(&mails[0], dir.path());
    assert_eq!(att.len(), 1, "one attachment");
    assert_eq!(att[0].0, "audio/wav");
    assert_eq!(att[0].1, format!("{id}.wav"));
    assert!(att[0].2 == bytes, "the attachment is the message's WAV");

    // 2. The owner dials *98, enters the PIN, hears the message, deletes it.
    let mark = gw.mark();
    call(&mut gw, dir.path(), "1000", "*98", |m| {
        m.login("4321");
        // Counts, then the message: wait until its 5 s of tone were heard and ended.
        m.hear_message(440.0, 225);
        // Delete it; "deleted", "no more messages", the main menu; then silence (a key is awaited).
        m.key('7');
        m.until_quiet("the main menu", WAIT);
        // A new greeting: `5`, the beep, 2 s of 880 Hz, `#`; then `*`: goodbye, BYE.
        let from = Instant::now();
        m.key('5');
        m.until_after_beep_since(from);
        m.tone_at(880.0, 2000);
        m.key('#');
        m.pump(Instant::now() + Duration::from_millis(200));
        m.key('*');
    });
    let greeting = line_since(&mut gw, mark, "the greeting", |l| {
        l == "VOICEMAIL GREETING 1000"
    });
    assert!(!greeting.is_empty());
    let g = gw.dir().join("vm/default/1000/greeting.wav");
    let pcm = media::audio::wav::read_wav(&g).expect("the greeting's WAV");
    let frames = tone_frames(&pcm, 880.0);
    assert!(
        (85..=105).contains(&frames),
        "{frames} frames of 880 Hz in the greeting, not ~100"
    );
    gw.seen_since(mark, "MWI 1000@default new=0 old=1", WAIT);
    gw.seen_since(mark, &format!("VOICEMAIL DELETED 1000 {id}"), WAIT);
    gw.seen_since(mark, "MWI 1000@default new=0 old=0", WAIT);
    assert!(!wav.exists(), "the deleted message's file is gone");

    // 3. 1001 is not registered: a call to it goes straight to its mailbox (5001).
    let mark = gw.mark();
    call(&mut gw, dir.path(), "1000", "1001", |m| {
        m.until_after_beep();
        m.tone(1000);
        m.key('#');
    });
    let deposit = line_since(&mut gw, mark, "the deposit for 1001", |l| {
        l.starts_with("VOICEMAIL DEPOSIT 5001 ")
    });
    let wav = PathBuf::from(deposit.split_whitespace().nth(4).expect("path"));
    let pcm = media::audio::wav::read_wav(&wav).expect("the message's WAV");
    assert!(
        tone_frames(&pcm, 440.0) >= 40,
        "1 s of tone in {}",
        wav.display()
    );
    gw.seen_since(mark, "MWI 5001@default new=1 old=0", WAIT);

    // 4. 1001 opens its mailbox with the PIN sent by SIP INFO (`application/dtmf-relay`): the
    // message plays, so it is old now.
    let mark = gw.mark();
    let media = Media::new();
    let opts = SippOpts {
        keys: vec![
            ("callee".into(), "*98".into()),
            ("sdp_port".into(), media.port().to_string()),
        ],
        timeout: Duration::from_secs(60),
        ..SippOpts::user("1001", "secret")
    };
    let mut sipp =
        SippProcess::spawn(&uac_info_pin(dir.path()), Some(gw.udp), &opts).expect("start SIPp");
    let out = sipp.wait().expect("SIPp outcome");
    assert_passes(&gw, &out, "1001 with its PIN by SIP INFO");
    gw.seen_since(mark, "MWI 5001@default new=0 old=1", WAIT);

    // 5. 1002 rings and nobody answers: after 2 s its phone gets a CANCEL (the SIPp UAS
    // passes only then) and the caller reaches its mailbox (`#` skips the greeting).
    let mut ringing = answering_phone(&mut gw, "1002", "call_uas_cancel.xml", 1);
    let mark = gw.mark();
    call(&mut gw, dir.path(), "1001", "1002", |m| {
        m.until("the greeting", |a| !a.is_empty());
        m.key('#');
        m.until_after_beep();
        m.tone(1000);
        m.key('#');
    });
    let out = ringing.wait().expect("the ringing phone's SIPp");
    assert_passes(
        &gw,
        &out,
        "the ringing phone cancelled after no_answer_secs",
    );
    line_since(&mut gw, mark, "the deposit for 1002", |l| {
        l.starts_with("VOICEMAIL DEPOSIT 1002 ")
    });
    gw.seen_since(mark, "MWI 1002@default new=1 old=0", WAIT);

    // 6. 1003 rings, and answers just as the gateway CANCELs it for the mailbox (its 200
    // crosses the CANCEL): the gateway ACKs that 200 and hangs it up with a BYE (the SIPp UAS
    // passes only then), and the caller stays with the mailbox.
    let mut crossing = answering_phone(&mut gw, "1003", "call_uas_answer_cancel.xml", 1);
    let mark = gw.mark();
    call(&mut gw, dir.path(), "1001", "1003", |m| {
        m.until("the greeting", |a| !a.is_empty());
        m.key('#');
        m.until_after_beep();
        m.tone(1000);
        m.key('#');
    });
    let out = crossing.wait().expect("the crossing phone's SIPp");
    assert_passes(
        &gw,
        &out,
        "the phone whose 200 crossed the CANCEL is ACKed and BYEd",
    );
    line_since(&mut gw, mark, "the deposit for 1003", |l| {
        l.starts_with("VOICEMAIL DEPOSIT 1003 ")
    });
    gw.seen_since(mark, "MWI 1003@default new=1 old=0", WAIT);
}
