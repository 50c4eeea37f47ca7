//! One round trip per action through the router (signed as a client signs, answered as
//! EC2 answers), on an agent in a temporary directory with no VMMs: ember is not there,
//! so a launch fails before it makes anything on the host, and the instance stops.
//! Then the request-level failures: authentication, the form, the body, the path.
//! (`instances`: the instance actions; `catalog`: images, types, places and tags.)

mod catalog;
mod instances;

use super::*;
use crate::db::{self, Instance};
use crate::instances::testing;
use crate::types;
use agent_types::InstanceState;
use axum::http::HeaderValue;
use base64::Engine;
use tower::ServiceExt;

const AKID: &str = "AKIDTEST";
const SECRET: &str = "test/secret+key";

struct World {
    agent: Arc<Agent>,
    app: Router,
    base: std::path::PathBuf,
}

fn world(name: &str) -> World {
    let (agent, base) = testing::agent("ec2", name, "172.31.251.0".parse().unwrap());
    let settings = Ec2Settings {
        region: "ember-1".into(),
        endpoint: "http://127.0.0.1:8788".into(),
        credentials: Credentials::from_pairs([(AKID, SECRET)]),
    };
    World {
        app: router(agent.clone(), settings),
        agent,
        base,
    }
}

impl World {
    /// A registered image with tiny files.
    fn image(&self) -> String {
        let src = self.base.join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("vmlinux"), b"kernel").unwrap();
        std::fs::write(src.join("rootfs"), [0u8; 512]).unwrap();
        self.agent
            .register_image(
                "tiny <&>",
                &src.join("vmlinux"),
                None,
                &src.join("rootfs"),
                None,
            )
            .unwrap()
            .id
    }

    /// An instance record in `state`, without a VMM, tagged `Name=n<launched_at>`.
    fn add(&self, id: &str, state: InstanceState, launched_at: i64) -> Instance {
        testing::add(&self.agent, id, state, launched_at);
        let tag = [("Name".to_string(), format!("n{launched_at}"))];
        self.agent.create_tags(&[id.to_string()], &tag).unwrap();
        self.agent.instance(id).unwrap()
    }

    /// POSTs `form` signed now; the status and the body.
    async fn post(&self, form: &str) -> (u16, String) {
        self.send(signed("POST", "", form.as_bytes(), SECRET, 0))
            .await
    }

    /// Instance `id`'s tags now.
    fn tags(&self, id: &str) -> std::collections::BTreeMap<String, String> {
        self.agent.instance(id).unwrap().tags
    }

    /// POSTs `form`, which must fail: its status, code and message.
    async fn fails(&self, form: &str) -> (u16, String, String) {
        error(&self.post(form).await)
    }

    async fn send(&self, req: Request) -> (u16, String) {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let ct = resp.headers().get(header::CONTENT_TYPE).cloned();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert_eq!(
            ct.as_ref().and_then(|v| v.to_str().ok()),
            Some("text/xml;charset=UTF-8")
        );
        dump(&body);
        (status, body)
    }
}

/// With `EMBER_EC2_DUMP=DIR`, every answer is written there (to check them with
/// botocore's parser by hand).
fn dump(body: &str) {
    if let Some(dir) = std::env::var_os("EMBER_EC2_DUMP") {
        let name = format!("{}.xml", request_id());
        let _ = std::fs::write(std::path::Path::new(&dir).join(name), body);
    }
}

/// `YYYYMMDDTHHMMSSZ` for now + `skew_s`.
fn amz_date(skew_s: i64) -> String {
    let d = Duration::from_secs(skew_s.unsigned_abs());
    let now = std::time::SystemTime::now();
    let now = if skew_s < 0 { now - d } else { now + d };
    humantime::format_rfc3339_seconds(now)
        .to_string()
        .replace(['-', ':'], "")
}

/// A request signed with `secret` (for AKID) as botocore signs it, its date `skew_s` off.
fn signed(method: &str, query: &str, body: &[u8], secret: &str, skew_s: i64) -> Request {
    let mut h = axum::http::HeaderMap::new();
    h.insert("host", HeaderValue::from_static("127.0.0.1:8788"));
    h.insert(
        "content-type",
        HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
    );
    h.insert(
        "x-amz-date",
        HeaderValue::from_str(&amz_date(skew_s)).unwrap(),
    );
    let s = auth::Signed {
        method,
        path: "/",
        query,
        headers: &h,
        body,
    };
    let a = auth::authorization(
        AKID,
        secret,
        "ember-1",
        "ec2",
        &s,
        &["content-type", "host", "x-amz-date"],
    )
    .unwrap();
    h.insert("authorization", HeaderValue::from_str(&a).unwrap());
    let uri = if query.is_empty() {
        "/".to_string()
    } else {
        format!("/?{query}")
    };
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body.to_vec()))
        .unwrap();
    *req.headers_mut() = h;
    req
}

/// The texts of every `<tag>` element.
fn all(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|s| s.split_once(&close).map(|(t, _)| t.to_string()))
        .collect()
}

fn one(xml: &str, tag: &str) -> String {
    all(xml, tag).into_iter().next().unwrap_or_default()
}

/// An error answer's status, code and message.
fn error(answer: &(u16, String)) -> (u16, String, String) {
    assert!(
        answer.1.contains("<Response><Errors><Error>"),
        "{}",
        answer.1
    );
    assert_eq!(all(&answer.1, "RequestID").len(), 1);
    (answer.0, one(&answer.1, "Code"), one(&answer.1, "Message"))
}

const V: &str = "Version=2016-11-15";

/// Waits (up to 30 s: background work on a loaded machine) for `id` to be in `state`.
async fn eventually(w: &World, id: &str, state: InstanceState) {
    for _ in 0..3000 {
        if w.agent.instance(id).unwrap().state == state {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{id} never became {state}");
}

#[tokio::test(flavor = "current_thread")]
async fn requests_that_fail_before_the_action() {
    let w = world("requests");
    let form = format!("Action=DescribeRegions&{V}");
    // Wrong secret, unknown key, stale and future dates.
    let cases = [
        (
            signed("POST", "", form.as_bytes(), "wrong", 0),
            403,
            "SignatureDoesNotMatch",
        ),
        (
            signed("POST", "", form.as_bytes(), SECRET, -400),
            400,
            "RequestExpired",
        ),
        (
            signed("POST", "", form.as_bytes(), SECRET, 400),
            400,
            "RequestExpired",
        ),
    ];
    for (req, status, code) in cases {
        let got = error(&w.send(req).await);
        assert_eq!((got.0, got.1.as_str()), (status, code));
    }
    let mut unknown = signed("POST", "", form.as_bytes(), SECRET, 0);
    let a = unknown.headers()["authorization"]
        .to_str()
        .unwrap()
        .replace(AKID, "AKIDNOBODY");
    unknown
        .headers_mut()
        .insert("authorization", HeaderValue::from_str(&a).unwrap());
    let got = error(&w.send(unknown).await);
    assert_eq!(
        (got.0, got.1.as_str(), got.2.as_str()),
        (
            401,
            "AuthFailure",
            "AWS was not able to validate the provided access credentials"
        )
    );
    let mut anonymous = signed("POST", "", form.as_bytes(), SECRET, 0);
    anonymous.headers_mut().remove("authorization");
    assert_eq!(
        error(&w.send(anonymous).await).1,
        "MissingAuthenticationToken"
    );
    // The form's own errors, once authenticated.
    let no_min = format!("Action=RunInstances&{V}&ImageId=img-0123456789abcdef0&MaxCount=1");
    let cases = [
        (
            "Action=RunInstancez&Version=2016-11-15",
            400,
            "InvalidAction",
        ),
        ("Version=2016-11-15", 400, "MissingAction"),
        ("Action=DescribeRegions", 400, "MissingParameter"),
        (
            "Action=DescribeRegions&Version=2014-01-01",
            400,
            "InvalidParameterValue",
        ),
        (
            "Action=DescribeRegions&Version=2016-11-15&DryRun=true",
            412,
            "DryRunOperation",
        ),
        (
            "Action=DescribeRegions&Version=2016-11-15&Action=RunInstances",
            400,
            "MalformedQueryString",
        ),
        (
            "Action=DescribeRegions&Version=%zz",
            400,
            "MalformedQueryString",
        ),
        (no_min.as_str(), 400, "MissingParameter"),
    ];
    for (form, status, code) in cases {
        let got = error(&w.post(form).await);
        assert_eq!((got.0, got.1.as_str()), (status, code), "{form}");
    }
    // The query form.
    let q = "Action=DescribeAvailabilityZones&Version=2016-11-15";
    let (s, xml) = w.send(signed("GET", q, b"", SECRET, 0)).await;
    assert_eq!(s, 200, "{xml}");
    assert!(xml.contains("<DescribeAvailabilityZonesResponse"));
    // An oversize body, declared or not.
    let big = vec![b'a'; MAX_BODY + 1];
    let got = error(&w.send(signed("POST", "", &big, SECRET, 0)).await);
    assert_eq!((got.0, got.1.as_str()), (413, "RequestTooLarge"));
    let mut chunked = signed("POST", "", &big, SECRET, 0);
    chunked.headers_mut().remove(header::CONTENT_LENGTH);
    let got = error(&w.send(chunked).await);
    assert_eq!(got.1, "RequestTooLarge");
    // Not a form; another method; another path.
    let mut json = signed("POST", "", form.as_bytes(), SECRET, 0);
    json.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    assert_eq!(error(&w.send(json).await).1, "MalformedQueryString");
    let mut put = signed("POST", "", form.as_bytes(), SECRET, 0);
    *put.method_mut() = Method::PUT;
    assert_eq!(error(&w.send(put).await).1, "InvalidRequest");
    let mut elsewhere = signed("POST", "", form.as_bytes(), SECRET, 0);
    *elsewhere.uri_mut() = "/v1/instances".parse().unwrap();
    let got = error(&w.send(elsewhere).await);
    assert_eq!((got.0, got.1.as_str()), (400, "InvalidRequest"));
    // Every answer was counted for /metrics, by action and status.
    let text = crate::prometheus::render(&w.agent).unwrap();
    assert!(
        text.contains("emberd_ec2_requests_total{action=\"DescribeRegions\",code=\"403\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "emberd_ec2_requests_total{action=\"DescribeAvailabilityZones\",code=\"200\"} 1"
        ),
        "{text}"
    );
}

#[test]
fn a_bad_head_gets_the_error_document() {
    let r = String::from_utf8(errors::head_error(408, "RequestTimeout", "late")).unwrap();
    assert!(
        r.starts_with("HTTP/1.1 408 Request Timeout\r\ncontent-type: text/xml;charset=UTF-8\r\n")
    );
    assert!(r.contains("<Response><Errors><Error><Code>RequestTimeout</Code><Message>late</Message></Error></Errors><RequestID>"));
    let id = request_id();
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "4");
    assert!(valid_region("ember-1") && !valid_region("Ember 1") && !valid_region(""));
}
