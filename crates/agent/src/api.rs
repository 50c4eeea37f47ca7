//! emberd's REST API (JSON over its Unix socket). Bodies are parsed strictly (unknown
//! fields are errors) and every error is `{"code", "message"}` with its 4xx.

use crate::agent::{Agent, RunRequest};
use crate::db::{self, Instance};
use crate::error::ApiError;
use crate::meter::{self, InstanceUsage};
use crate::types;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

type AgentRef = State<Arc<Agent>>;
type Answer = Result<Json<Value>, ApiError>;

/// Largest request body.
const MAX_BODY: usize = 64 * 1024;

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
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
        .layer(axum::middleware::from_fn_with_state(
            agent.clone(),
            count_requests,
        ))
        .with_state(agent)
}

async fn list_types() -> Json<Value> {
    Json(json!({"instance_types": types::CATALOGUE}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterImage {
    name: String,
    kernel: String,
    #[serde(default)]
    initrd: Option<String>,
    rootfs: String,
    #[serde(default)]
    boot_args: Option<String>,
}

async fn register_image(
    State(a): AgentRef,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let r: RegisterImage = parse(&body)?;
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
    Ok((StatusCode::CREATED, Json(json!(image))))
}

async fn list_images(State(a): AgentRef) -> Answer {
    Ok(Json(json!({"images": a.db(db::images)?})))
}

async fn describe_image(State(a): AgentRef, Path(id): Path<String>) -> Answer {
    let img = a
        .db(|c| db::image(c, &id))?
        .ok_or_else(|| ApiError::not_found("InvalidImageID.NotFound", format!("no image {id}")))?;
    Ok(Json(json!(img)))
}

async fn deregister_image(
    State(a): AgentRef,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    a.deregister_image(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn run_instances(State(a): AgentRef, body: Bytes) -> Answer {
    let r: RunRequest = parse(&body)?;
    let made = a.run(r).await?;
    Ok(Json(json!({"instances": made})))
}

fn view(i: &Instance, a: &Agent) -> Value {
    let mut v = json!(i);
    if let Some(t) = types::find(&i.instance_type) {
        v["vcpus"] = json!(t.vcpus);
        v["memory_mib"] = json!(t.memory_mib);
    }
    v["volumes"] = json!(a.db(|c| db::volumes(c, &i.id)).unwrap_or_default());
    v["api_socket"] = json!(a.api_socket(&i.id));
    v
}

async fn describe_instances(
    State(a): AgentRef,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    a.purge();
    let mut all = a.db(db::instances)?;
    for (k, v) in &q {
        if k == "state" {
            all.retain(|i| v.split(',').any(|s| s == i.state));
        } else if k == "id" {
            all.retain(|i| v.split(',').any(|s| s == i.id));
        } else if let Some(tag) = k.strip_prefix("tag:") {
            all.retain(|i| i.tags.get(tag).and_then(Value::as_str) == Some(v.as_str()));
        } else {
            return Err(ApiError::bad(
                "InvalidParameter",
                format!("unknown filter {k:?}: use state, id or tag:NAME"),
            ));
        }
    }
    Ok(Json(
        json!({"instances": all.iter().map(|i| view(i, &a)).collect::<Vec<_>>()}),
    ))
}

async fn describe_instance(State(a): AgentRef, Path(id): Path<String>) -> Answer {
    let i = a.db(|c| db::instance(c, &id))?.ok_or_else(|| {
        ApiError::not_found("InvalidInstanceID.NotFound", format!("no instance {id}"))
    })?;
    Ok(Json(view(&i, &a)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StopBody {
    #[serde(default)]
    force: bool,
}

async fn stop(State(a): AgentRef, Path(id): Path<String>, body: Bytes) -> Answer {
    let b: StopBody = parse(&body)?;
    Ok(Json(view(&a.stop(&id, b.force).await?, &a)))
}

async fn start(State(a): AgentRef, Path(id): Path<String>) -> Answer {
    Ok(Json(view(&a.start(&id).await?, &a)))
}

async fn reboot(State(a): AgentRef, Path(id): Path<String>) -> Answer {
    Ok(Json(view(&a.reboot(&id).await?, &a)))
}

async fn terminate(State(a): AgentRef, Path(id): Path<String>) -> Answer {
    Ok(Json(view(&a.terminate(&id).await?, &a)))
}

async fn console(
    State(a): AgentRef,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
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
    Ok(Json(
        json!({"instance_id": id, "output": a.console(&id, kib * 1024)?}),
    ))
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

fn usage_view(u: &InstanceUsage) -> Value {
    let g = |c: &str| u.usage.get(c);
    let secs = |c: &str| g(c) as f64 / 1000.0;
    let mut v = json!({
        "instance_id": u.instance_id,
        "instance_type": u.instance_type,
        "vcpu_seconds": g("vcpu_us") as f64 / 1e6,
        "memory_mib_seconds": secs("mem_mib_ms"),
        "rss_mib_seconds": secs("rss_kib_ms") / 1024.0,
        "pending_seconds": secs("pending_ms"),
        "running_seconds": secs("running_ms"),
        "stopping_seconds": secs("stopping_ms"),
        "stopped_seconds": secs("stopped_ms"),
        "shutting_down_seconds": secs("shutting_down_ms"),
    });
    for c in &meter::COLUMNS[8..] {
        v[*c] = json!(g(c));
    }
    v
}

/// `GET /v1/usage?from=&to=&instance=`: usage per instance over `[from, to)` (default:
/// everything up to now).
async fn usage(State(a): AgentRef, Query(q): Query<HashMap<String, String>>) -> Answer {
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
    Ok(Json(json!({
        "from": rfc3339(from),
        "to": rfc3339(to),
        "sample_interval_seconds": a.settings.sample_interval.as_secs(),
        "instances": all.iter().map(usage_view).collect::<Vec<_>>(),
    })))
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
