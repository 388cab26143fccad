#![no_main]
//! Feeds arbitrary bytes to the envelope decoder: it must return an error or a message, never
//! panic, and a decoded message must survive encode → decode → encode unchanged (compared as
//! bytes, since float fields may hold NaN).

use libfuzzer_sys::fuzz_target;
use vidmesh_protocol::{decode, encode, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_body_len: 1 << 20 };
    if let Ok(message) = decode(data, &limits) {
        let once = encode(&message).expect("a decoded message re-encodes");
        let back = decode(&once, &limits).expect("a re-encoded message decodes");
        assert_eq!(encode(&back).expect("re-encodes again"), once);
    }
});
