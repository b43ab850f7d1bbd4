//! XEP-0114 stream headers carry no `version` (Prosody sends none); tokio-xmpp's stream reader
//! requires `version='1.0'`. [`HeaderFix`] adds it to the server's stream header, the first
//! start tag after the XML declaration, and passes everything after untouched.

use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest server stream header accepted (bytes, with the XML declaration).
pub const MAX_HEADER: usize = 4096;

/// Where the header is complete in `buf`: `Some(Ok(fixed bytes))` once the stream's start tag
/// ended (with ` version='1.0'` added if it had no `version`), `Some(Err(()))` when it is not a
/// stream header or longer than [`MAX_HEADER`], `None` when more bytes are needed. Sans-IO.
#[allow(clippy::result_unit_err)]
pub fn fix_header(buf: &[u8]) -> Option<Result<Vec<u8>, ()>> {
    let mut i = 0;
    // skip white space, the XML declaration and comments before the stream's start tag
    loop {
        while i < buf.len() && buf[i].is_ascii_whitespace() {
            i += 1;
        }
        if buf.len() < i + 2 {
            return (buf.len() > MAX_HEADER).then_some(Err(()));
        }
        if buf[i] != b'<' {
            return Some(Err(()));
        }
        if buf[i + 1] == b'?' || buf[i + 1] == b'!' {
            match buf[i..].iter().position(|b| *b == b'>') {
                Some(end) => i += end + 1,
                None => return (buf.len() > MAX_HEADER).then_some(Err(())),
            }
            continue;
        }
        break;
    }
    let start = i;
    let mut quote = None;
    for (j, &b) in buf.iter().enumerate().skip(start) {
        match (quote, b) {
            (None, b'\'' | b'"') => quote = Some(b),
            (Some(q), _) if b == q => quote = None,
            (None, b'>') => {
                let tag = &buf[start..j];
                let name_end = tag
                    .iter()
                    .position(|c| c.is_ascii_whitespace() || *c == b'>' || *c == b'/')
                    .unwrap_or(tag.len());
                let name = &tag[1..name_end];
                if !(name == b"stream" || name.ends_with(b":stream")) {
                    return Some(Err(()));
                }
                let has_version = tag
                    .windows(9)
                    .any(|w| w[0].is_ascii_whitespace() && &w[1..] == b"version=");
                let mut out = Vec::with_capacity(buf.len() + 16);
                out.extend_from_slice(&buf[..j]);
                if !has_version {
                    out.extend_from_slice(b" version='1.0'");
                }
                out.extend_from_slice(&buf[j..]);
                return Some(Ok(out));
            }
            _ => {}
        }
        if j >= MAX_HEADER {
            return Some(Err(()));
        }
    }
    (buf.len() > MAX_HEADER).then_some(Err(()))
}

/// A byte stream whose first stream header goes through [`fix_header`].
pub struct HeaderFix<T> {
    inner: T,
    pending: Vec<u8>,
    out: Vec<u8>,
    pos: usize,
    done: bool,
}

impl<T> HeaderFix<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        HeaderFix {
            inner,
            pending: Vec::new(),
            out: Vec::new(),
            pos: 0,
            done: false,
        }
    }
}

impl<T> HeaderFix<T> {
    /// The wrapped stream (writes pass through unchanged).
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HeaderFix<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.pos);
                buf.put_slice(&this.out[this.pos..this.pos + n]);
                this.pos += n;
                return Poll::Ready(Ok(()));
            }
            if this.done {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut chunk = [0u8; 1024];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    // EOF before a whole header: hand over what came (the parser reports it)
                    this.done = true;
                    this.out = std::mem::take(&mut this.pending);
                    this.pos = 0;
                    if this.out.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Ok(())) => {
                    this.pending.extend_from_slice(rb.filled());
                    match fix_header(&this.pending) {
                        None => {}
                        Some(Ok(fixed)) => {
                            this.done = true;
                            this.pending.clear();
                            this.out = fixed;
                            this.pos = 0;
                        }
                        Some(Err(())) => {
                            return Poll::Ready(Err(std::io::Error::new(
                                std::io::ErrorKind::InvalidData,
                                "the server's component stream header is not one",
                            )))
                        }
                    }
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeaderFix<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_version_only_when_missing() {
        let prosody = b"<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:component:accept' id='x1' from='p.test'><handshake/>";
        let fixed = fix_header(prosody).expect("complete").expect("a header");
        let s = String::from_utf8(fixed).expect("utf8");
        assert!(
            s.contains("from='p.test' version='1.0'><handshake/>"),
            "{s}"
        );
        let with = b"<stream:stream version='1.0' id='a'>";
        assert_eq!(fix_header(with), Some(Ok(with.to_vec())));
        assert_eq!(fix_header(b"<?xml version='1.0'?><stream:str"), None);
        assert_eq!(fix_header(b"<presence/>"), Some(Err(())));
        assert_eq!(fix_header(&[b' '; MAX_HEADER + 10]), Some(Err(())));
        // a '>' inside a quoted attribute value does not end the tag
        let q = b"<stream:stream id='a>b'>";
        let s = String::from_utf8(fix_header(q).expect("complete").expect("ok")).expect("utf8");
        assert_eq!(s, "<stream:stream id='a>b' version='1.0'>");
    }
}
