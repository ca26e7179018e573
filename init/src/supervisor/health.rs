//! Health checks: a longrun service with one is "starting" until its check
//! first passes; only then do its dependents start and does it count for
//! the ready line. Once healthy, `retries` failures in a row make it
//! unhealthy: it is stopped and restarted under its restart policy.
//!
//! Socket checks run here as small tasks; a command check is a child
//! process, started and reaped by the supervisor like any other.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// What a check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Runs this command; exit status 0 passes.
    Command(Vec<String>),
    /// Connects to this unix socket.
    Unix(PathBuf),
    /// Connects to this TCP address.
    Tcp(SocketAddr),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub probe: Probe,
    /// Between checks once healthy.
    pub interval: Duration,
    /// Between checks until the first pass, so dependents start soon.
    pub start_interval: Duration,
    /// A check that takes longer fails.
    pub timeout: Duration,
    /// Failures in a row that make a healthy service unhealthy.
    pub retries: u32,
}

/// Where one run of a service is with its checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checks {
    pub healthy: bool,
    pub failures: u32,
}

/// What a check result changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// First pass of this run: the service is up.
    BecameHealthy,
    /// `retries` failures in a row after having been healthy.
    BecameUnhealthy,
}

impl Checks {
    pub fn record(&mut self, passed: bool, retries: u32) -> Change {
        if passed {
            self.failures = 0;
            if self.healthy {
                return Change::None;
            }
            self.healthy = true;
            return Change::BecameHealthy;
        }
        self.failures = self.failures.saturating_add(1);
        // Before the first pass a failure only means "not up yet".
        if self.healthy && self.failures >= retries {
            self.healthy = false;
            return Change::BecameUnhealthy;
        }
        Change::None
    }

    /// Time until the next check.
    pub fn next_in(&self, h: &Health) -> Duration {
        if self.healthy {
            h.interval
        } else {
            h.start_interval
        }
    }
}

/// Runs a socket check: Ok once the connection is made within `timeout`.
/// Command checks are not run here (see the module comment).
pub async fn connect(probe: &Probe, timeout: Duration) -> Result<(), String> {
    let attempt = async {
        match probe {
            Probe::Unix(path) => tokio::net::UnixStream::connect(path).await.map(drop),
            Probe::Tcp(addr) => tokio::net::TcpStream::connect(addr).await.map(drop),
            Probe::Command(_) => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "a command check is run by the supervisor",
            )),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Health {
        Health {
            probe: Probe::Unix("/nonexistent".into()),
            interval: Duration::from_secs(5),
            start_interval: Duration::from_millis(50),
            timeout: Duration::from_millis(200),
            retries: 2,
        }
    }

    #[test]
    fn failures_before_the_first_pass_do_not_count() {
        let h = health();
        let mut c = Checks::default();
        for _ in 0..10 {
            assert_eq!(c.record(false, h.retries), Change::None);
        }
        assert_eq!(c.next_in(&h), h.start_interval);
        assert_eq!(c.record(true, h.retries), Change::BecameHealthy);
        assert_eq!(c.next_in(&h), h.interval);
        assert_eq!(c.record(true, h.retries), Change::None);
        assert_eq!(c.record(false, h.retries), Change::None);
        assert_eq!(c.record(true, h.retries), Change::None);
        assert_eq!(c.record(false, h.retries), Change::None);
        assert_eq!(c.record(false, h.retries), Change::BecameUnhealthy);
        assert!(!c.healthy);
    }

    #[tokio::test]
    async fn socket_checks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let probe = Probe::Unix(path.clone());
        let t = Duration::from_millis(500);
        assert!(connect(&probe, t).await.is_err());
        let _listener = tokio::net::UnixListener::bind(&path).unwrap();
        assert_eq!(connect(&probe, t).await, Ok(()));

        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        assert_eq!(connect(&Probe::Tcp(addr), t).await, Ok(()));
        // A port bound but not listening refuses connections, and unlike a
        // dropped listener's port no parallel test can take it meanwhile.
        let bound = tokio::net::TcpSocket::new_v4().unwrap();
        bound.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let closed = bound.local_addr().unwrap();
        assert!(connect(&Probe::Tcp(closed), t).await.is_err());
        assert!(connect(&Probe::Command(vec!["/bin/true".into()]), t)
            .await
            .is_err());
    }
}
