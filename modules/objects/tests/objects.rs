//! Objects against real redis-server backends: losses of any m backends,
//! corrupted shards, rebuild, wrong keys and tampered metadata.

mod common;

use common::*;
use zeronode_objects::meta::ShardFault;
use zeronode_objects::{CopyState, Error, ObjectId, Objects, Status, StoreOptions};

fn options(k: usize, m: usize, stripe_size: usize) -> StoreOptions {
    StoreOptions {
        data_shards: k,
        parity_shards: m,
        stripe_size,
        zstd_level: 3,
    }
}

/// Stores several files (empty, one byte, several stripes with a short last
/// one, exactly two stripes) and returns (id, content) pairs.
async fn store_samples(
    objects: &Objects,
    dir: &std::path::Path,
    opts: &StoreOptions,
) -> Vec<(ObjectId, Vec<u8>)> {
    let stripe = opts.stripe_size;
    let mut stored = Vec::new();
    for (n, len) in [0, 1, stripe * 3 + 12345, stripe * 2]
        .into_iter()
        .enumerate()
    {
        let data = content(len, n as u64 + 7);
        let path = write_file(dir, &format!("in-{n}"), &data);
        let report = objects
            .store(&path, opts)
            .await
            .unwrap_or_else(|e| panic!("store of {len} bytes failed: {e}"));
        assert_eq!(report.size, len as u64);
        stored.push((report.id, data));
    }
    stored
}

async fn assert_all_back(
    objects: &Objects,
    dir: &std::path::Path,
    stored: &[(ObjectId, Vec<u8>)],
    what: &str,
) {
    for (id, data) in stored {
        let out = dir.join(format!("out-{id}"));
        objects
            .retrieve(id, &out)
            .await
            .unwrap_or_else(|e| panic!("{what}: object {id} not retrieved: {e}"));
        let got = std::fs::read(&out).unwrap();
        assert!(
            got == *data,
            "{what}: object {id} differs ({} vs {} bytes)",
            got.len(),
            data.len()
        );
        std::fs::remove_file(&out).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_plus_two_survives_every_pair_of_stopped_backends() {
    let mut cluster = cluster(6);
    let dir = tempfile::tempdir().unwrap();
    let objects = objects(&cluster, 1);
    let stored = store_samples(&objects, dir.path(), &options(4, 2, 64 << 10)).await;
    assert_all_back(&objects, dir.path(), &stored, "all up").await;
    let pairs = combinations(6, 2);
    assert_eq!(pairs.len(), 15);
    for pair in pairs {
        for &b in &pair {
            cluster[b].stop();
        }
        assert_all_back(
            &objects,
            dir.path(),
            &stored,
            &format!("backends {pair:?} stopped"),
        )
        .await;
        let health = objects.check(&stored[2].0).await.unwrap();
        assert_eq!(health.status(), Status::Degraded);
        assert_eq!(health.min_good(), 4);
        for &b in &pair {
            cluster[b].restart();
        }
    }
    // A third loss is beyond 4+2: the error says which stripe and why.
    for b in [0, 1, 2] {
        cluster[b].stop();
    }
    let err = objects
        .retrieve(&stored[2].0, &dir.path().join("lost"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::StripeLost {
                good: 3,
                needed: 4,
                ..
            }
        ),
        "{err}"
    );
    assert!(!dir.path().join("lost").exists());
    assert!(
        names(dir.path()).iter().all(|n| n.starts_with("in-")),
        "{:?}",
        names(dir.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_plus_four_survives_sampled_losses_of_four_backends() {
    let mut cluster = cluster(14);
    let dir = tempfile::tempdir().unwrap();
    let objects = objects(&cluster, 2);
    let stored = store_samples(&objects, dir.path(), &options(10, 4, 128 << 10)).await;
    let all = combinations(14, 4);
    assert_eq!(all.len(), 1001);
    // Every 97th combination, plus the first and last: a spread sample.
    let mut sample: Vec<Vec<usize>> = all.iter().step_by(97).cloned().collect();
    sample.push(all[all.len() - 1].clone());
    for lost in sample {
        for &b in &lost {
            cluster[b].stop();
        }
        assert_all_back(
            &objects,
            dir.path(),
            &stored,
            &format!("backends {lost:?} stopped"),
        )
        .await;
        for &b in &lost {
            cluster[b].restart();
        }
    }
    // Four nodes lose their disks; rebuild; then four others stop.
    for b in [0, 5, 9, 13] {
        objects.backends()[b].command(&[b"FLUSHALL"]).await.unwrap();
    }
    for (id, _) in &stored {
        let report = objects.rebuild(id).await.unwrap();
        assert!(
            report.rewritten > 0 && report.unrepaired.is_empty(),
            "{report:?}"
        );
        assert_eq!(objects.check(id).await.unwrap().status(), Status::Healthy);
    }
    for b in [1, 2, 7, 12] {
        cluster[b].stop();
    }
    assert_all_back(
        &objects,
        dir.path(),
        &stored,
        "10+4 rebuilt, then 4 stopped",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_shards_are_caught_and_rebuilt() {
    for (k, m) in [(4usize, 2usize), (10, 4)] {
        let cluster = cluster(k + m);
        let dir = tempfile::tempdir().unwrap();
        let objects = objects(&cluster, 3);
        let stripe = 32 << 10;
        let data = content(stripe * 4 + 999, 11);
        let path = write_file(dir.path(), "in", &data);
        let id = objects
            .store(&path, &options(k, m, stripe))
            .await
            .unwrap()
            .id;
        // In every stripe corrupt m shards, a different set each stripe, at
        // different places: the header, the first and the last payload byte.
        let stripes = 5;
        for s in 0..stripes {
            for j in 0..m {
                let index = (s * 3 + j * 2) % (k + m);
                let index = if j > 0 && index == (s * 3) % (k + m) {
                    (index + 1) % (k + m)
                } else {
                    index
                };
                let backend = shard_backend(&objects, &id, s, index).await;
                let at = [5usize, 64, usize::MAX][(s + j) % 3];
                corrupt_value(&objects, backend, &id.shard_key(s as u64, index), at).await;
            }
        }
        let health = objects.check(&id).await.unwrap();
        assert_eq!(health.status(), Status::Degraded);
        for stripe in &health.stripes {
            assert_eq!(stripe.good(), k, "stripe {}", stripe.index);
            assert!(stripe
                .faults
                .iter()
                .flatten()
                .all(|f| matches!(f, ShardFault::Corrupt(_))));
        }
        assert_all_back(
            &objects,
            dir.path(),
            &[(id, data.clone())],
            &format!("{k}+{m} corrupted"),
        )
        .await;

        let report = objects.rebuild(&id).await.unwrap();
        assert_eq!(report.rewritten, stripes * m, "{report:?}");
        assert_eq!(report.moved, 0);
        assert!(
            report.unrepaired.is_empty() && report.lost_stripes.is_empty(),
            "{report:?}"
        );
        let health = objects.check(&id).await.unwrap();
        assert_eq!(health.status(), Status::Healthy, "{health:?}");
        assert_eq!(health.min_good(), k + m);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_after_two_wiped_backends_survives_two_more_losses() {
    let mut cluster = cluster(6);
    let dir = tempfile::tempdir().unwrap();
    let objects = objects(&cluster, 4);
    let stored = store_samples(&objects, dir.path(), &options(4, 2, 64 << 10)).await;
    // Two nodes lose their disks: the servers answer but hold nothing.
    for b in [1, 4] {
        objects.backends()[b].command(&[b"FLUSHALL"]).await.unwrap();
    }
    for (id, _) in &stored {
        let health = objects.check(id).await.unwrap();
        assert_eq!(health.status(), Status::Degraded);
        assert_eq!(health.metadata[1].1, CopyState::Missing);
        let report = objects.rebuild(id).await.unwrap();
        assert!(report.rewritten > 0 && report.moved == 0, "{report:?}");
        assert_eq!(report.metadata_copies, 6);
        assert_eq!(objects.check(id).await.unwrap().status(), Status::Healthy);
    }
    // Full redundancy again: two other backends can go.
    cluster[0].stop();
    cluster[3].stop();
    assert_all_back(
        &objects,
        dir.path(),
        &stored,
        "after rebuild, 0 and 3 stopped",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_moves_shards_of_a_dead_backend_to_a_spare() {
    let mut cluster = cluster(7);
    let dir = tempfile::tempdir().unwrap();
    let objects = objects(&cluster, 5);
    let stored = store_samples(&objects, dir.path(), &options(4, 2, 64 << 10)).await;
    cluster[2].stop();
    for (id, _) in &stored {
        let report = objects.rebuild(id).await.unwrap();
        assert!(report.unrepaired.is_empty(), "{report:?}");
        assert_eq!(report.metadata_copies, 6);
        let health = objects.check(id).await.unwrap();
        // Every shard is good, none on the dead backend; only its metadata copy is out of reach.
        assert!(health.stripes.iter().all(|s| s.good() == 6), "{health:?}");
        assert!(matches!(health.metadata[2].1, CopyState::Unreachable(_)));
    }
    // The dead backend stays dead; any two more can go.
    for pair in combinations(7, 2).into_iter().filter(|p| !p.contains(&2)) {
        for &b in &pair {
            cluster[b].stop();
        }
        assert_all_back(
            &objects,
            dir.path(),
            &stored,
            &format!("2 dead, {pair:?} stopped"),
        )
        .await;
        for &b in &pair {
            cluster[b].restart();
        }
    }
    // When the dead one returns with its old, lower-generation metadata, the newest copy still wins.
    cluster[2].restart();
    let (id, _) = &stored[2];
    let health = objects.check(id).await.unwrap();
    assert!(
        matches!(health.metadata[2].1, CopyState::Stale { generation: 1 }),
        "{:?}",
        health.metadata[2]
    );
    assert_all_back(&objects, dir.path(), &stored, "dead one back").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_and_tampered_metadata_give_clear_errors_and_no_file() {
    let cluster = cluster(6);
    let dir = tempfile::tempdir().unwrap();
    let objects = objects(&cluster, 6);
    let data = content(200_000, 3);
    let path = write_file(dir.path(), "in", &data);
    let id = objects
        .store(&path, &options(4, 2, 64 << 10))
        .await
        .unwrap()
        .id;
    let out = dir.path().join("out");

    let intruder = common::objects(&cluster, 99);
    let err = intruder.retrieve(&id, &out).await.unwrap_err();
    assert!(matches!(err, Error::WrongKey { copies: 6, .. }), "{err}");
    assert!(
        err.to_string().contains("wrong key or tampered metadata"),
        "{err}"
    );
    assert!(intruder.check(&id).await.is_err());
    assert!(intruder.rebuild(&id).await.is_err());
    assert_eq!(names(dir.path()), vec!["in"]);

    // One tampered copy is outvoted; the check names it.
    corrupt_value(&objects, 0, &id.metadata_key(), 100).await;
    assert_all_back(
        &objects,
        dir.path(),
        &[(id, data.clone())],
        "one copy tampered",
    )
    .await;
    let health = objects.check(&id).await.unwrap();
    assert!(
        matches!(health.metadata[0].1, CopyState::Invalid(_)),
        "{:?}",
        health.metadata[0]
    );
    assert_eq!(health.status(), Status::Degraded);
    // Rebuild rewrites it.
    objects.rebuild(&id).await.unwrap();
    assert_eq!(objects.check(&id).await.unwrap().status(), Status::Healthy);

    // Every copy tampered: nothing is trusted and nothing is written.
    for b in 0..6 {
        corrupt_value(&objects, b, &id.metadata_key(), 60 + b).await;
    }
    let err = objects.retrieve(&id, &out).await.unwrap_err();
    assert!(err.to_string().contains("tampered"), "{err}");
    assert_eq!(names(dir.path()), vec!["in"]);

    // An unknown object is not found, clearly.
    let err = objects
        .retrieve(&ObjectId([0; 16]), &out)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { backends: 6, .. }), "{err}");
    assert_eq!(names(dir.path()), vec!["in"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_backend_does_not_stop_reads() {
    let cluster = cluster(6);
    let dir = tempfile::tempdir().unwrap();
    let objects = objects(&cluster, 7);
    let stored = store_samples(&objects, dir.path(), &options(4, 2, 64 << 10)).await;
    cluster[3].freeze(true);
    cluster[5].freeze(true);
    let started = std::time::Instant::now();
    assert_all_back(&objects, dir.path(), &stored, "two frozen").await;
    // Neither the frozen metadata copies (3 s timeout) nor the frozen shards
    // are waited for: 4 objects take well under one timeout each.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // check must see every copy, so it waits for the timeout and says so;
    // once, not once per stripe (a backend that timed out is skipped for a
    // timeout period).
    let started = std::time::Instant::now();
    let health = objects.check(&stored[2].0).await.unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(health.metadata[3].1, CopyState::Unreachable(_)),
        "{:?}",
        health.metadata[3]
    );
    assert_eq!(health.min_good(), 4);
    cluster[3].freeze(false);
    cluster[5].freeze(false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_refuses_without_enough_backends_and_bad_options() {
    let mut cluster = cluster(6);
    let dir = tempfile::tempdir().unwrap();
    let objects = objects(&cluster, 8);
    let path = write_file(dir.path(), "in", b"hello");
    cluster[0].stop();
    let err = objects
        .store(&path, &options(4, 2, 1 << 20))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::NotEnoughBackends {
                needed: 6,
                reachable: 5,
                configured: 6
            }
        ),
        "{err}"
    );
    for b in 1..6 {
        let keys = objects.backends()[b].command(&[b"DBSIZE"]).await.unwrap();
        assert_eq!(keys, zeronode_objects::resp::Reply::Integer(0));
    }
    assert!(objects.store(&path, &options(0, 2, 1 << 20)).await.is_err());
    assert!(objects
        .store(&path, &options(1, 1, 32 << 20))
        .await
        .is_err());
    assert!(objects
        .store(&dir.path().join("absent"), &options(4, 1, 1 << 20))
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_fails_half_way_leaves_nothing_behind() {
    let cluster = cluster(6);
    let dir = tempfile::tempdir().unwrap();
    let objects = objects(&cluster, 9);
    // One backend fills up after a few stripes: redis then refuses SET (OOM).
    let full = &objects.backends()[3];
    let used = match full.command(&[b"INFO", b"memory"]).await.unwrap() {
        zeronode_objects::resp::Reply::Bulk(Some(info)) => String::from_utf8(info)
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix("used_memory:")
                    .map(|v| v.trim().parse::<u64>().unwrap())
            })
            .unwrap(),
        other => panic!("{other:?}"),
    };
    let limit = (used + (2 << 20)).to_string();
    full.command(&[b"CONFIG", b"SET", b"maxmemory", limit.as_bytes()])
        .await
        .unwrap();
    full.command(&[b"CONFIG", b"SET", b"maxmemory-policy", b"noeviction"])
        .await
        .unwrap();
    let data = content(24 << 20, 5);
    let path = write_file(dir.path(), "in", &data);
    let err = objects
        .store(&path, &options(4, 2, 1 << 20))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("SET refused"), "{err}");
    for (b, backend) in objects.backends().iter().enumerate() {
        let keys = backend.command(&[b"DBSIZE"]).await.unwrap();
        assert_eq!(
            keys,
            zeronode_objects::resp::Reply::Integer(0),
            "backend {b}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_down_at_store_time_gets_its_metadata_copy_on_rebuild() {
    let mut cluster = cluster(7);
    let dir = tempfile::tempdir().unwrap();
    let objects = objects(&cluster, 10);
    cluster[6].stop();
    let data = content(300_000, 8);
    let path = write_file(dir.path(), "in", &data);
    let id = objects
        .store(&path, &options(4, 2, 64 << 10))
        .await
        .unwrap()
        .id;
    cluster[6].restart();
    let health = objects.check(&id).await.unwrap();
    assert_eq!(health.metadata[6].1, CopyState::Missing);
    assert!(health.stripes.iter().all(|s| s.good() == 6));
    assert_eq!(health.status(), Status::Degraded);
    let report = objects.rebuild(&id).await.unwrap();
    assert_eq!(
        (report.rewritten, report.moved, report.metadata_copies),
        (0, 0, 7)
    );
    let health = objects.check(&id).await.unwrap();
    assert_eq!(health.status(), Status::Healthy, "{:?}", health.metadata);
    assert_eq!(health.generation, 2);
}
