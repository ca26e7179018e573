//! What the control interface can ask of the supervisor. A request comes
//! with a one-shot reply channel; a stop or restart is answered once the
//! old process has actually exited, so `znctl stop x` returns when x is
//! gone.

use std::os::fd::OwnedFd;

use thiserror::Error;
use tokio::sync::oneshot;

use super::backoff::Streak;
use super::logs::Follower;
use super::{AfterStop, State, Supervisor};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    List,
    Status(String),
    Start(String),
    Stop(String),
    Restart(String),
    /// The last `lines` lines of output.
    Logs(String, u32),
    /// A pipe that gets the last `lines` lines, then every new one.
    Follow(String, u32),
}

#[derive(Debug)]
pub enum Reply {
    List(Vec<Info>),
    Status(Info),
    Logs(Vec<String>),
    Follow(OwnedFd),
}

/// One service as the control interface shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    /// "longrun" or "oneshot".
    pub kind: &'static str,
    /// One of waiting, starting, running, done, backoff, stopping,
    /// stopped, failed, refused.
    pub state: &'static str,
    /// 0 when no process runs.
    pub pid: u32,
    /// Restarts in a row (the back-off streak).
    pub restarts: u32,
    /// Milliseconds since the service entered this state.
    pub since_ms: u64,
    /// Why it failed or was refused; empty otherwise.
    pub detail: String,
    pub ready: bool,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CommandError {
    #[error("no service named {0:?}")]
    UnknownService(String),
    #[error("service {name:?} was refused: {reason}")]
    Refused { name: String, reason: String },
    #[error("the node is shutting down; {0:?} is not started")]
    ShuttingDown(String),
    #[error("cannot follow the output of {name:?}: {reason}")]
    Follow { name: String, reason: String },
}

pub type Answer = Result<Reply, CommandError>;
pub type Waiter = oneshot::Sender<Answer>;

impl Supervisor {
    /// Carries out `op` and answers on `reply`, now or (stop, restart)
    /// once the process has exited.
    pub fn command(&mut self, op: Op, reply: Waiter) {
        let answer = match op {
            Op::List => Ok(Reply::List(
                (0..self.svcs.len()).map(|id| self.info(id)).collect(),
            )),
            Op::Status(name) => self.id(&name).map(|id| Reply::Status(self.info(id))),
            Op::Start(name) => self.start(&name),
            Op::Stop(name) => match self.id(&name) {
                Ok(id) if self.svcs[id].state.is_alive() => {
                    if !matches!(self.svcs[id].state, State::Stopping { .. }) {
                        self.stop(id, AfterStop::Stay);
                    }
                    self.svcs[id].waiters.push(reply);
                    return;
                }
                Ok(id) => {
                    if matches!(self.svcs[id].state, State::Waiting | State::Backoff) {
                        self.set_state(id, State::Stopped);
                    }
                    Ok(Reply::Status(self.info(id)))
                }
                Err(e) => Err(e),
            },
            Op::Restart(name) => match self.id(&name) {
                Ok(_) if self.shutting_down => Err(CommandError::ShuttingDown(name)),
                Ok(id) if self.svcs[id].state.is_alive() => {
                    self.stop(id, AfterStop::Restart);
                    self.svcs[id].waiters.push(reply);
                    return;
                }
                Ok(_) => self.start(&name),
                Err(e) => Err(e),
            },
            Op::Logs(name, lines) => self
                .id(&name)
                .map(|id| Reply::Logs(self.svcs[id].log.tail(lines as usize))),
            Op::Follow(name, lines) => self.follow(&name, lines),
        };
        let _ = reply.send(answer);
        self.settle();
    }

    fn id(&self, name: &str) -> Result<usize, CommandError> {
        self.ids
            .get(name)
            .copied()
            .ok_or_else(|| CommandError::UnknownService(name.into()))
    }

    /// Starts a service that is not running: at once if its dependencies
    /// are up, otherwise it waits for them. A running one is left alone.
    fn start(&mut self, name: &str) -> Answer {
        let id = self.id(name)?;
        if self.shutting_down {
            return Err(CommandError::ShuttingDown(name.into()));
        }
        match &self.svcs[id].state {
            State::Refused(reason) => {
                return Err(CommandError::Refused {
                    name: name.into(),
                    reason: reason.clone(),
                })
            }
            State::Backoff => {
                self.svcs[id].streak = Streak::default();
                self.spawn(id);
            }
            State::Stopped | State::Failed(_) | State::Done => {
                self.svcs[id].streak = Streak::default();
                self.set_state(id, State::Waiting);
                self.wake.push(id);
                self.settle();
            }
            _ => {}
        }
        Ok(Reply::Status(self.info(id)))
    }

    fn follow(&mut self, name: &str, lines: u32) -> Answer {
        let id = self.id(name)?;
        let (follower, read) = Follower::new().map_err(|e| CommandError::Follow {
            name: name.into(),
            reason: e.to_string(),
        })?;
        for line in self.svcs[id].log.tail(lines as usize) {
            follower.send(&line);
        }
        self.svcs[id].followers.push(follower);
        Ok(Reply::Follow(read))
    }

    pub fn info(&self, id: usize) -> Info {
        let s = &self.svcs[id];
        let detail = match &s.state {
            State::Failed(r) | State::Refused(r) => r.clone(),
            _ => String::new(),
        };
        Info {
            name: s.spec.name.clone(),
            kind: match s.spec.kind {
                super::service::Kind::Longrun => "longrun",
                super::service::Kind::Oneshot => "oneshot",
            },
            state: s.state.name(),
            pid: s.state.pid().map_or(0, |p| p as u32),
            restarts: s.streak.restarts,
            since_ms: s.since.elapsed().as_millis() as u64,
            detail,
            ready: s.spec.ready,
        }
    }

    /// Answers the stop and restart commands waiting on this service.
    pub(super) fn answer_waiters(&mut self, id: usize) {
        let waiters = std::mem::take(&mut self.svcs[id].waiters);
        for w in waiters {
            let _ = w.send(Ok(Reply::Status(self.info(id))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::service::Service;
    use std::path::Path;

    fn sup() -> Supervisor {
        let spec =
            |name: &str, text: &str| Service::parse(name, text, Path::new("x.toml"), "").unwrap();
        Supervisor::new(vec![
            spec("a", "command = [\"/bin/true\"]\nafter = [\"nope\"]"),
            spec("b", "command = [\"/bin/true\"]"),
        ])
        .0
    }

    fn ask(sup: &mut Supervisor, op: Op) -> Answer {
        let (tx, mut rx) = oneshot::channel();
        sup.command(op, tx);
        rx.try_recv().unwrap()
    }

    #[test]
    fn errors_name_the_service() {
        let mut s = sup();
        let e = ask(&mut s, Op::Status("ghost".into())).unwrap_err();
        assert_eq!(e.to_string(), "no service named \"ghost\"");
        let e = ask(&mut s, Op::Start("a".into())).unwrap_err();
        assert!(
            e.to_string()
                .contains("\"a\" was refused: depends on \"nope\""),
            "{e}"
        );
        let Ok(Reply::List(list)) = ask(&mut s, Op::List) else {
            panic!()
        };
        assert_eq!(list.len(), 2);
        assert_eq!((list[1].name.as_str(), list[1].state), ("b", "waiting"));
        assert_eq!((list[0].state, list[0].pid), ("refused", 0));
    }

    #[test]
    fn stopping_a_waiting_service_needs_no_process() {
        let mut s = sup();
        let Ok(Reply::Status(i)) = ask(&mut s, Op::Stop("b".into())) else {
            panic!()
        };
        assert_eq!(i.state, "stopped");
        let Ok(Reply::Logs(l)) = ask(&mut s, Op::Logs("b".into(), 10)) else {
            panic!()
        };
        assert!(l.is_empty());
    }
}
