//! The line parser: text → [`SessionDescription`], with [`SdpError`] naming the offending line.
//!
//! Leniency (what real stacks send and we accept): LF or CRLF line ends, blank lines (skipped),
//! trailing spaces/tabs on a line (trimmed), runs of spaces or tabs between fields, missing
//! `t=`, an empty `s=`, lines out of the RFC 8866 §5 order within their section, and line types
//! we do not know (kept in order). Strictness (what we reject): anything before `v=0`, a line
//! that is not `<letter>=…`, control characters other than tab, a second `v=`/`o=`/`s=` or a
//! second `c=` in one section, `o=`/`c=`/`m=` with the wrong number of fields, ports and port
//! counts that are not 16-bit numbers, an origin version that is not a 64-bit number, and an
//! empty attribute name.

use super::{Attribute, Connection, Media, Origin, OtherLine, SessionDescription};

/// The largest SDP body accepted, in bytes (the same bound as a SIP message).
pub const MAX_SDP_SIZE: usize = 64 * 1024;

/// Why an SDP body was rejected. Every variant carries the 1-based line number it refers to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// The body is larger than [`MAX_SDP_SIZE`].
    #[error("line {line}: SDP body of {size} bytes exceeds the {MAX_SDP_SIZE}-byte limit")]
    TooLarge {
        /// Always 1: the body as a whole is refused.
        line: usize,
        /// The size of the body in bytes.
        size: usize,
    },
    /// The bytes are not UTF-8.
    #[error("line {line}: not valid UTF-8")]
    NotUtf8 {
        /// The line holding the first invalid byte.
        line: usize,
    },
    /// The body is empty (or only blank lines).
    #[error("line {line}: empty SDP body")]
    Empty {
        /// The line where `v=` was expected.
        line: usize,
    },
    /// The first line is not `v=`.
    #[error("line {line}: SDP must start with v=0")]
    MissingVersion {
        /// The first non-blank line.
        line: usize,
    },
    /// `v=` carries a version other than 0.
    #[error("line {line}: unsupported SDP version {found:?}")]
    UnsupportedVersion {
        /// The `v=` line.
        line: usize,
        /// What it said.
        found: String,
    },
    /// A mandatory session-level line (`o=` or `s=`) is absent.
    #[error("line {line}: missing mandatory {field}= line")]
    Missing {
        /// The last line of the session section (where it should have been by then).
        line: usize,
        /// The line type letter.
        field: char,
    },
    /// A line type that may appear only once per section appears again.
    #[error("line {line}: duplicate {field}= line")]
    Duplicate {
        /// The second occurrence.
        line: usize,
        /// The line type letter.
        field: char,
    },
    /// A line type appears in a section where it is not allowed (`v=`, `o=`, `s=` in a media
    /// section).
    #[error("line {line}: {field}= is not allowed in a media section")]
    Misplaced {
        /// The offending line.
        line: usize,
        /// The line type letter.
        field: char,
    },
    /// The line is not of the form `<letter>=<value>`, or holds forbidden characters.
    #[error("line {line}: {reason}")]
    Syntax {
        /// The offending line.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A malformed `o=` line.
    #[error("line {line}: bad o= line: {reason}")]
    BadOrigin {
        /// The `o=` line.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A malformed `c=` line.
    #[error("line {line}: bad c= line: {reason}")]
    BadConnection {
        /// The `c=` line.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A malformed `m=` line (other than its port).
    #[error("line {line}: bad m= line: {reason}")]
    BadMedia {
        /// The `m=` line.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An `m=` port or port count that is not a number in 0..=65535.
    #[error("line {line}: bad port {value:?} in m= line")]
    BadPort {
        /// The `m=` line.
        line: usize,
        /// The text that should have been a port.
        value: String,
    },
    /// A malformed `a=` line.
    #[error("line {line}: bad a= line: {reason}")]
    BadAttribute {
        /// The `a=` line.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl SdpError {
    /// The 1-based line number the error refers to.
    pub fn line(&self) -> usize {
        match self {
            SdpError::TooLarge { line, .. }
            | SdpError::NotUtf8 { line }
            | SdpError::Empty { line }
            | SdpError::MissingVersion { line }
            | SdpError::UnsupportedVersion { line, .. }
            | SdpError::Missing { line, .. }
            | SdpError::Duplicate { line, .. }
            | SdpError::Misplaced { line, .. }
            | SdpError::Syntax { line, .. }
            | SdpError::BadOrigin { line, .. }
            | SdpError::BadConnection { line, .. }
            | SdpError::BadMedia { line, .. }
            | SdpError::BadPort { line, .. }
            | SdpError::BadAttribute { line, .. } => *line,
        }
    }
}

/// Checks UTF-8, reporting the line of the first bad byte.
pub(super) fn parse_bytes(b: &[u8]) -> Result<SessionDescription, SdpError> {
    if b.len() > MAX_SDP_SIZE {
        return Err(SdpError::TooLarge {
            line: 1,
            size: b.len(),
        });
    }
    match std::str::from_utf8(b) {
        Ok(s) => parse(s),
        Err(e) => {
            let good = b.get(..e.valid_up_to()).unwrap_or_default();
            let line = 1 + good.iter().filter(|&&c| c == b'\n').count();
            Err(SdpError::NotUtf8 { line })
        }
    }
}

/// Parses a whole session description.
pub(super) fn parse(text: &str) -> Result<SessionDescription, SdpError> {
    if text.len() > MAX_SDP_SIZE {
        return Err(SdpError::TooLarge {
            line: 1,
            size: text.len(),
        });
    }
    let mut lines = text
        .split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .map(|(n, l)| (n, l.trim_end_matches([' ', '\t'])))
        .filter(|(_, l)| !l.is_empty());

    let Some((first_no, first)) = lines.next() else {
        return Err(SdpError::Empty {
            line: 1 + text.matches('\n').count(),
        });
    };
    let (kind, value) = split_line(first_no, first)?;
    if kind != 'v' {
        return Err(SdpError::MissingVersion { line: first_no });
    }
    if value.trim() != "0" {
        return Err(SdpError::UnsupportedVersion {
            line: first_no,
            found: value.to_string(),
        });
    }

    let mut origin: Option<Origin> = None;
    let mut session_name: Option<String> = None;
    let mut connection: Option<Connection> = None;
    let mut other: Vec<OtherLine> = Vec::new();
    let mut attributes: Vec<Attribute> = Vec::new();
    let mut media: Vec<Media> = Vec::new();
    let mut last_session_line = first_no;

    for (no, line) in lines {
        let (kind, value) = split_line(no, line)?;
        if let Some(m) = media.last_mut() {
            match kind {
                'm' => media.push(parse_media(no, value)?),
                'c' => {
                    if m.connection.is_some() {
                        return Err(SdpError::Duplicate {
                            line: no,
                            field: 'c',
                        });
                    }
                    m.connection = Some(parse_connection(no, value)?);
                }
                'a' => m.attributes.push(parse_attribute(no, value)?),
                'v' | 'o' | 's' => {
                    return Err(SdpError::Misplaced {
                        line: no,
                        field: kind,
                    })
                }
                _ => m.other.push(OtherLine {
                    kind,
                    value: value.to_string(),
                }),
            }
            continue;
        }
        last_session_line = no;
        match kind {
            'v' => {
                return Err(SdpError::Duplicate {
                    line: no,
                    field: 'v',
                })
            }
            'o' => {
                if origin.is_some() {
                    return Err(SdpError::Duplicate {
                        line: no,
                        field: 'o',
                    });
                }
                origin = Some(parse_origin(no, value)?);
            }
            's' => {
                if session_name.is_some() {
                    return Err(SdpError::Duplicate {
                        line: no,
                        field: 's',
                    });
                }
                session_name = Some(value.to_string());
            }
            'c' => {
                if connection.is_some() {
                    return Err(SdpError::Duplicate {
                        line: no,
                        field: 'c',
                    });
                }
                connection = Some(parse_connection(no, value)?);
            }
            'a' => attributes.push(parse_attribute(no, value)?),
            'm' => {
                if origin.is_none() {
                    return Err(SdpError::Missing {
                        line: no,
                        field: 'o',
                    });
                }
                if session_name.is_none() {
                    return Err(SdpError::Missing {
                        line: no,
                        field: 's',
                    });
                }
                media.push(parse_media(no, value)?);
            }
            _ => other.push(OtherLine {
                kind,
                value: value.to_string(),
            }),
        }
    }

    let origin = origin.ok_or(SdpError::Missing {
        line: last_session_line,
        field: 'o',
    })?;
    let session_name = session_name.ok_or(SdpError::Missing {
        line: last_session_line,
        field: 's',
    })?;
    Ok(SessionDescription {
        origin,
        session_name,
        connection,
        other,
        attributes,
        media,
    })
}

/// Splits `x=value`, checking the type letter and the characters of the line.
fn split_line(no: usize, line: &str) -> Result<(char, &str), SdpError> {
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(SdpError::Syntax {
            line: no,
            reason: "control character in line",
        });
    }
    let mut chars = line.chars();
    match (chars.next(), chars.next()) {
        (Some(k), Some('=')) if k.is_ascii_alphabetic() => Ok((k, chars.as_str())),
        _ => Err(SdpError::Syntax {
            line: no,
            reason: "expected <type>=<value>",
        }),
    }
}

/// `o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>`
fn parse_origin(no: usize, value: &str) -> Result<Origin, SdpError> {
    let f: Vec<&str> = value.split_ascii_whitespace().collect();
    let [username, session_id, version, net_type, addr_type, address] = f[..] else {
        return Err(SdpError::BadOrigin {
            line: no,
            reason: "expected 6 fields",
        });
    };
    let session_version = version.parse::<u64>().map_err(|_| SdpError::BadOrigin {
        line: no,
        reason: "session version is not a 64-bit number",
    })?;
    Ok(Origin {
        username: username.to_string(),
        session_id: session_id.to_string(),
        session_version,
        net_type: net_type.to_string(),
        addr_type: addr_type.to_string(),
        address: address.to_string(),
    })
}

/// `c=<nettype> <addrtype> <connection-address>`
fn parse_connection(no: usize, value: &str) -> Result<Connection, SdpError> {
    let f: Vec<&str> = value.split_ascii_whitespace().collect();
    let [net_type, addr_type, address] = f[..] else {
        return Err(SdpError::BadConnection {
            line: no,
            reason: "expected 3 fields",
        });
    };
    Ok(Connection {
        net_type: net_type.to_string(),
        addr_type: addr_type.to_string(),
        address: address.to_string(),
    })
}

/// `m=<media> <port>[/<number of ports>] <proto> <fmt> ...`
fn parse_media(no: usize, value: &str) -> Result<Media, SdpError> {
    let mut f = value.split_ascii_whitespace();
    let (Some(kind), Some(port), Some(proto)) = (f.next(), f.next(), f.next()) else {
        return Err(SdpError::BadMedia {
            line: no,
            reason: "expected <media> <port> <proto> <fmt>...",
        });
    };
    let formats: Vec<String> = f.map(str::to_string).collect();
    if formats.is_empty() {
        return Err(SdpError::BadMedia {
            line: no,
            reason: "no formats",
        });
    }
    let bad_port = || SdpError::BadPort {
        line: no,
        value: port.to_string(),
    };
    let (port, port_count) = match port.split_once('/') {
        Some((p, c)) => (
            parse_u16(p).ok_or_else(bad_port)?,
            Some(parse_u16(c).ok_or_else(bad_port)?),
        ),
        None => (parse_u16(port).ok_or_else(bad_port)?, None),
    };
    Ok(Media {
        kind: kind.to_string(),
        port,
        port_count,
        proto: proto.to_string(),
        formats,
        connection: None,
        other: Vec::new(),
        attributes: Vec::new(),
    })
}

/// Digits only (no sign, no whitespace), at most 65535.
fn parse_u16(s: &str) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `a=<name>` or `a=<name>:<value>`
fn parse_attribute(no: usize, value: &str) -> Result<Attribute, SdpError> {
    let (name, val) = match value.split_once(':') {
        Some((n, v)) => (n, Some(v.to_string())),
        None => (value, None),
    };
    if name.is_empty() {
        return Err(SdpError::BadAttribute {
            line: no,
            reason: "empty attribute name",
        });
    }
    if name.chars().any(|c| c.is_ascii_whitespace()) {
        return Err(SdpError::BadAttribute {
            line: no,
            reason: "whitespace in attribute name",
        });
    }
    Ok(Attribute {
        name: name.to_string(),
        value: val,
    })
}
