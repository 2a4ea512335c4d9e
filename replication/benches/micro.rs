//! Micro-benchmarks of the replicated state's hot paths, on realistic inputs:
//! 1 KiB YAML values under paths like `svc/app-N/config.yaml`.
//!
//! Run: `cargo bench -p pika-replication --bench micro` (a few minutes; add
//! `-- --warm-up-time 0.5 --measurement-time 2` for a quick look, or a group
//! name such as `-- merkle` to run one group).
//!
//! Groups:
//! - `store_batch`: `Store::execute_then`, exactly as the group committer
//!   calls it on the leader, for batches of 1..256 puts. `durable` is a redb
//!   file in a tempdir with its fsync, the cost every write waits for;
//!   `in_memory` is the same transaction without the disk, so the difference
//!   is the fsync and the remainder is encoding, B-tree and Merkle work.
//! - `store_apply`: `Store::apply_entries_behind_log`, as the apply thread calls it
//!   on every node of a cluster: committed changes of 16 and 256 paths in
//!   one transaction without fsync, on a file-backed store in steady state;
//!   and `checkpoint`, the durable transaction that writes what 2 048 such
//!   applied changes left dirty.
//! - `log_append`: the same batches of changes appended to the replicated
//!   log and flushed (`ReplicatedLog::append` + `flush_blocking`), the cost
//!   a write's durability has once redb is applied behind the log; compare
//!   with `store_batch/durable` of the same size.
//! - `merkle`: the per-change bucket update (the CPU part that every write
//!   adds inside its transaction), and the root over a store of 10 000 paths,
//!   which every sync round and status request pays.
//! - `wire_diff`: a `PeerMessage::Diff` of 1/16/64 changes through the same
//!   framing as the peer streams, encode and decode apart, in bytes/s: the
//!   leader encodes once per follower, each follower decodes.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pika_membership::frame::{self, DEFAULT_MAX_FRAME, FrameDecoder};
use pika_replication::election::Position;
use pika_replication::log::{LogOptions, ReplicatedLog};
use pika_replication::merkle::{self, MerkleBuckets};
use pika_replication::wire::PeerMessage;
use pika_replication::{Change, ChangeKind, ConfigPath, Entry, Format, Meta, Op, Store};

const VALUE_BYTES: usize = 1024;
/// The store's `storage.history` default.
const HISTORY: u64 = 20;
/// Paths the store benchmark cycles over: more than the largest batch, so a
/// batch never writes a path twice, and few enough to prefill quickly.
const POOL: usize = 1024;
const EPOCH: u64 = 3;
const NOW_MS: u64 = 1_750_000_000_000;

fn path_of(n: usize) -> String {
    format!("svc/app-{n}/config.yaml")
}

/// A YAML document of exactly [`VALUE_BYTES`] that differs per `seed`.
fn yaml_value(seed: usize) -> Vec<u8> {
    let mut s = format!("name: app-{seed}\nreplicas: 3\n");
    for i in 0.. {
        let line = format!("key{i:03}: v{:016x}\n", seed * 1000 + i);
        // Leave room for the padding comment ("#\n" at least).
        if s.len() + line.len() + 2 > VALUE_BYTES {
            break;
        }
        s.push_str(&line);
    }
    let pad = VALUE_BYTES - s.len();
    s.push('#');
    s.push_str(&"x".repeat(pad - 2));
    s.push('\n');
    s.into_bytes()
}

fn meta() -> Meta {
    Meta {
        format: Format::Yaml,
        description: "benchmark config".into(),
        flags: 0,
    }
}

fn put(n: usize) -> Op {
    let path = ConfigPath::new(path_of(n)).expect("benchmark path is valid");
    Op::put(path, meta(), yaml_value(n), None).expect("benchmark value is valid YAML")
}

fn change(n: usize, revision: u64, version: u64) -> Change {
    Change {
        revision,
        epoch: EPOCH,
        path: path_of(n),
        version,
        created_at_ms: NOW_MS,
        created_revision: 1,
        kind: ChangeKind::Put {
            meta: meta(),
            data: yaml_value(n),
        },
        request_id: Some(format!("0a1b2c3d-{revision}")),
        author: None,
    }
}

/// Writes every op of `ops` `rounds` times, in batches of `POOL`.
fn prefill(store: &Store, ops: &[Op], rounds: u64) {
    for _ in 0..rounds {
        for batch in ops.chunks(POOL) {
            store
                .execute(batch, EPOCH, NOW_MS)
                .expect("prefill commits");
        }
    }
}

fn store_batch(c: &mut Criterion) {
    let ops: Vec<Op> = (0..POOL).map(put).collect();
    let dir = tempfile::tempdir().expect("create tempdir");
    let durable = Store::open(dir.path(), HISTORY).expect("open store");
    let in_memory = Store::open_in_memory(HISTORY).expect("open in-memory store");
    // Steady state from the first sample: every path exists with a full
    // history, so each put replaces an entry, XORs a leaf out and prunes a
    // version, as on a long-running node, instead of timings drifting as
    // the store fills.
    for store in [&durable, &in_memory] {
        prefill(store, &ops, HISTORY);
    }

    let mut group = c.benchmark_group("store_batch");
    // A durable commit is milliseconds; 100 samples would take far longer
    // than a short run allows.
    group.sample_size(20);
    let mut cursor = 0usize;
    let mut request = 0u64;
    for (name, store) in [("durable", &durable), ("in_memory", &in_memory)] {
        for n in [1usize, 16, 64, 256] {
            group.throughput(Throughput::Elements(n as u64));
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter_batched(
                    // Fresh request ids, as the HTTP layer gives every write
                    // one: the store records each for retries.
                    || {
                        (0..n)
                            .map(|_| {
                                let op = ops[cursor % POOL].clone();
                                cursor += 1;
                                request += 1;
                                op.with_request_id(Some(format!("bench-{request}")))
                            })
                            .collect::<Vec<Op>>()
                    },
                    |batch| {
                        store
                            .execute_then(&batch, EPOCH, NOW_MS, |changes| {
                                black_box(changes);
                            })
                            .expect("batch commits")
                    },
                    BatchSize::SmallInput,
                );
            });
        }
    }
    group.finish();
    durable.close().expect("close store");
}

/// The next `n` committed changes, one per path from `cursor` on, each a
/// new version of its path. Criterion makes a run's inputs before it runs
/// them, in order, so the revisions continue from the last one made.
struct Committed {
    revision: u64,
    cursor: usize,
    versions: Vec<u64>,
}

impl Committed {
    fn next(&mut self, n: usize) -> Vec<Change> {
        (0..n)
            .map(|_| {
                let path = self.cursor % POOL;
                self.cursor += 1;
                self.revision += 1;
                self.versions[path] += 1;
                change(path, self.revision, self.versions[path])
            })
            .collect()
    }
}

fn store_apply(c: &mut Criterion) {
    let ops: Vec<Op> = (0..POOL).map(put).collect();
    let dir = tempfile::tempdir().expect("create tempdir");
    let store = Store::open(dir.path(), HISTORY).expect("open store");
    prefill(&store, &ops, HISTORY);
    let mut committed = Committed {
        revision: store.revision(),
        cursor: 0,
        versions: vec![HISTORY; POOL],
    };
    let mut group = c.benchmark_group("store_apply");
    group.sample_size(20);
    for n in [16usize, 256] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("behind_log", n), |b| {
            // The entries come made, as the apply thread gets them from the
            // pending paths.
            b.iter_batched(
                || {
                    let changes = committed.next(n);
                    let entries: Vec<Entry> = changes.iter().map(Entry::of).collect();
                    (changes, entries)
                },
                |(changes, entries)| {
                    store
                        .apply_entries_behind_log(&changes, &entries)
                        .expect("apply")
                },
                BatchSize::SmallInput,
            );
        });
    }
    // What a checkpoint costs after a second of applies at about 2 000
    // writes/s: the pages they dirtied written and synced.
    group.throughput(Throughput::Elements(2048));
    group.bench_function("checkpoint/2048", |b| {
        b.iter_batched(
            || {
                for _ in 0..8 {
                    let changes = committed.next(256);
                    store.apply_behind_log(&changes).expect("apply");
                }
            },
            |()| store.checkpoint().expect("checkpoint"),
            BatchSize::PerIteration,
        );
    });
    group.finish();
    store.close().expect("close store");
}

fn log_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("create tempdir");
    let mut log = ReplicatedLog::open(dir.path(), &LogOptions::default()).expect("open log");
    let mut group = c.benchmark_group("log_append");
    group.sample_size(20);
    let mut revision = 0u64;
    for n in [1usize, 16, 64, 256] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("durable", n), |b| {
            b.iter_batched(
                || {
                    (0..n)
                        .map(|i| {
                            revision += 1;
                            Arc::new(change(i, revision, 5))
                        })
                        .collect::<Vec<_>>()
                },
                |batch| {
                    log.append(&batch).expect("append");
                    log.flush_blocking().expect("flush");
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

fn merkle(c: &mut Criterion) {
    let mut group = c.benchmark_group("merkle");

    // What `write_change` computes per change besides its redb reads and
    // writes: the content digest (blake3 of the value), the bucket, and the
    // old leaf out and new leaf in.
    let previous = Entry::of(&change(7, 1, 1));
    let next = change(7, 2, 2);
    let mut buckets = MerkleBuckets::default();
    group.bench_function("update_one_path", |b| {
        b.iter(|| {
            let entry = Entry::of(black_box(&next));
            let path = next.path.as_str();
            let bucket = merkle::bucket_of(path);
            buckets.toggle(bucket, &previous.leaf(path));
            buckets.toggle(bucket, &entry.leaf(path));
            *buckets.bucket(bucket)
        })
    });

    let dir = tempfile::tempdir().expect("create tempdir");
    let store = Store::open(dir.path(), HISTORY).expect("open store");
    let ops: Vec<Op> = (0..10_000).map(put).collect();
    prefill(&store, &ops, 1);
    // The tree alone: 4096 buckets hashed up three 16-ary levels.
    let tree = store.merkle().expect("read digests");
    group.bench_function("root_10k_paths", |b| b.iter(|| tree.root()));
    // What the status API and a follower starting a sync do: read the
    // bucket digests from redb, then hash.
    group.bench_function("store_merkle_root_10k_paths", |b| {
        b.iter(|| store.merkle().expect("read digests").root())
    });
    group.finish();
    store.close().expect("close store");
}

fn wire_diff(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire_diff");
    for n in [1usize, 16, 64] {
        let first = 1001u64;
        let message = PeerMessage::Diff {
            epoch: EPOCH,
            prev: Position {
                epoch: EPOCH,
                revision: first - 1,
            },
            changes: (0..n)
                .map(|i| Arc::new(change(i, first + i as u64, 5)))
                .collect(),
            commit: first - 1,
            more: false,
        };
        let bytes = frame::encode(&message, DEFAULT_MAX_FRAME).expect("diff encodes");
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(BenchmarkId::new("encode", n), |b| {
            b.iter(|| frame::encode(black_box(&message), DEFAULT_MAX_FRAME).expect("diff encodes"))
        });
        // Includes pushing the frame into the decoder, as the stream reader
        // does with each chunk it receives.
        group.bench_function(BenchmarkId::new("decode", n), |b| {
            b.iter(|| {
                let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
                decoder.push(black_box(&bytes));
                decoder
                    .decode::<PeerMessage>()
                    .expect("diff decodes")
                    .expect("whole frame")
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    store_batch,
    store_apply,
    log_append,
    merkle,
    wire_diff
);
criterion_main!(benches);
