//! Prompts without downloads: generated tones and music on hold, prompt directories, and
//! number announcements.

use std::collections::BTreeMap;
use std::f64::consts::TAU;
use std::path::{Path, PathBuf};

use super::error::AudioError;
use super::wav::read_wav;
use super::SAMPLE_RATE;

/// Default tone level: about -10 dBFS per tone, comfortable on a handset.
pub const TONE_AMPLITUDE: f64 = 0.3;
/// Length of the fade in/out applied to tone bursts, avoiding clicks.
const RAMP_MS: u32 = 5;

fn samples_for(ms: u32) -> usize {
    (u64::from(ms) * u64::from(SAMPLE_RATE) / 1000) as usize
}

/// `ms` of silence.
pub fn silence(ms: u32) -> Vec<i16> {
    vec![0; samples_for(ms)]
}

/// Sum of sine waves at `freqs` Hz lasting `ms`, each at `amplitude` (0.0..=1.0 of full scale,
/// the sum is clamped), with 5 ms fade in/out.
pub fn tone(freqs: &[f64], ms: u32, amplitude: f64) -> Vec<i16> {
    let n = samples_for(ms);
    let ramp = samples_for(RAMP_MS).min(n / 2).max(1);
    (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(SAMPLE_RATE);
            let v: f64 = freqs.iter().map(|f| (TAU * f * t).sin()).sum::<f64>() * amplitude;
            let edge = i.min(n - 1 - i);
            let gain = if edge < ramp {
                edge as f64 / ramp as f64
            } else {
                1.0
            };
            (v * gain * f64::from(i16::MAX)).clamp(-32767.0, 32767.0) as i16
        })
        .collect()
}

/// Steady 440 Hz comfort tone.
pub fn comfort_tone(ms: u32) -> Vec<i16> {
    tone(&[440.0], ms, TONE_AMPLITUDE)
}

/// One US ring-back cadence (440 + 480 Hz, 2 s on, 4 s off); loop it for continuous ringing.
pub fn ringback_us() -> Vec<i16> {
    let mut v = tone(&[440.0, 480.0], 2000, TONE_AMPLITUDE / 2.0);
    v.extend(silence(4000));
    v
}

/// One European (CEPT / ETSI) ring-back cadence: 425 Hz, 1 s on, 4 s off; loop it.
pub fn ringback_eu() -> Vec<i16> {
    let mut v = tone(&[425.0], 1000, TONE_AMPLITUDE);
    v.extend(silence(4000));
    v
}

/// A short beep (`freq_hz` for `ms`), e.g. the voicemail "record after the tone" beep
/// (1000 Hz, 250 ms) or a 425 Hz queue-position blip.
pub fn beep(freq_hz: f64, ms: u32) -> Vec<i16> {
    tone(&[freq_hz], ms, TONE_AMPLITUDE)
}

/// Music on hold: an 8 s loop of gentle chord arpeggios (C, Am, F, G), each note a soft
/// sine with a harmonic and an exponential decay. Loops seamlessly (starts and ends at silence).
pub fn music_on_hold() -> Vec<i16> {
    // MIDI note numbers of each chord's arpeggio (up and back).
    const CHORDS: [[u8; 4]; 4] = [
        [60, 64, 67, 72],
        [57, 60, 64, 69],
        [53, 57, 60, 65],
        [55, 59, 62, 67],
    ];
    const NOTE_MS: u32 = 250;
    let note_len = samples_for(NOTE_MS);
    let ring = note_len * 3; // each note rings under the next two
    let total = note_len * 32;
    let mut mix = vec![0f64; total + ring];
    let mut at = 0;
    for chord in CHORDS {
        for &note in chord.iter().chain(chord.iter().rev()) {
            let f = 440.0 * 2f64.powf((f64::from(note) - 69.0) / 12.0);
            for (k, slot) in mix[at..at + ring].iter_mut().enumerate() {
                let t = k as f64 / f64::from(SAMPLE_RATE);
                let attack = (k as f64 / 80.0).min(1.0);
                let env = attack * (-3.0 * t).exp();
                *slot += env * ((TAU * f * t).sin() + 0.25 * (2.0 * TAU * f * t).sin());
            }
            at += note_len;
        }
    }
    // Fold the tail of the last notes onto the start so the loop is seamless.
    let (body, tail) = mix.split_at_mut(total);
    for (b, t) in body.iter_mut().zip(tail.iter()) {
        *b += *t;
    }
    let peak = body.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-9);
    let scale = 0.35 * f64::from(i16::MAX) / peak;
    body.iter().map(|v| (v * scale) as i16).collect()
}

/// Announcement prompt names for a number, Asterisk-style (`digits/1` .. `digits/20`,
/// `digits/30` .. `digits/90`, `digits/hundred`, `digits/thousand`, `digits/million`).
///
/// `say_number(125)` is `["digits/1", "digits/hundred", "digits/20", "digits/5"]`.
pub fn say_number(n: u32) -> Vec<String> {
    fn below_thousand(n: u32, out: &mut Vec<String>) {
        let (h, rest) = (n / 100, n % 100);
        if h > 0 {
            out.push(format!("digits/{h}"));
            out.push("digits/hundred".to_owned());
        }
        if rest > 20 {
            out.push(format!("digits/{}", rest / 10 * 10));
            if rest % 10 > 0 {
                out.push(format!("digits/{}", rest % 10));
            }
        } else if rest > 0 {
            out.push(format!("digits/{rest}"));
        }
    }
    if n == 0 {
        return vec!["digits/0".to_owned()];
    }
    let mut out = Vec::new();
    let groups = [
        (n / 1_000_000, Some("digits/million")),
        (n / 1000 % 1000, Some("digits/thousand")),
        (n % 1000, None),
    ];
    for (value, unit) in groups {
        if value > 0 {
            below_thousand(value, &mut out);
            if let Some(unit) = unit {
                out.push(unit.to_owned());
            }
        }
    }
    out
}

/// Prompts loaded from a directory, by name: the path relative to the directory, with `/`
/// separators and without `.wav` (e.g. `digits/1`, `queue-thereare`).
#[derive(Debug, Default, Clone)]
pub struct PromptSet {
    prompts: BTreeMap<String, Vec<i16>>,
    rejected: Vec<(PathBuf, String)>,
}

impl PromptSet {
    /// An empty set (add prompts with [`insert`](Self::insert)).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a prompt (e.g. a generated tone).
    pub fn insert(&mut self, name: impl Into<String>, pcm: Vec<i16>) {
        self.prompts.insert(name.into(), pcm);
    }

    /// A prompt by name; a trailing `.wav` is accepted.
    pub fn get(&self, name: &str) -> Option<&[i16]> {
        let key = name.strip_suffix(".wav").unwrap_or(name);
        self.prompts.get(key).map(Vec::as_slice)
    }

    /// PCM of several prompts, for [`RtpPlayer::with_playlist`](super::RtpPlayer::with_playlist).
    pub fn playlist<S: AsRef<str>>(&self, names: &[S]) -> Result<Vec<Vec<i16>>, AudioError> {
        names
            .iter()
            .map(|n| {
                self.get(n.as_ref())
                    .map(<[i16]>::to_vec)
                    .ok_or_else(|| AudioError::MissingPrompt(n.as_ref().to_owned()))
            })
            .collect()
    }

    /// Names of all prompts, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.prompts.keys().map(String::as_str)
    }

    /// Number of prompts.
    pub fn len(&self) -> usize {
        self.prompts.len()
    }

    /// True if there are no prompts.
    pub fn is_empty(&self) -> bool {
        self.prompts.is_empty()
    }

    /// Files that were skipped by [`load_prompt_dir`] and why (wrong rate, corrupt, ...).
    pub fn rejected(&self) -> &[(PathBuf, String)] {
        &self.rejected
    }
}

/// Loads every `*.wav` below `dir` (recursively) into a [`PromptSet`].
///
/// Files that are not 8 kHz mono PCM16/μ-law/A-law are skipped with a warning and listed in
/// [`PromptSet::rejected`], so one bad prompt does not take the gateway down; an unreadable
/// `dir` itself is an error.
pub fn load_prompt_dir(dir: &Path) -> Result<PromptSet, AudioError> {
    let mut set = PromptSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let io_err = |source: std::io::Error| AudioError::Io {
            file: d.display().to_string(),
            source,
        };
        let mut entries = std::fs::read_dir(&d)
            .map_err(io_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(io_err)?;
        entries.sort_by_key(|e| e.path());
        for entry in entries {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let is_wav = path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("wav"));
            if !is_wav {
                continue;
            }
            let Ok(rel) = path.strip_prefix(dir) else {
                continue;
            };
            let name = rel
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            match read_wav(&path) {
                Ok(pcm) => set.insert(name, pcm),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping prompt");
                    set.rejected.push((path, e.to_string()));
                }
            }
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::wav::{encode_wav, WavEncoding};

    /// Dominant-frequency check by zero crossings.
    fn zero_crossings(pcm: &[i16]) -> usize {
        pcm.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count()
    }

    #[test]
    fn tones() {
        let t = comfort_tone(1000);
        assert_eq!(t.len(), 8000);
        let zc = zero_crossings(&t);
        assert!((875..=885).contains(&zc), "{zc}");
        let us = ringback_us();
        assert_eq!(us.len(), 6 * 8000);
        assert!(us[..16000].iter().any(|&s| s.abs() > 5000));
        assert!(us[16000..].iter().all(|&s| s == 0));
        let eu = ringback_eu();
        assert_eq!(eu.len(), 5 * 8000);
        let zc = zero_crossings(&eu[..8000]);
        assert!((845..=855).contains(&zc), "{zc}");
        let b = beep(1000.0, 250);
        assert_eq!(b.len(), 2000);
        assert_eq!((b[0], *b.last().unwrap()), (0, 0));
        assert!(silence(20).iter().all(|&s| s == 0));
    }

    #[test]
    fn moh_is_a_sane_loop() {
        let m = music_on_hold();
        assert_eq!(m.len(), 8 * 8000);
        let peak = m.iter().map(|s| s.unsigned_abs()).max().unwrap();
        assert!((10000..=12000).contains(&peak), "{peak}");
        // Seamless: no big jump across the loop point.
        let jump = (i32::from(m[0]) - i32::from(*m.last().unwrap())).abs();
        assert!(jump < 2000, "{jump}");
    }

    #[test]
    fn numbers() {
        let s = |n| say_number(n).join(" ");
        assert_eq!(s(0), "digits/0");
        assert_eq!(s(7), "digits/7");
        assert_eq!(s(20), "digits/20");
        assert_eq!(s(21), "digits/20 digits/1");
        assert_eq!(s(100), "digits/1 digits/hundred");
        assert_eq!(s(125), "digits/1 digits/hundred digits/20 digits/5");
        assert_eq!(s(2013), "digits/2 digits/thousand digits/13");
        assert_eq!(s(1_000_090), "digits/1 digits/million digits/90");
    }

    #[test]
    fn prompt_dir() {
        let dir = std::env::temp_dir().join(format!("cf-audio-prompts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("digits")).unwrap();
        let one = beep(500.0, 100);
        std::fs::write(
            dir.join("digits/1.wav"),
            encode_wav(&one, WavEncoding::Pcm16).unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.join("queue-thereare.WAV"),
            encode_wav(&one, WavEncoding::Alaw).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.join("readme.txt"), b"x").unwrap();
        std::fs::write(dir.join("broken.wav"), b"RIFFjunk").unwrap();
        let set = load_prompt_dir(&dir).unwrap();
        assert_eq!(
            set.names().collect::<Vec<_>>(),
            ["digits/1", "queue-thereare"]
        );
        assert_eq!(set.get("digits/1.wav").unwrap(), &one[..]);
        assert_eq!(set.rejected().len(), 1);
        assert!(set.rejected()[0].1.contains("broken.wav"));
        let pl = set.playlist(&["queue-thereare", "digits/1"]).unwrap();
        assert_eq!(pl.len(), 2);
        let missing = set.playlist(&say_number(2)).unwrap_err();
        assert_eq!(missing.to_string(), "prompt \"digits/2\" not found");
        assert!(load_prompt_dir(&dir.join("nope")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
