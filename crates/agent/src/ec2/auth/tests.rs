//! SigV4 against AWS's published test-suite vectors (`get-vanilla`, `get-vanilla-query-
//! order-key-case`, `get-vanilla-query-order-value`: credentials AKIDEXAMPLE, 2015-08-30,
//! us-east-1, service `service`) and against requests botocore signed
//! (`botocore.auth.SigV4Auth`, clock fixed at 2026-11-27T12:00:00Z), then every way a
//! request fails.

use super::*;
use axum::http::HeaderValue;

const AKID: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn creds() -> Credentials {
    Credentials::from_pairs([(AKID, SECRET)])
}

/// 2015-08-30T12:36:00Z.
const SUITE_NOW: i64 = 1_440_938_160;
/// 2026-11-27T12:00:00Z.
const BOTO_NOW: i64 = 1_795_780_800;

#[test]
fn the_aws_suite_vectors_verify() {
    let cases = [
        (
            "",
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        ),
        (
            "Param2=value2&Param1=value1",
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        ),
        (
            "Param1=value2&Param1=Value1",
            "eedbc4e291e521cf13422ffca22be7d2eb8146eecf653089df300a15b2382bd1",
        ),
    ];
    for (query, sig) in cases {
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature={sig}"
        );
        let h = headers(&[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
            ("authorization", &auth),
        ]);
        let req = Signed {
            method: "GET",
            path: "/",
            query,
            headers: &h,
            body: b"",
        };
        assert_eq!(
            verify(&creds(), "us-east-1", "service", &req, SUITE_NOW).unwrap(),
            AKID,
            "{query}"
        );
        // And signing gives the same header back.
        let again = authorization(
            AKID,
            SECRET,
            "us-east-1",
            "service",
            &req,
            &["host", "x-amz-date"],
        )
        .unwrap();
        assert_eq!(again, auth);
    }
}

const BOTO_BODY: &[u8] =
    b"Action=DescribeInstances&Version=2016-11-15&InstanceId.1=i-0123456789abcdef0";
const BOTO_POST_AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261127/ember-1/ec2/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=9d0762037dd3aed4c3a80c78f70084d33b2945473c558401587210d4d79c12d1";

fn boto_post(auth: &str) -> HeaderMap {
    headers(&[
        ("host", "127.0.0.1:8788"),
        (
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        ),
        ("x-amz-date", "20261127T120000Z"),
        ("authorization", auth),
        ("user-agent", "Boto3/1.0 (not signed)"),
    ])
}

fn post<'a>(h: &'a HeaderMap, body: &'a [u8]) -> Signed<'a> {
    Signed {
        method: "POST",
        path: "/",
        query: "",
        headers: h,
        body,
    }
}

#[test]
fn requests_botocore_signed_verify() {
    let h = boto_post(BOTO_POST_AUTH);
    assert_eq!(
        verify(&creds(), "ember-1", "ec2", &post(&h, BOTO_BODY), BOTO_NOW).unwrap(),
        AKID
    );
    let h = headers(&[
        ("host", "127.0.0.1:8788"),
        ("x-amz-date", "20261127T120000Z"),
        (
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261127/ember-1/ec2/aws4_request, SignedHeaders=host;x-amz-date, Signature=7a61a6d337b7aeec6a10c2282cd6d7e9a0036aaf2f1647b63d80518acc23c4b5",
        ),
    ]);
    let get = Signed {
        method: "GET",
        path: "/",
        query: "Action=DescribeRegions&Version=2016-11-15&RegionName.1=ember-1",
        headers: &h,
        body: b"",
    };
    assert_eq!(
        verify(&creds(), "ember-1", "ec2", &get, BOTO_NOW).unwrap(),
        AKID
    );
    // Within the window either way; outside it, expired.
    for now in [BOTO_NOW - WINDOW_S, BOTO_NOW + WINDOW_S] {
        assert!(verify(&creds(), "ember-1", "ec2", &get, now).is_ok());
    }
}

fn code(r: Result<String, Ec2Error>) -> &'static str {
    r.unwrap_err().code_and_status().0
}

#[test]
fn every_failure_has_its_code() {
    let ok = boto_post(BOTO_POST_AUTH);
    let v = |h: &HeaderMap, body: &[u8], now: i64| {
        verify(&creds(), "ember-1", "ec2", &post(h, body), now)
    };
    // The body is signed: one byte changed and it no longer matches.
    let mut tampered = BOTO_BODY.to_vec();
    tampered[7] = b'X';
    assert_eq!(code(v(&ok, &tampered, BOTO_NOW)), "SignatureDoesNotMatch");
    // A wrong secret.
    let wrong = Credentials::from_pairs([(AKID, "not-the-secret")]);
    assert_eq!(
        code(verify(
            &wrong,
            "ember-1",
            "ec2",
            &post(&ok, BOTO_BODY),
            BOTO_NOW
        )),
        "SignatureDoesNotMatch"
    );
    // An unknown key.
    let other = Credentials::from_pairs([("AKIDOTHER", SECRET)]);
    assert_eq!(
        code(verify(
            &other,
            "ember-1",
            "ec2",
            &post(&ok, BOTO_BODY),
            BOTO_NOW
        )),
        "AuthFailure"
    );
    // Stale or from the future.
    assert_eq!(
        code(v(&ok, BOTO_BODY, BOTO_NOW + WINDOW_S + 1)),
        "RequestExpired"
    );
    assert_eq!(
        code(v(&ok, BOTO_BODY, BOTO_NOW - WINDOW_S - 1)),
        "RequestExpired"
    );
    // Another region or service.
    assert_eq!(
        code(verify(
            &creds(),
            "us-east-1",
            "ec2",
            &post(&ok, BOTO_BODY),
            BOTO_NOW
        )),
        "SignatureDoesNotMatch"
    );
    assert_eq!(
        code(verify(
            &creds(),
            "ember-1",
            "s3",
            &post(&ok, BOTO_BODY),
            BOTO_NOW
        )),
        "SignatureDoesNotMatch"
    );
    // No header at all.
    let mut none = ok.clone();
    none.remove("authorization");
    assert_eq!(
        code(v(&none, BOTO_BODY, BOTO_NOW)),
        "MissingAuthenticationToken"
    );
    // A signed header the request lacks; no date; a date in another form.
    let mut no_ct = ok.clone();
    no_ct.remove("content-type");
    assert_eq!(code(v(&no_ct, BOTO_BODY, BOTO_NOW)), "IncompleteSignature");
    let mut no_date = ok.clone();
    no_date.remove("x-amz-date");
    assert_eq!(
        code(v(&no_date, BOTO_BODY, BOTO_NOW)),
        "IncompleteSignature"
    );
    let mut bad_date = ok.clone();
    bad_date.insert(
        "x-amz-date",
        HeaderValue::from_static("2026-11-27T12:00:00Z"),
    );
    assert_eq!(
        code(v(&bad_date, BOTO_BODY, BOTO_NOW)),
        "IncompleteSignature"
    );
    // A scope date that is not the request's date.
    let mut other_day = ok.clone();
    other_day.insert("x-amz-date", HeaderValue::from_static("20261128T000100Z"));
    assert_eq!(code(v(&other_day, BOTO_BODY, BOTO_NOW)), "RequestExpired");
    assert_eq!(
        code(v(&other_day, BOTO_BODY, 1_795_824_060)),
        "SignatureDoesNotMatch"
    );
    // The body's claimed hash must be its own.
    let mut claimed = ok.clone();
    claimed.insert(
        "x-amz-content-sha256",
        HeaderValue::from_static("UNSIGNED-PAYLOAD"),
    );
    assert_eq!(
        code(v(&claimed, BOTO_BODY, BOTO_NOW)),
        "SignatureDoesNotMatch"
    );
    // Malformed headers.
    for bad in [
        "AWS4-HMAC-SHA1 Credential=AKIDEXAMPLE/20261127/ember-1/ec2/aws4_request, SignedHeaders=host;x-amz-date, Signature=00",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261127/ember-1/ec2, SignedHeaders=host;x-amz-date, Signature=9d0762037dd3aed4c3a80c78f70084d33b2945473c558401587210d4d79c12d1",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261127/ember-1/ec2/aws4_request, SignedHeaders=host;x-amz-date",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261127/ember-1/ec2/aws4_request, SignedHeaders=host;x-amz-date, Signature=xyz",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261127/ember-1/ec2/aws4_request, SignedHeaders=Host;x-amz-date, Signature=9d0762037dd3aed4c3a80c78f70084d33b2945473c558401587210d4d79c12d1",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261127/ember-1/ec2/aws4_request, SignedHeaders=content-type;x-amz-date, Signature=9d0762037dd3aed4c3a80c78f70084d33b2945473c558401587210d4d79c12d1",
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/2026112/ember-1/ec2/aws4_request, SignedHeaders=host;x-amz-date, Signature=9d0762037dd3aed4c3a80c78f70084d33b2945473c558401587210d4d79c12d1",
        "AWS4-HMAC-SHA256 Credential=A/20261127/ember-1/ec2/aws4_request, Credential=A/20261127/ember-1/ec2/aws4_request, SignedHeaders=host, Signature=9d0762037dd3aed4c3a80c78f70084d33b2945473c558401587210d4d79c12d1",
        "AWS4-HMAC-SHA256 Foo=1, Credential=AKIDEXAMPLE/20261127/ember-1/ec2/aws4_request, SignedHeaders=host;x-amz-date, Signature=9d0762037dd3aed4c3a80c78f70084d33b2945473c558401587210d4d79c12d1",
        "AWS4-HMAC-SHA256Credential=AKIDEXAMPLE/20261127/ember-1/ec2/aws4_request",
        "",
    ] {
        let h = boto_post(bad);
        let got = code(v(&h, BOTO_BODY, BOTO_NOW));
        // An unknown key is found only once the header parses; these never get that far,
        // except the one whose key is "A".
        assert!(
            got == "IncompleteSignature" || (got == "AuthFailure" && bad.contains("=A/")),
            "{bad}: {got}"
        );
    }
}

#[test]
fn the_claimed_key_is_logged_only_if_plain() {
    assert_eq!(
        claimed_access_key(&boto_post(BOTO_POST_AUTH)).as_deref(),
        Some(AKID)
    );
    let odd = boto_post("AWS4-HMAC-SHA256 Credential=AK-ID/x");
    assert_eq!(claimed_access_key(&odd), None);
    assert_eq!(parse_amz_date("20261127T120000Z"), Some(BOTO_NOW));
    assert_eq!(parse_amz_date("20261327T120000Z"), None);
    assert_eq!(uri_encode("a b/~+é", false), "a%20b%2F~%2B%C3%A9");
    assert_eq!(uri_encode("/x y/", true), "/x%20y/");
}
