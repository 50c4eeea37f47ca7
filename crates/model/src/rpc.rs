//! What the API asks of the VMM and what the VMM answers: typed requests in, typed data or
//! a typed error out. The API server builds [`Request`]s from HTTP and turns
//! [`Answer`]s and [`RequestError`]s into HTTP (it alone picks status codes); the VMM
//! carries them out and knows nothing of HTTP.

use crate::config::{ConfigError, VmConfig};
use crate::snapshot::{SnapshotCreateParams, SnapshotLoadParams};
use crate::{
    ActionType, BootSource, Drive, DrivePatch, InstanceInfo, Logger, MachineConfig,
    MachineConfigPatch, Metrics, NetworkInterface, NetworkInterfacePatch, Version, VmState,
};
use thiserror::Error;

/// A request for the VMM, its body parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `GET /`.
    GetInstanceInfo,
    /// `GET /version`.
    GetVersion,
    /// `GET /vm/config`.
    GetVmConfig,
    /// `GET /machine-config`.
    GetMachineConfig,
    /// `PUT /boot-source`.
    PutBootSource(BootSource),
    /// `PUT /machine-config`.
    PutMachineConfig(MachineConfig),
    /// `PATCH /machine-config`.
    PatchMachineConfig(MachineConfigPatch),
    /// `PUT /drives/{id}`: the path's id and the body.
    PutDrive(String, Drive),
    /// `PATCH /drives/{id}`.
    PatchDrive(String, DrivePatch),
    /// `PUT /network-interfaces/{id}`.
    PutNetworkInterface(String, NetworkInterface),
    /// `PATCH /network-interfaces/{id}`.
    PatchNetworkInterface(String, NetworkInterfacePatch),
    /// `PUT /actions`.
    Action(ActionType),
    /// `PATCH /vm`.
    SetVmState(VmState),
    /// `PUT /logger`.
    PutLogger(Logger),
    /// `PUT /metrics`.
    PutMetrics(Metrics),
    /// `PUT /vsock`.
    PutVsock(crate::Vsock),
    /// `PUT /entropy`.
    PutEntropy(crate::Entropy),
    /// `PUT /balloon` (pre-boot).
    PutBalloon(crate::Balloon),
    /// `PATCH /balloon` (a running guest).
    PatchBalloon(crate::BalloonUpdate),
    /// `GET /balloon`.
    GetBalloon,
    /// `GET /balloon/statistics`.
    GetBalloonStats,
    /// `PATCH /balloon/statistics`.
    PatchBalloonStats(crate::BalloonStatsUpdate),
    /// `PUT /mmds/config` (pre-boot).
    PutMmdsConfig(crate::MmdsConfig),
    /// `PUT /mmds`: the whole metadata.
    PutMmds(serde_json::Value),
    /// `PATCH /mmds`: a JSON merge patch.
    PatchMmds(serde_json::Value),
    /// `GET /mmds`.
    GetMmds,
    /// `PUT /snapshot/create` (on a paused guest).
    CreateSnapshot(SnapshotCreateParams),
    /// `PUT /snapshot/load` (before any other configuration).
    LoadSnapshot(SnapshotLoadParams),
}

/// What a request returns when it succeeds.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Done; nothing to return (`204`).
    Empty,
    /// `GET /`.
    InstanceInfo(InstanceInfo),
    /// `GET /version`.
    Version(Version),
    /// `GET /vm/config`.
    VmConfig(Box<VmConfig>),
    /// `GET /machine-config`.
    MachineConfig(MachineConfig),
    /// `GET /balloon`.
    Balloon(crate::Balloon),
    /// `GET /balloon/statistics`.
    BalloonStats(crate::BalloonStats),
    /// `GET /mmds`.
    Mmds(serde_json::Value),
}

/// Why the VMM refused or failed a request. Messages are complete sentences for the
/// fault body; the variant says whose fault it is.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum RequestError {
    /// The configuration asked for is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A pre-boot resource after the guest started.
    #[error("{0} is a pre-boot resource: it cannot be changed after the guest has started")]
    PreBoot(&'static str),
    /// `InstanceStart` a second time.
    #[error("the guest has already been started")]
    AlreadyStarted,
    /// A request that needs a running guest, before `InstanceStart`.
    #[error("{0}")]
    NotStarted(String),
    /// The id in the path is not the one in the body.
    #[error("the {kind} id in the path ({path:?}) does not match the one in the body ({body:?})")]
    IdMismatch {
        /// `drive` or `interface`.
        kind: &'static str,
        /// The path's id.
        path: String,
        /// The body's id.
        body: String,
    },
    /// No drive with that id.
    #[error("no drive with id {0:?}")]
    NoSuchDrive(String),
    /// Something Firecracker has that ember does not implement.
    #[error("{0}")]
    Unsupported(String),
    /// The request is valid but the thing it names cannot be used (a file that cannot be
    /// opened, a machine without a keyboard controller, a logger path).
    #[error("{0}")]
    Invalid(String),
    /// The guest could not be started with this configuration.
    #[error("cannot start the guest: {0}")]
    Start(String),
    /// The VMM failed doing what was asked (a pause that did not complete, a swap that
    /// did not reach the device thread).
    #[error("{0}")]
    Internal(String),
}

/// A request's outcome.
pub type Outcome = Result<Answer, RequestError>;
