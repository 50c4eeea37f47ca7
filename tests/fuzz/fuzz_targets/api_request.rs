//! The API's request path on arbitrary client bytes: HTTP framing, routing and body
//! parsing into typed requests, then the VMM's pre-boot handling of them. It must never panic or hang; every answer must be a
//! well-formed response whose error body is Firecracker's `fault_message` object.
#![no_main]

use api::routes::{route, ParsedRequest};
use api::server::to_response;
use api::Response;
use libfuzzer_sys::fuzz_target;
use model::rpc::Request;
use vmm::rpc::{Controller, Handled};

fn check(r: &Response) {
    let bytes = r.to_bytes(false);
    assert!(bytes.starts_with(b"HTTP/1.1 "));
    if r.status >= 400 {
        let v: serde_json::Value = serde_json::from_str(&r.body).expect("fault body is JSON");
        assert!(
            v["fault_message"].is_string(),
            "no fault_message: {}",
            r.body
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let mut ctl = Controller::new("fuzz", vmm::VmConfig::default(), Box::new(|_| Ok(())));
    let mut buf = data;
    // Several requests may follow each other on one connection.
    for _ in 0..16 {
        match api::http::parse_request(buf, 1024) {
            Ok(Some((req, used))) => {
                assert!(used > 0 && used <= buf.len());
                buf = &buf[used..];
                match route(req) {
                    ParsedRequest::Answer(r) => check(&r),
                    // These open files named by the input: not for a fuzzer.
                    ParsedRequest::Vmm(
                        Request::PutMetrics(_)
                        | Request::PutLogger(_)
                        | Request::LoadSnapshot(_)
                        | Request::CreateSnapshot(_),
                    ) => {}
                    ParsedRequest::Vmm(a) => match ctl.handle(a) {
                        Handled::Answer(o) => check(&to_response(o)),
                        Handled::Start(_) | Handled::Restore(_) => {}
                    },
                }
            }
            Ok(None) => break,
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.contains('\n'), "multi-line error: {msg:?}");
                break;
            }
        }
    }
});
