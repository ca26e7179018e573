//! RESP2 request parsing with hard bounds, and reply encoding.
//!
//! Requests are arrays of bulk strings (what redis-cli, redis-benchmark and
//! every client library send). The parser works on the connection's input
//! buffer in place: it answers `Ok(None)` while a request is incomplete,
//! the byte ranges of the arguments once it is complete, and an error for
//! anything malformed or over a bound; the connection then answers that
//! error and closes. It never allocates more than the bounds allow and
//! never panics on any input (tests/fuzz.rs).

use std::ops::Range;

/// Bounds on one request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest bulk string (a value): 0-db's 8 MiB.
    pub max_bulk: usize,
    /// Most arguments in one request.
    pub max_args: usize,
    /// Longest header line (`*N` or `$N`), CRLF excluded.
    pub max_line: usize,
    /// Largest request, all bulks together.
    pub max_request: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk: 8 << 20,
            max_args: 1024,
            max_line: 32,
            max_request: (8 << 20) + (64 << 10),
        }
    }
}

/// Why a request is malformed. The connection answers
/// `-ERR Protocol error: <this>` and closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("expected '*', got byte {0}")]
    NotAnArray(u8),
    #[error("expected '$', got byte {0}")]
    NotABulk(u8),
    #[error("header line longer than {0} bytes or without CRLF")]
    LongLine(usize),
    #[error("invalid length {0:?}")]
    BadLength(String),
    #[error("{0} arguments, at most {1} allowed")]
    TooManyArgs(usize, usize),
    #[error("bulk of {0} bytes, at most {1} allowed")]
    BulkTooLarge(usize, usize),
    #[error("request of more than {0} bytes")]
    RequestTooLarge(usize),
    #[error("bulk string not followed by CRLF")]
    MissingCrlf,
}

/// One parsed request: argument ranges into the buffer it was parsed from.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Request {
    pub args: Vec<Range<usize>>,
    /// Bytes of the buffer the request used (from the parse offset).
    pub len: usize,
}

/// Finds a CRLF-terminated line at `buf[at..]`; returns the line's end (the
/// CR's index) or None when incomplete.
fn line(buf: &[u8], at: usize, max: usize) -> Result<Option<usize>, ProtocolError> {
    let window = &buf[at..buf.len().min(at + max + 2)];
    match window.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(i) if window[i] == b'\n' => Err(ProtocolError::LongLine(max)),
        Some(i) => {
            if i + 1 >= window.len() {
                // CR is the last byte we have: wait for LF unless the line is already too long.
                if i > max {
                    return Err(ProtocolError::LongLine(max));
                }
                return Ok(None);
            }
            if window[i + 1] != b'\n' || i > max {
                return Err(ProtocolError::LongLine(max));
            }
            Ok(Some(at + i))
        }
        None if window.len() >= max + 2 => Err(ProtocolError::LongLine(max)),
        None => Ok(None),
    }
}

fn number(text: &[u8]) -> Result<i64, ProtocolError> {
    let bad = || ProtocolError::BadLength(String::from_utf8_lossy(text).into_owned());
    if text.is_empty() || text.len() > 20 {
        return Err(bad());
    }
    let (neg, digits) = match text[0] {
        b'-' => (true, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() {
        return Err(bad());
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(bad());
        }
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(d - b'0')))
            .ok_or_else(bad)?;
    }
    Ok(if neg { -v } else { v })
}

/// Parses one request at `buf[at..]` into `req` (its `args` are reused).
/// `Ok(false)`: incomplete, read more. An empty array (`*0`, `*-1`) is a
/// request with no arguments, which the caller skips.
pub fn parse_into(
    buf: &[u8],
    at: usize,
    limits: &Limits,
    req: &mut Request,
) -> Result<bool, ProtocolError> {
    req.args.clear();
    req.len = 0;
    if at >= buf.len() {
        return Ok(false);
    }
    if buf[at] != b'*' {
        return Err(ProtocolError::NotAnArray(buf[at]));
    }
    let Some(end) = line(buf, at + 1, limits.max_line)? else {
        return Ok(false);
    };
    let count = number(&buf[at + 1..end])?;
    let mut pos = end + 2;
    if count <= 0 {
        if count < -1 {
            return Err(ProtocolError::BadLength(count.to_string()));
        }
        req.len = pos - at;
        return Ok(true);
    }
    let count = count as usize;
    if count > limits.max_args {
        return Err(ProtocolError::TooManyArgs(count, limits.max_args));
    }
    let mut total = 0usize;
    for _ in 0..count {
        if pos >= buf.len() {
            return Ok(false);
        }
        if buf[pos] != b'$' {
            return Err(ProtocolError::NotABulk(buf[pos]));
        }
        let Some(end) = line(buf, pos + 1, limits.max_line)? else {
            return Ok(false);
        };
        let len = number(&buf[pos + 1..end])?;
        if len < 0 {
            return Err(ProtocolError::BadLength(len.to_string()));
        }
        let len = len as usize;
        if len > limits.max_bulk {
            return Err(ProtocolError::BulkTooLarge(len, limits.max_bulk));
        }
        total += len;
        if total > limits.max_request {
            return Err(ProtocolError::RequestTooLarge(limits.max_request));
        }
        let start = end + 2;
        if buf.len() < start + len + 2 {
            return Ok(false);
        }
        if &buf[start + len..start + len + 2] != b"\r\n" {
            return Err(ProtocolError::MissingCrlf);
        }
        req.args.push(start..start + len);
        pos = start + len + 2;
    }
    req.len = pos - at;
    Ok(true)
}

/// How many more bytes the incomplete request at `buf[at..]` needs at
/// least, when a bulk header says so: lets the reader reserve once for a
/// large value instead of growing the buffer step by step.
pub fn wanted(buf: &[u8], at: usize, limits: &Limits) -> usize {
    let mut req = Request::default();
    // Walk the complete headers; the last bulk header read tells the size.
    let mut pos = at;
    if pos >= buf.len() || buf[pos] != b'*' {
        return 0;
    }
    let Ok(Some(end)) = line(buf, pos + 1, limits.max_line) else {
        return 0;
    };
    pos = end + 2;
    loop {
        if pos >= buf.len() || buf[pos] != b'$' {
            return 0;
        }
        let Ok(Some(end)) = line(buf, pos + 1, limits.max_line) else {
            return 0;
        };
        let Ok(len) = number(&buf[pos + 1..end]) else {
            return 0;
        };
        let len = (len.max(0) as usize).min(limits.max_bulk);
        let stop = end + 2 + len + 2;
        if stop > buf.len() {
            return stop - buf.len();
        }
        pos = stop;
        req.len += 1;
        if req.len > limits.max_args {
            return 0;
        }
    }
}

/// Reply encoders, appending to the connection's output buffer.
pub mod reply {
    pub fn status(out: &mut Vec<u8>, s: &str) {
        out.push(b'+');
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    pub fn error(out: &mut Vec<u8>, s: &str) {
        out.push(b'-');
        // An error line must stay one line.
        out.extend(
            s.bytes()
                .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
        out.extend_from_slice(b"\r\n");
    }

    use std::io::Write;

    pub fn integer(out: &mut Vec<u8>, v: i64) {
        // Writing to a Vec cannot fail.
        let _ = write!(out, ":{v}\r\n");
    }

    pub fn bulk_header(out: &mut Vec<u8>, len: usize) {
        let _ = write!(out, "${len}\r\n");
    }

    pub fn bulk(out: &mut Vec<u8>, data: &[u8]) {
        bulk_header(out, data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }

    pub fn nil(out: &mut Vec<u8>) {
        out.extend_from_slice(b"$-1\r\n");
    }

    pub fn array(out: &mut Vec<u8>, len: usize) {
        let _ = write!(out, "*{len}\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(buf: &[u8]) -> Result<Option<Vec<Vec<u8>>>, ProtocolError> {
        let mut req = Request::default();
        Ok(parse_into(buf, 0, &Limits::default(), &mut req)?.then(|| {
            assert!(req.len <= buf.len());
            req.args.iter().map(|r| buf[r.clone()].to_vec()).collect()
        }))
    }

    #[test]
    fn complete_and_partial_requests() {
        let full = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nva\r\nl\r\n";
        assert_eq!(
            parse(full).unwrap().unwrap(),
            vec![b"SET".to_vec(), b"k".to_vec(), b"va\r\nl".to_vec()]
        );
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(parse(b"*0\r\n").unwrap().unwrap(), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn malformed_requests_are_errors() {
        for bad in [
            &b"PING\r\n"[..],
            b"*x\r\n",
            b"*2\r\n:1\r\n",
            b"*1\r\n$-1\r\n",
            b"*1\r\n$3\r\nabcde",
            b"*99999\r\n",
            b"*1\r\n$999999999\r\n",
            b"*1\r\n$1\r\na\n\n",
            b"*-2\r\n",
            b"*1\r\n$1\n",
            b"*111111111111111111111111111111111111111",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn wanted_tells_the_rest_of_a_large_bulk() {
        let head = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000\r\nabc";
        assert_eq!(wanted(head, 0, &Limits::default()), 1000 - 3 + 2);
    }
}
