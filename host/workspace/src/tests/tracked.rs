//! Scenario tests of snapshots of large trees, whose directories are
//! watched (`changes.rs`): each snapshot must record exactly the tree a
//! full listing would, whatever the step did between them.

use super::*;

/// A workspace of 1,100 files in 10 directories, two levels deep: large
/// enough to be watched.
fn large(area: &Area) -> (Workspace, TreeId) {
    let names: Vec<String> = (0..1100).map(|i| format!("d{}/s{}/f{i}.txt", i % 10, i % 3)).collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), b"x\n".as_slice())).collect();
    let (ws, base) = area.workspace_from_plain(&files);
    assert!(ws.tracker.is_some(), "a large tree is watched from its reset");
    (ws, base)
}

/// The tree a full listing records now, from a workspace opened afresh on
/// a copy (so it shares no cache or tracker with the one under test).
fn listed_whole(area: &Area) -> TreeId {
    let copy = area.path("copy");
    let _ = std::fs::remove_dir_all(&copy);
    let status = Command::new("cp")
        .arg("-a")
        .arg(area.ws())
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(status.success());
    let mut ws = Workspace::open(&copy, &area.git_dir()).expect("open the copy");
    assert!(ws.tracker.is_none());
    ws.snapshot().expect("full snapshot")
}

#[test]
fn a_step_that_changes_five_files_costs_five_files_and_their_directories() {
    let area = Area::new();
    let (mut ws, base) = large(&area);
    // The baseline's last files were written within the racy window of
    // its reset, and a snapshot that lists their directory hashes them
    // again, however few changed: on a fast disk that was every file of
    // the five directories below (184; the test failed on a first run on
    // a quiet disk, and always on tmpfs). So the five files change once
    // first, which lists those directories past the window.
    let change = |round: &str| {
        for i in [0, 1, 2, 13, 24] {
            let rel = format!("d{}/s{}/f{i}.txt", i % 10, i % 3);
            write(&area.ws(), &rel, format!("{round} {i}\n"));
        }
    };
    settle();
    change("first");
    ws.snapshot().expect("snapshot");
    settle();
    change("changed");
    let tree = ws.snapshot().expect("snapshot");
    let stats = ws.last_snapshot_stats();
    assert_eq!(stats.files_hashed, 5, "{stats:?}");
    assert!(
        stats.files_reused < 200,
        "unchanged directories were not listed: {stats:?}"
    );
    assert_ne!(tree, base);
    assert_eq!(tree, listed_whole(&area));

    // Nothing changed: nothing read, the same tree.
    assert_eq!(ws.snapshot().expect("snapshot"), tree);
    assert_eq!(ws.last_snapshot_stats().files_hashed, 0);
}

#[test]
fn new_deleted_and_renamed_directories_are_all_recorded() {
    let area = Area::new();
    let (mut ws, _) = large(&area);
    settle();
    // A new directory beneath an unchanged one, several levels deep.
    write(&area.ws(), "d3/s1/new/deeper/still/file.txt", "new\n");
    let tree = ws.snapshot().expect("snapshot");
    assert_eq!(tree, listed_whole(&area));

    // A deleted directory: its files leave the tree and the cache.
    std::fs::remove_dir_all(area.ws().join("d4/s2")).expect("rm");
    let tree = ws.snapshot().expect("snapshot");
    assert_eq!(tree, listed_whole(&area));
    assert!(!ws.cache.files.keys().any(|p| p.starts_with(b"d4/s2/")));
    assert!(ws.cache.dirs.contains_key(b"d4/s0".as_slice()));

    // Re-created at the same path, with other content.
    write(&area.ws(), "d4/s2/again.txt", "again\n");
    assert_eq!(ws.snapshot().expect("snapshot"), listed_whole(&area));

    // A renamed directory: its watches name the old path, so the whole
    // tree is listed, and still recorded right.
    std::fs::rename(area.ws().join("d5"), area.ws().join("d5-moved")).expect("rename");
    write(&area.ws(), "d5-moved/s0/after.txt", "after the move\n");
    assert_eq!(ws.snapshot().expect("snapshot"), listed_whole(&area));
    write(&area.ws(), "d5-moved/s1/later.txt", "later\n");
    assert_eq!(ws.snapshot().expect("snapshot"), listed_whole(&area));
    assert!(ws.tracker.is_some(), "watching resumes after a full listing");
}

#[test]
fn a_write_through_a_hard_link_is_seen_under_both_names() {
    let area = Area::new();
    let (mut ws, _) = large(&area);
    settle();
    std::fs::hard_link(area.ws().join("d0/s0/f0.txt"), area.ws().join("d1/s1/link.txt")).expect("link");
    let tree = ws.snapshot().expect("snapshot");
    assert_eq!(tree, listed_whole(&area));
    settle();
    // Written through the new name only: d0/s0 reports nothing.
    std::fs::write(area.ws().join("d1/s1/link.txt"), "through the link\n").expect("write");
    let tree = ws.snapshot().expect("snapshot");
    assert_eq!(tree, listed_whole(&area));
    let blob = ws
        .repo
        .find_tree(tree.oid())
        .and_then(|t| t.get_path(Path::new("d0/s0/f0.txt")))
        .and_then(|e| ws.repo.find_blob(e.id()))
        .expect("the first name's blob");
    assert_eq!(blob.content(), b"through the link\n");
}

#[test]
fn the_quota_counts_directories_left_unlisted() {
    let area = Area::new();
    let (mut ws, _) = large(&area);
    settle();
    write(&area.ws(), "d0/one-more.txt", "1\n");
    let quota = Quota {
        max_bytes: u64::MAX,
        max_entries: 1000,
        max_change_bytes: u64::MAX,
    };
    let err = ws
        .snapshot_within(quota)
        .expect_err("the tree holds over 1,000 entries");
    assert!(
        matches!(err, WorkspaceError::OverQuota { what: "entries", .. }),
        "{err}"
    );
    // A failed snapshot drops the cache and the tracker: list it whole
    // once, then change one more file.
    ws.snapshot().expect("snapshot");
    assert!(ws.tracker.is_some());
    write(&area.ws(), "d1/one-more.txt", "2\n");
    let quota = Quota {
        max_bytes: 2 * 1100 + 1,
        max_entries: u64::MAX,
        max_change_bytes: u64::MAX,
    };
    let err = ws.snapshot_within(quota).expect_err("2,204 bytes in all");
    assert!(
        matches!(
            err,
            WorkspaceError::OverQuota {
                what: "bytes (apparent size)",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_reset_watches_the_tree_it_wrote() {
    let area = Area::new();
    let (mut ws, base) = large(&area);
    write(&area.ws(), "d9/s0/f9.txt", "changed\n");
    let changed = ws.snapshot().expect("snapshot");
    ws.reset_to(base).expect("reset");
    assert!(ws.tracker.is_some());
    write(&area.ws(), "d9/s0/f9.txt", "changed\n");
    assert_eq!(ws.snapshot().expect("snapshot"), changed);
    assert!(ws.last_snapshot_stats().files_reused < 200);
}
