//! The ClientHello peek sees raw network bytes before anything else: it must never panic,
//! and a verdict on a prefix must be consistent with the verdict on the whole input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tlsfront::conn::client_hello::{peek, Peek};

fuzz_target!(|data: &[u8]| {
    let whole = peek(data);
    if let Peek::Hello(hello) = &whole {
        let _ = hello.alpn().count();
    }
    // A definite verdict never turns into "need more" with more bytes.
    for cut in [0, 1, 5, data.len() / 2] {
        if cut < data.len() && peek(&data[..cut]) == Peek::NotTls {
            assert_eq!(whole, Peek::NotTls, "prefix said NotTls, whole input said otherwise");
        }
    }
});
