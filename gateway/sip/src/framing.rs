//! Sans-IO framing of SIP over a byte stream (RFC 3261 §18.3, RFC 5626 §3.5.1).
//!
//! [`StreamDecoder`] is fed arbitrary chunks ([`StreamDecoder::feed`], byte by byte works) and
//! yields [`Frame`]s ([`StreamDecoder::next_frame`]). It never panics and never gives up: there is
//! always a way to resynchronise, so a connection never has to be closed because of what the
//! framing saw.
//!
//! * **Messages** are framed by the end of the header block (CRLF CRLF) plus `Content-Length`
//!   (or compact `l`), which is mandatory on streams. The frame holds the raw bytes, to be read
//!   with [`crate::message::parse`].
//! * **Keep-alive** (RFC 5626 §3.5.1): a CRLF CRLF "ping" between messages yields
//!   [`Frame::Ping`]; the caller answers with [`PONG`] (a single CRLF). A lone CRLF between
//!   messages (a pong to our own ping, or §7.5 leading CRLFs) is skipped silently.
//! * **Garbage**: bytes that are not a plausible start line are skipped line by line up to the
//!   next plausible start line and reported as [`Frame::Garbage`] (coalesced, reported when the
//!   decoder resynchronises or yields anything else). Control characters end a garbage run at
//!   once, and inside a garbage line a start line beginning after a non-token character (e.g.
//!   `junk INVITE sip:b@h SIP/2.0`) is found. A start line glued to preceding token characters
//!   (`xyzINVITE …`) is taken as one (its method is then `xyzINVITE`, which `parse` refuses).
//!   Plausible: a request line is exactly three whitespace-separated words, a token, a word
//!   containing `:` and a word starting with `SIP/`; a status line starts with `SIP/d.d ddd`.
//! * **Errors** ([`Frame::Error`]) drop one message and the decoder resynchronises:
//!   - header block plus declared body larger than the maximum size: the declared body is
//!     skipped exactly ([`FramingError::TooLarge`], with the header block so that a `513` can be
//!     answered);
//!   - no end of header block within the maximum size: the header lines read so far are dropped
//!     and the rest of the message is skipped as garbage up to the next start line
//!     ([`FramingError::TooLarge`], no head);
//!   - missing or malformed `Content-Length`: the header block is dropped, a body following it is
//!     skipped as garbage ([`FramingError::MissingContentLength`],
//!     [`FramingError::BadContentLength`], with the header block so that a `400` can be answered).

use std::collections::VecDeque;

use crate::message::MAX_MESSAGE_SIZE;

/// The RFC 5626 pong: the answer to a [`Frame::Ping`].
pub const PONG: &[u8] = b"\r\n";

/// The RFC 5626 ping a client sends.
pub const PING: &[u8] = b"\r\n\r\n";

/// What the decoder found in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One complete message (header block and exactly `Content-Length` body bytes).
    Message(Vec<u8>),
    /// A CRLF CRLF keep-alive: answer with [`PONG`].
    Ping,
    /// This many bytes were skipped because they were not part of a message.
    Garbage(usize),
    /// A message was dropped; the decoder has resynchronised.
    Error {
        /// Why.
        error: FramingError,
        /// The message's header block (ending in CRLF CRLF) when it was read, so that a request
        /// can be answered.
        head: Option<Vec<u8>>,
    },
}

/// Why a message was dropped by the framing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// Larger than the decoder's maximum size (at least `size` bytes).
    #[error("message of at least {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The declared size, or the bytes buffered when the header block did not end in time.
        size: usize,
        /// The decoder's limit.
        limit: usize,
    },
    /// No `Content-Length`, which is mandatory on stream transports (§18.3).
    #[error("no Content-Length on a stream transport")]
    MissingContentLength,
    /// A `Content-Length` that is not a number, or two different ones.
    #[error("bad Content-Length: {0}")]
    BadContentLength(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between messages: keep-alive CRLFs are recognised.
    Boundary,
    /// Skipping lines (blank ones too) up to the next plausible start line.
    Garbage,
    /// A start line was accepted; looking for CRLF CRLF from `scanned`.
    Head { scanned: usize },
    /// Waiting for `total` bytes.
    Body { total: usize },
    /// Skipping the body of an oversize message.
    Discard { remaining: usize },
}

/// Incremental SIP stream decoder. See the [module documentation](self).
#[derive(Debug)]
pub struct StreamDecoder {
    buf: Vec<u8>,
    state: State,
    /// Where the search for the end of the first line resumes (Boundary and Garbage states).
    line_scanned: usize,
    max_size: usize,
    garbage: usize,
    out: VecDeque<Frame>,
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamDecoder {
    /// A decoder with the limit [`MAX_MESSAGE_SIZE`].
    pub fn new() -> Self {
        Self::with_max_size(MAX_MESSAGE_SIZE)
    }

    /// A decoder dropping messages larger than `max_size` bytes (at least 64).
    pub fn with_max_size(max_size: usize) -> Self {
        StreamDecoder {
            buf: Vec::new(),
            state: State::Boundary,
            line_scanned: 0,
            max_size: max_size.max(64),
            garbage: 0,
            out: VecDeque::new(),
        }
    }

    /// Appends received bytes; then call [`next_frame`](Self::next_frame) until it returns
    /// `None`.
    pub fn feed(&mut self, data: &[u8]) {
        if let State::Discard { remaining } = self.state {
            // Skip without buffering.
            let n = remaining.min(data.len());
            self.state = if remaining > n {
                State::Discard {
                    remaining: remaining - n,
                }
            } else {
                State::Boundary
            };
            self.buf.extend_from_slice(&data[n..]);
        } else {
            self.buf.extend_from_slice(data);
        }
    }

    /// The next frame, or `None` when more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Frame> {
        while self.out.is_empty() {
            if !self.step() {
                break;
            }
        }
        self.out.pop_front()
    }

    /// Bytes buffered and not yet framed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Garbage bytes skipped but not yet reported.
    pub fn pending_garbage(&self) -> usize {
        self.garbage
    }

    fn emit(&mut self, frame: Frame) {
        self.flush_garbage();
        self.out.push_back(frame);
    }

    fn flush_garbage(&mut self) {
        if self.garbage > 0 {
            self.out.push_back(Frame::Garbage(self.garbage));
            self.garbage = 0;
        }
    }

    fn skip(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        self.buf.drain(..n);
        self.garbage += n;
        self.line_scanned = 0;
    }

    /// One step of the state machine; `false` when more input is needed.
    fn step(&mut self) -> bool {
        match self.state {
            State::Discard { remaining } => {
                let n = remaining.min(self.buf.len());
                self.buf.drain(..n);
                if remaining > n {
                    self.state = State::Discard {
                        remaining: remaining - n,
                    };
                    false
                } else {
                    self.state = State::Boundary;
                    true
                }
            }
            State::Boundary | State::Garbage => self.step_line(),
            State::Head { scanned } => self.step_head(scanned),
            State::Body { total } => {
                if self.buf.len() < total {
                    return false;
                }
                let msg: Vec<u8> = self.buf.drain(..total).collect();
                self.state = State::Boundary;
                self.line_scanned = 0;
                self.emit(Frame::Message(msg));
                true
            }
        }
    }

    fn step_line(&mut self) -> bool {
        if self.state == State::Boundary {
            if self.buf.starts_with(PING) {
                self.buf.drain(..4);
                self.line_scanned = 0;
                self.emit(Frame::Ping);
                return true;
            }
            if self.buf.starts_with(b"\r") && PING.starts_with(&self.buf) {
                return false; // "\r", "\r\n", "\r\n\r": a ping may follow
            }
            if self.buf.starts_with(b"\r\n") {
                // A lone CRLF: skipped, not garbage.
                self.buf.drain(..2);
                self.line_scanned = 0;
                return true;
            }
        }
        // Find the end of the first line, noting the last byte no start line can contain.
        let mut i = self.line_scanned;
        let mut bad = None;
        let mut eol = None;
        while i < self.buf.len() {
            let b = self.buf[i];
            if b == b'\r' {
                match self.buf.get(i + 1) {
                    Some(b'\n') => {
                        eol = Some(i);
                        break;
                    }
                    Some(_) => bad = Some(i),
                    None => break,
                }
            } else if (b < 0x20 && b != b'\t') || b == 0x7f {
                bad = Some(i);
            }
            i += 1;
        }
        if let Some(bad) = bad {
            self.skip(bad + 1);
            self.state = State::Garbage;
            return true;
        }
        let Some(eol) = eol else {
            self.line_scanned = i;
            if self.buf.len() > self.max_size {
                self.skip(self.buf.len());
                self.state = State::Garbage;
            }
            return false;
        };
        if eol == 0 {
            // A blank line inside garbage.
            self.skip(2);
            return true;
        }
        let start = if plausible_start_line(&self.buf[..eol]) {
            Some(0)
        } else {
            find_start_line(&self.buf[..eol])
        };
        match start {
            Some(j) => {
                self.skip(j);
                self.flush_garbage();
                self.state = State::Head { scanned: eol - j };
            }
            None => {
                self.skip(eol + 2);
                self.state = State::Garbage;
            }
        }
        true
    }

    fn step_head(&mut self, scanned: usize) -> bool {
        let found = self.buf[scanned.min(self.buf.len())..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + scanned);
        let Some(h) = found else {
            if self.buf.len() > self.max_size {
                let size = self.buf.len();
                self.buf.clear();
                self.line_scanned = 0;
                self.state = State::Garbage;
                self.emit(Frame::Error {
                    error: FramingError::TooLarge {
                        size,
                        limit: self.max_size,
                    },
                    head: None,
                });
                return true;
            }
            self.state = State::Head {
                scanned: self.buf.len().saturating_sub(3).max(scanned),
            };
            return false;
        };
        let head_len = h + 4;
        self.line_scanned = 0;
        if head_len > self.max_size {
            // As if the end had not been found in time: the header lines are dropped, the rest
            // (final blank line, body) skipped as garbage up to the next start line.
            self.buf.drain(..h + 2);
            self.state = State::Garbage;
            self.emit(Frame::Error {
                error: FramingError::TooLarge {
                    size: head_len,
                    limit: self.max_size,
                },
                head: None,
            });
            return true;
        }
        match content_length(&self.buf[..h]) {
            Ok(cl) => {
                let total = head_len.saturating_add(cl);
                if total > self.max_size {
                    let head = self.buf[..head_len].to_vec();
                    let n = total.min(self.buf.len());
                    self.buf.drain(..n);
                    self.state = if total > n {
                        State::Discard {
                            remaining: total - n,
                        }
                    } else {
                        State::Boundary
                    };
                    self.emit(Frame::Error {
                        error: FramingError::TooLarge {
                            size: total,
                            limit: self.max_size,
                        },
                        head: Some(head),
                    });
                } else {
                    self.state = State::Body { total };
                }
            }
            Err(error) => {
                let head: Vec<u8> = self.buf.drain(..head_len).collect();
                self.state = State::Boundary;
                self.emit(Frame::Error {
                    error,
                    head: Some(head),
                });
            }
        }
        true
    }
}

/// The `Content-Length` of a header block (start line and header lines, without the final
/// CRLF CRLF).
pub fn content_length(head: &[u8]) -> Result<usize, FramingError> {
    let mut found: Option<usize> = None;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !is_content_length_line(line) {
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = trim(&line[colon + 1..]);
        if value.is_empty() || value.len() > 10 || !value.iter().all(u8::is_ascii_digit) {
            return Err(FramingError::BadContentLength(
                String::from_utf8_lossy(value).into_owned(),
            ));
        }
        let n = value
            .iter()
            .fold(0usize, |acc, &d| acc * 10 + usize::from(d - b'0'));
        match found {
            Some(prev) if prev != n => {
                return Err(FramingError::BadContentLength(format!(
                    "two values, {prev} and {n}"
                )));
            }
            _ => found = Some(n),
        }
    }
    found.ok_or(FramingError::MissingContentLength)
}

/// The header block with its `Content-Length` lines removed: parses as a body-less message, so
/// that a request whose framing failed can still be answered.
pub fn head_without_content_length(head: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len());
    let mut first = true;
    let mut rest = head;
    while !rest.is_empty() {
        let (line, next) = match rest.windows(2).position(|w| w == b"\r\n") {
            Some(p) => (&rest[..p + 2], &rest[p + 2..]),
            None => (rest, &rest[rest.len()..]),
        };
        let bare = line.strip_suffix(b"\r\n").unwrap_or(line);
        if first || !is_content_length_line(bare) {
            out.extend_from_slice(line);
        }
        first = false;
        rest = next;
    }
    out
}

fn is_content_length_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let name = trim(&line[..colon]);
    name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l")
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Whether a line (without CRLF, no control characters) can be a SIP start line.
pub fn plausible_start_line(line: &[u8]) -> bool {
    status_line_prefix(line) || request_line(line)
}

/// `SIP/d+.d+ SP ddd (SP …)?`
fn status_line_prefix(line: &[u8]) -> bool {
    let Some(rest) = line.strip_prefix(b"SIP/") else {
        return false;
    };
    let major = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if major == 0 || rest.get(major) != Some(&b'.') {
        return false;
    }
    let rest = &rest[major + 1..];
    let minor = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if minor == 0 || rest.get(minor) != Some(&b' ') {
        return false;
    }
    let rest = &rest[minor + 1..];
    rest.len() >= 3
        && rest[..3].iter().all(u8::is_ascii_digit)
        && rest.get(3).is_none_or(|&b| is_ws(b))
}

/// Exactly three words: token, something with `:`, `SIP/…`.
fn request_line(line: &[u8]) -> bool {
    if line.first().is_none_or(|&b| is_ws(b)) {
        return false;
    }
    let words: Vec<&[u8]> = line
        .split(|&b| is_ws(b))
        .filter(|w| !w.is_empty())
        .take(4)
        .collect();
    matches!(words.as_slice(), [m, uri, v]
        if m.iter().all(|&b| is_token(b)) && uri.contains(&b':') && v.starts_with(b"SIP/"))
}

/// Where inside an implausible line a plausible start line begins after a non-token byte.
fn find_start_line(line: &[u8]) -> Option<usize> {
    let status =
        (1..line.len()).find(|&j| !is_token(line[j - 1]) && status_line_prefix(&line[j..]));
    // A request line has exactly three words, so it starts inside the third word from the end.
    let word_starts: Vec<usize> = (0..line.len())
        .filter(|&j| !is_ws(line[j]) && (j == 0 || is_ws(line[j - 1])))
        .collect();
    // The method must run from a non-token byte to the end of that word, so there is exactly
    // one candidate: just after the word's last non-token byte (or the word's start).
    let request = if word_starts.len() >= 3 {
        let w = word_starts[word_starts.len() - 3];
        let end = w + line[w..].iter().take_while(|&&b| !is_ws(b)).count();
        let j = match (w..end).rev().find(|&k| !is_token(line[k])) {
            Some(k) => k + 1,
            None => w,
        };
        (j > 0 && j < end && request_line(&line[j..])).then_some(j)
    } else {
        None
    };
    match (status, request) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(d: &mut StreamDecoder) -> Vec<Frame> {
        std::iter::from_fn(|| d.next_frame()).collect()
    }

    #[test]
    fn start_lines() {
        assert!(plausible_start_line(b"INVITE sip:a@b SIP/2.0"));
        assert!(plausible_start_line(b"SIP/2.0 200 OK"));
        assert!(plausible_start_line(b"SIP/2.0 200"));
        assert!(!plausible_start_line(b"Via: SIP/2.0/UDP h"));
        assert!(!plausible_start_line(b"junk INVITE sip:a@b SIP/2.0"));
        assert_eq!(find_start_line(b"junk INVITE sip:a@b SIP/2.0"), Some(5));
        assert_eq!(find_start_line(b"@@SIP/2.0 180 Ringing"), Some(2));
        assert_eq!(find_start_line(b"a b c"), None);
    }

    #[test]
    fn keepalive() {
        let mut d = StreamDecoder::new();
        d.feed(b"\r\n\r\n\r\nOPTIONS sip:a@b SIP/2.0\r\nl: 0\r\n\r\n");
        let f = all(&mut d);
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[0], Frame::Ping);
        assert!(matches!(f[1], Frame::Message(_)));
    }
}
