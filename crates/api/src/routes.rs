//! Routing: Firecracker's paths and methods to actions. Bodies stay raw JSON here; the
//! VMM parses them into its configuration types, which know the fields and their limits.

use crate::http::{printable, Method, Request, Response};

/// What a request asks of the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `GET /`: id, state, version.
    GetInstanceInfo,
    /// `GET /version`.
    GetVersion,
    /// `GET /vm/config`: the whole configuration.
    GetVmConfig,
    /// `GET /machine-config`.
    GetMachineConfig,
    /// `PUT /boot-source`.
    PutBootSource(Vec<u8>),
    /// `PUT /machine-config`.
    PutMachineConfig(Vec<u8>),
    /// `PATCH /machine-config`.
    PatchMachineConfig(Vec<u8>),
    /// `PUT /drives/{id}`.
    PutDrive(String, Vec<u8>),
    /// `PATCH /drives/{id}`.
    PatchDrive(String, Vec<u8>),
    /// `PUT /network-interfaces/{id}`.
    PutNetworkInterface(String, Vec<u8>),
    /// `PATCH /network-interfaces/{id}`.
    PatchNetworkInterface(String, Vec<u8>),
    /// `PUT /actions`.
    PutActions(Vec<u8>),
    /// `PATCH /vm`.
    PatchVm(Vec<u8>),
    /// `PUT /logger`.
    PutLogger(Vec<u8>),
    /// `PUT /metrics`.
    PutMetrics(Vec<u8>),
}

/// A request after routing: an action for the VMM, or an answer the API gives itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedRequest {
    /// For the VMM.
    Vmm(Action),
    /// Answered without the VMM (bad path, wrong method).
    Answer(Response),
}

/// Resources of Firecracker's API that ember does not implement.
const NOT_IMPLEMENTED: &[&str] = &[
    "vsock",
    "balloon",
    "entropy",
    "mmds",
    "snapshot",
    "cpu-config",
    "hotplug",
    "serial",
];

/// A label for the path, for per-path request counters (ids left out).
pub fn path_label(path: &str) -> &'static str {
    let mut parts = path.trim_matches('/').split('/');
    match (parts.next().unwrap_or(""), parts.next().is_some()) {
        ("", false) => "root",
        ("version", false) => "version",
        ("boot-source", false) => "boot_source",
        ("machine-config", false) => "machine_config",
        ("drives", true) => "drives",
        ("network-interfaces", true) => "network_interfaces",
        ("actions", false) => "actions",
        ("vm", false) => "vm",
        ("vm", true) => "vm_config",
        ("logger", false) => "logger",
        ("metrics", false) => "metrics",
        _ => "other",
    }
}

fn id_of(rest: &str) -> Option<String> {
    if rest.is_empty() || rest.contains('/') {
        None
    } else {
        Some(rest.to_string())
    }
}

/// Routes a request.
pub fn route(req: Request) -> ParsedRequest {
    use Method::*;
    let path = req.path.trim_end_matches('/');
    let path = if path.is_empty() { "/" } else { path };
    let body = req.body;
    let m = req.method;
    let wrong_method = |allowed: &str| {
        ParsedRequest::Answer(Response::fault(
            405,
            format!(
                "invalid HTTP method {} for {}: use {allowed}",
                m.as_str(),
                printable(path)
            ),
        ))
    };
    let action = match path {
        "/" => match m {
            Get => Action::GetInstanceInfo,
            _ => return wrong_method("GET"),
        },
        "/version" => match m {
            Get => Action::GetVersion,
            _ => return wrong_method("GET"),
        },
        "/vm/config" => match m {
            Get => Action::GetVmConfig,
            _ => return wrong_method("GET"),
        },
        "/boot-source" => match m {
            Put => Action::PutBootSource(body),
            _ => return wrong_method("PUT"),
        },
        "/machine-config" => match m {
            Get => Action::GetMachineConfig,
            Put => Action::PutMachineConfig(body),
            Patch => Action::PatchMachineConfig(body),
        },
        "/actions" => match m {
            Put => Action::PutActions(body),
            _ => return wrong_method("PUT"),
        },
        "/vm" => match m {
            Patch => Action::PatchVm(body),
            _ => return wrong_method("PATCH"),
        },
        "/logger" => match m {
            Put => Action::PutLogger(body),
            _ => return wrong_method("PUT"),
        },
        "/metrics" => match m {
            Put => Action::PutMetrics(body),
            _ => return wrong_method("PUT"),
        },
        p => {
            if let Some(rest) = p.strip_prefix("/drives/") {
                let Some(id) = id_of(rest) else {
                    return invalid_path(p);
                };
                match m {
                    Put => Action::PutDrive(id, body),
                    Patch => Action::PatchDrive(id, body),
                    Get => return wrong_method("PUT or PATCH"),
                }
            } else if let Some(rest) = p.strip_prefix("/network-interfaces/") {
                let Some(id) = id_of(rest) else {
                    return invalid_path(p);
                };
                match m {
                    Put => Action::PutNetworkInterface(id, body),
                    Patch => Action::PatchNetworkInterface(id, body),
                    Get => return wrong_method("PUT or PATCH"),
                }
            } else {
                let first = p.trim_start_matches('/').split('/').next().unwrap_or("");
                if NOT_IMPLEMENTED.contains(&first) {
                    return ParsedRequest::Answer(Response::fault(
                        400,
                        format!("/{first} is not supported by ember"),
                    ));
                }
                return invalid_path(p);
            }
        }
    };
    ParsedRequest::Vmm(action)
}

fn invalid_path(p: &str) -> ParsedRequest {
    ParsedRequest::Answer(Response::fault(
        400,
        format!("invalid request path: {}", printable(p)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(m: Method, p: &str) -> ParsedRequest {
        route(Request {
            method: m,
            path: p.into(),
            body: b"{}".to_vec(),
            close: false,
        })
    }

    fn status(p: ParsedRequest) -> u16 {
        match p {
            ParsedRequest::Answer(r) => r.status,
            ParsedRequest::Vmm(_) => 0,
        }
    }

    #[test]
    fn firecracker_paths_route_to_actions() {
        use Method::*;
        assert_eq!(r(Get, "/"), ParsedRequest::Vmm(Action::GetInstanceInfo));
        assert_eq!(r(Get, "/version/"), ParsedRequest::Vmm(Action::GetVersion));
        assert_eq!(
            r(Put, "/drives/rootfs"),
            ParsedRequest::Vmm(Action::PutDrive("rootfs".into(), b"{}".to_vec()))
        );
        assert_eq!(
            r(Patch, "/network-interfaces/eth0"),
            ParsedRequest::Vmm(Action::PatchNetworkInterface("eth0".into(), b"{}".to_vec()))
        );
        assert_eq!(
            r(Patch, "/vm"),
            ParsedRequest::Vmm(Action::PatchVm(b"{}".to_vec()))
        );
    }

    #[test]
    fn wrong_methods_unknown_and_unsupported_paths() {
        use Method::*;
        assert_eq!(status(r(Put, "/")), 405);
        assert_eq!(status(r(Get, "/actions")), 405);
        assert_eq!(status(r(Get, "/drives/x")), 405);
        assert_eq!(status(r(Get, "/nope")), 400);
        assert_eq!(status(r(Put, "/drives/")), 400);
        assert_eq!(status(r(Put, "/drives/a/b")), 400);
        assert_eq!(status(r(Put, "/vsock")), 400);
        assert_eq!(path_label("/drives/x"), "drives");
        assert_eq!(path_label("/vm/config"), "vm_config");
    }
}
