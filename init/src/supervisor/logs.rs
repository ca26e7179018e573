//! A service's output: read from its pipe by one small task per service
//! (no thread), kept in a ring of lines bounded in bytes so a chatty service
//! costs a fixed amount of PID 1's memory, copied to the console as
//! `[name] line`, and streamed to `znctl logs -f` through pipes.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::sync::mpsc;

/// Longer lines are cut into pieces of this many bytes. Below PIPE_BUF, so
/// a line and its newline reach a follower in one atomic write.
pub const MAX_LINE: usize = 4000;

/// Lines read from one service's pipe in one go.
#[derive(Debug)]
pub struct Batch {
    pub service: usize,
    pub lines: Vec<String>,
}

/// Reads the pipe `fd` of service number `service` until EOF, sending its
/// lines on `tx`. The channel is bounded: a service that writes faster than
/// init handles its lines waits on its pipe, init's memory does not grow.
pub fn capture(service: usize, fd: OwnedFd, tx: mpsc::Sender<Batch>) -> io::Result<()> {
    let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd)?;
    tokio::spawn(async move {
        // Held across awaits only while a line is incomplete: an idle
        // service costs no buffer.
        let mut partial: Vec<u8> = Vec::new();
        loop {
            if pipe.readable().await.is_err() {
                return;
            }
            let lines = match read_lines(&pipe, &mut partial) {
                Ok(Some(lines)) => lines,
                Ok(None) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => break,
            };
            if !lines.is_empty() && tx.send(Batch { service, lines }).await.is_err() {
                return;
            }
        }
        if !partial.is_empty() {
            let line = String::from_utf8_lossy(&partial).into_owned();
            let _ = tx
                .send(Batch {
                    service,
                    lines: vec![line],
                })
                .await;
        }
    });
    Ok(())
}

/// One read from the pipe: the lines it completed, or None at EOF. Not
/// async, so its buffer lives on the stack, not in every capture task.
fn read_lines(
    pipe: &tokio::net::unix::pipe::Receiver,
    partial: &mut Vec<u8>,
) -> io::Result<Option<Vec<String>>> {
    let mut chunk = [0u8; 4096];
    match pipe.try_read(&mut chunk)? {
        0 => Ok(None),
        n => Ok(Some(split_lines(partial, &chunk[..n]))),
    }
}

/// Appends `data` to `partial` and takes out the complete lines (without
/// their newline, invalid UTF-8 replaced, cut at MAX_LINE bytes).
fn split_lines(partial: &mut Vec<u8>, data: &[u8]) -> Vec<String> {
    let mut lines = Vec::new();
    for &b in data {
        if b == b'\n' {
            let end = if partial.last() == Some(&b'\r') {
                partial.len() - 1
            } else {
                partial.len()
            };
            lines.push(String::from_utf8_lossy(&partial[..end]).into_owned());
            partial.clear();
        } else {
            partial.push(b);
            if partial.len() >= MAX_LINE {
                lines.push(String::from_utf8_lossy(partial).into_owned());
                partial.clear();
            }
        }
    }
    if partial.is_empty() {
        // Give the memory of a long line back.
        *partial = Vec::new();
    }
    lines
}

/// Writes the lines to our stdout (the console for PID 1) as `[name] line`,
/// in one write. A console that fails is not a reason to fail.
pub fn to_console(name: &str, lines: &[String]) {
    let mut text = String::with_capacity(lines.iter().map(|l| l.len() + name.len() + 4).sum());
    for line in lines {
        text.push('[');
        text.push_str(name);
        text.push_str("] ");
        text.push_str(line);
        text.push('\n');
    }
    let _ = io::stdout().lock().write_all(text.as_bytes());
}

/// The write end of a `znctl logs -f` stream. Non-blocking: a reader that
/// does not keep up misses lines instead of stalling init.
#[derive(Debug)]
pub struct Follower {
    fd: OwnedFd,
}

impl Follower {
    /// A follower and the read end to hand to the client.
    pub fn new() -> io::Result<(Follower, OwnedFd)> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        fcntl(&write, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        Ok((Follower { fd: write }, read))
    }

    /// Sends one line; false once the reader has gone.
    pub fn send(&self, line: &str) -> bool {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        !matches!(nix::unistd::write(&self.fd, &buf), Err(e) if e != Errno::EAGAIN)
    }
}

#[derive(Debug)]
pub struct Ring {
    cap: usize,
    bytes: usize,
    lines: VecDeque<String>,
}

impl Ring {
    pub fn new(cap: usize) -> Self {
        Ring {
            cap,
            bytes: 0,
            lines: VecDeque::new(),
        }
    }

    pub fn push(&mut self, mut line: String) {
        if line.len() > self.cap {
            let mut cut = self.cap;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        self.bytes += line.len();
        self.lines.push_back(line);
        while self.bytes > self.cap {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.len(),
                None => break,
            }
        }
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<String> {
        self.lines
            .iter()
            .skip(self.lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_across_reads() {
        let mut partial = Vec::new();
        assert!(split_lines(&mut partial, b"hel").is_empty());
        assert_eq!(
            split_lines(&mut partial, b"lo\r\nworld\n\nx"),
            ["hello", "world", ""]
        );
        assert_eq!(partial, b"x");
        let long = vec![b'a'; MAX_LINE + 10];
        let lines = split_lines(&mut partial, &long);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), MAX_LINE);
        assert_eq!(partial.len(), 11);
        assert_eq!(split_lines(&mut Vec::new(), b"\xff\n"), ["\u{fffd}"]);
    }

    #[test]
    fn followers_get_lines_until_they_go() {
        let (f, read) = Follower::new().unwrap();
        assert!(f.send("one"));
        assert!(f.send("two"));
        let mut file = std::fs::File::from(read);
        let mut buf = [0u8; 64];
        let n = std::io::Read::read(&mut file, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"one\ntwo\n");
        // A full pipe drops lines but keeps the follower.
        let big = "x".repeat(MAX_LINE);
        for _ in 0..100 {
            assert!(f.send(&big));
        }
        drop(file);
        assert!(!f.send("three"));
    }

    #[tokio::test]
    async fn capture_reads_until_eof() {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        capture(7, read, tx).unwrap();
        nix::unistd::write(&write, b"a\nb\nunfinished").unwrap();
        drop(write);
        let mut got = Vec::new();
        while let Some(batch) = rx.recv().await {
            assert_eq!(batch.service, 7);
            got.extend(batch.lines);
        }
        assert_eq!(got, ["a", "b", "unfinished"]);
    }

    #[test]
    fn keeps_the_newest_lines_within_the_bound() {
        let mut r = Ring::new(20);
        for i in 0..10 {
            r.push(format!("line {i}"));
        }
        assert!(r.bytes() <= 20);
        assert_eq!(r.tail(100), ["line 7", "line 8", "line 9"]);
        assert_eq!(r.tail(1), ["line 9"]);
        r.push("é".repeat(30));
        assert_eq!(r.tail(1)[0], "é".repeat(10));
        assert!(r.bytes() <= 20);
    }
}
