//! emberd's REST API (JSON over its Unix socket). Bodies are parsed strictly (unknown
//! fields are errors) and every error is `{"code", "message"}` with its 4xx.

use crate::db::{self, Instance};
use crate::error::ApiError;
use crate::instances::Agent;
use crate::meter::{self, InstanceUsage};
use crate::types;
use agent_types::{
    ConsoleOutput, Image, ImageList, InstanceList, InstanceState, InstanceView, RegisterImage,
    RunRequest, StopRequest, TypeList, UsageReport, UsageView,
};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use std::collections::HashMap;
use std::sync::Arc;

type AgentRef = State<Arc<Agent>>;
type Answer<T> = Result<Json<T>, ApiError>;

/// Largest request body.
const MAX_BODY: usize = 64 * 1024;

/// A request body as `T`: strict JSON (unknown fields are errors); an empty or blank body
/// is `{}`. Public for the fuzz target.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.len() > MAX_BODY {
        return Err(ApiError::bad(
            "RequestTooLarge",
            format!("body over {MAX_BODY} bytes"),
        ));
    }
    let text = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        &body[..]
    };
    serde_json::from_slice(text)
        .map_err(|e| ApiError::bad("MalformedRequest", format!("invalid JSON body: {e}")))
}

/// The routes.
pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/types", get(list_types))
        .route("/v1/images", get(list_images).post(register_image))
        .route(
            "/v1/images/{id}",
            get(describe_image).delete(deregister_image),
        )
        .route("/v1/instances", get(describe_instances).post(run_instances))
        .route(
            "/v1/instances/{id}",
            get(describe_instance).delete(terminate),
        )
        .route("/v1/instances/{id}/stop", post(stop))
        .route("/v1/instances/{id}/start", post(start))
        .route("/v1/instances/{id}/reboot", post(reboot))
        .route("/v1/instances/{id}/terminate", post(terminate))
        .route("/v1/instances/{id}/console", get(console))
        .route("/v1/usage", get(usage))
        .route("/metrics", get(prometheus))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                code: "UnknownPath",
                message: "no such path".into(),
            }
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::middleware::from_fn_with_state(
            agent.clone(),
            count_requests,
        ))
        .with_state(agent)
}

async fn list_types() -> Json<TypeList> {
    Json(TypeList {
        instance_types: types::CATALOGUE.to_vec(),
    })
}

async fn register_image(
    State(a): AgentRef,
    body: Bytes,
) -> Result<(StatusCode, Json<Image>), ApiError> {
    let r: RegisterImage = parse_body(&body)?;
    let agent = a.clone();
    let image = tokio::task::spawn_blocking(move || {
        agent.register_image(
            &r.name,
            std::path::Path::new(&r.kernel),
            r.initrd.as_deref().map(std::path::Path::new),
            std::path::Path::new(&r.rootfs),
            r.boot_args,
        )
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok((StatusCode::CREATED, Json(image)))
}

async fn list_images(State(a): AgentRef) -> Answer<ImageList> {
    Ok(Json(ImageList {
        images: a.db(db::images)?,
    }))
}

async fn describe_image(State(a): AgentRef, Path(id): Path<String>) -> Answer<Image> {
    Ok(Json(a.image(&id)?))
}

async fn deregister_image(
    State(a): AgentRef,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    a.deregister_image(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// A run answers with the records, `pending` (not the described view: its shape is
/// kept as it always was).
async fn run_instances(State(a): AgentRef, body: Bytes) -> Answer<InstanceList<Instance>> {
    let r: RunRequest = parse_body(&body)?;
    let made = a.run(r).await?;
    Ok(Json(InstanceList { instances: made }))
}

fn view(instance: Instance, a: &Agent) -> InstanceView {
    let t = types::find(&instance.instance_type);
    InstanceView {
        vcpus: t.as_ref().map(|t| t.vcpus),
        memory_mib: t.as_ref().map(|t| t.memory_mib),
        volumes: a.db(|c| db::volumes(c, &instance.id)).unwrap_or_default(),
        hibernation_bytes: crate::instances::hibernate::disk_bytes(std::path::Path::new(
            &instance.dir,
        )),
        api_socket: a.api_socket(&instance.id).display().to_string(),
        instance,
    }
}

async fn describe_instances(
    State(a): AgentRef,
    Query(q): Query<HashMap<String, String>>,
) -> Answer<InstanceList> {
    a.purge();
    let mut all = a.db(db::instances)?;
    for (k, v) in &q {
        if k == "state" {
            // An unknown state name matches nothing, as EC2's filters do.
            let wanted: Vec<InstanceState> = v.split(',').filter_map(|s| s.parse().ok()).collect();
            all.retain(|i| wanted.contains(&i.state));
        } else if k == "id" {
            all.retain(|i| v.split(',').any(|s| s == i.id));
        } else if let Some(tag) = k.strip_prefix("tag:") {
            all.retain(|i| i.tags.get(tag) == Some(v));
        } else {
            return Err(ApiError::bad(
                "InvalidParameter",
                format!("unknown filter {k:?}: use state, id or tag:NAME"),
            ));
        }
    }
    let instances = all.into_iter().map(|i| view(i, &a)).collect();
    Ok(Json(InstanceList { instances }))
}

async fn describe_instance(State(a): AgentRef, Path(id): Path<String>) -> Answer<InstanceView> {
    Ok(Json(view(a.instance(&id)?, &a)))
}

/// Stop answers at once, `stopping` (see `instances::verbs`).
async fn stop(State(a): AgentRef, Path(id): Path<String>, body: Bytes) -> Answer<InstanceView> {
    let b: StopRequest = parse_body(&body)?;
    let inst = if b.hibernate {
        a.hibernate(&id).await?
    } else {
        a.stop(&id, b.force).await?
    };
    Ok(Json(view(inst, &a)))
}

async fn start(State(a): AgentRef, Path(id): Path<String>) -> Answer<InstanceView> {
    Ok(Json(view(a.start(&id).await?, &a)))
}

/// Reboot answers at once, the instance as it is (`running`).
async fn reboot(State(a): AgentRef, Path(id): Path<String>) -> Answer<InstanceView> {
    Ok(Json(view(a.reboot(&id).await?, &a)))
}

/// Terminate answers at once, `shutting-down`.
async fn terminate(State(a): AgentRef, Path(id): Path<String>) -> Answer<InstanceView> {
    Ok(Json(view(a.terminate(&id).await?, &a)))
}

async fn console(
    State(a): AgentRef,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer<ConsoleOutput> {
    let kib = match q.get("kib") {
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|k| (1..=1024).contains(k))
            .ok_or_else(|| {
                ApiError::bad(
                    "InvalidParameterValue",
                    "kib must be a number from 1 to 1024",
                )
            })?,
        None => 64,
    };
    let output = a.console(&id, kib * 1024)?;
    Ok(Json(ConsoleOutput {
        instance_id: id,
        output,
    }))
}

/// Counts every answer by method and status, for `GET /metrics`.
async fn count_requests(
    State(a): AgentRef,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = req.method().as_str().to_string();
    let resp = next.run(req).await;
    let key = (method, resp.status().as_u16());
    *a.stats
        .requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_insert(0) += 1;
    resp
}

/// Gives every error answer emberd's `{"code","message"}` body, also those axum makes
/// itself (a wrong method's 405, an oversized body's 413), which have a plain-text or
/// empty one.
async fn json_errors(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::header::{ALLOW, CONTENT_TYPE};
    use axum::response::IntoResponse;
    let method = req.method().clone();
    let resp = next.run(req).await;
    let json = resp
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if resp.status().as_u16() < 400 || json {
        return resp;
    }
    let status = resp.status();
    let allow = resp.headers().get(ALLOW).cloned();
    let text = axum::body::to_bytes(resp.into_body(), 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let (code, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            "MethodNotAllowed",
            format!(
                "{method} is not allowed on this path (allowed: {})",
                allow
                    .as_ref()
                    .and_then(|a| a.to_str().ok())
                    .unwrap_or("none")
            ),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ("RequestTooLarge", format!("body over {MAX_BODY} bytes")),
        s if s.is_server_error() => ("InternalError", text),
        _ => ("MalformedRequest", text),
    };
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        message
    };
    let mut out = ApiError {
        status,
        code,
        message,
    }
    .into_response();
    if let Some(a) = allow {
        out.headers_mut().insert(ALLOW, a);
    }
    out
}

/// A time given as Unix seconds (`1764201600`, `1764201600.5`) or RFC 3339 UTC
/// (`2026-11-27T00:00:00Z`), in milliseconds.
fn parse_time(name: &str, v: &str) -> Result<i64, ApiError> {
    if let Ok(secs) = v.parse::<f64>() {
        if secs.is_finite() && (0.0..1e11).contains(&secs) {
            return Ok((secs * 1000.0).round() as i64);
        }
    } else if let Ok(t) = humantime::parse_rfc3339(v) {
        if let Ok(d) = t.duration_since(std::time::UNIX_EPOCH) {
            return Ok(d.as_millis() as i64);
        }
    }
    Err(ApiError::bad(
        "InvalidParameterValue",
        format!(
            "{name}={v:?}: give Unix seconds or an RFC 3339 UTC time like 2026-11-27T00:00:00Z"
        ),
    ))
}

fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Usage as the API shows it: seconds for times and MiB-seconds for memory, the
/// counters as they are.
fn usage_view(u: &InstanceUsage) -> UsageView {
    let q = &u.usage;
    let secs = |ms: i64| ms as f64 / 1000.0;
    UsageView {
        instance_id: u.instance_id.clone(),
        instance_type: u.instance_type.clone(),
        vcpu_seconds: q.vcpu_us as f64 / 1e6,
        memory_mib_seconds: secs(q.mem_mib_ms),
        rss_mib_seconds: secs(q.rss_kib_ms) / 1024.0,
        pending_seconds: secs(q.pending_ms),
        running_seconds: secs(q.running_ms),
        stopping_seconds: secs(q.stopping_ms),
        stopped_seconds: secs(q.stopped_ms),
        shutting_down_seconds: secs(q.shutting_down_ms),
        block_read_bytes: q.block_read_bytes,
        block_write_bytes: q.block_write_bytes,
        block_read_ops: q.block_read_ops,
        block_write_ops: q.block_write_ops,
        net_rx_bytes: q.net_rx_bytes,
        net_tx_bytes: q.net_tx_bytes,
        net_rx_packets: q.net_rx_packets,
        net_tx_packets: q.net_tx_packets,
    }
}

/// `GET /v1/usage?from=&to=&instance=`: usage per instance over `[from, to)` (default:
/// everything up to now).
async fn usage(
    State(a): AgentRef,
    Query(q): Query<HashMap<String, String>>,
) -> Answer<UsageReport> {
    let mut from = 0;
    let mut to = meter::now_ms();
    let mut ids: Option<Vec<String>> = None;
    for (k, v) in &q {
        match k.as_str() {
            "from" => from = parse_time(k, v)?,
            "to" => to = parse_time(k, v)?,
            "instance" => ids = Some(v.split(',').map(str::to_string).collect()),
            _ => {
                return Err(ApiError::bad(
                    "InvalidParameter",
                    format!("unknown parameter {k:?}: use from, to, instance"),
                ))
            }
        }
    }
    if from >= to {
        return Err(ApiError::bad(
            "InvalidParameterValue",
            "from must be before to",
        ));
    }
    let all = a.db(|c| meter::query(c, from, to, ids.as_deref()))?;
    Ok(Json(UsageReport {
        from: rfc3339(from),
        to: rfc3339(to),
        sample_interval_seconds: a.settings.sample_interval.as_secs(),
        instances: all.iter().map(usage_view).collect(),
    }))
}

/// `GET /metrics`: per-instance usage counters and the agent's own, in Prometheus's text
/// format.
async fn prometheus(State(a): AgentRef) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let text = crate::prometheus::render(&a)?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
