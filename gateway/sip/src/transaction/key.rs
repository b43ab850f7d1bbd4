//! Transaction keys: how a message finds its transaction (RFC 3261 §17.1.3, §17.2.3).

use std::hash::{Hash, Hasher};

use rsip::Request;

use super::parse::{self, CSeq, Field, TopVia};
use super::Error;

/// Which side of the exchange a transaction is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// We sent the request.
    Client,
    /// We received the request.
    Server,
}

/// Identifies one transaction inside a [`TransactionLayer`](super::TransactionLayer).
///
/// * Client transactions: top-Via branch + CSeq method (§17.1.3).
/// * Server transactions with an RFC 3261 branch (magic cookie `z9hG4bK`): branch + sent-by of
///   the top Via + request method, where ACK counts as INVITE (§17.2.3).
/// * Server transactions of RFC 2543 peers (no magic cookie): Request-URI, From tag, To tag,
///   Call-ID, CSeq number, top Via and method (§17.2.3, last paragraphs).
///
/// Branches are compared case-insensitively (RFC 3261 §7.3.1); the key stores them lower-case.
/// A client and a server transaction never share a key, even for a request we send to ourselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionKey {
    role: Role,
    method: rsip::Method,
    id: KeyId,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum KeyId {
    /// Branch and sent-by in one allocation (`both[..at]` is the branch): keys are held for
    /// every live and completed transaction, so they are kept small (issue 16).
    Branch {
        both: Box<str>,
        at: u32,
    },
    Rfc2543(Box<LegacyId>),
}

impl KeyId {
    fn branch(branch: &str, sent_by: &str) -> Self {
        let mut both = String::with_capacity(branch.len() + sent_by.len());
        both.push_str(branch);
        both.push_str(sent_by);
        // A branch longer than u32::MAX bytes cannot arrive (messages are bounded).
        let at = u32::try_from(branch.len()).unwrap_or(u32::MAX);
        Self::Branch {
            both: both.into_boxed_str(),
            at,
        }
    }

    /// (branch, sent-by) of a branch key.
    fn parts(&self) -> Option<(&str, &str)> {
        match self {
            Self::Branch { both, at } => {
                Some(both.split_at_checked(*at as usize).unwrap_or((both, "")))
            }
            Self::Rfc2543(_) => None,
        }
    }
}

/// The RFC 2543 matching fields of a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct LegacyId {
    request_uri: String,
    from_tag: Option<String>,
    to_tag: Option<String>,
    call_id: String,
    cseq: u32,
    top_via: String,
}

/// What an RFC 2543 ACK is matched on; the To tag is checked separately against the tag of the
/// response the server transaction sent (§17.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct LegacyAckId {
    request_uri: String,
    from_tag: Option<String>,
    call_id: String,
    cseq: u32,
    top_via: String,
}

impl Hash for TransactionKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.role.hash(state);
        // rsip::Method has no Hash; it is a field-less enum, so its discriminant identifies it.
        std::mem::discriminant(&self.method).hash(state);
        self.id.hash(state);
    }
}

impl TransactionKey {
    /// The key [`send_request`](super::TransactionLayer::send_request) gives a request whose
    /// top Via carries `branch`: a user agent outside this crate knows its transaction before
    /// the request is sent.
    pub fn client(branch: &str, method: rsip::Method) -> Self {
        Self {
            role: Role::Client,
            method,
            id: KeyId::branch(&branch.to_ascii_lowercase(), ""),
        }
    }

    /// The server key of an RFC 3261 request: `branch` (lower-cased) and `sent_by` of its top
    /// Via, and its method (INVITE for an ACK).
    pub(crate) fn server_branch(method: rsip::Method, branch: &str, sent_by: &str) -> Self {
        Self {
            role: Role::Server,
            method,
            id: KeyId::branch(branch, sent_by),
        }
    }

    /// (role, method, branch, sent-by) of a key matched by branch; `None` for RFC 2543 keys.
    pub(crate) fn branch_parts(&self) -> Option<(Role, rsip::Method, &str, &str)> {
        let (branch, sent_by) = self.id.parts()?;
        Some((self.role, self.method, branch, sent_by))
    }

    /// Client or server side.
    pub fn role(&self) -> Role {
        self.role
    }

    /// True for a transaction created by [`send_request`](super::TransactionLayer::send_request).
    pub fn is_client(&self) -> bool {
        self.role == Role::Client
    }

    /// True for a transaction created by an incoming request.
    pub fn is_server(&self) -> bool {
        self.role == Role::Server
    }

    /// The method of the transaction (INVITE for an INVITE transaction, even when an ACK was
    /// matched to it).
    pub fn method(&self) -> rsip::Method {
        self.method
    }

    /// The (lower-cased) branch, unless this is an RFC 2543 server transaction.
    pub fn branch(&self) -> Option<&str> {
        match &self.id {
            KeyId::Branch { .. } => self.id.parts().map(|(b, _)| b),
            KeyId::Rfc2543(_) => None,
        }
    }

    /// Whether the transaction was matched with the RFC 2543 rules (no magic cookie).
    pub fn is_rfc2543(&self) -> bool {
        matches!(self.id, KeyId::Rfc2543(_))
    }
}

impl std::fmt::Display for TransactionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let role = match self.role {
            Role::Client => "client",
            Role::Server => "server",
        };
        match &self.id {
            KeyId::Branch { .. } => match self.id.parts() {
                Some((branch, "")) => write!(f, "{role} {} {branch}", self.method),
                Some((branch, sent_by)) => {
                    write!(f, "{role} {} {branch}@{sent_by}", self.method)
                }
                None => Ok(()),
            },
            KeyId::Rfc2543(l) => write!(
                f,
                "{role} {} rfc2543 call-id={} cseq={}",
                self.method, l.call_id, l.cseq
            ),
        }
    }
}

/// The matching identifiers of an incoming request, computed once.
#[derive(Debug, Clone)]
pub(crate) enum ServerIds {
    Branch { branch: String, sent_by: String },
    Rfc2543(LegacyId),
}

impl ServerIds {
    pub(crate) fn of(req: &Request, via: &TopVia, cseq: &CSeq) -> Result<Self, Error> {
        if let Some(branch) = via.rfc3261_branch() {
            return Ok(Self::Branch {
                branch: branch.to_ascii_lowercase(),
                sent_by: via.sent_by.clone(),
            });
        }
        Ok(Self::Rfc2543(LegacyId {
            request_uri: req.uri.to_string(),
            from_tag: parse::field_tag(&req.headers, Field::From)?,
            to_tag: parse::field_tag(&req.headers, Field::To)?,
            call_id: parse::value(&req.headers, Field::CallId)?.to_owned(),
            cseq: cseq.seq,
            top_via: via.raw.clone(),
        }))
    }

    /// The server key for `method` (pass INVITE for an ACK or a CANCEL looking for its INVITE).
    pub(crate) fn key(&self, method: rsip::Method) -> TransactionKey {
        let id = match self {
            Self::Branch { branch, sent_by } => KeyId::branch(branch, sent_by),
            Self::Rfc2543(l) => KeyId::Rfc2543(Box::new(l.clone())),
        };
        TransactionKey {
            role: Role::Server,
            method,
            id,
        }
    }

    /// For an RFC 2543 request: the fields an ACK is matched on, and the request's To tag.
    pub(crate) fn legacy_ack(&self) -> Option<(LegacyAckId, Option<&str>)> {
        match self {
            Self::Branch { .. } => None,
            Self::Rfc2543(l) => Some((
                LegacyAckId {
                    request_uri: l.request_uri.clone(),
                    from_tag: l.from_tag.clone(),
                    call_id: l.call_id.clone(),
                    cseq: l.cseq,
                    top_via: l.top_via.clone(),
                },
                l.to_tag.as_deref(),
            )),
        }
    }
}
