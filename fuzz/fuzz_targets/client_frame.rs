//! `decode_client_frame`, the server's decoder of every client text frame: never panics, and
//! what it decodes re-encodes (`to_json`, as the Rust client sends) to a frame that decodes to
//! the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use messenger_core::protocol::{ClientFrame, MAX_FRAME_BYTES, decode_client_frame};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(frame) = decode_client_frame(text) else {
        return;
    };
    let json = frame.to_json();
    // Defaults written out (`"id":null`, `"cursors":{}`) can take a frame just under the limit
    // over it: the limit is the server's, not the encoding's.
    let again = if json.len() <= MAX_FRAME_BYTES {
        decode_client_frame(&json)
            .unwrap_or_else(|err| panic!("{json} was encoded but does not decode: {err:?}"))
    } else {
        serde_json::from_str::<ClientFrame>(&json)
            .unwrap_or_else(|err| panic!("{json} was encoded but does not decode: {err}"))
    };
    assert_eq!(again, frame, "{text} -> {json}");
    assert_eq!(again.to_json(), json, "the encoding is not stable");
});
