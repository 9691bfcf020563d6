//! Readiness: the things a role needs in order to serve, each checked when its `/readyz` asks.

/// One need of a role (such as `metadata_quorum`, `shards`, `disk`) and, when it is not met,
/// why, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyCheck {
    pub need: &'static str,
    pub problem: Option<String>,
}

impl ReadyCheck {
    pub fn new(need: &'static str, problem: Option<String>) -> Self {
        Self { need, problem }
    }

    pub fn is_met(&self) -> bool {
        self.problem.is_none()
    }
}
