//! The node's serial console as QEMU writes it to a file: read as it grows,
//! split into lines, kept whole as the transcript, optionally echoed.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The line the kernel prints when it panics.
pub const KERNEL_PANIC: &str = "Kernel panic - not syncing";

pub struct Console {
    path: PathBuf,
    offset: u64,
    /// Bytes after the last newline: a line still being written.
    partial: Vec<u8>,
    lines: Vec<String>,
    transcript: String,
    /// Lines before this index were already handed out by `next_matching`.
    consumed: usize,
    echo: bool,
}

impl Console {
    pub fn new(path: &Path, echo: bool) -> Self {
        Console {
            path: path.to_path_buf(),
            offset: 0,
            partial: Vec::new(),
            lines: Vec::new(),
            transcript: String::new(),
            consumed: 0,
            echo,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads what QEMU wrote since the last call. A missing file is no
    /// output yet.
    pub fn poll(&mut self) -> std::io::Result<()> {
        let mut f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        f.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        self.offset += f.read_to_end(&mut buf)? as u64;
        self.push(&buf);
        Ok(())
    }

    fn push(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        // Whole lines only, so a UTF-8 sequence split across reads decodes.
        self.partial.extend_from_slice(bytes);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let rest = self.partial.split_off(end + 1);
        let text = String::from_utf8_lossy(&self.partial).replace('\r', "");
        self.partial = rest;
        if self.echo {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
        self.lines.extend(text.lines().map(str::to_string));
        self.transcript.push_str(&text);
    }

    /// Every complete line so far.
    pub fn transcript(&self) -> &str {
        &self.transcript
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The first line after those already handed out that satisfies
    /// `pred`; it and the lines before it count as handed out.
    pub fn next_matching(&mut self, pred: impl Fn(&str) -> bool) -> Option<String> {
        let i = self.lines[self.consumed..].iter().position(|l| pred(l))? + self.consumed;
        self.consumed = i + 1;
        Some(self.lines[i].clone())
    }

    /// A kernel panic line not yet handed out, if any.
    pub fn panic_line(&self) -> Option<&str> {
        self.lines[self.consumed..]
            .iter()
            .find(|l| l.contains(KERNEL_PANIC))
            .map(String::as_str)
    }

    /// The last `n` lines, and the unfinished one.
    pub fn tail(&self, n: usize) -> String {
        let mut out: Vec<&str> = self.lines[self.lines.len().saturating_sub(n)..]
            .iter()
            .map(String::as_str)
            .collect();
        let partial = String::from_utf8_lossy(&self.partial);
        if !partial.is_empty() {
            out.push(&partial);
            return out.join("\n");
        }
        out.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_arrive_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut c = Console::new(&path, false);
        c.poll().unwrap(); // no file yet
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(b"boot\r\nzeronode: rea").unwrap();
        c.poll().unwrap();
        assert_eq!(c.lines(), ["boot"]);
        assert_eq!(c.tail(5), "boot\nzeronode: rea");
        assert!(c
            .next_matching(|l| l.starts_with("zeronode: ready"))
            .is_none());
        // A multi-byte character split across two writes.
        f.write_all(b"dy in 42 ms\n\xc3").unwrap();
        c.poll().unwrap();
        f.write_all(b"\xa9t\xc3\xa9\nlast\n").unwrap();
        c.poll().unwrap();
        assert_eq!(
            c.next_matching(|l| l.starts_with("zeronode: ready"))
                .as_deref(),
            Some("zeronode: ready in 42 ms")
        );
        assert_eq!(c.next_matching(|l| l == "boot"), None, "already handed out");
        assert_eq!(
            c.next_matching(|l| l.contains("été")).as_deref(),
            Some("été")
        );
        assert_eq!(
            c.transcript(),
            "boot\nzeronode: ready in 42 ms\nété\nlast\n"
        );
        assert!(c.panic_line().is_none());
        f.write_all(b"[ 1.0] Kernel panic - not syncing: Attempted to kill init!\n")
            .unwrap();
        c.poll().unwrap();
        assert!(c.panic_line().unwrap().contains("kill init"));
    }
}
