//! The three `sscanf` conversions res_xmpp applies to what it reads from a PubSub item, with
//! glibc's semantics (LP64), so a fabric member reads a hostile or odd value exactly as an
//! Asterisk box on the same node does:
//!
//! * `%2x:%2x:%2x:%2x:%2x:%2x` in `ast_str_to_eid` ([`eid`]),
//! * `%30u` on the `cachable` attribute ([`cachable`]),
//! * `%10d` on `<NEWMSGS>`/`<OLDMSGS>` ([`count`]).
//!
//! Each conversion skips leading C-locale white space, then reads at most `width` characters:
//! an optional sign, then digits (base 16: an optional `0x`/`0X` after a leading `0`). The digits
//! go through `strtoul`/`strtol` (a `-` negates modulo 2^64; overflow saturates) and the result
//! is cast to the destination type. Trailing characters are left unread. Pure functions.

/// C `isspace` in the C locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// One numeric conversion at the start of `s`: `(negative, magnitude saturated to u64, rest)`,
/// or `None` on a matching failure (no digit).
fn number(s: &[u8], width: usize, base: u32) -> Option<(bool, u64, &[u8])> {
    let start = s.iter().position(|&b| !is_c_space(b)).unwrap_or(s.len());
    let mut s = &s[start..];
    let mut width = width;
    let mut neg = false;
    if let Some(&c @ (b'+' | b'-')) = s.first() {
        if width == 0 {
            return None;
        }
        neg = c == b'-';
        s = &s[1..];
        width -= 1;
    }
    let mut value: u64 = 0;
    let mut digits = 0usize;
    let mut overflow = false;
    if base == 16 && width > 0 && s.first() == Some(&b'0') {
        // glibc: a leading 0 counts as a digit; an `x` after it is the prefix, if width allows.
        s = &s[1..];
        width -= 1;
        digits = 1;
        if width > 0 && matches!(s.first(), Some(b'x' | b'X')) {
            s = &s[1..];
            width -= 1;
        }
    }
    while width > 0 {
        let Some(d) = s.first().and_then(|&b| (b as char).to_digit(base)) else {
            break;
        };
        match value
            .checked_mul(u64::from(base))
            .and_then(|v| v.checked_add(u64::from(d)))
        {
            Some(v) => value = v,
            None => overflow = true,
        }
        s = &s[1..];
        width -= 1;
        digits += 1;
    }
    if digits == 0 {
        return None;
    }
    Some((neg, if overflow { u64::MAX } else { value }, s))
}

/// `%Nu`/`%Nx` into an `unsigned int`: strtoul, then the cast.
fn unsigned(s: &[u8], width: usize, base: u32) -> Option<(u32, &[u8])> {
    let (neg, v, rest) = number(s, width, base)?;
    // strtoul negates a `-` value modulo 2^64 (an overflow stays ULONG_MAX).
    let v = if neg && v != u64::MAX {
        v.wrapping_neg()
    } else {
        v
    };
    Some((v as u32, rest))
}

/// `ast_str_to_eid`: `sscanf(s, "%2x:%2x:%2x:%2x:%2x:%2x")` must convert all six fields; each
/// `unsigned int` is then stored in a byte. Anything after the sixth field is ignored.
/// `None` where Asterisk returns -1 (and goes on with an uninitialised EID).
pub fn eid(s: &str) -> Option<[u8; 6]> {
    let mut rest = s.as_bytes();
    let mut out = [0u8; 6];
    for (i, byte) in out.iter_mut().enumerate() {
        if i > 0 {
            rest = rest.strip_prefix(b":")?;
        }
        let (v, r) = unsigned(rest, 2, 16)?;
        *byte = v as u8;
        rest = r;
    }
    Some(out)
}

/// res_xmpp's `cachable`: `sscanf(attr, "%30u", &cachable)` over a default of 1 (also kept on
/// a matching failure), then cachable only if the value is exactly 1 (`AST_DEVSTATE_CACHABLE`).
/// A missing attribute is cachable.
pub fn cachable(attr: Option<&str>) -> bool {
    match attr.and_then(|a| unsigned(a.as_bytes(), 30, 10)) {
        Some((v, _)) => v == 1,
        None => true,
    }
}

/// res_xmpp's message counts: `sscanf(text, "%10d", &n)` (strtol, then the cast to `int`).
/// `None` on a matching failure (Asterisk then uses an uninitialised variable).
pub fn count(text: &str) -> Option<i32> {
    let (neg, v, _) = number(text.as_bytes(), 10, 10)?;
    // At most 10 characters: the magnitude fits an i64; the cast to int wraps.
    let v = v as i64;
    Some((if neg { -v } else { v }) as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values are glibc 2.36's (Debian 12): a C program running the same sscanf formats.
    #[test]
    fn eid_as_ast_str_to_eid() {
        let ok = |s: &str, e: [u8; 6]| assert_eq!(eid(s), Some(e), "{s:?}");
        ok("00:11:22:33:44:55", [0, 0x11, 0x22, 0x33, 0x44, 0x55]);
        ok("0:1:2:A:b:FF", [0, 1, 2, 0xa, 0xb, 0xff]);
        ok(" 00: 11:\t22:33:44:55", [0, 0x11, 0x22, 0x33, 0x44, 0x55]);
        // trailing text after the sixth field is not read
        ok("00:11:22:33:44:55:66", [0, 0x11, 0x22, 0x33, 0x44, 0x55]);
        ok("00:11:22:33:44:5566", [0, 0x11, 0x22, 0x33, 0x44, 0x55]);
        ok("00:11:22:33:44:55 junk", [0, 0x11, 0x22, 0x33, 0x44, 0x55]);
        // a sign counts in the width; strtoul negates modulo 2^64; the byte keeps the low 8 bits
        ok("+1:-1:-f:0:0:0", [1, 0xff, 0xf1, 0, 0, 0]);
        // "0x" is a 0 with its prefix (width 2 used up)
        ok("0x:1:2:3:4:5", [0, 1, 2, 3, 4, 5]);
        for bad in [
            "",
            "00:11:22:33:44",
            "001:11:22:33:44:55",
            "00-11-22-33-44-55",
            "00 :11:22:33:44:55",
            "zz:11:22:33:44:55",
            "00::22:33:44:55",
            "0x1:2:3:4:5:6",
            "+:1:2:3:4:5",
        ] {
            assert_eq!(eid(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cachable_as_res_xmpp() {
        for yes in [
            None,
            Some("1"),
            Some(" 1"),
            Some("+1"),
            Some("0001"),
            Some("1abc"),
            Some(""),
            Some("yes"),
            Some("true"),
            Some("-4294967295"),
            Some("4294967297"),
        ] {
            assert!(cachable(yes), "{yes:?}");
        }
        for no in [
            Some("0"),
            Some("00"),
            Some(" 0 "),
            Some("2"),
            Some("-1"),
            Some("-0"),
            Some("999999999999999999999999999999"),
            Some("10"),
        ] {
            assert!(!cachable(no), "{no:?}");
        }
    }

    #[test]
    fn count_as_percent_10d() {
        assert_eq!(count("3"), Some(3));
        assert_eq!(count(" \n 3 "), Some(3));
        assert_eq!(count("+7x"), Some(7));
        assert_eq!(count("-2"), Some(-2));
        assert_eq!(count("007"), Some(7));
        // ten characters at most: the eleventh digit is not read
        assert_eq!(count("12345678901"), Some(1_234_567_890));
        // strtol's long, cast to int
        assert_eq!(count("9999999999"), Some(1_410_065_407));
        assert_eq!(count("0x10"), Some(0));
        for bad in ["", " ", "x", "-", "+ 1"] {
            assert_eq!(count(bad), None, "{bad:?}");
        }
    }
}
