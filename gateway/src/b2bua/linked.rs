//! Reporting across legs and nodes (issue 11 item 5): a call's uniqueid and linked id
//! (Asterisk's `uniqueid`/`linkedid`), carried between gateways and ACD nodes in the headers of
//! [`crate::offer`].

use super::{B2bua, Header, Request};

/// The `X-CF-Offer` of an INVITE, if it has a valid one.
pub(super) fn offer_of(req: &Request) -> Option<crate::offer::Offer> {
    req.headers.iter().find_map(|h| match h {
        Header::Other(n, v) if n.trim().eq_ignore_ascii_case(crate::offer::HEADER) => {
            crate::offer::Offer::parse(v).ok()
        }
        _ => None,
    })
}

/// The linked id an INVITE brings: its offer's `linkedid=`, else its `X-CF-Linkedid`.
pub(super) fn linked_of(req: &Request) -> Option<String> {
    offer_of(req)
        .and_then(|o| o.linkedid)
        .or_else(|| crate::offer::id_header(&req.headers, crate::offer::LINKED_HEADER))
}

impl B2bua {
    /// The device that answered a call of another leg linked to `linkedid` (an agent answering
    /// an ACD's offer for the caller whose call has that uniqueid), if one is up now.
    pub fn answered_device_linked_to(&self, linkedid: &str) -> Option<String> {
        self.calls
            .values()
            .filter(|c| c.linkedid == linkedid && c.uniqueid != linkedid)
            .filter(|c| c.answered_at.is_some())
            .find_map(|c| c.b.device.clone())
    }
}
