//! The voicemail dialogue, sans-IO: what to play, record and store in answer to DTMF keys,
//! the end of a playback, the caller hanging up and time (passed in).
//!
//! **Deposit** (a call diverted to a mailbox): the greeting (the owner's, else the default
//! `vm-intro`), a beep, then the message is recorded until the caller hangs up or presses `#`
//! (then `vm-goodbye` and we hang up), or [`Limits::max_message`] is reached. A message of
//! less than [`MIN_MESSAGE`] is not kept.
//!
//! **Retrieval** (the feature code, `*98` by default): `vm-password`; the PIN followed by `#`
//! (three wrong PINs: `vm-incorrect`, `vm-goodbye`, hang up). Then "you have N new and M old
//! messages" and each message in turn, new ones first; a new message moves to the old folder
//! when it starts playing. After (or during) a message: `1` again, `7` delete, `9` save (keep
//! it, go on), `#` next, `*` goodbye. After the last: the main menu: `1` the messages again,
//! `5` record a new greeting (after the beep; `#` ends and saves it), `*` goodbye. Nothing
//! pressed for [`Limits::idle`] in a menu: goodbye.

use std::time::{Duration, Instant};

/// A message shorter than this is dropped (a caller who hung up at the beep).
pub const MIN_MESSAGE: Duration = Duration::from_millis(500);
/// Most PIN digits buffered.
pub const MAX_PIN: usize = 16;
/// Wrong PINs before hanging up.
pub const MAX_TRIES: u32 = 3;

/// One item of a playlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// A shipped prompt by name (`vm-password`, `digits/3`, …).
    Named(String),
    /// The 1 kHz beep before a recording.
    Beep,
    /// The mailbox's greeting (the owner's recording, else `vm-intro`).
    Greeting,
    /// A stored message by id.
    Message(String),
}

fn named(n: &str) -> Prompt {
    Prompt::Named(n.to_owned())
}

/// What is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recording {
    /// A caller's message.
    Message,
    /// The owner's greeting.
    Greeting,
}

/// What the session must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Play these (replacing whatever plays); [`Menu::play_done`] when they end.
    Play(Vec<Prompt>),
    /// Start recording what the caller sends.
    Record(Recording),
    /// Stop recording and keep it (store a message, save the greeting).
    Keep(Recording),
    /// Stop recording and throw it away.
    Discard,
    /// The message moved to the old folder (heard).
    MarkOld(String),
    /// Delete the message.
    Delete(String),
    /// Hang up.
    Hangup,
}

/// Bounds of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest message recorded.
    pub max_message: Duration,
    /// Longest greeting recorded.
    pub max_greeting: Duration,
    /// Nothing pressed this long in a menu: goodbye.
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: Duration::from_secs(180),
            max_greeting: Duration::from_secs(60),
            idle: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Deposit: the greeting plays.
    Greeting,
    /// Deposit: recording the message.
    Recording,
    /// Retrieval: collecting the PIN.
    Pin { entered: String, tries: u32 },
    /// Retrieval: "you have …" plays; then the first message.
    Counts,
    /// Retrieval: message `i` of the list (playing or waiting for a key).
    Listening(usize),
    /// Retrieval: a confirmation ("deleted", "saved") plays; then message `i`.
    Confirming(usize),
    /// Retrieval: the main menu.
    Main,
    /// Retrieval: the "record your greeting" prompt and beep play.
    GreetingPrompt,
    /// Retrieval: recording the greeting.
    RecordingGreeting,
    /// Goodbye plays; then hang up.
    Leaving,
    /// Done.
    Ended,
}

/// One caller's voicemail dialogue.
#[derive(Debug, Clone)]
pub struct Menu {
    state: State,
    pin: String,
    /// (id, new) of the mailbox's messages, new ones first; deleted ones removed.
    messages: Vec<(String, bool)>,
    limits: Limits,
    deadline: Option<Instant>,
    out: Vec<Command>,
}

impl Menu {
    /// A deposit: call [`start`](Self::start) when the call is answered.
    pub fn deposit(limits: Limits) -> Menu {
        Menu {
            state: State::Greeting,
            pin: String::new(),
            messages: Vec::new(),
            limits,
            deadline: None,
            out: Vec::new(),
        }
    }

    /// A retrieval of a mailbox with PIN `pin` and `messages` (id, new), new ones first.
    pub fn retrieval(pin: &str, messages: Vec<(String, bool)>, limits: Limits) -> Menu {
        Menu {
            state: State::Pin {
                entered: String::new(),
                tries: 0,
            },
            pin: pin.to_owned(),
            messages,
            limits,
            deadline: None,
            out: Vec::new(),
        }
    }

    /// The call is answered.
    pub fn start(&mut self, now: Instant) -> Vec<Command> {
        match self.state {
            State::Greeting => self
                .out
                .push(Command::Play(vec![Prompt::Greeting, Prompt::Beep])),
            _ => {
                self.out.push(Command::Play(vec![named("vm-password")]));
                self.idle_from(now);
            }
        }
        self.take()
    }

    /// Whether the session is over (after [`Command::Hangup`] or a hang-up).
    pub fn ended(&self) -> bool {
        self.state == State::Ended
    }

    /// When [`timeout`](Self::timeout) must run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    fn take(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.out)
    }

    fn idle_from(&mut self, now: Instant) {
        self.deadline = Some(now + self.limits.idle);
    }

    fn leave(&mut self, mut prompts: Vec<Prompt>) {
        prompts.push(named("vm-goodbye"));
        self.out.push(Command::Play(prompts));
        self.state = State::Leaving;
        self.deadline = None;
    }

    fn counts_prompts(&self) -> Vec<Prompt> {
        let new = self.messages.iter().filter(|(_, n)| *n).count();
        let old = self.messages.len() - new;
        let number = |n: usize| -> Vec<Prompt> {
            media::audio::say_number(u32::try_from(n).unwrap_or(u32::MAX))
                .into_iter()
                .map(Prompt::Named)
                .collect()
        };
        let mut p = vec![named("vm-youhave")];
        p.extend(number(new));
        p.push(named("vm-INBOX"));
        p.push(named("vm-and"));
        p.extend(number(old));
        p.push(named("vm-Old"));
        p.push(named(if old == 1 {
            "vm-message"
        } else {
            "vm-messages"
        }));
        p
    }

    fn listen(&mut self, i: usize, now: Instant) {
        match self.messages.get_mut(i) {
            Some((id, new)) => {
                let id = id.clone();
                if *new {
                    *new = false;
                    self.out.push(Command::MarkOld(id.clone()));
                }
                self.out.push(Command::Play(vec![
                    Prompt::Message(id),
                    named("vm-msgopts"),
                ]));
                self.state = State::Listening(i);
            }
            None => {
                self.out.push(Command::Play(vec![
                    named("vm-nomore"),
                    named("vm-mainmenu"),
                ]));
                self.state = State::Main;
            }
        }
        self.idle_from(now);
    }

    /// A DTMF key.
    pub fn digit(&mut self, key: char, now: Instant) -> Vec<Command> {
        match self.state.clone() {
            State::Greeting => {
                if key == '#' {
                    // Skip the greeting.
                    self.out.push(Command::Play(vec![Prompt::Beep]));
                    self.state = State::Recording;
                    self.out.push(Command::Record(Recording::Message));
                    self.deadline = Some(now + self.limits.max_message);
                }
            }
            State::Recording => {
                if key == '#' {
                    self.out.push(Command::Keep(Recording::Message));
                    self.leave(Vec::new());
                }
            }
            State::Pin { mut entered, tries } => {
                self.idle_from(now);
                if key != '#' {
                    if entered.len() < MAX_PIN {
                        entered.push(key);
                    }
                    self.state = State::Pin { entered, tries };
                } else if !self.pin.is_empty() && entered == self.pin {
                    self.out.push(Command::Play(self.counts_prompts()));
                    self.state = State::Counts;
                } else if tries + 1 >= MAX_TRIES {
                    self.leave(vec![named("vm-incorrect")]);
                } else {
                    self.out.push(Command::Play(vec![
                        named("vm-incorrect"),
                        named("vm-password"),
                    ]));
                    self.state = State::Pin {
                        entered: String::new(),
                        tries: tries + 1,
                    };
                }
            }
            State::Counts => match key {
                '#' => self.listen(0, now),
                '*' => self.leave(Vec::new()),
                _ => {}
            },
            State::Listening(i) | State::Confirming(i) => match key {
                '1' => self.listen(i, now),
                '7' if i < self.messages.len() => {
                    let (id, _) = self.messages.remove(i);
                    self.out.push(Command::Delete(id));
                    self.out.push(Command::Play(vec![named("vm-deleted")]));
                    self.state = State::Confirming(i);
                    self.idle_from(now);
                }
                '9' if i < self.messages.len() => {
                    self.out.push(Command::Play(vec![named("vm-saved")]));
                    self.state = State::Confirming(i + 1);
                    self.idle_from(now);
                }
                '#' => self.listen(i + 1, now),
                '*' => self.leave(Vec::new()),
                _ => {}
            },
            State::Main => match key {
                '1' => self.listen(0, now),
                '5' => {
                    self.out
                        .push(Command::Play(vec![named("vm-rec-greeting"), Prompt::Beep]));
                    self.state = State::GreetingPrompt;
                    self.deadline = None;
                }
                '*' => self.leave(Vec::new()),
                _ => self.idle_from(now),
            },
            State::RecordingGreeting => {
                if key == '#' {
                    self.greeting_done(now);
                }
            }
            State::GreetingPrompt | State::Leaving | State::Ended => {}
        }
        self.take()
    }

    fn greeting_done(&mut self, now: Instant) {
        self.out.push(Command::Keep(Recording::Greeting));
        self.out.push(Command::Play(vec![
            named("vm-greeting-saved"),
            named("vm-mainmenu"),
        ]));
        self.state = State::Main;
        self.idle_from(now);
    }

    /// The last [`Command::Play`] finished.
    pub fn play_done(&mut self, now: Instant) -> Vec<Command> {
        match self.state {
            State::Greeting => {
                self.out.push(Command::Record(Recording::Message));
                self.state = State::Recording;
                self.deadline = Some(now + self.limits.max_message);
            }
            State::Counts => self.listen(0, now),
            State::Confirming(i) => self.listen(i, now),
            State::GreetingPrompt => {
                self.out.push(Command::Record(Recording::Greeting));
                self.state = State::RecordingGreeting;
                self.deadline = Some(now + self.limits.max_greeting);
            }
            State::Leaving => {
                self.out.push(Command::Hangup);
                self.state = State::Ended;
                self.deadline = None;
            }
            _ => {}
        }
        self.take()
    }

    /// The deadline of [`poll_timeout`](Self::poll_timeout) passed.
    pub fn timeout(&mut self, now: Instant) -> Vec<Command> {
        if self.deadline.is_none_or(|d| now < d) {
            return Vec::new();
        }
        self.deadline = None;
        match self.state {
            State::Recording => {
                self.out.push(Command::Keep(Recording::Message));
                self.leave(Vec::new());
            }
            State::RecordingGreeting => self.greeting_done(now),
            State::Leaving | State::Ended => {}
            _ => self.leave(Vec::new()),
        }
        self.take()
    }

    /// The caller hung up.
    pub fn hangup(&mut self) -> Vec<Command> {
        match self.state {
            State::Recording => self.out.push(Command::Keep(Recording::Message)),
            State::RecordingGreeting => self.out.push(Command::Discard),
            _ => {}
        }
        self.state = State::Ended;
        self.deadline = None;
        self.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plays(cmds: &[Command]) -> Vec<Vec<Prompt>> {
        cmds.iter()
            .filter_map(|c| match c {
                Command::Play(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn deposit_greeting_then_record_until_hangup() {
        let t0 = Instant::now();
        let mut m = Menu::deposit(Limits::default());
        assert_eq!(
            m.start(t0),
            vec![Command::Play(vec![Prompt::Greeting, Prompt::Beep])]
        );
        assert_eq!(m.play_done(t0), vec![Command::Record(Recording::Message)]);
        assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_secs(180)));
        assert_eq!(m.hangup(), vec![Command::Keep(Recording::Message)]);
        assert!(m.ended());
    }

    #[test]
    fn deposit_ends_at_the_limit_or_on_pound() {
        let t0 = Instant::now();
        let limits = Limits {
            max_message: Duration::from_secs(5),
            ..Limits::default()
        };
        let mut m = Menu::deposit(limits);
        m.start(t0);
        m.play_done(t0);
        assert!(m.timeout(t0 + Duration::from_secs(4)).is_empty());
        let c = m.timeout(t0 + Duration::from_secs(5));
        assert_eq!(c[0], Command::Keep(Recording::Message));
        assert_eq!(plays(&c), vec![vec![named("vm-goodbye")]]);
        assert_eq!(m.play_done(t0), vec![Command::Hangup]);

        let mut m = Menu::deposit(Limits::default());
        m.start(t0);
        m.play_done(t0);
        let c = m.digit('#', t0);
        assert_eq!(c[0], Command::Keep(Recording::Message));
        assert!(m.hangup().is_empty(), "kept once");
    }

    fn logged_in(messages: Vec<(String, bool)>) -> (Menu, Instant) {
        let t0 = Instant::now();
        let mut m = Menu::retrieval("1234", messages, Limits::default());
        assert_eq!(plays(&m.start(t0)), vec![vec![named("vm-password")]]);
        for d in "1234".chars() {
            assert!(m.digit(d, t0).is_empty());
        }
        let c = m.digit('#', t0);
        assert_eq!(plays(&c).len(), 1);
        (m, t0)
    }

    #[test]
    fn retrieval_counts_listen_delete_then_main_menu_and_greeting() {
        let msgs = vec![("a".to_owned(), true), ("b".to_owned(), false)];
        let t0 = Instant::now();
        let mut m = Menu::retrieval("1234", msgs, Limits::default());
        m.start(t0);
        for d in "1234".chars() {
            m.digit(d, t0);
        }
        let c = m.digit('#', t0);
        let names: Vec<Prompt> = plays(&c).concat();
        assert_eq!(
            names,
            [
                "vm-youhave",
                "digits/1",
                "vm-INBOX",
                "vm-and",
                "digits/1",
                "vm-Old",
                "vm-message"
            ]
            .map(named)
            .to_vec()
        );
        let c = m.play_done(t0);
        assert_eq!(c[0], Command::MarkOld("a".into()));
        assert_eq!(plays(&c)[0][0], Prompt::Message("a".into()));
        let c = m.digit('7', t0);
        assert_eq!(c[0], Command::Delete("a".into()));
        let c = m.play_done(t0);
        assert_eq!(plays(&c)[0][0], Prompt::Message("b".into()));
        assert!(
            !c.iter().any(|c| matches!(c, Command::MarkOld(_))),
            "b is old"
        );
        let c = m.digit('9', t0);
        assert_eq!(plays(&c), vec![vec![named("vm-saved")]]);
        let c = m.play_done(t0);
        assert_eq!(
            plays(&c),
            vec![vec![named("vm-nomore"), named("vm-mainmenu")]]
        );
        let c = m.digit('5', t0);
        assert_eq!(
            plays(&c),
            vec![vec![named("vm-rec-greeting"), Prompt::Beep]]
        );
        assert_eq!(m.play_done(t0), vec![Command::Record(Recording::Greeting)]);
        let c = m.digit('#', t0);
        assert_eq!(c[0], Command::Keep(Recording::Greeting));
        let c = m.digit('*', t0);
        assert_eq!(plays(&c), vec![vec![named("vm-goodbye")]]);
        assert_eq!(m.play_done(t0), vec![Command::Hangup]);
    }

    #[test]
    fn three_wrong_pins_hang_up() {
        let t0 = Instant::now();
        let mut m = Menu::retrieval("42", Vec::new(), Limits::default());
        m.start(t0);
        for _ in 0..2 {
            m.digit('9', t0);
            let c = m.digit('#', t0);
            assert_eq!(
                plays(&c),
                vec![vec![named("vm-incorrect"), named("vm-password")]]
            );
        }
        m.digit('9', t0);
        let c = m.digit('#', t0);
        assert_eq!(
            plays(&c),
            vec![vec![named("vm-incorrect"), named("vm-goodbye")]]
        );
        assert_eq!(m.play_done(t0), vec![Command::Hangup]);
    }

    #[test]
    fn an_empty_pin_never_opens_and_idle_menus_say_goodbye() {
        let t0 = Instant::now();
        let mut m = Menu::retrieval("", Vec::new(), Limits::default());
        m.start(t0);
        assert_eq!(
            plays(&m.digit('#', t0)),
            vec![vec![named("vm-incorrect"), named("vm-password")]]
        );
        let c = m.timeout(t0 + Duration::from_secs(30));
        assert_eq!(plays(&c), vec![vec![named("vm-goodbye")]]);
    }

    #[test]
    fn logged_in_with_no_messages_reaches_the_main_menu() {
        let (mut m, t0) = logged_in(Vec::new());
        let c = m.play_done(t0);
        assert_eq!(
            plays(&c),
            vec![vec![named("vm-nomore"), named("vm-mainmenu")]]
        );
    }
}
