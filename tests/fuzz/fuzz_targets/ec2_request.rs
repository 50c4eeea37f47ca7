//! emberd's EC2 Query API parsing: any bytes as a form (the body, and the query string),
//! then as every action's parameters, and an `Authorization` header plus a body through
//! SigV4 verification. Nothing may panic; a form that decodes must name each parameter
//! once or be refused; the input's first line is the header, the rest the body.
#![no_main]

use agent::ec2::auth::{self, Signed};
use agent::ec2::credentials::Credentials;
use agent::ec2::params::{decode_form, Params};
use agent::ec2::requests::{parse, Action};
use agent::ec2::xml::Xml;
use axum::http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(pairs) = decode_form(data) {
        if let Ok(params) = Params::from_pairs(pairs.clone()) {
            for action in Action::ALL {
                let _ = parse(action, params.clone());
            }
        }
        // Whatever was decoded can be written into an answer.
        let mut x = Xml::new();
        for (k, v) in &pairs {
            x.leaf("key", k);
            x.leaf("value", v);
        }
        let out = x.finish();
        assert!(std::str::from_utf8(&out).is_ok());
    }
    let (line, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(text) = std::str::from_utf8(line) else {
        return;
    };
    let _ = auth::parse_authorization(text);
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("127.0.0.1:8788"));
    h.insert("x-amz-date", HeaderValue::from_static("20261127T120000Z"));
    if let Ok(v) = HeaderValue::from_bytes(line) {
        h.insert("authorization", v);
    }
    let creds = Credentials::from_pairs([("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")]);
    let req = Signed {
        method: "POST",
        path: "/",
        query: std::str::from_utf8(body).unwrap_or(""),
        headers: &h,
        body,
    };
    let _ = auth::verify(&creds, "ember-1", "ec2", &req, 1_795_780_800);
    let _ = auth::claimed_access_key(&h);
});
