//! Configuration types for queues and members (queues.conf semantics), loadable with serde
//! (e.g. from TOML).

use super::rules::PenaltyRule;
use super::EngineError;
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Ring strategy (`strategy=` in queues.conf).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum Strategy {
    /// Ring every available member (of the best penalty tier) until one answers.
    #[default]
    RingAll,
    /// Ring the member whose last call from this queue ended longest ago.
    LeastRecent,
    /// Ring the member with the fewest completed calls from this queue.
    FewestCalls,
    /// Random member (penalty tiers still respected).
    Random,
    /// Round robin remembering where the last pass stopped (`roundrobin` is an alias).
    RrMemory,
    /// Like rrmemory, keeping config-file member order.
    RrOrdered,
    /// Config / add order, starting from the top for each caller.
    Linear,
    /// Random weighted by penalty: metric in `[0, (1+penalty)*1000)`.
    WRandom,
}

impl Strategy {
    /// The queues.conf spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RingAll => "ringall",
            Strategy::LeastRecent => "leastrecent",
            Strategy::FewestCalls => "fewestcalls",
            Strategy::Random => "random",
            Strategy::RrMemory => "rrmemory",
            Strategy::RrOrdered => "rrordered",
            Strategy::Linear => "linear",
            Strategy::WRandom => "wrandom",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "ringall" => Strategy::RingAll,
            "leastrecent" => Strategy::LeastRecent,
            "fewestcalls" => Strategy::FewestCalls,
            "random" => Strategy::Random,
            "rrmemory" | "roundrobin" => Strategy::RrMemory,
            "rrordered" => Strategy::RrOrdered,
            "linear" => Strategy::Linear,
            "wrandom" => Strategy::WRandom,
            _ => return Err(EngineError::BadConfig(format!("unknown strategy {s:?}"))),
        })
    }
}

impl TryFrom<String> for Strategy {
    type Error = EngineError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// `joinempty` / `leavewhenempty` factor set. Empty set = the feature is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(try_from = "String")]
pub struct EmptyConditions(u8);

impl EmptyConditions {
    /// `penalty`: members outside the caller's penalty range.
    pub const PENALTY: Self = Self(1);
    /// `paused`
    pub const PAUSED: Self = Self(2);
    /// `inuse`
    pub const INUSE: Self = Self(4);
    /// `ringing`
    pub const RINGING: Self = Self(8);
    /// `unavailable`
    pub const UNAVAILABLE: Self = Self(16);
    /// `invalid`
    pub const INVALID: Self = Self(32);
    /// `unknown`
    pub const UNKNOWN: Self = Self(64);
    /// `wrapup`
    pub const WRAPUP: Self = Self(128);
    /// No factor (the feature is off).
    pub const NONE: Self = Self(0);

    /// True when no factor is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// True when every factor of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    /// Union.
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Parse as app_queue's `parse_empty_options`. `joinempty` selects the meaning of the legacy
    /// booleans (`joinempty=no` and `leavewhenempty=yes` mean penalty,invalid,paused).
    pub fn parse(value: &str, joinempty: bool) -> Result<Self, EngineError> {
        let mut e = Self::NONE;
        for opt in value.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let o = opt.to_ascii_lowercase();
            let strictish = Self::PENALTY.union(Self::INVALID).union(Self::PAUSED);
            e = match o.as_str() {
                "paused" => e.union(Self::PAUSED),
                "penalty" => e.union(Self::PENALTY),
                "inuse" => e.union(Self::INUSE),
                "ringing" => e.union(Self::RINGING),
                "invalid" => e.union(Self::INVALID),
                "wrapup" => e.union(Self::WRAPUP),
                "unavailable" => e.union(Self::UNAVAILABLE),
                "unknown" => e.union(Self::UNKNOWN),
                "loose" => Self::PENALTY.union(Self::INVALID),
                "strict" => strictish.union(Self::UNAVAILABLE),
                "no" | "false" | "off" | "0" if joinempty => strictish,
                "yes" | "true" | "on" | "1" if !joinempty => strictish,
                "yes" | "true" | "on" | "1" | "no" | "false" | "off" | "0" => Self::NONE,
                _ => {
                    return Err(EngineError::BadConfig(format!(
                        "unknown empty option {opt:?}"
                    )))
                }
            };
        }
        Ok(e)
    }
}

impl TryFrom<String> for EmptyConditions {
    type Error = EngineError;
    /// Deserialised values are parsed with the factor list syntax; legacy booleans take their
    /// `joinempty` meaning (`no` = penalty,invalid,paused). For `leavewhenempty` use factor lists
    /// or `strict`/`loose`; see [`QueueConfig::leavewhenempty`].
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s, true)
    }
}

/// One member as configured: either the queues.conf string
/// `interface[,penalty][,membername][,state_interface][,ringinuse][,wrapuptime][,paused]`
/// or a structured table with these fields (only `interface` required).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
// The derive makes the table form (`MemberConfig::deserialize`, an inherent fn); the trait
// impl below takes either form.
#[serde(remote = "Self")]
pub struct MemberConfig {
    /// The interface offered calls, e.g. `PJSIP/1000`.
    pub interface: String,
    /// Penalty (default 0).
    #[serde(default)]
    pub penalty: i32,
    /// Member name for queue_log (default: the interface).
    #[serde(default)]
    pub name: Option<String>,
    /// Device watched for state (default: the interface).
    #[serde(default)]
    pub state_interface: Option<String>,
    /// Per-member ringinuse override (default: the queue's).
    #[serde(default)]
    pub ringinuse: Option<bool>,
    /// Per-member wrap-up time in seconds overriding the queue's when > 0.
    #[serde(default)]
    pub wrapuptime: Option<u64>,
    /// Starts paused.
    #[serde(default)]
    pub paused: bool,
}

impl<'de> Deserialize<'de> for MemberConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum MemberConfigRepr {
            Line(String),
            Table(#[serde(with = "MemberConfig")] MemberConfig),
        }
        match MemberConfigRepr::deserialize(d)? {
            MemberConfigRepr::Line(s) => s.parse().map_err(serde::de::Error::custom),
            MemberConfigRepr::Table(m) => Ok(m),
        }
    }
}

impl MemberConfig {
    /// A member with defaults for everything but the interface.
    pub fn new(interface: impl Into<String>) -> Self {
        Self {
            interface: interface.into(),
            penalty: 0,
            name: None,
            state_interface: None,
            ringinuse: None,
            wrapuptime: None,
            paused: false,
        }
    }

    /// Builder: set the penalty.
    pub fn penalty(mut self, p: i32) -> Self {
        self.penalty = p;
        self
    }

    /// Builder: set the state interface.
    pub fn state_interface(mut self, s: impl Into<String>) -> Self {
        self.state_interface = Some(s.into());
        self
    }

    /// Builder: set the ringinuse override.
    pub fn ringinuse(mut self, r: bool) -> Self {
        self.ringinuse = Some(r);
        self
    }

    /// Builder: set the per-member wrap-up (seconds).
    pub fn wrapuptime(mut self, w: u64) -> Self {
        self.wrapuptime = Some(w);
        self
    }

    /// Builder: start paused.
    pub fn paused(mut self, p: bool) -> Self {
        self.paused = p;
        self
    }

    /// Builder: member name.
    pub fn name(mut self, n: impl Into<String>) -> Self {
        self.name = Some(n.into());
        self
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" | "y" | "t" => Some(true),
        "no" | "false" | "off" | "0" | "n" | "f" => Some(false),
        _ => None,
    }
}

impl FromStr for MemberConfig {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |what: &str| EngineError::BadConfig(format!("member {s:?}: bad {what}"));
        let f: Vec<&str> = s.split(',').map(str::trim).collect();
        let interface = f.first().copied().unwrap_or("");
        if interface.is_empty() {
            return Err(bad("interface"));
        }
        let field = |i: usize| f.get(i).copied().filter(|v| !v.is_empty());
        let mut m = MemberConfig::new(interface);
        if let Some(p) = field(1) {
            m.penalty = p.parse().map_err(|_| bad("penalty"))?;
        }
        m.name = field(2).map(str::to_string);
        m.state_interface = field(3).map(str::to_string);
        if let Some(r) = field(4) {
            m.ringinuse = Some(parse_bool(r).ok_or_else(|| bad("ringinuse"))?);
        }
        if let Some(w) = field(5) {
            m.wrapuptime = Some(w.parse().map_err(|_| bad("wrapuptime"))?);
        }
        if let Some(p) = field(6) {
            m.paused = parse_bool(p).ok_or_else(|| bad("paused"))?;
        }
        Ok(m)
    }
}

fn default_timeout() -> u64 {
    15
}
fn default_retry() -> u64 {
    5
}
fn default_true() -> bool {
    true
}

/// One queue (a queues.conf context). Durations are in seconds, as in queues.conf.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Queue name.
    pub name: String,
    /// Ring strategy (default ringall).
    #[serde(default)]
    pub strategy: Strategy,
    /// Ring time per attempt in seconds (default 15; 0 = ring until the caller's max wait).
    #[serde(default = "default_timeout")]
    pub timeout: u64,
    /// Pause in seconds before the next attempt after a no-answer (default 5).
    #[serde(default = "default_retry")]
    pub retry: u64,
    /// Wrap-up seconds after a completed call (default 0).
    #[serde(default)]
    pub wrapuptime: u64,
    /// Offer calls to members whose device is in use (default yes, as app_queue).
    #[serde(default = "default_true")]
    pub ringinuse: bool,
    /// Queue weight: higher-weight queues get shared members first (default 0).
    #[serde(default)]
    pub weight: i32,
    /// Serve several callers in parallel when several members are free (default no: serial).
    #[serde(default)]
    pub autofill: bool,
    /// Maximum callers waiting, 0 = unlimited.
    #[serde(default)]
    pub maxlen: usize,
    /// `joinempty` factors (default: none, joining is always allowed).
    #[serde(default)]
    pub joinempty: EmptyConditions,
    /// `leavewhenempty` factors (default: none). Legacy `yes` must be given as
    /// `"penalty,invalid,paused"` (serde parses legacy booleans with joinempty meaning).
    #[serde(default)]
    pub leavewhenempty: EmptyConditions,
    /// Penalties are ignored when the queue has this many members or fewer (default 0).
    #[serde(default)]
    pub penaltymemberslimit: usize,
    /// Service level in seconds for statistics (default 0 = answered at once only).
    #[serde(default)]
    pub servicelevel: u64,
    /// Default penalty rule name.
    #[serde(default)]
    pub defaultrule: Option<String>,
    /// `announce-frequency`: seconds between position/hold-time announcements to a waiting
    /// caller (None: the ACD node's default; 0: never). Played by the node, not the engine.
    #[serde(default)]
    pub announce_frequency: Option<u64>,
    /// `announce-holdtime`: include the estimated hold time (None: the node's default).
    #[serde(default)]
    pub announce_holdtime: Option<bool>,
    /// The DTMF key a waiting caller presses to be called back at its place (issue 15); one
    /// of `0`-`9`, `*`, `#` (None: `1`, [`crate::call::CALLBACK_KEY`]). Played by the node.
    #[serde(default)]
    pub callback_key: Option<char>,
    /// `autopause`: pause a member who misses offers (`no`, `yes`: in this queue, `all`: in
    /// all its queues; reason `Auto-Pause`, as app_queue).
    #[serde(default)]
    pub autopause: AutoPause,
    /// Missed offers in a row that trigger `autopause` (default 1, app_queue's behaviour;
    /// FreeSWITCH's `max-no-answer`). An answered offer resets the count.
    #[serde(default = "default_autopause_after")]
    pub autopause_after: u32,
    /// `autopausebusy`: a member whose phone refuses the offer (busy) counts as missed too.
    #[serde(default)]
    pub autopausebusy: bool,
    /// `autopauseunavail`: a member whose phone cannot take the call (5xx, 404, 408, 410,
    /// 480, 484: Asterisk's CONGESTION) counts as missed too.
    #[serde(default)]
    pub autopauseunavail: bool,
    /// `autopausedelay`: a miss within this many seconds of the end of the member's last call
    /// in the queue does not count (0: off).
    #[serde(default)]
    pub autopausedelay: u64,
    /// Static members.
    #[serde(default)]
    pub members: Vec<MemberConfig>,
}

fn default_autopause_after() -> u32 {
    1
}

/// `autopause=` in queues.conf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoPause {
    /// Never (default).
    #[default]
    No,
    /// Pause the member in the queue whose offer it missed.
    Yes,
    /// Pause the member in all its queues (PAUSEALL).
    All,
}

impl QueueConfig {
    /// A queue with app_queue defaults and no members.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            strategy: Strategy::default(),
            timeout: default_timeout(),
            retry: default_retry(),
            wrapuptime: 0,
            ringinuse: true,
            weight: 0,
            autofill: false,
            maxlen: 0,
            joinempty: EmptyConditions::NONE,
            leavewhenempty: EmptyConditions::NONE,
            penaltymemberslimit: 0,
            servicelevel: 0,
            defaultrule: None,
            announce_frequency: None,
            announce_holdtime: None,
            callback_key: None,
            autopause: AutoPause::No,
            autopause_after: default_autopause_after(),
            autopausebusy: false,
            autopauseunavail: false,
            autopausedelay: 0,
            members: Vec::new(),
        }
    }

    pub(crate) fn timeout_d(&self) -> Option<Duration> {
        (self.timeout > 0).then(|| Duration::from_secs(self.timeout))
    }
}

/// The whole engine configuration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Queues.
    #[serde(default)]
    pub queues: Vec<QueueConfig>,
    /// Penalty rules (queuerules.conf): rule name → list of
    /// `seconds,abs|±rel max[,abs|±rel min[,abs|±rel raise]]`.
    #[serde(default)]
    pub rules: HashMap<String, Vec<String>>,
    /// `shared_lastcall`: a completed call updates the member's last call (and call count) in
    /// every queue it belongs to, so wrap-up holds across queues.
    #[serde(default)]
    pub shared_lastcall: bool,
    /// Seed of the engine's RNG (random / wrandom strategies).
    #[serde(default)]
    pub seed: u64,
}

impl EngineConfig {
    pub(crate) fn parsed_rules(&self) -> Result<HashMap<String, Vec<PenaltyRule>>, EngineError> {
        let mut out = HashMap::new();
        for (name, lines) in &self.rules {
            let mut v = Vec::with_capacity(lines.len());
            for l in lines {
                v.push(l.parse::<PenaltyRule>()?);
            }
            v.sort_by_key(|r| r.time);
            out.insert(name.to_ascii_lowercase(), v);
        }
        Ok(out)
    }
}
