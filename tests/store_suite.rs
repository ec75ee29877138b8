//! One suite for both state stores, through `sortie::state::store::Store`: every case runs against a directory
//! store (`..._dir`) and an S3 store on the local test endpoint (`..._s3`). Cases that only make sense for S3
//! (concurrent writers without a lock, breaking a lock object) run for S3 only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;
use serde_json::Value as Json;
use sortie::error::Error;
use sortie::state::dir_store::DirStore;
use sortie::state::s3_store::S3Store;
use sortie::state::store::Store;
use sortie::state::{RunState, RunStatus, StepStatus};

use crate::aws_endpoint::Endpoint;

const BUCKET: &str = "bucket";
const PREFIX: &str = "pfx";
const PLAN: &str = "plan";

/// Where the stores of one test keep their documents: a temporary directory or a bucket on its own endpoint.
enum Backend {
    Dir(tempfile::TempDir),
    S3 {
        client: aws_sdk_s3::Client,
        // Last: the clients go before the server does.
        _endpoint: Endpoint,
    },
}

impl Backend {
    fn dir() -> Backend {
        Backend::Dir(tempfile::tempdir().expect("tempdir"))
    }

    async fn s3() -> Backend {
        let endpoint = tokio::task::spawn_blocking(Endpoint::start)
            .await
            .expect("start the test endpoint");
        endpoint.create_bucket(BUCKET).await;
        let client = endpoint.s3_client().await;
        Backend::S3 {
            client,
            _endpoint: endpoint,
        }
    }

    /// A new store on the same documents, as another process would open it (S3: knows no ETags yet).
    fn store(&self) -> Store {
        match self {
            Backend::Dir(dir) => Store::Dir(DirStore::new(dir.path().to_path_buf(), PLAN)),
            Backend::S3 { client, .. } => {
                Store::S3(S3Store::new(client.clone(), BUCKET, PREFIX, PLAN))
            }
        }
    }

    fn key(run: &str) -> String {
        format!("{PREFIX}/{PLAN}/{run}/state.json")
    }

    /// What a store error names as the state document.
    fn location(&self, run: &str) -> PathBuf {
        match self {
            Backend::Dir(dir) => dir.path().join(PLAN).join(run).join("state.json"),
            Backend::S3 { .. } => PathBuf::from(format!("s3://{BUCKET}/{}", Backend::key(run))),
        }
    }

    /// Writes a run's state document behind the store's back.
    async fn write_raw(&self, run: &str, bytes: &[u8]) {
        match self {
            Backend::Dir(_) => {
                let path = self.location(run);
                std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                std::fs::write(&path, bytes).expect("write state file");
            }
            Backend::S3 { client, .. } => {
                client
                    .put_object()
                    .bucket(BUCKET)
                    .key(Backend::key(run))
                    .body(bytes.to_vec().into())
                    .send()
                    .await
                    .expect("put state object");
            }
        }
    }

    /// A run's state document as stored.
    async fn read_raw(&self, run: &str) -> Option<Vec<u8>> {
        match self {
            Backend::Dir(_) => std::fs::read(self.location(run)).ok(),
            Backend::S3 { client, .. } => {
                match client
                    .get_object()
                    .bucket(BUCKET)
                    .key(Backend::key(run))
                    .send()
                    .await
                {
                    Ok(out) => Some(
                        out.body
                            .collect()
                            .await
                            .expect("read object")
                            .into_bytes()
                            .to_vec(),
                    ),
                    Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => None,
                    Err(e) => panic!(
                        "get state object: {}",
                        aws_sdk_s3::error::DisplayErrorContext(&e)
                    ),
                }
            }
        }
    }

    /// A new run's state. The directory store writes into `<root>/<plan>/<run>/`, which only its `lock` creates
    /// (`DirStore::save` does not); these cases save without the lock, so the directory is made here.
    fn new_run(&self, run: &str) -> RunState {
        if let Backend::Dir(dir) = self {
            std::fs::create_dir_all(dir.path().join(PLAN).join(run)).expect("mkdir run");
        }
        new_state(run)
    }

    fn is_s3(&self) -> bool {
        matches!(self, Backend::S3 { .. })
    }
}

fn new_state(run: &str) -> RunState {
    RunState {
        version: 1,
        lineage: format!("lineage-{run}-{:016x}", fastrand::u64(..)),
        serial: 0,
        plan: PLAN.into(),
        run_id: run.into(),
        plan_digest: "x".into(),
        target: "local".into(),
        status: RunStatus::Running,
        started_at: 0.0,
        finished_at: None,
        vars: IndexMap::new(),
        steps: IndexMap::new(),
        plan_file: None,
        run_key: None,
        changed: Default::default(),
    }
}

fn plan_file() -> PathBuf {
    PathBuf::from("/plans/train.yaml")
}

async fn stored(backend: &Backend, run: &str) -> RunState {
    backend
        .store()
        .load(run)
        .await
        .expect("load")
        .expect("the run has state")
}

fn counter(state: &RunState, name: &str) -> u64 {
    state.vars.get(name).and_then(Json::as_u64).unwrap_or(0)
}

fn bump(state: &mut RunState, name: &str) {
    let n = counter(state, name);
    state.vars.insert(name.into(), Json::from(n + 1));
}

#[track_caller]
fn assert_conflict(result: sortie::error::Result<()>, run: &str, serial: u64) {
    match result {
        Err(Error::Conflict { run: r, expected }) => {
            assert_eq!(r, run);
            assert_eq!(expected, serial);
        }
        other => panic!("expected a conflict on {run} at serial {serial}, got {other:?}"),
    }
}

/// Runs a case against both stores: `$dir` and `$s3` are the test names.
macro_rules! for_both_stores {
    ($($case:ident => $dir:ident, $s3:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $dir() {
            $case(&Backend::dir()).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $s3() {
            $case(&Backend::s3().await).await;
        }
    )*};
}

for_both_stores! {
    round_trip => test_int_store_round_trip_dir, test_int_store_round_trip_s3;
    runs_in_order => test_int_store_runs_in_order_dir, test_int_store_runs_in_order_s3;
    second_lock_fails => test_int_store_second_lock_fails_dir, test_int_store_second_lock_fails_s3;
    lost_update_detected => test_int_store_lost_update_detected_dir, test_int_store_lost_update_detected_s3;
    create_race => test_int_store_create_race_dir, test_int_store_create_race_s3;
    other_lineage_refused => test_int_store_other_lineage_refused_dir, test_int_store_other_lineage_refused_s3;
    corrupt_state_untouched => test_int_store_corrupt_state_untouched_dir, test_int_store_corrupt_state_untouched_s3;
    unlock => test_int_store_unlock_dir, test_int_store_unlock_s3;
    plan_lock_is_exclusive => test_int_store_plan_lock_is_exclusive_dir, test_int_store_plan_lock_is_exclusive_s3;
    state_document_checked_on_load => test_int_store_state_document_checked_on_load_dir, test_int_store_state_document_checked_on_load_s3;
}

/// The plan's lock (held while an apply picks its run) has one holder at a time, whom a second taker is told
/// of; it neither is a run nor blocks a run's lock.
async fn plan_lock_is_exclusive(backend: &Backend) {
    let store = backend.store();
    let first = store
        .lock_plan(&plan_file())
        .await
        .expect("first plan lock");
    let other = backend.store();
    match other.lock_plan(&plan_file()).await {
        Err(e @ Error::PlanLocked { .. }) => {
            assert_eq!(e.exit_code(), sortie::error::exit::LOCKED);
            let text = e.to_string();
            assert!(
                text.contains(&format!("plan {PLAN} is locked by another apply")),
                "{text}"
            );
            assert!(
                text.contains(&format!("pid {} on ", std::process::id())),
                "{text}"
            );
        }
        Err(e) => panic!("expected PlanLocked, got {e:?}"),
        Ok(_) => panic!("a second plan lock succeeded"),
    }
    let run = other
        .lock("20240101-000000-001-00", &plan_file())
        .await
        .expect("a run lock while the plan is locked");
    assert!(store.runs().await.expect("runs").is_empty());
    first.release().await.expect("release");
    let again = other
        .lock_plan(&plan_file())
        .await
        .expect("plan lock after release");
    again.release().await.expect("release");
    run.release().await.expect("release");
}

/// A state document that is not the run it is stored as (version, plan, run id) or carries a number out of
/// range is `CorruptState` naming it, and stays as it was.
async fn state_document_checked_on_load(backend: &Backend) {
    let run = "20240101-000000-001-00";
    let good = serde_json::to_value(new_state(run)).expect("json");
    let cases: Vec<(&str, Json, &str)> = vec![
        ("version", serde_json::json!(7), "`version` is 7"),
        ("plan", serde_json::json!("other"), "`plan` is `other`"),
        (
            "run_id",
            serde_json::json!("20240101-000000-002-00"),
            "`run_id` is",
        ),
        ("started_at", serde_json::json!(1e300), "`started_at` is"),
        (
            "steps",
            serde_json::json!({"a": {"status": "running", "attempt": 4294967295u64}}),
            "`steps.a.attempt` is 4294967295, out of range",
        ),
    ];
    for (key, value, reason) in cases {
        let mut doc = good.clone();
        doc[key] = value;
        let bytes = serde_json::to_vec(&doc).expect("json");
        backend.write_raw(run, &bytes).await;
        match backend.store().load(run).await {
            Err(e @ Error::CorruptState { .. }) => {
                assert_eq!(e.exit_code(), sortie::error::exit::INVALID);
                let Error::CorruptState { path, reason: got } = e else {
                    unreachable!()
                };
                assert_eq!(path, backend.location(run), "{key}");
                assert!(got.contains(reason), "{key}: {got}");
            }
            other => panic!("{key}: expected CorruptState, got {other:?}"),
        }
        assert_eq!(backend.read_raw(run).await.expect("stored"), bytes);
    }
}

/// Save, load, save again: the serial goes up by one per write, the lineage stays.
async fn round_trip(backend: &Backend) {
    let store = backend.store();
    assert!(store.load("r1").await.expect("load").is_none());
    assert!(backend.read_raw("r1").await.is_none());

    let mut state = backend.new_run("r1");
    let lineage = state.lineage.clone();
    store.save(&mut state).await.expect("first save");
    assert_eq!(state.serial, 1);
    let loaded = stored(backend, "r1").await;
    assert_eq!(loaded, state, "the stored document carries the new serial");
    // The document is where the layout says (`<prefix>/<plan>/<run>/state.json` on S3).
    let raw: RunState =
        serde_json::from_slice(&backend.read_raw("r1").await.expect("stored")).expect("json");
    assert_eq!(raw.serial, 1);

    // Saving again from the same store, then from another one that loaded it.
    state.step_mut("train").status = StepStatus::Running;
    state.vars.insert("lr".into(), Json::from(0.1));
    store.save(&mut state).await.expect("second save");
    assert_eq!(state.serial, 2);

    let other = backend.store();
    let mut again = other.load("r1").await.expect("load").expect("state");
    assert_eq!(again, state);
    again.step_mut("train").status = StepStatus::Succeeded;
    again.status = RunStatus::Succeeded;
    other.save(&mut again).await.expect("third save");
    assert_eq!(again.serial, 3);

    let last = stored(backend, "r1").await;
    assert_eq!(last.serial, 3);
    assert_eq!(last.lineage, lineage);
    assert_eq!(last.step("train").status, StepStatus::Succeeded);
    assert_eq!(last.vars["lr"], Json::from(0.1));
    assert_eq!(last.status, RunStatus::Succeeded);
}

/// runs() lists the runs with state, in order; a run with only a lock is not a run yet.
async fn runs_in_order(backend: &Backend) {
    let store = backend.store();
    assert!(store.runs().await.expect("runs").is_empty());
    for run in [
        "20240102-000000-003-00",
        "20240101-000000-001-00",
        "20240101-000000-002-00",
    ] {
        store.save(&mut backend.new_run(run)).await.expect("save");
    }
    // A listing is untrusted: an entry that is not a run id is no run.
    backend.write_raw("not-a-run", b"{}").await;
    let lock = store
        .lock("20240103-000000-000-00", &plan_file())
        .await
        .expect("lock a run with no state");
    assert_eq!(
        backend.store().runs().await.expect("runs"),
        [
            "20240101-000000-001-00",
            "20240101-000000-002-00",
            "20240102-000000-003-00"
        ]
    );
    lock.release().await.expect("release");
}

/// A second lock on a held run fails and names the holder; after release it succeeds.
async fn second_lock_fails(backend: &Backend) {
    let store = backend.store();
    store.save(&mut backend.new_run("r1")).await.expect("save");
    let first = store.lock("r1", &plan_file()).await.expect("first lock");

    let other = backend.store();
    match other.lock("r1", &plan_file()).await {
        Err(e @ Error::Locked { .. }) => {
            assert_eq!(e.exit_code(), sortie::error::exit::LOCKED);
            let Error::Locked { run, holder, plan } = e else {
                unreachable!()
            };
            assert_eq!(run, "r1");
            assert_eq!(plan, plan_file().display().to_string());
            let expected = format!(
                "pid {} on {} since ",
                std::process::id(),
                sortie::state::store::hostname()
            );
            assert!(holder.starts_with(&expected), "holder: {holder}");
            if backend.is_s3() {
                assert!(holder.contains("(expires "), "holder: {holder}");
                assert!(!holder.contains("expired"), "holder: {holder}");
            }
        }
        Err(e) => panic!("expected Locked, got {e:?}"),
        Ok(_) => panic!("a second lock on a held run succeeded"),
    }
    // Another run is not affected.
    let elsewhere = other.lock("r2", &plan_file()).await.expect("lock r2");

    first.release().await.expect("release");
    let second = other
        .lock("r1", &plan_file())
        .await
        .expect("lock after release");
    second.release().await.expect("release");
    elsewhere.release().await.expect("release");
}

/// Two writers load the same document and both change it: the first save wins, the second is a conflict,
/// and the stored document has the first's change.
async fn lost_update_detected(backend: &Backend) {
    let mut initial = backend.new_run("r1");
    backend.store().save(&mut initial).await.expect("save");

    let (a, b) = (backend.store(), backend.store());
    let mut sa = a.load("r1").await.expect("load").expect("state");
    let mut sb = b.load("r1").await.expect("load").expect("state");
    sa.vars.insert("who".into(), Json::from("a"));
    sb.vars.insert("who".into(), Json::from("b"));
    a.save(&mut sa).await.expect("first writer");
    assert_eq!(sa.serial, 2);

    let before = sb.clone();
    assert_conflict(b.save(&mut sb).await, "r1", 1);
    assert_eq!(sb, before, "a failed save leaves the state as it was");

    let now = stored(backend, "r1").await;
    assert_eq!(now.serial, 2);
    assert_eq!(now.vars["who"], "a", "no update lost");

    // The loser reloads and re-applies its change.
    let mut sb = b.load("r1").await.expect("load").expect("state");
    sb.vars.insert("who".into(), Json::from("b"));
    b.save(&mut sb).await.expect("second writer after reload");
    assert_eq!(stored(backend, "r1").await.serial, 3);

    // The first writer is now behind.
    sa.vars.insert("who".into(), Json::from("a again"));
    assert_conflict(a.save(&mut sa).await, "r1", 2);
    assert_eq!(stored(backend, "r1").await.vars["who"], "b");
}

/// Two writers create the same new run: one wins, the other's document is refused.
async fn create_race(backend: &Backend) {
    let (a, b) = (backend.store(), backend.store());
    assert!(a.load("r1").await.expect("load").is_none());
    assert!(b.load("r1").await.expect("load").is_none());
    let mut sa = backend.new_run("r1");
    let mut sb = backend.new_run("r1");
    a.save(&mut sa).await.expect("first creator");
    assert_conflict(b.save(&mut sb).await, "r1", 0);
    assert_eq!(sb.serial, 0);
    assert_eq!(stored(backend, "r1").await.lineage, sa.lineage);
}

/// A document of another lineage is never written over, whatever its serial.
async fn other_lineage_refused(backend: &Backend) {
    let mut original = backend.new_run("r1");
    backend.store().save(&mut original).await.expect("save");
    let bytes = backend.read_raw("r1").await.expect("stored");

    let mut impostor = backend.new_run("r1");
    impostor.serial = original.serial;
    assert_ne!(impostor.lineage, original.lineage);
    assert_conflict(backend.store().save(&mut impostor).await, "r1", 1);

    // Also from a store that has just read the real document.
    let store = backend.store();
    store.load("r1").await.expect("load");
    assert_conflict(store.save(&mut impostor).await, "r1", 1);
    assert_eq!(backend.read_raw("r1").await.expect("stored"), bytes);
}

/// A state document that is not state is an error naming it, and it is never rewritten.
async fn corrupt_state_untouched(backend: &Backend) {
    let garbage = b"{\"version\": 1, \"lineage\": \x00\xff not json";
    backend.write_raw("r1", garbage).await;
    let store = backend.store();
    match store.load("r1").await {
        Err(e @ Error::CorruptState { .. }) => {
            assert_eq!(e.exit_code(), sortie::error::exit::INVALID);
            assert!(e
                .to_string()
                .contains(&backend.location("r1").display().to_string()));
            let Error::CorruptState { path, reason } = e else {
                unreachable!()
            };
            assert_eq!(path, backend.location("r1"));
            assert!(!reason.is_empty());
        }
        other => panic!("expected CorruptState, got {other:?}"),
    }
    // A save over it is refused too (the store cannot know what it would overwrite).
    let mut fresh = backend.new_run("r1");
    match backend.store().save(&mut fresh).await {
        Err(Error::CorruptState { path, .. }) => assert_eq!(path, backend.location("r1")),
        other => panic!("expected the save to be refused, got {other:?}"),
    }
    assert_eq!(fresh.serial, 0);
    assert_eq!(
        backend.read_raw("r1").await.expect("still there"),
        garbage,
        "left untouched"
    );
    // Valid JSON that is not a state document is corrupt as well.
    backend.write_raw("r2", b"{\"hello\": 1}").await;
    assert!(matches!(
        store.load("r2").await,
        Err(Error::CorruptState { path, .. }) if path == backend.location("r2")
    ));
}

/// `unlock` breaks an S3 lock object (a dead holder's); the old holder's release then leaves the new lock alone.
/// A directory lock cannot be broken: it ends with its process.
async fn unlock(backend: &Backend) {
    let store = backend.store();
    assert!(!store.unlock("r1").await.expect("unlock nothing"));
    let first = store.lock("r1", &plan_file()).await.expect("first lock");
    let broken = backend.store().unlock("r1").await.expect("unlock");
    if !backend.is_s3() {
        assert!(!broken);
        assert!(backend.store().lock("r1", &plan_file()).await.is_err());
        first.release().await.expect("release");
        return;
    }
    assert!(broken, "a lock object was removed");
    let second = backend
        .store()
        .lock("r1", &plan_file())
        .await
        .expect("lock after unlock");
    // The first holder comes back and releases: the second holder's lock must stay.
    first.release().await.expect("release of a broken lock");
    assert!(
        matches!(
            backend.store().lock("r1", &plan_file()).await,
            Err(Error::Locked { .. })
        ),
        "the second holder's lock survived the first holder's release"
    );
    second.release().await.expect("release");
    assert!(!store.unlock("r1").await.expect("unlock after release"));
    store
        .lock("r1", &plan_file())
        .await
        .expect("lock again")
        .release()
        .await
        .expect("release");
}

/// Eight writers (separate stores, no lock) race from the same serial, round after round: exactly one wins
/// each round, the others get a conflict, reload and re-apply their own increment. Nothing is lost.
///
/// The writers load concurrently and all hold the same serial before anyone saves; their PutObject requests
/// are then sent one at a time (in whatever order the tasks get there). moto 5.2.5 checks If-Match /
/// If-None-Match and then writes without a lock, so two requests that arrive at the same instant can both pass
/// (seen: two winners in one round, about one suite run in three on two busy cores); S3 itself makes the check
/// and the write atomic. With `SORTIE_TEST_ATOMIC_S3=1` (an endpoint that serializes conditional writes, or
/// real S3) the saves hit the endpoint at the same instant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_int_store_concurrent_writers_s3() {
    const WRITERS: usize = 8;
    const EACH: u64 = 2;
    // The test endpoint serializes S3 writes (as S3 makes conditional writes atomic), so saves race for real;
    // SORTIE_TEST_ATOMIC_S3=0 sends them one at a time instead, for an endpoint without that fix.
    let simultaneous = std::env::var_os("SORTIE_TEST_ATOMIC_S3").is_none_or(|v| v != "0");
    let one_at_a_time = Arc::new(tokio::sync::Mutex::new(()));
    let backend = Backend::s3().await;
    backend
        .store()
        .save(&mut new_state("race"))
        .await
        .expect("create");
    let stores: Vec<Arc<Store>> = (0..WRITERS).map(|_| Arc::new(backend.store())).collect();
    let mut remaining = [EACH; WRITERS];
    let mut rounds = 0;
    while remaining.iter().any(|&r| r > 0) {
        rounds += 1;
        assert!(
            rounds <= WRITERS as u64 * EACH,
            "more rounds than increments"
        );
        let active: Vec<usize> = (0..WRITERS).filter(|&w| remaining[w] > 0).collect();
        let barrier = Arc::new(tokio::sync::Barrier::new(active.len()));
        let tasks: Vec<_> = active
            .iter()
            .map(|&w| {
                let store = stores[w].clone();
                let barrier = barrier.clone();
                let one_at_a_time = one_at_a_time.clone();
                tokio::spawn(async move {
                    let mut state = store.load("race").await.expect("load").expect("state");
                    let base = state.serial;
                    bump(&mut state, "counter");
                    bump(&mut state, &format!("w{w}"));
                    // Everyone has read the same document before anyone writes.
                    barrier.wait().await;
                    let _turn = match simultaneous {
                        true => None,
                        false => Some(one_at_a_time.lock().await),
                    };
                    let result = store.save(&mut state).await;
                    (w, base, result, state.serial)
                })
            })
            .collect();
        let mut winners = Vec::new();
        let mut bases = Vec::new();
        for task in tasks {
            let (w, base, result, serial) = task.await.expect("writer task");
            bases.push(base);
            match result {
                Ok(()) => {
                    assert_eq!(serial, base + 1);
                    winners.push(w);
                }
                Err(Error::Conflict { expected, .. }) => {
                    assert_eq!(expected, base);
                    assert_eq!(serial, base, "a loser's state is unchanged");
                }
                Err(e) => panic!("writer {w}: {e}"),
            }
        }
        assert!(
            bases.iter().all(|&b| b == bases[0]),
            "round {rounds}: all writers raced from the same serial: {bases:?}"
        );
        assert_eq!(
            winners.len(),
            1,
            "round {rounds}: exactly one writer wins: {winners:?}"
        );
        remaining[winners[0]] -= 1;
    }
    let last = stored(&backend, "race").await;
    let total = WRITERS as u64 * EACH;
    assert_eq!(counter(&last, "counter"), total, "no increment lost");
    for w in 0..WRITERS {
        assert_eq!(counter(&last, &format!("w{w}")), EACH);
    }
    assert_eq!(last.serial, 1 + total);
    assert_eq!(rounds, total);
}

/// With an empty prefix the keys start at the plan name (no leading slash).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_int_store_empty_prefix_s3() {
    let backend = Backend::s3().await;
    let Backend::S3 { client, .. } = &backend else {
        unreachable!()
    };
    let store = Store::S3(S3Store::new(client.clone(), BUCKET, "", PLAN));
    let run = "20240101-000000-001-00";
    store.save(&mut new_state(run)).await.expect("save");
    let lock = store.lock(run, Path::new("p.yaml")).await.expect("lock");
    let listed = client
        .list_objects_v2()
        .bucket(BUCKET)
        .send()
        .await
        .expect("list");
    let mut keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            format!("plan/{run}/lock.json"),
            format!("plan/{run}/state.json")
        ]
    );
    assert_eq!(store.runs().await.expect("runs"), [run]);
    lock.release().await.expect("release");
}
