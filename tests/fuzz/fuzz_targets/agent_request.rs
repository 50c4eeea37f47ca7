//! emberd's request parsing: any bytes as a request head (judged before hyper) and as the
//! body of each request that has one. Nothing may panic; whatever a body parses into must
//! serialize and parse back to the same value.
#![no_main]

use agent::api::parse_body;
use agent::serve::check_head;
use agent_types::{RegisterImage, RunRequest, StopRequest};
use axum::body::Bytes;
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};

fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(body: &Bytes) {
    if let Ok(v) = parse_body::<T>(body) {
        let again = serde_json::to_vec(&v).unwrap();
        let back: T = serde_json::from_slice(&again).unwrap();
        assert_eq!(v, back);
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = check_head(data);
    let body = Bytes::copy_from_slice(data);
    round_trip::<RunRequest>(&body);
    round_trip::<RegisterImage>(&body);
    round_trip::<StopRequest>(&body);
});
