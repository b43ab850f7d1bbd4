//! RFC 3842 `application/simple-message-summary` bodies: a builder and a bounded parser.
//!
//! ```text
//! Messages-Waiting: yes
//! Message-Account: sip:1001@site-a.example
//! Voice-Message: 2/8 (1/0)
//! ```
//!
//! The parser reads what phones and other servers send (a NOTIFY we relay, a test that checks
//! ours): header names case-insensitively, CRLF or bare LF line ends, counts with or without the
//! urgent pair, unknown message classes and optional headers after the blank line skipped. It
//! is bounded (size, lines, line length, digits) and never panics; anything it cannot read is
//! an error naming the line.

/// The body's media type.
pub const CONTENT_TYPE: &str = "application/simple-message-summary";
/// Largest body read, in bytes.
pub const MAX_BODY: usize = 4096;
/// Most lines read.
pub const MAX_LINES: usize = 64;
/// Longest line read, in bytes.
pub const MAX_LINE: usize = 512;

/// Message counts of one class: `new/old (urgent_new/urgent_old)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// New (unheard) messages.
    pub new: u32,
    /// Old messages.
    pub old: u32,
    /// Urgent new messages.
    pub urgent_new: u32,
    /// Urgent old messages.
    pub urgent_old: u32,
}

/// A message summary.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Summary {
    /// `Messages-Waiting: yes|no`.
    pub waiting: bool,
    /// `Message-Account`, if present.
    pub account: Option<String>,
    /// Summary lines by message-context class (lowercase, e.g. `voice-message`), in order.
    pub classes: Vec<(String, Counts)>,
}

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Over [`MAX_BODY`].
    #[error("message summary of {0} bytes is over the {MAX_BODY}-byte limit")]
    TooLarge(usize),
    /// Not UTF-8.
    #[error("message summary is not UTF-8 text")]
    NotText,
    /// Over [`MAX_LINES`].
    #[error("message summary has more than {MAX_LINES} lines")]
    TooManyLines,
    /// A line over [`MAX_LINE`].
    #[error("line {0} of the message summary is over {MAX_LINE} bytes")]
    LineTooLong(usize),
    /// The first line is not `Messages-Waiting`.
    #[error("message summary does not start with Messages-Waiting")]
    MissingStatus,
    /// `Messages-Waiting` is neither `yes` nor `no`.
    #[error("Messages-Waiting is {0:?}, not yes or no")]
    BadStatus(String),
    /// A line that is not `name: value`.
    #[error("line {0} of the message summary is not `name: value`")]
    BadLine(usize),
    /// A summary line whose counts do not read as `new/old` or `new/old (new/old)`.
    #[error("line {0} of the message summary has bad counts {1:?}")]
    BadCounts(usize, String),
    /// The same class twice.
    #[error("line {0} of the message summary repeats the class {1}")]
    Repeated(usize, String),
}

/// The message-context classes of RFC 3458 that a summary line may name.
const CLASSES: &[&str] = &[
    "voice-message",
    "fax-message",
    "pager-message",
    "multimedia-message",
    "text-message",
    "none",
];

impl Summary {
    /// The summary of a voice mailbox: waiting when there are new messages.
    pub fn voice(account: Option<String>, counts: Counts) -> Summary {
        Summary {
            waiting: counts.new > 0,
            account,
            classes: vec![("voice-message".into(), counts)],
        }
    }

    /// The counts of `voice-message`, if listed.
    pub fn voice_counts(&self) -> Option<Counts> {
        self.classes
            .iter()
            .find(|(c, _)| c == "voice-message")
            .map(|(_, n)| *n)
    }

    /// The body text (CRLF line ends). Characters that would break the line structure are
    /// dropped from the account.
    pub fn to_body(&self) -> String {
        let mut out = format!(
            "Messages-Waiting: {}\r\n",
            if self.waiting { "yes" } else { "no" }
        );
        if let Some(a) = &self.account {
            let a: String = a.chars().filter(|c| !c.is_control()).collect();
            out.push_str(&format!("Message-Account: {a}\r\n"));
        }
        for (class, n) in &self.classes {
            let name = match CLASSES.iter().find(|c| c.eq_ignore_ascii_case(class)) {
                Some(c) => header_case(c),
                None => continue,
            };
            out.push_str(&format!(
                "{name}: {}/{} ({}/{})\r\n",
                n.new, n.old, n.urgent_new, n.urgent_old
            ));
        }
        out
    }

    /// Reads a body.
    pub fn parse(body: &[u8]) -> Result<Summary, BodyError> {
        if body.len() > MAX_BODY {
            return Err(BodyError::TooLarge(body.len()));
        }
        let text = std::str::from_utf8(body).map_err(|_| BodyError::NotText)?;
        let mut summary = Summary::default();
        let mut status = false;
        for (i, line) in text.split('\n').enumerate() {
            let n = i + 1;
            // (A final line end leaves one empty piece after the last line.)
            if n > MAX_LINES + 1 {
                return Err(BodyError::TooManyLines);
            }
            if line.len() > MAX_LINE {
                return Err(BodyError::LineTooLong(n));
            }
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() {
                if status {
                    break; // the optional message headers follow: not read
                }
                continue;
            }
            let (name, value) = line.split_once(':').ok_or(BodyError::BadLine(n))?;
            let (name, value) = (name.trim(), value.trim());
            if !status {
                if !name.eq_ignore_ascii_case("Messages-Waiting") {
                    return Err(BodyError::MissingStatus);
                }
                summary.waiting = match value.to_ascii_lowercase().as_str() {
                    "yes" => true,
                    "no" => false,
                    _ => return Err(BodyError::BadStatus(value.to_owned())),
                };
                status = true;
            } else if name.eq_ignore_ascii_case("Message-Account") {
                summary.account = Some(value.to_owned());
            } else if let Some(class) = CLASSES.iter().find(|c| c.eq_ignore_ascii_case(name)) {
                if summary.classes.iter().any(|(c, _)| c == class) {
                    return Err(BodyError::Repeated(n, (*class).to_owned()));
                }
                let counts = counts(value).ok_or_else(|| BodyError::BadCounts(n, value.into()))?;
                summary.classes.push(((*class).to_owned(), counts));
            }
            // Other names (extensions) are skipped.
        }
        if !status {
            return Err(BodyError::MissingStatus);
        }
        Ok(summary)
    }
}

/// `voice-message` → `Voice-Message`.
fn header_case(class: &str) -> String {
    class
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// `new/old` or `new/old (urgent_new/urgent_old)`, white space around the tokens allowed.
fn counts(v: &str) -> Option<Counts> {
    let (main, urgent) = match v.split_once('(') {
        Some((m, rest)) => {
            let inner = rest.trim_end().strip_suffix(')')?;
            (m, Some(inner))
        }
        None => (v, None),
    };
    let pair = |s: &str| -> Option<(u32, u32)> {
        let (a, b) = s.split_once('/')?;
        Some((number(a)?, number(b)?))
    };
    let (new, old) = pair(main)?;
    let (urgent_new, urgent_old) = match urgent {
        Some(u) => pair(u)?,
        None => (0, 0),
    };
    Some(Counts {
        new,
        old,
        urgent_new,
        urgent_old,
    })
}

fn number(s: &str) -> Option<u32> {
    let s = s.trim();
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_what_rfc_3842_shows_and_reads_it_back() {
        let s = Summary::voice(
            Some("sip:1001@a.example".into()),
            Counts {
                new: 2,
                old: 8,
                urgent_new: 1,
                urgent_old: 0,
            },
        );
        let body = s.to_body();
        assert_eq!(
            body,
            "Messages-Waiting: yes\r\nMessage-Account: sip:1001@a.example\r\nVoice-Message: 2/8 (1/0)\r\n"
        );
        assert_eq!(Summary::parse(body.as_bytes()), Ok(s));
        let off = Summary::voice(None, Counts::default()).to_body();
        assert_eq!(off, "Messages-Waiting: no\r\nVoice-Message: 0/0 (0/0)\r\n");
    }

    #[test]
    fn reads_the_rfc_example_and_lenient_forms() {
        // RFC 3842 §5.2's example (with its optional message headers).
        let rfc = "Messages-Waiting: yes\r\nMessage-Account: sip:alice@vmail.example.com\r\n\
                   Voice-Message: 4/8 (1/2)\r\n\r\nTo: <alice@atlanta.example.com>\r\n\
                   From: <bob@biloxi.example.com>\r\n";
        let s = Summary::parse(rfc.as_bytes()).expect("RFC example");
        assert!(s.waiting);
        assert_eq!(s.account.as_deref(), Some("sip:alice@vmail.example.com"));
        assert_eq!(
            s.voice_counts(),
            Some(Counts {
                new: 4,
                old: 8,
                urgent_new: 1,
                urgent_old: 2
            })
        );
        let lf = "messages-waiting:NO\nvoice-message: 0/3\nX-Vendor: 1\nfax-message:1/0(0/0)\n";
        let s = Summary::parse(lf.as_bytes()).expect("lenient");
        assert!(!s.waiting);
        assert_eq!(s.voice_counts().map(|c| (c.new, c.old)), Some((0, 3)));
        assert_eq!(s.classes.len(), 2);
    }

    #[test]
    fn bad_bodies_get_clear_errors() {
        let e = |b: &str| Summary::parse(b.as_bytes()).unwrap_err();
        assert_eq!(e(""), BodyError::MissingStatus);
        assert_eq!(e("Voice-Message: 1/0\r\n"), BodyError::MissingStatus);
        assert_eq!(
            e("Messages-Waiting: maybe\r\n"),
            BodyError::BadStatus("maybe".into())
        );
        assert_eq!(
            e("Messages-Waiting: yes\r\nVoice-Message: 1\r\n"),
            BodyError::BadCounts(2, "1".into())
        );
        assert_eq!(
            e("Messages-Waiting: yes\r\nVoice-Message: 99999999999/0\r\n"),
            BodyError::BadCounts(2, "99999999999/0".into())
        );
        assert_eq!(
            e("Messages-Waiting: yes\r\nVoice-Message: -1/0\r\n"),
            BodyError::BadCounts(2, "-1/0".into())
        );
        assert_eq!(
            e("Messages-Waiting: yes\r\nno colon\r\n"),
            BodyError::BadLine(2)
        );
        assert_eq!(
            e("Messages-Waiting: yes\r\nVoice-Message: 1/0\r\nVoice-Message: 2/0\r\n"),
            BodyError::Repeated(3, "voice-message".into())
        );
        assert_eq!(
            Summary::parse(&vec![b'a'; MAX_BODY + 1]).unwrap_err(),
            BodyError::TooLarge(MAX_BODY + 1)
        );
        assert_eq!(e(&"\n".repeat(MAX_LINES + 1)), BodyError::TooManyLines);
        assert_eq!(
            e(&format!(
                "Messages-Waiting: yes\r\nX: {}\r\n",
                "a".repeat(MAX_LINE)
            )),
            BodyError::LineTooLong(2)
        );
        assert_eq!(
            Summary::parse(b"Messages-Waiting: yes\r\n\xff\r\n").unwrap_err(),
            BodyError::NotText
        );
        // Errors read as sentences.
        assert_eq!(
            BodyError::BadCounts(2, "x".into()).to_string(),
            "line 2 of the message summary has bad counts \"x\""
        );
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const INTERESTING: &[&[u8]] = &[
        b"\r\n",
        b"\n",
        b"\r",
        b":",
        b"/",
        b"(",
        b")",
        b" ",
        b"\t",
        b"\0",
        b"0",
        b"4294967295",
        b"4294967296",
        b"yes",
        b"no",
        b"\xff",
        b"\xc3\xa9",
    ];

    /// Mutation fuzz: no input panics; what parses is rebuilt by the builder and reads back
    /// to the same summary (for the known classes).
    #[test]
    fn fuzz_mutations_never_panic_and_round_trip() {
        let samples = [
            "Messages-Waiting: yes\r\nMessage-Account: sip:1001@a.example\r\nVoice-Message: 2/8 (1/0)\r\n",
            "Messages-Waiting: no\r\nVoice-Message: 0/0 (0/0)\r\n",
            "Messages-Waiting: yes\r\nVoice-Message: 4/8 (1/2)\r\nFax-Message: 1/0\r\n\r\nTo: x\r\n",
        ];
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        let (mut parsed, mut rejected) = (0usize, 0usize);
        for _ in 0..20_000 {
            let mut b = samples[rng.below(samples.len())].as_bytes().to_vec();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(b.len() + 1);
                match rng.below(5) {
                    0 if at < b.len() => b[at] = rng.next() as u8,
                    1 if at < b.len() => {
                        b.remove(at);
                    }
                    2 => {
                        let ins = INTERESTING[rng.below(INTERESTING.len())];
                        b.splice(at..at, ins.iter().copied());
                    }
                    3 if at < b.len() => {
                        let other = rng.below(b.len());
                        b.swap(at, other);
                    }
                    _ => b.truncate(at),
                }
            }
            match Summary::parse(&b) {
                Ok(s) => {
                    parsed += 1;
                    let again = Summary::parse(s.to_body().as_bytes());
                    let mut want = s.clone();
                    // The builder drops control characters from the account.
                    want.account = want
                        .account
                        .map(|a| a.chars().filter(|c| !c.is_control()).collect());
                    let want_trimmed = want.account.as_ref().map(|a| a.trim().to_owned());
                    want.account = want_trimmed;
                    assert_eq!(
                        again,
                        Ok(want),
                        "round trip of {:?}",
                        String::from_utf8_lossy(&b)
                    );
                }
                Err(e) => {
                    rejected += 1;
                    assert!(!e.to_string().is_empty());
                }
            }
        }
        // Both outcomes must occur, or the fuzz proves nothing.
        assert!(
            parsed > 1000 && rejected > 1000,
            "parsed {parsed}, rejected {rejected}"
        );
    }
}
