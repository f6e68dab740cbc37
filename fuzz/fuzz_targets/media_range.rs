//! The download endpoint's `Range` parser. Input: the object's size (8 bytes, little endian),
//! then the header value. Never panics; a part lies within the object and is not empty; no
//! header means the whole object; numbers are ASCII digits only (RFC 9110 `1*DIGIT`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use messenger_socket::fuzzing::{MediaRange, media_range};

fuzz_target!(|data: &[u8]| {
    let Some((size, header)) = data.split_first_chunk::<8>() else {
        return;
    };
    let size = u64::from_le_bytes(*size);
    assert_eq!(media_range(None, size), MediaRange::All);
    // The endpoint reads the header with `HeaderValue::to_str`: visible ASCII only. Any
    // UTF-8 is fed all the same: the parser must not panic on it.
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    let wanted = media_range(Some(header), size);
    match &wanted {
        MediaRange::All => {}
        MediaRange::Part(range) => {
            assert!(
                range.start < range.end && range.end <= size,
                "{header:?} against {size} bytes: {range:?}"
            );
        }
        MediaRange::Unsatisfiable => {}
    }
    if wanted != MediaRange::All {
        // Only `bytes=FIRST-LAST` with digits (either side may be empty) is honoured.
        let spec = header.trim().strip_prefix("bytes=").unwrap_or_else(|| {
            panic!("{header:?} is not a byte range but gave {wanted:?}");
        });
        let (first, last) = spec
            .split_once('-')
            .unwrap_or_else(|| panic!("{header:?} has no '-' but gave {wanted:?}"));
        for number in [first.trim(), last.trim()] {
            assert!(
                number.bytes().all(|byte| byte.is_ascii_digit()),
                "{header:?}: {number:?} is not 1*DIGIT but gave {wanted:?}"
            );
        }
    }
});
