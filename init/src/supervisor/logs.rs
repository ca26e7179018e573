//! A service's recent output: a ring of lines bounded in bytes, so a chatty
//! service costs a fixed amount of PID 1's memory.

use std::collections::VecDeque;

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
