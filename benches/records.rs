//! The record layer per suite and record size, through the proxy's TLS driver in memory
//! (`tlsfront::tls::measure::RecordPair`, the same code `tlsfront ciphers` measures with):
//! `seal` encrypts records toward the client, `open` decrypts records a rustls client sealed
//! (only the decryption is timed). Throughput is plaintext bytes.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tlsfront::tls::measure::{tls13_suites, RecordPair};
use tlsfront::tls::suite_name;

fn bench(c: &mut Criterion) {
    for suite in tls13_suites() {
        let name = suite_name(suite);
        for size in [64usize, 1024, 16 * 1024] {
            let data = vec![0x5a; size];
            let mut group = c.benchmark_group(format!("{name}/{size}B"));
            group.throughput(Throughput::Bytes(size as u64));
            let mut pair = RecordPair::new(suite).unwrap();
            group.bench_function("seal", |b| b.iter(|| pair.seal(black_box(&data))));
            let mut pair = RecordPair::new(suite).unwrap();
            group.bench_function("open", |b| {
                b.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        pair.prepare_open(&data);
                        let t = Instant::now();
                        black_box(pair.open());
                        spent += t.elapsed();
                    }
                    spent
                })
            });
            group.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
