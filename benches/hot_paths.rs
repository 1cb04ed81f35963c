//! Micro-benchmarks of the functions on Postback's hot paths: rendering a
//! one-hour transcript in every caption format, signing a 1 MiB body, and
//! the retry schedule. Run with `cargo bench --bench hot_paths`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use postback::model::{Transcript, TranscriptFormat, Word};
use postback::render::render_transcript;
use postback::schedule::{next_attempt, RetryPolicy};
use postback::signing::{sign, SigningSecret};
use time::OffsetDateTime;

/// About an hour of speech: 10,000 words of 300 ms, a sentence every 12.
fn one_hour_transcript() -> Transcript {
    let words = (0..10_000u64)
        .map(|i| Word {
            p: i,
            s: i * 360,
            e: i * 360 + 300,
            c: 0.9,
            w: if i % 12 == 11 {
                "end.".to_owned()
            } else {
                format!("word{}", i % 97)
            },
        })
        .collect();
    Transcript {
        confidence: Some(0.9),
        words,
        ..Transcript::default()
    }
}

fn rendering(c: &mut Criterion) {
    let transcript = one_hour_transcript();
    let mut group = c.benchmark_group("render one-hour transcript");
    group.throughput(Throughput::Elements(transcript.words.len() as u64));
    for (name, format) in [
        ("srt", TranscriptFormat::Srt),
        ("webvtt", TranscriptFormat::Webvtt),
        ("dfxp", TranscriptFormat::Dfxp),
        ("text", TranscriptFormat::Text),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| render_transcript(black_box(&transcript), format))
        });
    }
    group.finish();
}

fn signing(c: &mut Criterion) {
    let secret = SigningSecret::generate();
    let body = vec![b'x'; 1024 * 1024];
    let mut group = c.benchmark_group("sign");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("1 MiB body", |b| {
        b.iter(|| {
            sign(
                &secret,
                black_box("01a2129d-0cf1-7359-9f90-50feefc927f2"),
                1_795_600_000,
                black_box(&body),
            )
        })
    });
    group.finish();
}

fn schedule(c: &mut Criterion) {
    let policy = RetryPolicy::default();
    let first = OffsetDateTime::UNIX_EPOCH + Duration::from_secs(1_795_600_000);
    c.bench_function("schedule: whole default cycle (11 attempts)", |b| {
        b.iter(|| {
            let mut now = first;
            let mut made = 1;
            while let postback::schedule::Next::At(at) =
                next_attempt(black_box(&policy), made, first, now)
            {
                now = at;
                made += 1;
            }
            made
        })
    });
}

criterion_group!(benches, rendering, signing, schedule);
criterion_main!(benches);
