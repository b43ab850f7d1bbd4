//! Wall-clock stamps in peers' logs (SIPp's message trace, the gateway's tracing lines) turned
//! into seconds since the Unix epoch, so that intervals measured across midnight stay right.

/// Seconds since the Unix epoch of a civil date `YYYY-MM-DD` and a time `HH:MM:SS[.frac]`, in
/// the same (unstated) time zone as every other stamp they are compared with. `None` when
/// either is malformed.
pub fn epoch_secs(date: &str, time: &str) -> Option<f64> {
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let (&[y, m, day], &[hh, mm, ss]) = (&d[..], &t[..]) else {
        return None;
    };
    if !(1..=12).contains(&m)
        || !(1..=31).contains(&day)
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    // Days from the civil date (Howard Hinnant's `days_from_civil`).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    let frac: f64 = format!("0.{frac}").parse().ok()?;
    Some(secs as f64 + frac)
}

#[cfg(test)]
mod tests {
    use super::epoch_secs;

    #[test]
    fn known_instants() {
        assert_eq!(epoch_secs("1970-01-01", "00:00:00"), Some(0.0));
        assert_eq!(epoch_secs("2000-03-01", "00:00:00"), Some(951_868_800.0));
        // `date -u -d 2026-12-06T22:01:28 +%s`
        assert_eq!(
            epoch_secs("2026-12-06", "22:01:28.5"),
            Some(1_796_594_488.5)
        );
    }

    #[test]
    fn an_interval_across_midnight_is_its_length() {
        let before = epoch_secs("2026-12-07", "23:59:58.750000").unwrap();
        let after = epoch_secs("2026-12-08", "00:00:01.250000").unwrap();
        assert!((after - before - 2.5).abs() < 1e-6, "{}", after - before);
        let year_end = epoch_secs("2026-12-31", "23:59:59").unwrap();
        assert_eq!(
            epoch_secs("2027-01-01", "00:00:00").unwrap() - year_end,
            1.0
        );
    }

    #[test]
    fn malformed_stamps_are_none() {
        for (d, t) in [
            ("2026-12", "00:00:00"),
            ("2026-13-01", "00:00:00"),
            ("2026-12-08", "00:00"),
            ("2026-12-08", "00:00:0x"),
            ("2026-12-08", "00:00:00.1e3"),
            ("", ""),
        ] {
            assert_eq!(epoch_secs(d, t), None, "{d} {t}");
        }
    }
}
