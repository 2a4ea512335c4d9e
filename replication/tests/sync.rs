//! Merkle sync between two real stores through the sans-IO session: the
//! follower ends equal to the leader's snapshot, and what moves grows with
//! what differs, not with what is stored.

use pika_replication::merkle::BUCKETS;
use pika_replication::merkle::MerkleBuckets;
use pika_replication::record::Applied;
use pika_replication::store::{PathState, Snapshot};
use pika_replication::sync::{self, SyncAnswer, SyncAsk, SyncSession, SyncStep};
use pika_replication::{ConfigPath, Format, Meta, Op, Store};

fn put(p: &str, data: &str) -> Op {
    let meta = Meta {
        format: Format::Text,
        description: String::new(),
        flags: 0,
    };
    Op::put(
        ConfigPath::new(p).unwrap(),
        meta,
        data.as_bytes().to_vec(),
        None,
    )
    .unwrap()
}

/// One session against `snapshot` to its last step (an install, or in
/// sync), with answers of `budget` bytes and at most `limit` (a frame),
/// each shown to `seen` with its ask first; with the paths it staged.
fn run_session(
    snapshot: &Snapshot,
    local: MerkleBuckets,
    since: Option<u64>,
    (budget, limit): (usize, usize),
    mut seen: impl FnMut(&SyncAsk, &SyncAnswer),
) -> (SyncStep, Vec<PathState>) {
    let mut session = SyncSession::new(local, since);
    let mut ask = SyncAsk::Start;
    let mut staged = Vec::new();
    for _ in 0..1000 {
        let answer = sync::answer(snapshot, &ask, budget, limit).unwrap();
        seen(&ask, &answer);
        match session.on_answer(snapshot.revision, snapshot.epoch, answer) {
            SyncStep::Ask(next) => ask = next,
            SyncStep::Stage { paths, next } => {
                staged.extend(paths);
                ask = next;
            }
            SyncStep::Failed(why) => panic!("sync failed: {why}"),
            last => return (last, staged),
        }
    }
    panic!("a sync session took more than 1000 rounds");
}

/// What an install step carries: buckets, the paths staged for them,
/// request ids, revision and epoch.
type Install = (Vec<u16>, Vec<PathState>, Vec<(String, Applied)>, u64, u64);

/// An install step's parts (any other step fails the test).
fn install_of((step, paths): (SyncStep, Vec<PathState>)) -> Install {
    match step {
        SyncStep::Install {
            buckets,
            requests,
            revision,
            epoch,
        } => (buckets, paths, requests, revision, epoch),
        other => panic!("unexpected step: {other:?}"),
    }
}

const SESSION: u64 = 7;

/// Installs as a follower does: the paths staged in its store, one answer
/// at a time, then the install from there.
fn install(
    store: &Store,
    (buckets, paths, requests, revision, epoch): &Install,
    since: Option<u64>,
) {
    store.clear_staged().unwrap();
    for answer in paths.chunks(7) {
        store.stage(SESSION, answer).unwrap();
    }
    let installed = store
        .install_staged(SESSION, buckets, requests, *revision, *epoch, since)
        .unwrap();
    assert_eq!(installed, paths.len(), "every staged path installed");
}

/// Runs a session to the end; returns (digests asked for, buckets moved,
/// versions moved). `behind`: the follower's state is a prefix of the
/// leader's, so only what changed after it moves.
fn sync_with(leader: &Store, follower: &Store, behind: bool) -> (usize, usize, usize) {
    let snapshot = leader.snapshot().unwrap();
    let since = behind.then(|| follower.revision());
    let mut digests = 0;
    let count = |ask: &SyncAsk, _: &SyncAnswer| {
        if let SyncAsk::Level { nodes, .. } = ask {
            digests += nodes.len();
        }
    };
    let last = run_session(
        &snapshot,
        follower.merkle().unwrap(),
        since,
        (64 << 10, usize::MAX),
        count,
    );
    if let SyncStep::InSync { .. } = last.0 {
        return (digests, 0, 0);
    }
    let step = install_of(last);
    let versions = step.1.iter().map(|p| p.versions.len()).sum();
    install(follower, &step, since);
    (digests, step.0.len(), versions)
}

fn sync(leader: &Store, follower: &Store) -> (usize, usize) {
    let (digests, buckets, _) = sync_with(leader, follower, false);
    (digests, buckets)
}

/// Every version of every path, as the versions API shows them.
fn history(store: &Store, paths: usize) -> Vec<String> {
    (0..paths)
        .map(|i| format!("{:?}", store.versions(&format!("cfg/{i}")).unwrap()))
        .collect()
}

#[test]
fn a_follower_behind_receives_only_the_versions_it_lacks_and_ends_equal() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Store::open(ld.path(), 3).unwrap();
    let follower = Store::open(fd.path(), 3).unwrap();
    let all: Vec<Op> = (0..2000).map(|i| put(&format!("cfg/{i}"), "v1")).collect();
    for chunk in all.chunks(500) {
        let (_, changes) = leader.execute_then(chunk, 1, 0, |_| {}).unwrap();
        follower.apply(&changes).unwrap();
    }
    // The follower misses 5 writes to each of 100 paths: more than the
    // history of 3, so the install must prune as an apply would.
    for round in 2..7 {
        let ops: Vec<Op> = (0..100)
            .map(|i| put(&format!("cfg/{}", i * 19), &format!("v{round}")))
            .collect();
        leader.execute(&ops, 2, 0).unwrap();
    }
    let (_, buckets, versions) = sync_with(&leader, &follower, true);
    eprintln!("100 paths behind by 5 versions: {buckets} buckets, {versions} versions moved");
    assert!(
        versions <= 300,
        "{versions} versions moved: only the 3 kept of the 5 missed per changed path"
    );
    assert_eq!(
        follower.merkle().unwrap().root(),
        leader.merkle().unwrap().root()
    );
    assert_eq!(history(&follower, 2000), history(&leader, 2000));
    assert_eq!(follower.position(), leader.position());
}

#[test]
fn sync_moves_only_what_differs() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Store::open(ld.path(), 5).unwrap();
    let follower = Store::open(fd.path(), 5).unwrap();
    let all: Vec<Op> = (0..5000).map(|i| put(&format!("cfg/{i}"), "v1")).collect();
    for chunk in all.chunks(1000) {
        let (_, changes) = leader.execute_then(chunk, 1, 0, |_| {}).unwrap();
        follower.apply(&changes).unwrap();
    }
    assert_eq!(
        sync(&leader, &follower),
        (0, 0),
        "equal stores: the root settles it"
    );

    // The follower misses 10 writes.
    let missed: Vec<Op> = (0..10)
        .map(|i| put(&format!("cfg/{}", i * 397), "v2"))
        .collect();
    leader.execute(&missed, 2, 0).unwrap();
    let changed = leader
        .merkle()
        .unwrap()
        .differing(&follower.merkle().unwrap())
        .len();
    let (digests, buckets) = sync(&leader, &follower);
    eprintln!(
        "10 missed writes over 5000 paths: {changed} buckets differ; asked {digests} digests, moved {buckets} buckets of {BUCKETS}"
    );
    assert_eq!(buckets, changed);
    assert!(
        digests <= 16 + changed * 16 * 2,
        "asked for {digests} digests"
    );
    assert_eq!(
        follower.merkle().unwrap().root(),
        leader.merkle().unwrap().root()
    );
    assert_eq!(follower.position(), leader.position());
}

/// A node that caught up by snapshot answers a retry of a write it only
/// received in the snapshot (once it leads), both when it was behind (an
/// incremental install) and when it repaired differing buckets: also a
/// write whose version the leader's history no longer keeps.
#[test]
fn request_ids_of_installed_versions_are_answered_after_the_install() {
    for behind in [true, false] {
        let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let leader = Store::open(ld.path(), 3).unwrap();
        let follower = Store::open(fd.path(), 3).unwrap();
        let (_, changes) = leader
            .execute_then(&[put("cfg/base", "v1")], 1, 0, |_| {})
            .unwrap();
        follower.apply(&changes).unwrap();
        let ops: Vec<Op> = (0..20)
            .map(|i| {
                put(&format!("cfg/{}", i % 5), &format!("v{i}"))
                    .with_request_id(Some(format!("id-{i}")))
            })
            .collect();
        leader.execute(&ops, 2, 0).unwrap();
        sync_with(&leader, &follower, behind);
        // Only the last 3 versions of each path travel (`storage.history`
        // 3): ids 5..20. Ids 0..5 left the leader's history and come from
        // its request ids.
        let ids: Vec<String> = (0..20).map(|i| format!("id-{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        assert_eq!(
            follower.applied_requests(&refs).unwrap(),
            leader.applied_requests(&refs).unwrap(),
            "behind: {behind}"
        );
        assert!(
            follower
                .applied_requests(&refs)
                .unwrap()
                .iter()
                .all(Option::is_some),
            "behind: {behind}"
        );
    }
}

/// Request ids travel in answers of bounded size, each going on from
/// where the last stopped, until every id is in: none lost or repeated at
/// the seams.
#[test]
fn request_ids_travel_in_bounded_answers() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Store::open(ld.path(), 3).unwrap();
    let follower = Store::open(fd.path(), 3).unwrap();
    let ops: Vec<Op> = (0..300)
        .map(|i| put("cfg/hot", &format!("v{i}")).with_request_id(Some(format!("id-{i:03}"))))
        .collect();
    leader.execute(&ops, 1, 0).unwrap();
    let snapshot = leader.snapshot().unwrap();
    let budget = 1024;
    let mut answers = 0;
    let bounded = |_: &SyncAsk, answer: &SyncAnswer| {
        if let SyncAnswer::Requests { ids, .. } = answer {
            answers += 1;
            let bytes: usize = ids.iter().map(|(id, _)| id.len() + 32).sum();
            assert!(bytes <= budget, "an answer of {bytes} bytes");
        }
    };
    let last = run_session(
        &snapshot,
        follower.merkle().unwrap(),
        None,
        (budget, usize::MAX),
        bounded,
    );
    let step = install_of(last);
    let requests = &step.2;
    let mut seen: Vec<&str> = requests.iter().map(|(id, _)| id.as_str()).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 300, "every id once");
    assert_eq!(requests.len(), 300, "no id twice");
    assert!(answers > 10, "{answers} answers of request ids");
    install(&follower, &step, None);
    let ids: Vec<String> = (0..300).map(|i| format!("id-{i:03}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(
        follower.applied_requests(&refs).unwrap(),
        leader.applied_requests(&refs).unwrap()
    );
}

/// A bucket larger than a frame may carry goes with fewer versions of its
/// history, the oldest left out: every answer fits, the follower ends with
/// the leader's state and the latest versions, and keeps fewer of the old
/// ones. Sent whole, the answer broke the stream at every try (a path
/// with a few versions of a large value is enough) and the follower never
/// got back.
#[test]
fn a_bucket_larger_than_a_frame_goes_with_fewer_old_versions() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Store::open(ld.path(), 20).unwrap();
    let follower = Store::open(fd.path(), 20).unwrap();
    let big = "y".repeat(100 << 10);
    for i in 0..10 {
        leader
            .execute(&[put("big/x", &format!("{i}{big}"))], 1, 0)
            .unwrap();
    }
    for i in 0..20 {
        leader
            .execute(&[put(&format!("cfg/{i}"), "small")], 1, 0)
            .unwrap();
    }
    let limit = 256 << 10;
    let snapshot = leader.snapshot().unwrap();
    let fits = |_: &SyncAsk, answer: &SyncAnswer| {
        if let SyncAnswer::Buckets { paths, .. } = answer {
            let bytes: usize = paths.iter().map(|p| p.size()).sum();
            assert!(bytes <= limit, "an answer of {bytes} bytes, over {limit}");
        }
    };
    let last = run_session(
        &snapshot,
        follower.merkle().unwrap(),
        None,
        (64 << 10, limit),
        fits,
    );
    install(&follower, &install_of(last), None);
    assert_eq!(
        follower.merkle().unwrap().root(),
        leader.merkle().unwrap().root()
    );
    let latest = |s: &Store| s.get("big/x", None).unwrap().map(|c| c.kind);
    assert_eq!(latest(&follower), latest(&leader));
    let kept = |s: &Store| s.versions("big/x").unwrap().unwrap_or_default().len();
    assert_eq!(kept(&leader), 10);
    assert!(
        (1..10).contains(&kept(&follower)),
        "the follower keeps {} versions",
        kept(&follower)
    );
}

/// An answer is taken only for buckets asked for and not received yet, and
/// for their paths, each once: the install clears the buckets it names and
/// sums its paths' leaves into their digests, so a bucket nobody asked for
/// would be wiped and a path sent twice would cancel itself out of its
/// bucket's digest.
#[test]
fn a_bucket_answer_is_taken_only_for_what_was_asked() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Store::open(ld.path(), 3).unwrap();
    let follower = Store::open(fd.path(), 3).unwrap();
    leader
        .execute(&[put("cfg/a", "1"), put("cfg/b", "2")], 1, 0)
        .unwrap();
    let snapshot = leader.snapshot().unwrap();
    let mut session = SyncSession::new(follower.merkle().unwrap(), None);
    let mut ask = SyncAsk::Start;
    let asked = loop {
        let answer = sync::answer(&snapshot, &ask, 1 << 20, usize::MAX).unwrap();
        match session.on_answer(snapshot.revision, snapshot.epoch, answer) {
            SyncStep::Ask(SyncAsk::Buckets { buckets, .. }) => break buckets,
            SyncStep::Ask(next) => ask = next,
            other => panic!("unexpected step: {other:?}"),
        }
    };
    let contents = snapshot.bucket_contents(&asked, None).unwrap();
    let unasked = (0..BUCKETS as u16).find(|b| !asked.contains(b)).unwrap();
    let mut doubled = contents.clone();
    doubled.extend(contents.clone());
    let mut stray = contents[0].clone();
    stray.path = "cfg/not-asked".into();
    let mut buckets = asked.clone();
    buckets.extend([unasked, u16::MAX]);
    let answer = SyncAnswer::Buckets {
        buckets,
        paths: doubled.into_iter().chain([stray]).collect(),
    };
    let mut step = session.on_answer(snapshot.revision, snapshot.epoch, answer);
    let mut staged = Vec::new();
    loop {
        let ask = match step {
            SyncStep::Ask(ask) => ask,
            SyncStep::Stage { paths, next } => {
                staged.extend(paths);
                next
            }
            _ => break,
        };
        let answer = sync::answer(&snapshot, &ask, 1 << 20, usize::MAX).unwrap();
        step = session.on_answer(snapshot.revision, snapshot.epoch, answer);
    }
    let step = install_of((step, staged));
    assert_eq!(step.0, asked, "only the buckets asked for");
    let mut names: Vec<&str> = step.1.iter().map(|p| p.path.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["cfg/a", "cfg/b"],
        "each path once, none from elsewhere"
    );
    install(&follower, &step, None);
    assert_eq!(follower.merkle().unwrap().root(), snapshot.merkle().root());
}

/// A session cut short (a leader change, a silent leader, a crash) leaves
/// the paths it staged behind. The next session's install takes its own
/// only: the older copy of a path it also carries would otherwise go in
/// beside the newer, and cancel it out of its bucket's digest.
#[test]
fn an_install_takes_only_its_own_sessions_staged_paths() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Store::open(ld.path(), 3).unwrap();
    let follower = Store::open(fd.path(), 3).unwrap();
    leader
        .execute(&[put("cfg/a", "1"), put("cfg/b", "1")], 1, 0)
        .unwrap();
    let session = |leader: &Store| {
        let snapshot = leader.snapshot().unwrap();
        let limits = (64 << 10, usize::MAX);
        install_of(run_session(
            &snapshot,
            follower.merkle().unwrap(),
            None,
            limits,
            |_, _| {},
        ))
    };
    let cut_short = session(&leader);
    leader.execute(&[put("cfg/a", "2")], 1, 0).unwrap();
    let (buckets, paths, requests, revision, epoch) = session(&leader);
    follower.stage(1, &cut_short.1).unwrap();
    follower.stage(2, &paths).unwrap();
    let installed = follower
        .install_staged(2, &buckets, &requests, revision, epoch, None)
        .unwrap();
    assert_eq!(installed, paths.len(), "only the session's own paths");
    assert_eq!(
        follower.merkle().unwrap().root(),
        leader.merkle().unwrap().root()
    );
    let latest = |s: &Store| s.get("cfg/a", None).unwrap().map(|c| c.kind);
    assert_eq!(latest(&follower), latest(&leader));
    assert_eq!(
        follower
            .install_staged(1, &[], &[], revision, epoch, None)
            .unwrap(),
        0,
        "the install emptied the staging table"
    );
}

/// No session survives a restart: what one staged before a crash is gone
/// at the next open, not kept on disk until some later session.
#[test]
fn a_restart_drops_what_a_session_staged() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let leader = Store::open(ld.path(), 3).unwrap();
    leader.execute(&[put("cfg/a", "1")], 1, 0).unwrap();
    let (_, paths, _, revision, epoch) = {
        let follower = Store::open(fd.path(), 3).unwrap();
        let step = install_of(run_session(
            &leader.snapshot().unwrap(),
            follower.merkle().unwrap(),
            None,
            (64 << 10, usize::MAX),
            |_, _| {},
        ));
        follower.stage(SESSION, &step.1).unwrap();
        // Made durable by a later transaction, as a checkpoint would.
        follower.execute(&[put("cfg/local", "x")], 1, 0).unwrap();
        step
    };
    assert!(!paths.is_empty());
    let follower = Store::open(fd.path(), 3).unwrap();
    assert_eq!(
        follower
            .install_staged(
                SESSION,
                &[],
                &[],
                revision.max(follower.revision()),
                epoch,
                None
            )
            .unwrap(),
        0
    );
}
