//! RFC 8785 JSON Canonicalization Scheme over `serde_json::Value`.
//!
//! Written here rather than taken from a crate: the rule is short, the few
//! crates that implement it are thinly maintained, and the signing rule of
//! every order depends on it, so it is tested against the RFC's own
//! examples (tests below and tests/jcs.rs).
//!
//! - object members sorted by their names as UTF-16 code units;
//! - strings escaped as ECMAScript's JSON.stringify does;
//! - numbers written as ECMAScript's Number.prototype.toString (IEEE 754
//!   doubles, shortest round-trip digits);
//! - no whitespace.

use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JcsError {
    #[error("number {0} is not a finite IEEE 754 double")]
    NotFinite(String),
}

/// The canonical bytes of `value`.
pub fn canonicalize(value: &Value) -> Result<Vec<u8>, JcsError> {
    let mut out = Vec::with_capacity(256);
    write_value(value, &mut out)?;
    Ok(out)
}

fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<(), JcsError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            // Every JSON number is a double to JCS: integers beyond 2^53
            // round, exactly as a JavaScript signer would see them.
            let f = n
                .as_f64()
                .ok_or_else(|| JcsError::NotFinite(n.to_string()))?;
            out.extend_from_slice(format_number(f)?.as_bytes());
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push(b'{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write_value(v, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\r' => out.extend_from_slice(b"\\r"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// ECMAScript Number::toString(10) for a finite double (ECMA-262 7.1.12.1).
pub fn format_number(f: f64) -> Result<String, JcsError> {
    if !f.is_finite() {
        return Err(JcsError::NotFinite(f.to_string()));
    }
    if f == 0.0 {
        // -0 prints as 0.
        return Ok("0".into());
    }
    // Rust's `{:e}` gives the shortest digits that round-trip, which is
    // what ECMAScript asks for: "d.ddddde[-]x".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = match sci.split_once('e') {
        Some(parts) => parts,
        None => return Err(JcsError::NotFinite(sci)),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let exp: i32 = exp.parse().map_err(|_| JcsError::NotFinite(sci.clone()))?;
    let digits = even_on_tie(f.abs(), digits, exp);
    let k = digits.len() as i32;
    let n = exp + 1;
    let mut s = String::new();
    if f < 0.0 {
        s.push('-');
    }
    if k <= n && n <= 21 {
        s.push_str(&digits);
        s.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        s.push_str(&digits[..n as usize]);
        s.push('.');
        s.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        s.push_str("0.");
        s.extend(std::iter::repeat_n('0', (-n) as usize));
        s.push_str(&digits);
    } else {
        s.push_str(&digits[..1]);
        if k > 1 {
            s.push('.');
            s.push_str(&digits[1..]);
        }
        s.push('e');
        s.push(if n - 1 < 0 { '-' } else { '+' });
        s.push_str(&(n - 1).abs().to_string());
    }
    Ok(s)
}

/// ECMAScript picks the even last digit when two shortest digit strings
/// are exactly as close to the value; Rust's shortest formatting does not
/// promise that. A tie means the exact decimal expansion continues with
/// "5" and zeros right after the kept digits.
fn even_on_tie(f: f64, digits: String, exp: i32) -> String {
    let k = digits.len();
    let last_odd = digits
        .as_bytes()
        .last()
        .is_some_and(|d| (d - b'0') % 2 == 1);
    if !last_odd {
        return digits;
    }
    // 1100 digits cover the exact expansion of any double.
    let exact = format!("{:.1100e}", f);
    let Some((m, e)) = exact.split_once('e') else {
        return digits;
    };
    if e.parse::<i32>().ok() != Some(exp) {
        return digits;
    }
    let all: Vec<u8> = m.bytes().filter(|c| *c != b'.').collect();
    if all.len() <= k {
        return digits;
    }
    let (kept, rest) = all.split_at(k);
    let tie = rest[0] == b'5' && rest[1..].iter().all(|d| *d == b'0');
    if !tie {
        return digits;
    }
    // The two candidates are `kept` and `kept + 1`; take the even one.
    let mut cand = kept.to_vec();
    let kept_even = cand.last().is_some_and(|d| (d - b'0') % 2 == 0);
    if !kept_even {
        let mut i = cand.len();
        loop {
            if i == 0 {
                return digits;
            }
            i -= 1;
            if cand[i] == b'9' {
                cand[i] = b'0';
            } else {
                cand[i] += 1;
                break;
            }
        }
    }
    while cand.len() > 1 && cand.last() == Some(&b'0') {
        cand.pop();
    }
    let cand = String::from_utf8(cand).unwrap_or_default();
    // Only if it still reads back as the same double.
    let check = if cand.len() > 1 {
        format!("{}.{}e{}", &cand[..1], &cand[1..], exp)
    } else {
        format!("{cand}e{exp}")
    };
    if check.parse::<f64>().ok() == Some(f) {
        cand
    } else {
        digits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(json: &str) -> String {
        let v: Value = serde_json::from_str(json).unwrap();
        String::from_utf8(canonicalize(&v).unwrap()).unwrap()
    }

    /// RFC 8785 appendix B: IEEE 754 bit patterns and their JCS text.
    #[test]
    fn rfc8785_number_table() {
        let table: &[(u64, &str)] = &[
            (0x0000000000000000, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0xffefffffffffffff, "-1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0xc340000000000000, "-9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x444b1ae4d6e2ef4e, "999999999999999700000"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x41b3de4355555553, "333333333.3333332"),
            (0x41b3de4355555554, "333333333.33333325"),
            (0x41b3de4355555555, "333333333.3333333"),
            (0x41b3de4355555556, "333333333.3333334"),
            (0x41b3de4355555557, "333333333.33333343"),
            (0xbecbf647612f3696, "-0.0000033333333333333333"),
            (0x43143ff3c1cb0959, "1424953923781206.2"),
        ];
        for (bits, want) in table {
            assert_eq!(
                format_number(f64::from_bits(*bits)).unwrap(),
                *want,
                "{bits:016x}"
            );
        }
        assert!(format_number(f64::NAN).is_err());
        assert!(format_number(f64::INFINITY).is_err());
    }

    /// RFC 8785 section 3.2.2 example (numbers, strings, literals).
    #[test]
    fn rfc8785_primitive_example() {
        let input = r#"{
          "numbers": [333333333.33333329, 1E30, 4.50,
                      2e-3, 0.000000000000000000000000001],
          "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
          "literals": [null, true, false]
        }"#;
        let want = "{\"literals\":[null,true,false],\"numbers\":[333333333.3333333,1e+30,4.5,0.002,1e-27],\"string\":\"\u{20ac}$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}";
        assert_eq!(canon(input), want);
    }

    /// RFC 8785 section 3.2.3 example: sorting by UTF-16 code units.
    #[test]
    fn rfc8785_sorting_example() {
        let input = r#"{
           "\u20ac": "Euro Sign",
           "\r": "Carriage Return",
           "\ufb33": "Hebrew Letter Dalet With Dagesh",
           "1": "One",
           "\ud83d\ude00": "Emoji: Grinning Face",
           "\u0080": "Control",
           "\u00f6": "Latin Small Letter O With Diaeresis"
        }"#;
        let v: Value = serde_json::from_str(input).unwrap();
        let out = String::from_utf8(canonicalize(&v).unwrap()).unwrap();
        let keys: Vec<String> = {
            // Property order as the RFC lists it.
            vec![
                "\r".into(),
                "1".into(),
                "\u{80}".into(),
                "\u{f6}".into(),
                "\u{20ac}".into(),
                "\u{1f600}".into(),
                "\u{fb33}".into(),
            ]
        };
        let mut pos = 0;
        for k in keys {
            let needle = if k == "\r" {
                "\"\\r\"".to_string()
            } else {
                format!("\"{k}\"")
            };
            let at = out[pos..].find(&needle).unwrap() + pos;
            pos = at + needle.len();
        }
    }

    #[test]
    fn nested_and_whitespace() {
        assert_eq!(
            canon(r#" { "b" : [ 1 , { "z":1, "a" : "x" } ], "a": {} } "#),
            r#"{"a":{},"b":[1,{"a":"x","z":1}]}"#
        );
        assert_eq!(canon("-0.0"), "0");
        assert_eq!(canon("100"), "100");
        assert_eq!(canon("1e21"), "1e+21");
        assert_eq!(canon("\"\\u2028\""), "\"\u{2028}\"");
    }
}
