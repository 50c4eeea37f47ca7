//! Why the jail could not be made: every variant names the flag or the path at fault, so
//! the one line the jailer prints says what to change.

use std::path::PathBuf;

/// A jailer failure.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A flag's value breaks its rule.
    #[error("{flag} {value:?}: {rule}")]
    Flag {
        /// The flag (`--id`).
        flag: &'static str,
        /// What was given.
        value: String,
        /// The rule it breaks.
        rule: String,
    },
    /// A path given on the command line cannot be used.
    #[error("{flag} {}: {why}", path.display())]
    Path {
        /// The flag (`--exec-file`).
        flag: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A file operation while building the jail failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done (`creating`, `copying to`).
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A system call while entering the jail failed.
    #[error("{call}: {source}")]
    Sys {
        /// The call and its subject (`pivot_root(<dir>)`).
        call: String,
        /// The error.
        source: std::io::Error,
    },
    /// The cgroup could not be made as asked.
    #[error("cgroup: {0}")]
    Cgroup(String),
    /// The command line is not the jailer's: an unknown flag, a flag without its value, a
    /// stray argument, a required flag missing.
    #[error("{0} (see --help)")]
    Usage(String),
}

impl JailError {
    /// A `Flag` error.
    pub fn flag(flag: &'static str, value: impl Into<String>, rule: impl Into<String>) -> Self {
        JailError::Flag {
            flag,
            value: value.into(),
            rule: rule.into(),
        }
    }

    /// A `Path` error.
    pub fn path(flag: &'static str, path: impl Into<PathBuf>, why: impl Into<String>) -> Self {
        JailError::Path {
            flag,
            path: path.into(),
            why: why.into(),
        }
    }

    /// An `Io` error.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        JailError::Io {
            what,
            path: path.into(),
            source,
        }
    }

    /// A `Sys` error from `errno`, for the call just made.
    pub fn last_os(call: impl Into<String>) -> Self {
        JailError::Sys {
            call: call.into(),
            source: std::io::Error::last_os_error(),
        }
    }
}

/// The jailer's result type.
pub type Result<T> = std::result::Result<T, JailError>;
