//! Message-waiting state of one mailbox.

/// MWI counts for `mailbox@context`. Only `new` and `old` travel on the wire (Asterisk's format
/// has no urgent count); `urgent` is kept for local consumers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mwi {
    /// Mailbox number, e.g. `1000`.
    pub mailbox: String,
    /// Voicemail context, e.g. `default`; may be empty.
    pub context: String,
    /// New (unheard) messages.
    pub new: u32,
    /// Old (heard) messages.
    pub old: u32,
    /// Urgent messages (local only; not carried by the Asterisk wire format).
    pub urgent: u32,
}

impl Mwi {
    /// A mailbox state with no urgent count.
    pub fn new(mailbox: &str, context: &str, new: u32, old: u32) -> Self {
        Mwi {
            mailbox: mailbox.into(),
            context: context.into(),
            new,
            old,
            urgent: 0,
        }
    }

    /// The item id / key: `mailbox@context`, or just `mailbox` when the context is empty
    /// (Asterisk's `main/mwi.c`).
    pub fn key(&self) -> String {
        if self.context.is_empty() {
            self.mailbox.clone()
        } else {
            format!("{}@{}", self.mailbox, self.context)
        }
    }

    /// Split an item id at the first `@` into (mailbox, context), as res_xmpp does.
    pub fn split_key(key: &str) -> (&str, &str) {
        match key.split_once('@') {
            Some((m, c)) => (m, c),
            None => (key, ""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_and_split() {
        assert_eq!(Mwi::new("1000", "default", 2, 5).key(), "1000@default");
        assert_eq!(Mwi::new("1000", "", 0, 0).key(), "1000");
        assert_eq!(Mwi::split_key("1000@default"), ("1000", "default"));
        assert_eq!(Mwi::split_key("1000@a@b"), ("1000", "a@b"));
        assert_eq!(Mwi::split_key("1000"), ("1000", ""));
    }
}
