//! AWS Signature Version 4, verified: the `Authorization` header form
//! (`AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/ec2/aws4_request, SignedHeaders=...,
//! Signature=...`), the canonical request over the method, the path, the query, the signed
//! headers and the sha256 of the body, the string to sign, the key derived from the secret.
//! The signature is compared in constant time (`hmac`'s `verify_slice`).
//!
//! Written on `hmac` + `sha2` (which emberd already has) rather than the `aws-sigv4` crate:
//! that crate signs and does not verify, and brings the AWS SDK's runtime types with it.
//! The algorithm is a page; the tests hold AWS's published vectors and requests signed
//! by botocore.

use super::credentials::Credentials;
use super::errors::Ec2Error;
use super::params::decode_form;
use crate::ids::hex;
use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// How far `X-Amz-Date` may be from emberd's clock, either way (seconds).
pub const WINDOW_S: i64 = 5 * 60;

/// The signing algorithm SigV4 names.
const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The parts of a request the signature covers.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    /// `GET`, `POST`.
    pub method: &'a str,
    /// The path as sent (`/`).
    pub path: &'a str,
    /// The query string as sent, without `?` (empty if none).
    pub query: &'a str,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The body.
    pub body: &'a [u8],
}

/// A parsed `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// The access key id.
    pub access_key: String,
    /// The scope's date (`YYYYMMDD`).
    pub date: String,
    /// The scope's region.
    pub region: String,
    /// The scope's service.
    pub service: String,
    /// The signed headers' names, lowercase, in the order given.
    pub signed_headers: Vec<String>,
    /// The signature's bytes.
    pub signature: Vec<u8>,
}

/// Parses an `Authorization` header value.
pub fn parse_authorization(value: &str) -> Result<Authorization, Ec2Error> {
    let rest = value
        .strip_prefix(ALGORITHM)
        .filter(|r| r.starts_with(' '))
        .ok_or(Ec2Error::IncompleteSignature)?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or(Ec2Error::IncompleteSignature)?;
        let slot = match k {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut signature,
            _ => return Err(Ec2Error::IncompleteSignature),
        };
        if slot.replace(v).is_some() {
            return Err(Ec2Error::IncompleteSignature);
        }
    }
    let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
        return Err(Ec2Error::IncompleteSignature);
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key, date, region, service, "aws4_request"] = scope[..] else {
        return Err(Ec2Error::IncompleteSignature);
    };
    if access_key.is_empty() || date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Ec2Error::IncompleteSignature);
    }
    let signed_headers: Vec<String> = signed.split(';').map(str::to_string).collect();
    if signed_headers
        .iter()
        .any(|h| h.is_empty() || h.bytes().any(|b| b.is_ascii_uppercase()))
    {
        return Err(Ec2Error::IncompleteSignature);
    }
    Ok(Authorization {
        access_key: access_key.to_string(),
        date: date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers,
        signature: hex_decode(signature).ok_or(Ec2Error::IncompleteSignature)?,
    })
}

/// The access key id a request claims, if it is plain enough to log (letters and digits):
/// for the log line of a request that failed before it was verified.
pub fn claimed_access_key(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("authorization")?.to_str().ok()?;
    let id = v.split("Credential=").nth(1)?.split('/').next()?;
    (!id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| id.to_string())
}

/// Verifies `req`'s signature against `credentials` for `service` in `region` at Unix time
/// `now`; the access key id on success.
pub fn verify(
    credentials: &Credentials,
    region: &str,
    service: &str,
    req: &Signed<'_>,
    now: i64,
) -> Result<String, Ec2Error> {
    let header = req
        .headers
        .get("authorization")
        .ok_or(Ec2Error::MissingAuthenticationToken)?
        .to_str()
        .map_err(|_| Ec2Error::IncompleteSignature)?;
    let auth = parse_authorization(header)?;
    let key = credentials
        .get(&auth.access_key)
        .ok_or(Ec2Error::AuthFailure)?;
    let amz_date = req
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or(Ec2Error::IncompleteSignature)?;
    let at = parse_amz_date(amz_date).ok_or(Ec2Error::IncompleteSignature)?;
    if (now - at).abs() > WINDOW_S {
        return Err(Ec2Error::RequestExpired);
    }
    // The date, host and scope are part of what is signed; a signature over others is
    // not one for this request.
    if !["host", "x-amz-date"]
        .iter()
        .all(|h| auth.signed_headers.iter().any(|s| s == h))
    {
        return Err(Ec2Error::IncompleteSignature);
    }
    if auth.date != amz_date[..8] || auth.region != region || auth.service != service {
        return Err(Ec2Error::SignatureDoesNotMatch);
    }
    let body_hash = hex(&Sha256::digest(req.body));
    if let Some(claimed) = req.headers.get("x-amz-content-sha256") {
        // Only the body's own hash: an unsigned payload would leave the body unchecked.
        if claimed.as_bytes() != body_hash.as_bytes() {
            return Err(Ec2Error::SignatureDoesNotMatch);
        }
    }
    let canonical = canonical_request(req, &auth.signed_headers, &body_hash)?;
    let scope = format!("{}/{region}/{service}/aws4_request", auth.date);
    let to_sign = string_to_sign(amz_date, &scope, &canonical);
    let signing = signing_key(key.secret.expose(), &auth.date, region, service);
    let mut mac =
        HmacSha256::new_from_slice(&signing).map_err(|_| Ec2Error::IncompleteSignature)?;
    mac.update(to_sign.as_bytes());
    mac.verify_slice(&auth.signature)
        .map_err(|_| Ec2Error::SignatureDoesNotMatch)?;
    Ok(auth.access_key)
}

/// The `Authorization` header value for `req` signed with (`access_key`, `secret`) in
/// scope `date`/`region`/`service`, over `signed_headers` (which must include `host` and
/// `x-amz-date`, present in `req.headers`). For clients and tests.
pub fn authorization(
    access_key: &str,
    secret: &str,
    region: &str,
    service: &str,
    req: &Signed<'_>,
    signed_headers: &[&str],
) -> Result<String, Ec2Error> {
    let amz_date = req
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .filter(|d| d.len() >= 8)
        .ok_or(Ec2Error::IncompleteSignature)?;
    let date = &amz_date[..8];
    let names: Vec<String> = signed_headers.iter().map(|h| h.to_string()).collect();
    let canonical = canonical_request(req, &names, &hex(&Sha256::digest(req.body)))?;
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign = string_to_sign(amz_date, &scope, &canonical);
    let signature = hmac(
        &signing_key(secret, date, region, service),
        to_sign.as_bytes(),
    );
    Ok(format!(
        "{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={}, Signature={}",
        signed_headers.join(";"),
        hex(&signature)
    ))
}

/// SigV4's canonical request.
fn canonical_request(
    req: &Signed<'_>,
    signed_headers: &[String],
    payload_hash: &str,
) -> Result<String, Ec2Error> {
    let mut out = String::with_capacity(256);
    out.push_str(req.method);
    out.push('\n');
    out.push_str(&uri_encode(req.path, true));
    out.push('\n');
    out.push_str(&canonical_query(req.query)?);
    out.push('\n');
    let mut sorted: Vec<&String> = signed_headers.iter().collect();
    sorted.sort();
    for name in &sorted {
        let values: Vec<String> = req
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| {
                v.to_str()
                    .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            })
            .collect::<Result<_, _>>()
            .map_err(|_| Ec2Error::IncompleteSignature)?;
        if values.is_empty() {
            // A header said to be signed that the request does not have.
            return Err(Ec2Error::IncompleteSignature);
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    out.push('\n');
    let names: Vec<&str> = sorted.iter().map(|s| s.as_str()).collect();
    out.push_str(&names.join(";"));
    out.push('\n');
    out.push_str(payload_hash);
    Ok(out)
}

/// The query's pairs, each side URI-encoded, sorted, joined with `&`.
fn canonical_query(query: &str) -> Result<String, Ec2Error> {
    let mut pairs: Vec<(String, String)> = decode_form(query.as_bytes())?
        .into_iter()
        .map(|(k, v)| (uri_encode(&k, false), uri_encode(&v, false)))
        .collect();
    pairs.sort();
    Ok(pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&"))
}

/// SigV4's string to sign.
fn string_to_sign(amz_date: &str, scope: &str, canonical: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    )
}

/// The signing key: the secret through HMACs of the date, region, service and
/// `aws4_request`.
fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    hmac(&k, b"aws4_request")
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    match HmacSha256::new_from_slice(key) {
        Ok(mut m) => {
            m.update(data);
            m.finalize().into_bytes().into()
        }
        Err(_) => [0; 32],
    }
}

/// RFC 3986 encoding as SigV4 wants it: unreserved characters kept, every other byte
/// `%XX` (uppercase); `/` kept in paths.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `YYYYMMDDTHHMMSSZ` as Unix seconds.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' || !digits(0..8) || !digits(9..15) {
        return None;
    }
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    );
    let t = humantime::parse_rfc3339(&rfc).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_secs()).ok()
}

#[cfg(test)]
mod tests;
