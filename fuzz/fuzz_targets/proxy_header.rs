//! The inbound PROXY header parser sees a load balancer's (or anyone's) first bytes: it
//! must never panic, a header it accepts must fit in the input and the size limit, and a
//! definite verdict on a whole header never depends on bytes after it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tlsfront::conn::proxy_in::{parse, Inbound, MAX_HEADER};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Inbound::Header { len, .. } => {
            assert!(len > 0 && len <= data.len() && len <= MAX_HEADER);
            // The header alone gives the same verdict.
            assert!(matches!(parse(&data[..len]), Inbound::Header { len: l, .. } if l == len));
        }
        Inbound::NotProxy => {
            // More bytes cannot turn a non-PROXY start into a header.
            let mut more = data.to_vec();
            more.extend_from_slice(b"\r\n");
            assert_eq!(parse(&more), Inbound::NotProxy);
        }
        Inbound::NeedMore | Inbound::Invalid(_) => {}
    }
});
