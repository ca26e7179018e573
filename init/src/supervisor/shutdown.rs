//! Ordered stop: a service gets its stop signal once no service that
//! depends on it is still alive, so services stop in reverse dependency
//! order, all those of one level at once. Each exit looks again only at
//! the dependencies of the service that exited.

use super::{AfterStop, State, Supervisor};

impl Supervisor {
    /// Begins the stop of everything: nothing new starts or restarts, and
    /// every service that no live service depends on gets its stop signal.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        for id in 0..self.svcs.len() {
            if let Some(pid) = self.svcs[id].probe.take() {
                super::process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
            }
            if matches!(self.svcs[id].state, State::Waiting | State::Backoff) {
                self.set_state(id, State::Stopped);
            }
        }
        for id in 0..self.svcs.len() {
            self.stop_if_unblocked(id);
        }
    }

    /// After `id` exited during shutdown: the services it depended on may
    /// now have no live dependent left.
    pub(super) fn stop_unblocked_dependencies(&mut self, id: usize) {
        for d in self.deps[id].clone() {
            self.stop_if_unblocked(d);
        }
    }

    fn stop_if_unblocked(&mut self, id: usize) {
        let running = matches!(
            self.svcs[id].state,
            State::Running { .. } | State::Starting { .. }
        );
        let blocked = self.dependents[id]
            .iter()
            .any(|&d| self.svcs[d].state.is_alive());
        if running && !blocked {
            self.stop(id, AfterStop::Stay);
        }
    }

    /// True once no service process is left.
    pub fn all_stopped(&self) -> bool {
        !self.svcs.iter().any(|s| s.state.is_alive())
    }

    /// Called once all have stopped: no more output will be captured, so
    /// the log channel closes when the last capture task has read its EOF.
    pub fn finish(&mut self) {
        self.logs = None;
    }
}

#[cfg(test)]
mod tests {
    use super::super::service::Service;
    use super::*;
    use std::path::Path;

    #[test]
    fn nothing_alive_means_all_stopped() {
        let spec =
            |name: &str, text: &str| Service::parse(name, text, Path::new("x.toml"), "").unwrap();
        let (mut sup, _ch) = Supervisor::new(vec![
            spec("a", "command = [\"/bin/true\"]"),
            spec("b", "command = [\"/bin/true\"]\nafter = [\"a\"]"),
        ]);
        sup.begin_shutdown();
        assert!(sup.all_stopped());
        assert!(sup.svcs.iter().all(|s| s.state == State::Stopped));
        sup.start_all();
        assert!(sup.all_stopped(), "nothing starts once shutting down");
    }
}
