//! The states of runs and attempts, and the executor a run used: enums above
//! the store, words only in its rows. The words are the schema's (migrations,
//! views, existing rows, dashboards' SQL) and never change.

/// An enum each of whose values is stored as one fixed word.
macro_rules! stored_words {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $word:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// The word stored in the database (and shown).
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)+
                }
            }

            /// The value a stored word names.
            pub(super) fn from_stored(word: &str) -> anyhow::Result<$name> {
                match word {
                    $($word => Ok($name::$variant),)+
                    other => anyhow::bail!("unknown {} `{other}` in the store", stringify!($name)),
                }
            }
        }

        shown_as_word!($name);
    };
}

/// Display and JSON of a type as its word (`as_str`).
macro_rules! shown_as_word {
    ($name:ident) => {
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
    };
}

stored_words! {
    /// Where a run stands (`runs.status`).
    RunStatus {
        Running = "running",
        Done = "done",
        Failed = "failed",
        Interrupted = "interrupted",
        /// Its process died (or its lease ran out) while running.
        Lost = "lost",
    }
}

stored_words! {
    /// Where an attempt stands (`attempts.status`).
    AttemptStatus {
        Running = "running",
        Done = "done",
        Failed = "failed",
        /// Not run: an upstream instance failed.
        Skipped = "skipped",
        Interrupted = "interrupted",
        /// Its process died (or its lease ran out) while running.
        Lost = "lost",
        /// Done, but its outputs were found missing or corrupt.
        Invalidated = "invalidated",
    }
}

stored_words! {
    /// What runs a run's instances (`runs.executor`).
    Executor {
        /// This process.
        Local = "local",
        /// Slurm jobs: the run's liveness is its jobs', not its process's.
        Slurm = "slurm",
    }
}

/// An instance's state in a run's DAG: its latest attempt in that run,
/// else `cached` (done before it) or `pending`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeStatus {
    Attempt(AttemptStatus),
    Cached,
    Pending,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Attempt(status) => status.as_str(),
            NodeStatus::Cached => "cached",
            NodeStatus::Pending => "pending",
        }
    }

    /// Whether the run is through with it (done, cached, failed or skipped).
    pub fn is_finished(self) -> bool {
        matches!(self, NodeStatus::Cached | NodeStatus::Attempt(AttemptStatus::Done | AttemptStatus::Failed | AttemptStatus::Skipped))
    }
}

shown_as_word!(NodeStatus);

/// How a run that ends in this process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    Done,
    Failed,
    Interrupted,
}

impl From<RunEnd> for RunStatus {
    fn from(end: RunEnd) -> RunStatus {
        match end {
            RunEnd::Done => RunStatus::Done,
            RunEnd::Failed => RunStatus::Failed,
            RunEnd::Interrupted => RunStatus::Interrupted,
        }
    }
}

/// Final state of an attempt that did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptEnd {
    Failed,
    Interrupted,
}

impl From<AttemptEnd> for AttemptStatus {
    fn from(end: AttemptEnd) -> AttemptStatus {
        match end {
            AttemptEnd::Failed => AttemptStatus::Failed,
            AttemptEnd::Interrupted => AttemptStatus::Interrupted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_words_read_back_as_written() {
        for s in [RunStatus::Running, RunStatus::Done, RunStatus::Failed, RunStatus::Interrupted, RunStatus::Lost] {
            assert_eq!(RunStatus::from_stored(s.as_str()).unwrap(), s);
        }
        for s in [AttemptStatus::Skipped, AttemptStatus::Invalidated, AttemptStatus::Lost] {
            assert_eq!(AttemptStatus::from_stored(s.as_str()).unwrap(), s);
        }
        assert_eq!(Executor::from_stored("slurm").unwrap(), Executor::Slurm);
        assert!(RunStatus::from_stored("Running").is_err());
        assert_eq!(serde_json::to_string(&AttemptStatus::Invalidated).unwrap(), "\"invalidated\"");
    }
}
