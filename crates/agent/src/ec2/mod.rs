//! EC2's Query API (version 2016-11-15) on a TCP listener (`--ec2-listen`), for the AWS
//! CLI, boto3 and other EC2 clients: `POST /` with a form-encoded body (or `GET /?Action=`
//! with the form in the query), every request signed with AWS Signature Version 4 by a key
//! of the credentials file, answers in EC2's XML. `docs/ec2.md` lists every action and
//! parameter, and every way emberd differs from EC2.
//!
//! One job per module: [`auth`] (SigV4), [`credentials`] (the keys file), [`params`] (the
//! form), [`requests`] (a typed request per action), [`instances`], [`catalog`] and
//! [`tags`] (the actions, on the domain's `Agent`), [`filter`] (filters and pages),
//! [`shapes`] (answers as typed structs), [`xml`] (writing them), [`errors`] (EC2's
//! codes; the only place a domain error becomes one). The router here reads the body,
//! verifies the signature, dispatches, and logs one line per request: the action, the
//! status and the access key id (never a secret or a signature).

pub mod auth;
pub mod catalog;
pub mod credentials;
pub mod errors;
pub mod filter;
pub mod instances;
pub mod params;
pub mod requests;
pub mod shapes;
pub mod tags;
pub mod xml;

use crate::instances::Agent;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use credentials::Credentials;
use errors::Ec2Error;
use params::{decode_form, Params};
use requests::{Action, Request as Ec2Request};
use std::sync::Arc;
use std::time::Duration;

/// The API version served.
pub const VERSION: &str = "2016-11-15";

/// The service name in the signature's scope.
pub const SERVICE: &str = "ec2";

/// The largest request body.
pub const MAX_BODY: usize = 64 * 1024;

/// How long a body may take to arrive once its head has (the head's own limit is
/// `crate::serve::HEAD_TIMEOUT`).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The default listener, when `--ec2-listen` is given without an address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8788";

/// The EC2 listener's settings.
#[derive(Debug, Clone)]
pub struct Ec2Settings {
    /// The region (`--region`): the one DescribeRegions names, and the one signatures
    /// must be scoped to.
    pub region: String,
    /// The listener's URL (`http://127.0.0.1:8788`), DescribeRegions's `regionEndpoint`.
    pub endpoint: String,
    /// The access keys.
    pub credentials: Credentials,
}

/// The EC2 API: the agent and the listener's settings.
pub struct Ec2 {
    /// The agent the actions drive.
    pub agent: Arc<Agent>,
    /// The listener's settings.
    pub settings: Ec2Settings,
}

/// Whether `region` is a name EC2 clients accept in a URL and a signature's scope: 1 to
/// 32 lowercase letters, digits and dashes.
pub fn valid_region(region: &str) -> bool {
    (1..=32).contains(&region.len())
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The EC2 API's routes: `/` (GET and POST); anything else is `InvalidRequest`.
pub fn router(agent: Arc<Agent>, settings: Ec2Settings) -> Router {
    let ec2 = Arc::new(Ec2 { agent, settings });
    Router::new()
        .route("/", any(handle))
        .fallback(|req: Request| async move {
            let e = Ec2Error::InvalidRequest(format!(
                "no such path {}: the EC2 API is served at /",
                req.uri().path()
            ));
            let rid = request_id();
            log::info!("ec2: - {} -", e.code_and_status().1.as_u16());
            error_response(&e, &rid)
        })
        .with_state(ec2)
}

/// A new request id (a random UUID, as EC2's are).
pub fn request_id() -> String {
    let mut b = crate::ids::random_bytes::<16>().unwrap_or_else(|_| {
        // Unique enough to find a request in the log by, which is all it is for.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            .to_le_bytes()
    });
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = crate::ids::hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn xml_response(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/xml;charset=UTF-8")],
        body,
    )
        .into_response()
}

fn error_response(e: &Ec2Error, request_id: &str) -> Response {
    let (code, status) = e.code_and_status();
    if status.is_server_error() {
        // The detail is logged, not answered.
        log::error!("ec2: {code}: {e}");
    }
    xml_response(status, errors::document(code, &e.message(), request_id))
}

/// What one request came to, for its answer and its log line.
struct Outcome {
    /// The action's name, once known ("-" before).
    action: &'static str,
    /// The verified access key id, or the one claimed by a request that failed to
    /// authenticate (if plain enough to log), or "-".
    key: String,
    /// The answer's body, or the error.
    result: Result<Vec<u8>, Ec2Error>,
}

async fn handle(State(ec2): State<Arc<Ec2>>, req: Request) -> Response {
    let rid = request_id();
    let out = ec2.serve(req, &rid).await;
    let response = match &out.result {
        Ok(body) => xml_response(StatusCode::OK, body.clone()),
        Err(e) => error_response(e, &rid),
    };
    let status = response.status().as_u16();
    log::info!("ec2: {} {status} {}", out.action, out.key);
    *ec2.agent
        .stats
        .ec2_requests
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry((out.action, status))
        .or_insert(0) += 1;
    response
}

/// The named action, if it is one emberd serves (a name safe to log).
fn action_named(pairs: &[(String, String)]) -> &'static str {
    pairs
        .iter()
        .find(|(k, _)| k == "Action")
        .and_then(|(_, v)| Action::from_name(v))
        .map_or("-", Action::name)
}

impl Ec2 {
    /// Reads, verifies, parses and carries out one request.
    async fn serve(&self, req: Request, rid: &str) -> Outcome {
        let (parts, body) = req.into_parts();
        let claimed = auth::claimed_access_key(&parts.headers).unwrap_or_else(|| "-".into());
        let fail = |e: Ec2Error, action: &'static str, key: &str| Outcome {
            action,
            key: key.to_string(),
            result: Err(e),
        };
        if parts.method != Method::GET && parts.method != Method::POST {
            let e = Ec2Error::InvalidRequest(format!(
                "{} is not allowed: use POST / or GET /",
                parts.method
            ));
            return fail(e, "-", &claimed);
        }
        let body = match read_body(&parts.headers, body).await {
            Ok(b) => b,
            Err(e) => return fail(e, "-", &claimed),
        };
        let query = parts.uri.query().unwrap_or("");
        let mut pairs = match decode_form(query.as_bytes()) {
            Ok(p) => p,
            Err(e) => return fail(e, "-", &claimed),
        };
        if parts.method == Method::POST {
            let form = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_none_or(|v| {
                    v.trim_start()
                        .to_ascii_lowercase()
                        .starts_with("application/x-www-form-urlencoded")
                });
            if !form {
                let e = Ec2Error::MalformedQueryString(
                    "a POST's body must be application/x-www-form-urlencoded".into(),
                );
                return fail(e, "-", &claimed);
            }
            match decode_form(&body) {
                Ok(more) => pairs.extend(more),
                Err(e) => return fail(e, "-", &claimed),
            }
        }
        let action = action_named(&pairs);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let signed = auth::Signed {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query,
            headers: &parts.headers,
            body: &body,
        };
        let key = match auth::verify(
            &self.settings.credentials,
            &self.settings.region,
            SERVICE,
            &signed,
            now,
        ) {
            Ok(k) => k,
            Err(e) => return fail(e, action, &claimed),
        };
        let result = self.call(pairs, rid).await;
        Outcome {
            action,
            key,
            result,
        }
    }

    /// Parses the form into an action's request and carries it out.
    async fn call(&self, pairs: Vec<(String, String)>, rid: &str) -> Result<Vec<u8>, Ec2Error> {
        let mut p = Params::from_pairs(pairs)?;
        let name = p.take("Action").ok_or(Ec2Error::MissingAction)?;
        let version = p.required("Version")?;
        if version != VERSION {
            return Err(Ec2Error::invalid(format!(
                "Version: emberd serves API version {VERSION} only, not {version:?}"
            )));
        }
        let action = Action::from_name(&name).ok_or(Ec2Error::InvalidAction(name))?;
        let dry_run = p.bool("DryRun")?.unwrap_or(false);
        let request = requests::parse(action, p)?;
        if dry_run {
            return Err(Ec2Error::DryRunOperation);
        }
        let a = action.name();
        use xml::answer;
        Ok(match request {
            Ec2Request::Run(r) => answer(a, rid, &self.run_instances(r).await?),
            Ec2Request::Describe(d) => answer(a, rid, &self.describe_instances(d)?),
            Ec2Request::Status(d) => answer(a, rid, &self.describe_instance_status(d)?),
            Ec2Request::Start(ids) => answer(a, rid, &self.start_instances(ids).await?),
            Ec2Request::Stop(s) => answer(a, rid, &self.stop_instances(s).await?),
            Ec2Request::Reboot(ids) => answer(a, rid, &self.reboot_instances(ids).await?),
            Ec2Request::Terminate(ids) => answer(a, rid, &self.terminate_instances(ids).await?),
            Ec2Request::Console(id) => answer(a, rid, &self.console_output(id)?),
            Ec2Request::Images(d) => answer(a, rid, &self.describe_images(d)?),
            Ec2Request::Types(d) => answer(a, rid, &self.describe_instance_types(d)?),
            Ec2Request::CreateTags(t) => answer(a, rid, &self.create_tags(t)?),
            Ec2Request::DeleteTags(t) => answer(a, rid, &self.delete_tags(t)?),
            Ec2Request::DescribeTags(f, page) => answer(a, rid, &self.describe_tags(f, page)?),
            Ec2Request::Regions(d) => answer(a, rid, &self.describe_regions(d)?),
            Ec2Request::Zones(d) => answer(a, rid, &self.describe_zones(d)?),
        })
    }
}

/// The body: at most [`MAX_BODY`] bytes (a larger `Content-Length` is refused before
/// reading), arriving within [`BODY_TIMEOUT`].
async fn read_body(headers: &axum::http::HeaderMap, body: Body) -> Result<Vec<u8>, Ec2Error> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(Ec2Error::RequestTooLarge(MAX_BODY));
    }
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    match tokio::time::timeout(BODY_TIMEOUT, http_body_util::BodyExt::collect(limited)).await {
        Err(_) => Err(Ec2Error::RequestTimeout(BODY_TIMEOUT.as_secs())),
        Ok(Ok(collected)) => Ok(collected.to_bytes().to_vec()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(Ec2Error::RequestTooLarge(MAX_BODY))
        }
        Ok(Err(_)) => Err(Ec2Error::MalformedQueryString(
            "the request body could not be read whole".into(),
        )),
    }
}

#[cfg(test)]
mod tests;
