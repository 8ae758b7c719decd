//! The TLS driver is fed whatever a client sends, split at arbitrary points, and its write
//! path is exercised in between: nothing may panic (rustls's own deframer included).
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use tlsfront::conn::tls::{out_capacity, OutBuf, ServerTls, MAX_RECORD_WIRE};
use tlsfront::tls::{build_server_config, CertSource, TlsPolicy};

fn config() -> Arc<rustls::ServerConfig> {
    static CONFIG: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let policy = TlsPolicy::default();
            Arc::new(build_server_config(&policy, &CertSource::Ephemeral).unwrap().config)
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else { return };
    let mut tls = ServerTls::new(config()).unwrap();
    let mut incoming = Vec::with_capacity(MAX_RECORD_WIRE * 2);
    let mut plain = Vec::with_capacity(MAX_RECORD_WIRE * 2);
    let mut out = OutBuf::with_capacity(out_capacity(16384));
    let step = usize::from(split).max(1);
    for chunk in data.chunks(step) {
        if incoming.len() + chunk.len() > incoming.capacity() {
            return;
        }
        incoming.extend_from_slice(chunk);
        if tls.read(&mut incoming, &mut plain, &mut out).is_err() {
            let _ = tls.encrypt(&mut incoming, b"x", &mut out);
            return;
        }
        let _ = tls.encrypt(&mut incoming, b"reply", &mut out);
        plain.clear();
        let (buf, _) = out.take(Vec::new());
        out.restore(buf);
    }
});
