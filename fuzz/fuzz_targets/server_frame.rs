//! What the Rust client decodes from the server (`serde_json::from_str::<ServerFrame>`, as in
//! `messenger-socket/src/client/connection.rs`): never panics, and a decoded frame re-encodes
//! (`to_json`, as the server sends) to one that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use messenger_core::protocol::ServerFrame;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(frame) = serde_json::from_str::<ServerFrame>(text) else {
        return;
    };
    let json = frame.to_json();
    let again = serde_json::from_str::<ServerFrame>(&json)
        .unwrap_or_else(|err| panic!("{json} was encoded but does not decode: {err}"));
    assert_eq!(again, frame, "{text} -> {json}");
    assert_eq!(again.to_json(), json, "the encoding is not stable");
});
