//! Sans-IO RTP reception statistics (RFC 3550 appendix A): sequence number tracking with
//! 16-bit wrap (A.1), cumulative loss (A.3) and interarrival jitter (A.8).
//!
//! Differences from A.1: there is no probation (the first packet starts the source at once),
//! and a source restart (a jump of more than `MAX_DROPOUT` confirmed by the next packet) resets
//! the counters as A.1 does, so `expected`/`lost` then describe the new sequence.

use std::time::{Duration, Instant};

const RTP_SEQ_MOD: u32 = 1 << 16;
const MAX_DROPOUT: u16 = 3000;
const MAX_MISORDER: u16 = 100;

/// The default clock rate (PCMU/PCMA/G.722's RTP clock).
pub const DEFAULT_CLOCK_RATE: u32 = 8000;

/// How [`RtpStats::on_packet`] classified a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqVerdict {
    /// In order, possibly after a gap (or the first packet).
    InOrder,
    /// Older than the highest sequence number seen: reordered or duplicated.
    Late,
    /// A jump too large to be a gap; not counted until the next packet confirms it (the
    /// source then restarts).
    Jump,
}

/// Reception statistics of one RTP stream.
#[derive(Debug, Clone)]
pub struct RtpStats {
    clock_rate: u32,
    started: bool,
    max_seq: u16,
    /// Sequence number cycles, in units of 2^16.
    cycles: u64,
    base_seq: u16,
    /// The sequence number expected after a jump (A.1 `bad_seq`), above 0xFFFF when none.
    bad_seq: u32,
    received: u64,
    /// Arrival of the first packet: the origin of arrival times in timestamp units.
    epoch: Option<Instant>,
    /// Arrival time (timestamp units since `epoch`) and RTP timestamp of the previous packet.
    last: Option<(f64, u32)>,
    /// A.8 `jitter`, in timestamp units, unscaled.
    jitter: f64,
}

impl Default for RtpStats {
    fn default() -> Self {
        RtpStats::new(DEFAULT_CLOCK_RATE)
    }
}

impl RtpStats {
    /// Empty statistics for a stream whose RTP clock runs at `clock_rate` Hz (0 is taken as 1).
    pub fn new(clock_rate: u32) -> Self {
        RtpStats {
            clock_rate: clock_rate.max(1),
            started: false,
            max_seq: 0,
            cycles: 0,
            base_seq: 0,
            bad_seq: RTP_SEQ_MOD + 1,
            received: 0,
            epoch: None,
            last: None,
            jitter: 0.0,
        }
    }

    /// The clock rate in Hz.
    pub fn clock_rate(&self) -> u32 {
        self.clock_rate
    }

    /// Changes the clock rate (0 is taken as 1). The jitter estimate is kept, rescaled to the
    /// new units; the next packet starts a new transit-time baseline.
    pub fn set_clock_rate(&mut self, clock_rate: u32) {
        let rate = clock_rate.max(1);
        if rate != self.clock_rate {
            self.jitter = self.jitter * f64::from(rate) / f64::from(self.clock_rate);
            self.clock_rate = rate;
            self.last = None;
        }
    }

    /// Accounts for one received packet.
    pub fn on_packet(&mut self, seq: u16, timestamp: u32, arrival: Instant) -> SeqVerdict {
        let verdict = self.update_seq(seq);
        if verdict != SeqVerdict::Jump {
            self.update_jitter(timestamp, arrival);
        }
        verdict
    }

    fn init_seq(&mut self, seq: u16) {
        self.started = true;
        self.base_seq = seq;
        self.max_seq = seq;
        self.bad_seq = RTP_SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
    }

    /// RFC 3550 A.1 `update_seq`, without probation.
    fn update_seq(&mut self, seq: u16) -> SeqVerdict {
        if !self.started {
            self.init_seq(seq);
            self.received = 1;
            return SeqVerdict::InOrder;
        }
        let udelta = seq.wrapping_sub(self.max_seq);
        let verdict = if udelta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles += u64::from(RTP_SEQ_MOD);
            }
            self.max_seq = seq;
            SeqVerdict::InOrder
        } else if u32::from(udelta) <= RTP_SEQ_MOD - u32::from(MAX_MISORDER) {
            if u32::from(seq) == self.bad_seq {
                // Two sequential packets after a jump: the source restarted.
                self.init_seq(seq);
                self.last = None;
                SeqVerdict::InOrder
            } else {
                self.bad_seq = (u32::from(seq) + 1) & (RTP_SEQ_MOD - 1);
                return SeqVerdict::Jump;
            }
        } else {
            SeqVerdict::Late
        };
        self.received += 1;
        verdict
    }

    /// RFC 3550 A.8, with arrival times kept as f64 timestamp units (no rounding error) and the
    /// RTP timestamp difference taken modulo 2^32.
    fn update_jitter(&mut self, timestamp: u32, arrival: Instant) {
        let epoch = *self.epoch.get_or_insert(arrival);
        let since = arrival
            .checked_duration_since(epoch)
            .unwrap_or(Duration::ZERO);
        let arrival_units = since.as_secs_f64() * f64::from(self.clock_rate);
        if let Some((last_arrival, last_ts)) = self.last {
            // D(i-1, i) = (R_i - R_{i-1}) - (S_i - S_{i-1})
            let ts_delta = f64::from(timestamp.wrapping_sub(last_ts) as i32);
            let d = (arrival_units - last_arrival) - ts_delta;
            self.jitter += (d.abs() - self.jitter) / 16.0;
        }
        self.last = Some((arrival_units, timestamp));
    }

    /// Packets counted as received (duplicates included, as in A.3).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The extended highest sequence number received (cycles in the upper bits).
    pub fn extended_max_seq(&self) -> u64 {
        self.cycles + u64::from(self.max_seq)
    }

    /// Packets expected (A.3): extended highest sequence number − first sequence number + 1.
    pub fn expected(&self) -> u64 {
        if !self.started {
            return 0;
        }
        (self.extended_max_seq() + 1).saturating_sub(u64::from(self.base_seq))
    }

    /// Cumulative packets lost (A.3): expected − received; negative with duplicates.
    pub fn lost(&self) -> i64 {
        let expected = i64::try_from(self.expected()).unwrap_or(i64::MAX);
        let received = i64::try_from(self.received).unwrap_or(i64::MAX);
        expected - received
    }

    /// Interarrival jitter (A.8) in timestamp units.
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// Interarrival jitter in milliseconds.
    pub fn jitter_ms(&self) -> f64 {
        self.jitter * 1000.0 / f64::from(self.clock_rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS20: Duration = Duration::from_millis(20);

    /// Feeds `seqs` with timestamps 160 apart per sequence step, arriving every 20 ms.
    fn feed(s: &mut RtpStats, seqs: &[u16]) {
        let t0 = Instant::now();
        for (i, &seq) in seqs.iter().enumerate() {
            s.on_packet(seq, u32::from(seq) * 160, t0 + MS20 * i as u32);
        }
    }

    #[test]
    fn in_order_no_loss() {
        let mut s = RtpStats::default();
        feed(&mut s, &[100, 101, 102, 103]);
        assert_eq!((s.received(), s.expected(), s.lost()), (4, 4, 0));
        assert_eq!(RtpStats::default().expected(), 0);
        assert_eq!(RtpStats::default().lost(), 0);
    }

    #[test]
    fn gaps_count_as_lost() {
        let mut s = RtpStats::default();
        feed(&mut s, &[10, 11, 14, 15, 20]);
        assert_eq!(s.expected(), 11);
        assert_eq!(s.received(), 5);
        assert_eq!(s.lost(), 6);
    }

    #[test]
    fn reorder_recovers_loss_and_duplicates_go_negative() {
        let mut s = RtpStats::default();
        let t = Instant::now();
        assert_eq!(s.on_packet(1, 0, t), SeqVerdict::InOrder);
        assert_eq!(s.on_packet(3, 0, t), SeqVerdict::InOrder);
        assert_eq!(s.lost(), 1);
        assert_eq!(s.on_packet(2, 0, t), SeqVerdict::Late);
        assert_eq!((s.expected(), s.lost()), (3, 0));
        assert_eq!(s.on_packet(2, 0, t), SeqVerdict::Late);
        assert_eq!(s.lost(), -1);
    }

    #[test]
    fn wrap_at_65535() {
        let mut s = RtpStats::default();
        feed(&mut s, &[65533, 65534, 65535, 0, 1, 3]);
        assert_eq!(s.extended_max_seq(), 65536 + 3);
        assert_eq!(s.expected(), 7);
        assert_eq!(s.lost(), 1);
        // A late packet from before the wrap does not add a cycle.
        s.on_packet(65535, 0, Instant::now());
        assert_eq!(s.extended_max_seq(), 65536 + 3);
        assert_eq!(s.lost(), 0);
    }

    #[test]
    fn big_jump_needs_confirmation_then_restarts() {
        let mut s = RtpStats::default();
        feed(&mut s, &[1, 2, 3]);
        let t = Instant::now();
        assert_eq!(s.on_packet(40000, 0, t), SeqVerdict::Jump);
        assert_eq!((s.received(), s.expected()), (3, 3));
        assert_eq!(s.on_packet(40001, 0, t), SeqVerdict::InOrder);
        assert_eq!((s.received(), s.expected(), s.lost()), (1, 1, 0));
        assert_eq!(s.on_packet(40003, 0, t), SeqVerdict::InOrder);
        assert_eq!((s.expected(), s.lost()), (3, 1));
    }

    #[test]
    fn jitter_zero_for_constant_arrival() {
        let mut s = RtpStats::default();
        feed(&mut s, &(0..50).collect::<Vec<_>>());
        assert!(s.jitter() < 1e-6, "{}", s.jitter());
        assert!(s.jitter_ms() < 1e-6);
    }

    #[test]
    fn jitter_for_varying_arrival() {
        let mut s = RtpStats::new(8000);
        let t0 = Instant::now();
        // Packets 20 ms (160 units) apart in timestamp; the second arrives 10 ms late.
        s.on_packet(0, 0, t0);
        s.on_packet(1, 160, t0 + Duration::from_millis(30)); // D = 240 - 160 = 80
        assert!((s.jitter() - 5.0).abs() < 1e-9, "{}", s.jitter());
        s.on_packet(2, 320, t0 + Duration::from_millis(40)); // D = 80 - 160 = -80
        let j = 5.0 + (80.0 - 5.0) / 16.0;
        assert!((s.jitter() - j).abs() < 1e-9, "{}", s.jitter());
        assert!((s.jitter_ms() - j / 8.0).abs() < 1e-9);
    }

    #[test]
    fn jitter_converges_to_constant_deviation() {
        // Alternating arrival offsets of ±5 ms around a 20 ms cadence: |D| = 80 units each time
        // after the first, so J converges to 80 (10 ms at 8 kHz).
        let mut s = RtpStats::new(8000);
        let t0 = Instant::now() + Duration::from_millis(5);
        for i in 0..400u32 {
            let nominal = t0 + MS20 * i;
            let arrival = if i % 2 == 0 {
                nominal - Duration::from_millis(5)
            } else {
                nominal + Duration::from_millis(5)
            };
            s.on_packet(i as u16, i * 160, arrival);
        }
        assert!((s.jitter() - 80.0).abs() < 0.01, "{}", s.jitter());
        assert!((s.jitter_ms() - 10.0).abs() < 0.01);
    }

    #[test]
    fn timestamp_wrap_and_clock_rate() {
        let mut s = RtpStats::new(0);
        assert_eq!(s.clock_rate(), 1);
        s.set_clock_rate(48000);
        let t0 = Instant::now();
        s.on_packet(0, u32::MAX - 479, t0);
        s.on_packet(1, 480, t0 + Duration::from_millis(20)); // 960 units later, exactly on time
        assert!(s.jitter() < 1e-6, "{}", s.jitter());
        s.on_packet(2, 1440, t0 + Duration::from_millis(50)); // 10 ms late: D = 480
        assert!((s.jitter() - 30.0).abs() < 1e-6, "{}", s.jitter());
        assert!((s.jitter_ms() - 30.0 / 48.0).abs() < 1e-9);
        s.set_clock_rate(8000);
        assert!((s.jitter() - 5.0).abs() < 1e-6, "rescaled: {}", s.jitter());
    }
}
