//! emberd's REST API (JSON over its Unix socket). Bodies are parsed strictly (unknown
//! fields are errors) and every error is `{"code", "message"}` with its 4xx.

use crate::agent::{Agent, RunRequest};
use crate::db::{self, Instance};
use crate::error::ApiError;
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
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                code: "UnknownPath",
                message: "no such path".into(),
            }
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
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
