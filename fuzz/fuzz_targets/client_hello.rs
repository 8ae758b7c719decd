//! The ClientHello peek sees raw network bytes before anything else: it must never panic,
//! a verdict on a prefix must be consistent with the verdict on the whole input, and the
//! route choice made from what it found must never panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tlsfront::conn::client_hello::{peek, Peek};
use tlsfront::route::sni::{choose, Matcher, SniPattern};

fuzz_target!(|data: &[u8]| {
    let whole = peek(data);
    if let Peek::Hello(hello) = &whole {
        let _ = hello.alpn().count();
        let _ = hello.cipher_suites().count();
        let exact = [SniPattern::parse("a.example").unwrap()];
        let wild = [SniPattern::parse("*.example").unwrap()];
        let h2 = [b"h2".to_vec()];
        let routes = [
            Matcher { sni: &exact, alpn: &h2 },
            Matcher { sni: &wild, alpn: &[] },
        ];
        if let Some(i) = choose(routes, hello.sni, hello.alpn()) {
            assert!(i < routes.len());
        }
    }
    // A definite verdict never turns into "need more" (or another verdict) with more bytes.
    for cut in [0, 1, 5, data.len() / 2] {
        if cut >= data.len() {
            continue;
        }
        match peek(&data[..cut]) {
            Peek::NotTls => assert_eq!(whole, Peek::NotTls, "prefix said NotTls"),
            Peek::TooLarge => assert_eq!(whole, Peek::TooLarge, "prefix said TooLarge"),
            _ => {}
        }
    }
});
