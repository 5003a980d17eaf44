//! Messages per second through a lossless pair: our `Channel` against a minimal peer that acks
//! every message and sends pre-encoded agent data. Measures the channel's own cost (encode,
//! digest, bookkeeping, decode, reorder queue), unpaced.

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ssm_plugin::channel::{Channel, Config, Event, Priority};
use ssm_plugin::wire::{ClientMessage, MessageType, PayloadType, FLAG_SYN};
use uuid::Uuid;

const N: usize = 1000;

fn config() -> Config {
    Config {
        frame_budget: None,
        created_epoch_ms: 1_800_000_000_000,
        ..Config::default()
    }
}

/// The peer's ack of one of our frames, read from the header without re-hashing the payload.
fn peer_ack(frame: &[u8]) -> Vec<u8> {
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&frame[48..56]);
    let acked = ClientMessage::new(
        MessageType::InputStreamData,
        i64::from_be_bytes(seq),
        0,
        PayloadType::OUTPUT,
        Bytes::new(),
        1,
        Uuid::nil(),
    );
    ClientMessage::acknowledge_for(&acked, 1_800_000_000_000, Uuid::from_u128(1)).encode()
}

fn upload(c: &mut Criterion) {
    let payload = Bytes::from(vec![0x5au8; 1024]);
    let mut g = c.benchmark_group("channel");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("upload_1KiB_messages", |b| {
        b.iter(|| {
            let t0 = Instant::now();
            let mut ch = Channel::new(config(), t0);
            let mut sent = 0;
            let mut now = t0;
            while sent < N || !ch.is_idle() {
                while sent < N && ch.send_capacity() > 0 {
                    ch.send(now, PayloadType::OUTPUT, payload.clone(), Priority::Data)
                        .unwrap();
                    sent += 1;
                }
                let frames: Vec<Vec<u8>> = std::iter::from_fn(|| ch.poll_transmit(now)).collect();
                now += Duration::from_micros(50);
                for f in frames {
                    ch.handle_frame(now, &peer_ack(&f)).unwrap();
                }
            }
            ch
        })
    });
    g.finish();
}

fn download(c: &mut Criterion) {
    let frames: Vec<Vec<u8>> = (0..N as i64)
        .map(|seq| {
            ClientMessage::new(
                MessageType::OutputStreamData,
                seq,
                if seq == 0 { FLAG_SYN } else { 0 },
                PayloadType::OUTPUT,
                Bytes::from(vec![seq as u8; 1024]),
                1_800_000_000_000,
                Uuid::from_u128(seq as u128 + 1),
            )
            .encode()
        })
        .collect();
    let mut g = c.benchmark_group("channel");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("download_1KiB_messages", |b| {
        b.iter_batched(
            || Channel::new(config(), Instant::now()),
            |mut ch| {
                let now = Instant::now();
                let mut delivered = 0;
                for f in &frames {
                    ch.handle_frame(now, f).unwrap();
                    while let Some(ack) = ch.poll_transmit(now) {
                        std::hint::black_box(ack);
                    }
                    while let Some(Event::Message { .. }) = ch.poll_event() {
                        delivered += 1;
                    }
                }
                assert_eq!(delivered, N);
                ch
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, upload, download);
criterion_main!(benches);
