//! The domain's errors: what went wrong, with the field or state at fault. The HTTP layer
//! (`crate::error`) alone picks their status codes and EC2 codes.

use agent_types::InstanceState;

/// Why an operation on images or instances failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No instance has this id.
    #[error("no instance {id}")]
    InstanceNotFound {
        /// The id asked for.
        id: String,
    },
    /// No image has this id (describing or deregistering it).
    #[error("no image {id}")]
    ImageNotFound {
        /// The id asked for.
        id: String,
    },
    /// A run names an image that does not exist (a bad parameter of the run, not a
    /// missing resource of the path).
    #[error("no image {id:?}")]
    UnknownImage {
        /// The `image_id` given.
        id: String,
    },
    /// A run names a type that is not in the catalogue.
    #[error("unknown instance type {name:?}; see GET /v1/types")]
    UnknownInstanceType {
        /// The `instance_type` given.
        name: String,
    },
    /// A parameter breaks its rule; the message names both.
    #[error("{message}")]
    InvalidParameter {
        /// What is wrong (`count must be at least 1`).
        message: String,
    },
    /// The host's memory budget cannot hold the instances asked for.
    #[error("{count} x {instance_type} needs {want_mib} MiB; the host has {left_mib} MiB left for instances")]
    InsufficientCapacity {
        /// How many were asked for.
        count: u32,
        /// Their type.
        instance_type: String,
        /// The memory they need.
        want_mib: u64,
        /// What is left of the budget.
        left_mib: u64,
    },
    /// Every address of the subnet is taken.
    #[error("the subnet is full")]
    AddressesExhausted,
    /// The image is used by instances that are not terminated.
    #[error("image {id} is used by instances that are not terminated")]
    ImageInUse {
        /// The image.
        id: String,
    },
    /// The instance's state forbids the operation.
    #[error("instance {id} is {state}; only {allowed} instances can be {done}")]
    IncorrectState {
        /// The instance.
        id: String,
        /// Its state.
        state: InstanceState,
        /// The states the operation takes (`running`).
        allowed: &'static str,
        /// The operation, as a past participle (`stopped`).
        done: &'static str,
    },
    /// Tags would exceed the most one instance may have.
    #[error("instance {id} would have {count} tags; at most {limit} are allowed")]
    TagLimit {
        /// The instance.
        id: String,
        /// How many it would have.
        count: usize,
        /// The most allowed.
        limit: usize,
    },
    /// The state database failed.
    #[error("state database: {0}")]
    Database(#[from] rusqlite::Error),
    /// The agent's own failure (files, threads).
    #[error("{0}")]
    Internal(String),
}

impl AgentError {
    /// An [`AgentError::Internal`] from anything displayable.
    pub fn internal(e: impl std::fmt::Display) -> AgentError {
        AgentError::Internal(e.to_string())
    }

    /// An [`AgentError::InvalidParameter`].
    pub fn invalid(message: impl Into<String>) -> AgentError {
        AgentError::InvalidParameter {
            message: message.into(),
        }
    }
}
