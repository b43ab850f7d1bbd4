//! Strategy metrics (app_queue's `calc_metric`) and the engine's seedable RNG.

use super::config::Strategy;

/// Small deterministic xorshift64* generator (seedable; no global state).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish value in `[0, n)`; 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

/// Inputs of one metric computation.
pub(crate) struct MetricIn {
    pub strategy: Strategy,
    /// Effective penalty (after raise).
    pub penalty: i32,
    pub use_penalty: bool,
    /// Member position in the queue (config / add order).
    pub pos: usize,
    /// Queue round-robin position (rrmemory / rrordered).
    pub rrpos: usize,
    /// Caller's linear position.
    pub linpos: usize,
    /// Completed calls of the member in this queue.
    pub calls: u64,
    /// Seconds since the member's last call, `None` if never.
    pub idle_secs: Option<u64>,
}

/// `calc_metric`: lower is better; penalty·1,000,000 is added (except wrandom).
pub(crate) fn metric(m: &MetricIn, rng: &mut Rng) -> i64 {
    let pen = if m.use_penalty {
        i64::from(m.penalty) * 1_000_000
    } else {
        0
    };
    let pos = m.pos as i64;
    let base = match m.strategy {
        Strategy::RingAll => 0,
        Strategy::Linear => {
            if m.pos < m.linpos {
                1000 + pos
            } else {
                pos
            }
        }
        Strategy::RrMemory | Strategy::RrOrdered => {
            if m.pos < m.rrpos {
                1000 + pos
            } else {
                pos
            }
        }
        Strategy::Random => rng.below(1000) as i64,
        Strategy::WRandom => {
            let span = (1 + i64::from(m.penalty.max(0))) * 1000;
            return rng.below(span.unsigned_abs()) as i64;
        }
        Strategy::FewestCalls => m.calls.min(999_999) as i64,
        Strategy::LeastRecent => match m.idle_secs {
            None => 0,
            Some(s) => 1_000_000 - s.min(1_000_000) as i64,
        },
    };
    base + pen
}
