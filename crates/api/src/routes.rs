//! Routing: Firecracker's paths and methods to typed [`model::rpc::Request`]s, bodies
//! parsed strictly into the model's types (unknown fields refused, the field at fault
//! named). What a request means is the VMM's business.

use crate::http::{printable, Method, Request, Response};
use model::rpc::Request as VmmRequest;
use model::{ConfigError, InstanceActionInfo, Vm};

/// A request after routing: an action for the VMM, or an answer the API gives itself.
#[derive(Debug, Clone, PartialEq)]
pub enum ParsedRequest {
    /// For the VMM.
    Vmm(VmmRequest),
    /// Answered without the VMM (bad path, wrong method).
    Answer(Response),
}

/// Resources of Firecracker's API that ember does not implement.
const NOT_IMPLEMENTED: &[&str] = &["cpu-config", "hotplug", "serial"];

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
        ("snapshot", true) => "snapshot",
        ("vsock", false) => "vsock",
        ("entropy", false) => "entropy",
        ("balloon", false) => "balloon",
        ("balloon", true) => "balloon_statistics",
        ("mmds", false) => "mmds",
        ("mmds", true) => "mmds_config",
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

/// The body as a `T`: a 400 naming the field for a body that does not fit.
fn body<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, Response> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(Response::fault(400, "the request needs a JSON body"));
    }
    model::from_json(raw).map_err(|e| Response::fault(400, ConfigError::from(e).to_string()))
}

/// Routes a request.
pub fn route(req: Request) -> ParsedRequest {
    match route_parsed(req) {
        Ok(r) => ParsedRequest::Vmm(r),
        Err(answer) => ParsedRequest::Answer(answer),
    }
}

fn route_parsed(req: Request) -> Result<VmmRequest, Response> {
    use Method::*;
    let path = req.path.trim_end_matches('/');
    let path = if path.is_empty() { "/" } else { path };
    let raw = req.body;
    let m = req.method;
    let wrong_method = |allowed: &str| {
        Err(Response::fault(
            405,
            format!(
                "invalid HTTP method {} for {}: use {allowed}",
                m.as_str(),
                printable(path)
            ),
        ))
    };
    let request = match path {
        "/" => match m {
            Get => VmmRequest::GetInstanceInfo,
            _ => return wrong_method("GET"),
        },
        "/version" => match m {
            Get => VmmRequest::GetVersion,
            _ => return wrong_method("GET"),
        },
        "/vm/config" => match m {
            Get => VmmRequest::GetVmConfig,
            _ => return wrong_method("GET"),
        },
        "/boot-source" => match m {
            Put => VmmRequest::PutBootSource(body(&raw)?),
            _ => return wrong_method("PUT"),
        },
        "/machine-config" => match m {
            Get => VmmRequest::GetMachineConfig,
            Put => VmmRequest::PutMachineConfig(body(&raw)?),
            Patch => VmmRequest::PatchMachineConfig(body(&raw)?),
        },
        "/actions" => match m {
            Put => VmmRequest::Action(body::<InstanceActionInfo>(&raw)?.action_type),
            _ => return wrong_method("PUT"),
        },
        "/vm" => match m {
            Patch => VmmRequest::SetVmState(body::<Vm>(&raw)?.state),
            _ => return wrong_method("PATCH"),
        },
        "/logger" => match m {
            Put => VmmRequest::PutLogger(body(&raw)?),
            _ => return wrong_method("PUT"),
        },
        "/metrics" => match m {
            Put => VmmRequest::PutMetrics(body(&raw)?),
            _ => return wrong_method("PUT"),
        },
        "/vsock" => match m {
            Put => VmmRequest::PutVsock(body(&raw)?),
            _ => return wrong_method("PUT"),
        },
        "/balloon" => match m {
            Get => VmmRequest::GetBalloon,
            Put => VmmRequest::PutBalloon(body(&raw)?),
            Patch => VmmRequest::PatchBalloon(body(&raw)?),
        },
        "/balloon/statistics" => match m {
            Get => VmmRequest::GetBalloonStats,
            Patch => VmmRequest::PatchBalloonStats(body(&raw)?),
            Put => return wrong_method("GET or PATCH"),
        },
        "/mmds" => match m {
            Get => VmmRequest::GetMmds,
            Put => VmmRequest::PutMmds(body(&raw)?),
            Patch => VmmRequest::PatchMmds(body(&raw)?),
        },
        "/mmds/config" => match m {
            Put => VmmRequest::PutMmdsConfig(body(&raw)?),
            _ => return wrong_method("PUT"),
        },
        "/entropy" => match m {
            Put => VmmRequest::PutEntropy(body(&raw)?),
            _ => return wrong_method("PUT"),
        },
        "/snapshot/create" => match m {
            Put => VmmRequest::CreateSnapshot(body(&raw)?),
            _ => return wrong_method("PUT"),
        },
        "/snapshot/load" => match m {
            Put => VmmRequest::LoadSnapshot(body(&raw)?),
            _ => return wrong_method("PUT"),
        },
        p => {
            if let Some(rest) = p.strip_prefix("/drives/") {
                let Some(id) = id_of(rest) else {
                    return invalid_path(p);
                };
                match m {
                    Put => VmmRequest::PutDrive(id, body(&raw)?),
                    Patch => VmmRequest::PatchDrive(id, body(&raw)?),
                    Get => return wrong_method("PUT or PATCH"),
                }
            } else if let Some(rest) = p.strip_prefix("/network-interfaces/") {
                let Some(id) = id_of(rest) else {
                    return invalid_path(p);
                };
                match m {
                    Put => VmmRequest::PutNetworkInterface(id, body(&raw)?),
                    Patch => VmmRequest::PatchNetworkInterface(id, body(&raw)?),
                    Get => return wrong_method("PUT or PATCH"),
                }
            } else {
                let first = p.trim_start_matches('/').split('/').next().unwrap_or("");
                if NOT_IMPLEMENTED.contains(&first) {
                    return Err(Response::fault(
                        400,
                        format!("/{first} is not supported by ember"),
                    ));
                }
                return invalid_path(p);
            }
        }
    };
    Ok(request)
}

fn invalid_path(p: &str) -> Result<VmmRequest, Response> {
    Err(Response::fault(
        400,
        format!("invalid request path: {}", printable(p)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::{ActionType, VmState};

    fn r(m: Method, p: &str, body: &str) -> ParsedRequest {
        route(Request {
            method: m,
            path: p.into(),
            body: body.as_bytes().to_vec(),
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
    fn firecracker_paths_route_to_typed_requests() {
        use Method::*;
        assert_eq!(
            r(Get, "/", ""),
            ParsedRequest::Vmm(VmmRequest::GetInstanceInfo)
        );
        assert_eq!(
            r(Get, "/version/", ""),
            ParsedRequest::Vmm(VmmRequest::GetVersion)
        );
        let ParsedRequest::Vmm(VmmRequest::PutDrive(id, d)) = r(
            Put,
            "/drives/rootfs",
            r#"{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true}"#,
        ) else {
            panic!("not a drive");
        };
        assert_eq!(
            (id.as_str(), d.path_on_host.as_deref()),
            ("rootfs", Some("/r"))
        );
        assert_eq!(
            r(Patch, "/vm", r#"{"state": "Paused"}"#),
            ParsedRequest::Vmm(VmmRequest::SetVmState(VmState::Paused))
        );
        assert_eq!(
            r(Put, "/actions", r#"{"action_type": "InstanceStart"}"#),
            ParsedRequest::Vmm(VmmRequest::Action(ActionType::InstanceStart))
        );
    }

    #[test]
    fn bad_bodies_are_answered_here_with_the_field_named() {
        use Method::*;
        let ParsedRequest::Answer(a) = r(Put, "/machine-config", r#"{"vcpu_count": "2"}"#) else {
            panic!("routed a bad body");
        };
        assert_eq!(a.status, 400);
        assert!(a.body.contains("vcpu_count"), "{}", a.body);
        assert_eq!(status(r(Put, "/machine-config", "")), 400);
        assert_eq!(
            status(r(Put, "/actions", r#"{"action_type": "Explode"}"#)),
            400
        );
    }

    #[test]
    fn wrong_methods_unknown_and_unsupported_paths() {
        use Method::*;
        assert_eq!(status(r(Put, "/", "{}")), 405);
        assert_eq!(status(r(Get, "/actions", "")), 405);
        assert_eq!(status(r(Get, "/drives/x", "")), 405);
        assert_eq!(status(r(Get, "/nope", "")), 400);
        assert_eq!(status(r(Put, "/drives/", "{}")), 400);
        assert_eq!(status(r(Put, "/drives/a/b", "{}")), 400);
        assert_eq!(status(r(Put, "/vsock", "{}")), 400);
        assert_eq!(status(r(Put, "/balloon", "{}")), 400);
        assert_eq!(status(r(Get, "/entropy", "")), 405);
        assert_eq!(path_label("/drives/x"), "drives");
        assert_eq!(path_label("/vm/config"), "vm_config");
    }
}
