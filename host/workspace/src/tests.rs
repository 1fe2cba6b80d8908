//! Scenario tests of the workspace: real directories, real git
//! repositories (made with the git CLI), real patches checked by `git
//! apply`.

use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

/// What a test compares: every file and symlink under a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File { bytes: Vec<u8>, exec: bool },
    Link(PathBuf),
}

/// The files and symlinks under `root` (not following links; `.git` at the
/// top skipped), keyed by '/'-separated relative path.
fn file_map(root: &Path) -> BTreeMap<String, Node> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let entry = entry.expect("entry");
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            if rel == ".git" {
                continue;
            }
            let md = std::fs::symlink_metadata(&path).expect("lstat");
            if md.file_type().is_symlink() {
                out.insert(rel, Node::Link(std::fs::read_link(&path).expect("readlink")));
            } else if md.is_dir() {
                walk(root, &path, out);
            } else {
                let exec = md.permissions().mode() & 0o111 != 0;
                out.insert(
                    rel,
                    Node::File {
                        bytes: std::fs::read(&path).expect("read"),
                        exec,
                    },
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn write(root: &Path, rel: &str, bytes: impl AsRef<[u8]>) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, bytes).expect("write");
}

fn set_exec(root: &Path, rel: &str, exec: bool) {
    let path = root.join(rel);
    let mode = if exec { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Run git in `dir`; returns trimmed stdout.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=stepd",
            "-c",
            "user.email=stepd@example.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(["-c", "init.defaultBranch=main", "-c", "core.autocrlf=false"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Bytes no text heuristic would take for text.
fn binary(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) % 7 * 40)
        .collect()
}

/// A temp area with the usual layout: `ws` (workspace) and `git` (store).
struct Area {
    tmp: tempfile::TempDir,
}

impl Area {
    fn new() -> Area {
        Area {
            tmp: tempfile::tempdir().expect("tempdir"),
        }
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }
    fn ws(&self) -> PathBuf {
        self.path("ws")
    }
    fn git_dir(&self) -> PathBuf {
        self.path("git")
    }
    /// A plain baseline directory with `files`, and a workspace on it.
    fn workspace_from_plain(&self, files: &[(&str, &[u8])]) -> (Workspace, TreeId) {
        let base = self.path("baseline");
        std::fs::create_dir_all(&base).expect("mkdir");
        for (rel, bytes) in files {
            write(&base, rel, bytes);
        }
        Workspace::create_from_baseline(base.to_str().expect("utf8"), "", &self.ws(), &self.git_dir()).expect("create")
    }
}

/// Wait until files written now are out of the racy window, so a test
/// observes the stat cache rather than the racy re-check.
fn settle() {
    std::thread::sleep(RACY_MARGIN * 2);
}

#[test]
fn baseline_from_a_git_repository_at_a_branch() {
    let area = Area::new();
    let repo = area.path("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    git(&repo, &["init", "-q"]);
    write(&repo, "a.txt", "main\n");
    write(&repo, "dir/b.txt", "b\n");
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "main"]);
    git(&repo, &["checkout", "-q", "-b", "feature"]);
    write(&repo, "a.txt", "feature\n");
    write(&repo, "c.bin", binary(1, 100));
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "feature"]);
    git(&repo, &["checkout", "-q", "main"]);

    let (ws, tree) =
        Workspace::create_from_baseline(repo.to_str().expect("utf8"), "feature", &area.ws(), &area.git_dir())
            .expect("create from the feature branch");
    assert_eq!(tree.to_string(), git(&repo, &["rev-parse", "feature^{tree}"]));
    assert_eq!(ws.root(), area.ws());
    let files = file_map(&area.ws());
    assert_eq!(files.keys().collect::<Vec<_>>(), ["a.txt", "c.bin", "dir/b.txt"]);
    assert_eq!(
        files["a.txt"],
        Node::File {
            bytes: b"feature\n".to_vec(),
            exec: false
        }
    );
    assert!(!area.ws().join(".git").exists(), "the guest never sees a .git");
    drop(ws);

    // The same store is reused for a second workspace; a bare clone read
    // through a file:// URL gives the same trees.
    let bare = area.path("bare.git");
    git(
        area.tmp.path(),
        &["clone", "-q", "--bare", repo.to_str().expect("utf8"), "bare.git"],
    );
    let url = format!("file://{}", bare.display());
    let (_, main) =
        Workspace::create_from_baseline(&url, "main", &area.path("ws2"), &area.git_dir()).expect("file:// URL");
    assert_eq!(main.to_string(), git(&repo, &["rev-parse", "main^{tree}"]));
    assert_eq!(
        file_map(&area.path("ws2"))["a.txt"],
        Node::File {
            bytes: b"main\n".to_vec(),
            exec: false
        }
    );
    let (_, default) =
        Workspace::create_from_baseline(&url, "", &area.path("ws3"), &area.git_dir()).expect("default branch");
    assert_eq!(default, main, "an empty branch means the repository's default branch");
}

#[test]
fn bad_baselines_and_layouts_are_refused_with_named_errors() {
    let area = Area::new();
    let repo = area.path("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    git(&repo, &["init", "-q"]);
    write(&repo, "a.txt", "a\n");
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "a"]);
    let repo_str = repo.to_str().expect("utf8");

    let missing = area.path("nope").display().to_string();
    let err = Workspace::create_from_baseline(&missing, "main", &area.ws(), &area.git_dir()).expect_err("missing");
    assert!(
        matches!(&err, WorkspaceError::BaselineNotFound { repository } if *repository == missing),
        "{err}"
    );

    let err = Workspace::create_from_baseline(repo_str, "nope", &area.ws(), &area.git_dir()).expect_err("branch");
    assert!(
        matches!(&err, WorkspaceError::BranchNotFound { branch, .. } if branch == "nope"),
        "{err}"
    );
    assert!(!area.ws().exists(), "a refused baseline leaves no workspace directory");

    let err =
        Workspace::create_from_baseline(repo_str, "x:refs/heads/y", &area.ws(), &area.git_dir()).expect_err("bad");
    assert!(matches!(err, WorkspaceError::InvalidBranch { .. }), "{err}");

    let err =
        Workspace::create_from_baseline(repo_str, "main", &area.ws(), &area.ws().join("meta")).expect_err("inside");
    assert!(matches!(err, WorkspaceError::GitDirInsideWorkspace { .. }), "{err}");
    let err = Workspace::create_from_baseline(repo_str, "main", &area.ws(), &area.ws()).expect_err("same dir");
    assert!(matches!(err, WorkspaceError::GitDirInsideWorkspace { .. }), "{err}");
    let err = Workspace::create_from_baseline(repo_str, "main", &area.git_dir().join("w"), &area.git_dir())
        .expect_err("ws in git");
    assert!(matches!(err, WorkspaceError::WorkspaceInsideGitDir { .. }), "{err}");

    write(&area.ws(), "someone.txt", "theirs");
    let err = Workspace::create_from_baseline(repo_str, "main", &area.ws(), &area.git_dir()).expect_err("not empty");
    assert!(matches!(err, WorkspaceError::WorkspaceNotEmpty { .. }), "{err}");
    assert_eq!(std::fs::read(area.ws().join("someone.txt")).expect("kept"), b"theirs");

    let err = Workspace::open(&area.path("ws-none"), &area.git_dir()).expect_err("no such workspace");
    assert!(matches!(err, WorkspaceError::Io { .. }), "{err}");
}

#[test]
fn baseline_from_a_plain_directory_matches_what_git_records() {
    let area = Area::new();
    let base = area.path("baseline");
    write(&base, "README.md", "hello\n");
    write(&base, "src/main.rs", "fn main() {}\n");
    write(&base, "src/a-b.rs", "// sorts before src/a/\n");
    write(&base, "src/a/mod.rs", "// dir\n");
    write(&base, "src/a.rs", "// sorts after src/a/ in git order\n");
    write(&base, "bin/run.sh", "#!/bin/sh\n");
    set_exec(&base, "bin/run.sh", true);
    write(&base, "data.bin", binary(3, 5000));
    symlink("README.md", base.join("readme-link")).expect("symlink");
    std::fs::create_dir_all(base.join("empty/nested")).expect("empty dirs");

    let (mut ws, tree) =
        Workspace::create_from_baseline(base.to_str().expect("utf8"), "ignored", &area.ws(), &area.git_dir())
            .expect("create");

    // git's own tree for the same files proves the tree encoding and order.
    let copy = area.path("copy");
    let status = Command::new("cp")
        .args(["-a"])
        .arg(&base)
        .arg(&copy)
        .status()
        .expect("cp");
    assert!(status.success());
    git(&copy, &["init", "-q"]);
    git(&copy, &["add", "-A"]);
    assert_eq!(tree.to_string(), git(&copy, &["write-tree"]));

    assert_eq!(file_map(&area.ws()), file_map(&base));
    assert!(
        !area.ws().join("empty").exists(),
        "empty directories are not part of a tree"
    );
    assert_eq!(ws.snapshot().expect("snapshot"), tree);
}

#[test]
fn a_step_diff_names_added_modified_and_deleted_files() {
    let area = Area::new();
    let (mut ws, base) =
        area.workspace_from_plain(&[("keep.txt", b"keep\n"), ("edit.txt", b"one\n"), ("gone.txt", b"x\n")]);
    let before = ws.snapshot().expect("snapshot");
    assert_eq!(before, base);
    assert_eq!(ws.diff(base, before).expect("diff"), None, "nothing changed");

    write(&area.ws(), "edit.txt", "two\n");
    std::fs::remove_file(area.ws().join("gone.txt")).expect("rm");
    write(&area.ws(), "new/dir/added.txt", "added\n");
    let after = ws.snapshot().expect("snapshot");
    let patch = ws.diff(before, after).expect("diff").expect("a patch");
    assert_eq!(patch.changed_files, ["edit.txt", "gone.txt", "new/dir/added.txt"]);
    assert_eq!(patch.sha256, patch::sha256_hex(&patch.bytes));
    assert_eq!(patch.sha256.len(), 64);
    assert!(patch
        .sha256
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    let text = String::from_utf8(patch.bytes.clone()).expect("text patch");
    assert!(text.contains("diff --git a/edit.txt b/edit.txt"), "{text}");
    assert!(text.contains("-one\n+two\n"), "{text}");
    assert!(text.contains("deleted file mode 100644"), "{text}");
    assert_eq!(
        ws.diff(after, before).expect("reverse").expect("patch").changed_files,
        patch.changed_files
    );

    // The same change diffs to the same bytes (the no-progress rule relies on it).
    assert_eq!(ws.diff(before, after).expect("diff"), Some(patch));
    assert_eq!(ws.snapshot().expect("again"), after);
}

#[test]
fn snapshots_reuse_unchanged_files_and_trees() {
    let area = Area::new();
    let names: Vec<String> = (0..300).map(|i| format!("d{}/e{}/f{i}.txt", i % 5, i % 3)).collect();
    let contents: Vec<Vec<u8>> = names.iter().map(|n| format!("content of {n}\n").into_bytes()).collect();
    let files: Vec<(&str, &[u8])> = names
        .iter()
        .map(String::as_str)
        .zip(contents.iter().map(Vec::as_slice))
        .collect();
    let (mut ws, base) = area.workspace_from_plain(&files);

    // The reset that materialised a small baseline left the files it just
    // wrote racy rather than wait out the racy window: the first snapshot
    // re-reads those (writing no tree: the contents are the baseline's),
    // and once the window passed nothing is read.
    settle();
    assert_eq!(ws.snapshot().expect("snapshot"), base);
    let stats = ws.last_snapshot_stats();
    assert_eq!(stats.files_hashed + stats.files_reused, 300, "{stats:?}");
    assert!(stats.files_hashed > 0, "the last files written were racy: {stats:?}");
    assert_eq!(stats.trees_written, 0, "{stats:?}");
    assert_eq!(ws.snapshot().expect("snapshot"), base);
    let stats = ws.last_snapshot_stats();
    assert_eq!((stats.files_hashed, stats.files_reused), (0, 300), "{stats:?}");
    assert_eq!(stats.trees_written, 0, "{stats:?}");

    write(&area.ws(), "d1/e1/f1.txt", "changed\n");
    write(&area.ws(), "d4/new.txt", "new\n");
    let changed = ws.snapshot().expect("snapshot");
    let stats = ws.last_snapshot_stats();
    assert_eq!((stats.files_hashed, stats.files_reused), (2, 300 - 1), "{stats:?}");
    // Only the root and the directories on the changed paths are rebuilt.
    assert_eq!(stats.trees_written, 4, "root, d1, d1/e1, d4: {stats:?}");

    settle();
    assert_eq!(ws.snapshot().expect("snapshot"), changed);
    let stats = ws.last_snapshot_stats();
    assert!(stats.files_hashed <= 2, "at most the racy ones are re-read: {stats:?}");
    assert_eq!(ws.snapshot().expect("snapshot"), changed);
    let stats = ws.last_snapshot_stats();
    assert_eq!(
        (stats.files_hashed, stats.files_reused, stats.trees_written),
        (0, 301, 0),
        "{stats:?}"
    );
}

#[test]
fn a_rewrite_with_size_and_mtime_restored_is_caught_by_ctime() {
    let area = Area::new();
    let (mut ws, base) = area.workspace_from_plain(&[("config.toml", b"mode = \"safe\"\n")]);
    let path = area.ws().join("config.toml");
    let before = std::fs::metadata(&path).expect("stat");
    settle();

    // What a guest can do through WASI: same size, mtime put back, same inode.
    std::fs::write(&path, "mode = \"evil\"\n").expect("rewrite");
    let file = std::fs::File::options().write(true).open(&path).expect("open");
    file.set_modified(before.modified().expect("mtime"))
        .expect("restore mtime");
    drop(file);
    let after = std::fs::metadata(&path).expect("stat");
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(
        (after.len(), after.mtime(), after.mtime_nsec(), after.ino()),
        (before.len(), before.mtime(), before.mtime_nsec(), before.ino())
    );
    assert_ne!(
        (after.ctime(), after.ctime_nsec()),
        (before.ctime(), before.ctime_nsec())
    );

    let tree = ws.snapshot().expect("snapshot");
    assert_eq!(ws.last_snapshot_stats().files_hashed, 1);
    assert_ne!(tree, base);
    let patch = ws.diff(base, tree).expect("diff").expect("a patch");
    assert_eq!(patch.changed_files, ["config.toml"]);
}

#[test]
fn after_a_reset_of_a_large_tree_nothing_is_read_again() {
    let area = Area::new();
    let names: Vec<String> = (0..1100).map(|i| format!("d{}/f{i}.txt", i % 10)).collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), b"x\n".as_slice())).collect();
    let (mut ws, base) = area.workspace_from_plain(&files);
    // Watched from the reset, so nothing is even listed.
    assert_eq!(ws.snapshot().expect("snapshot"), base);
    let stats = ws.last_snapshot_stats();
    assert_eq!((stats.files_hashed, stats.files_reused), (0, 0), "{stats:?}");
}

#[test]
fn open_after_a_restart_trusts_the_persisted_cache() {
    // Large enough that its cache is kept on disk (a small tree's is not:
    // re-reading it is cheaper than saving the cache at every snapshot).
    let area = Area::new();
    let names: Vec<String> = (0..1100).map(|i| format!("d{}/f{i}.txt", i % 10)).collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), b"x\n".as_slice())).collect();
    let (mut ws, _) = area.workspace_from_plain(&files);
    // As when the tree cannot be watched (a watched tree's cache is kept
    // in memory only).
    ws.tracker = None;
    ws.untrackable = true;
    // A watched reset does not wait out the racy window, so the baseline's
    // last-written files would be racy at this snapshot: wait it out here,
    // so that only `b/d.txt` is.
    settle();
    write(&area.ws(), "b/d.txt", "d\n");
    let tree = ws.snapshot().expect("snapshot");
    drop(ws);
    settle();

    let mut ws = Workspace::open(&area.ws(), &area.git_dir()).expect("open");
    assert_eq!(ws.snapshot().expect("snapshot"), tree);
    let stats = ws.last_snapshot_stats();
    // Files written in the last few milliseconds before the cache was
    // saved are racy and read again; the others come from the cache.
    assert!(stats.files_hashed < 50 && stats.files_reused >= 1050, "{stats:?}");

    // A cache for another directory (same store) is never trusted.
    std::fs::rename(area.ws(), area.path("moved")).expect("move");
    let status = Command::new("cp")
        .arg("-a")
        .arg(area.path("moved"))
        .arg(area.ws())
        .status()
        .expect("cp");
    assert!(status.success());
    let mut ws = Workspace::open(&area.ws(), &area.git_dir()).expect("open the copy");
    assert_eq!(ws.snapshot().expect("snapshot"), tree);
    assert_eq!(ws.last_snapshot_stats().files_hashed, 1101);
}

#[test]
fn a_small_trees_cache_is_not_written_to_disk() {
    let area = Area::new();
    let (mut ws, _) = area.workspace_from_plain(&[("a.txt", b"a\n")]);
    write(&area.ws(), "b.txt", "b\n");
    ws.snapshot().expect("snapshot");
    assert!(!StatCache::path(&area.git_dir()).exists());
}

#[test]
fn a_guest_dot_git_is_not_recorded() {
    let area = Area::new();
    let (mut ws, base) = area.workspace_from_plain(&[("a.txt", b"a\n")]);
    write(&area.ws(), ".git/config", "[core]\n\thooksPath = /tmp/evil\n");
    write(&area.ws(), "sub/.GIT/HEAD", "ref: refs/heads/main\n");
    write(&area.ws(), "sub/.gitignore", "target\n");
    let tree = ws.snapshot().expect("snapshot");
    let patch = ws.diff(base, tree).expect("diff").expect("patch");
    assert_eq!(patch.changed_files, ["sub/.gitignore"]);
    assert_eq!(ws.last_snapshot_stats().entries_skipped, 2);
}

#[test]
fn an_empty_workspace_is_the_empty_tree() {
    let area = Area::new();
    let (mut ws, base) = area.workspace_from_plain(&[]);
    assert_eq!(base.to_string(), "4b825dc642cb6eb9a060e54bf8d69288fbee4904");
    std::fs::create_dir_all(area.ws().join("only/empty/dirs")).expect("mkdir");
    assert_eq!(ws.snapshot().expect("snapshot"), base);
}

#[test]
fn a_guest_cannot_nest_directories_without_bound() {
    let area = Area::new();
    let (mut ws, base) = area.workspace_from_plain(&[("a.txt", b"a\n")]);
    let deep: PathBuf = (0..=MAX_DEPTH).map(|_| "d").collect();
    std::fs::create_dir_all(area.ws().join(&deep)).expect("deep dirs");
    write(&area.ws(), &deep.join("f").to_string_lossy(), "f");
    let err = ws.snapshot().expect_err("too deep");
    assert!(matches!(err, WorkspaceError::TooDeep { max: MAX_DEPTH, .. }), "{err}");
    std::fs::remove_dir_all(area.ws().join("d")).expect("rm");
    assert_eq!(ws.snapshot().expect("snapshot after the error"), base);
    assert_eq!(
        ws.last_snapshot_stats().files_hashed,
        1,
        "the cache was dropped, not trusted"
    );
}

#[test]
fn a_snapshot_over_its_quota_stops_listing_at_the_limit() {
    let area = Area::new();
    let (mut ws, base) = area.workspace_from_plain(&[("a.txt", b"a\n")]);
    std::fs::create_dir_all(area.ws().join("many")).expect("mkdir");
    for i in 0..2000 {
        std::fs::write(area.ws().join(format!("many/f{i}")), "x").expect("write");
    }
    let quota = Quota {
        max_bytes: u64::MAX,
        max_entries: 50,
        max_change_bytes: u64::MAX,
    };
    let err = ws.snapshot_within(quota).expect_err("over the entry quota");
    match err {
        // The directory of 2000 was not listed to its end.
        WorkspaceError::OverQuota { what, found, limit, .. } => {
            assert_eq!((what, limit), ("entries", 50));
            assert!(found > 50 && found < 100, "listed {found} entries");
        }
        other => panic!("expected over-quota, got {other}"),
    }
    std::fs::write(area.ws().join("big"), vec![0u8; 4096]).expect("write");
    std::fs::remove_dir_all(area.ws().join("many")).expect("rm");
    let err = ws
        .snapshot_within(Quota {
            max_bytes: 1000,
            ..quota
        })
        .expect_err("over the byte quota");
    assert!(
        err.to_string()
            .contains("bytes (apparent size), over its limit of 1000"),
        "{err}"
    );
    std::fs::remove_file(area.ws().join("big")).expect("rm");
    assert_eq!(ws.snapshot_within(quota).expect("within the quota"), base);
}

#[test]
fn a_diff_too_large_to_hold_fails_having_read_only_blob_sizes() {
    let area = Area::new();
    let (mut ws, base) = area.workspace_from_plain(&[("old.bin", &[7u8; 3000][..]), ("keep.txt", b"k\n")]);
    std::fs::write(area.ws().join("new.bin"), vec![1u8; 2000]).expect("write");
    std::fs::remove_file(area.ws().join("old.bin")).expect("rm");
    let after = ws.snapshot().expect("snapshot");
    let quota = |max_change_bytes| Quota {
        max_bytes: u64::MAX,
        max_entries: u64::MAX,
        max_change_bytes,
    };
    // Both sides count: the deleted file's 3000 bytes and the new 2000.
    let err = ws
        .diff_within(base, after, quota(4999))
        .expect_err("over the change limit");
    match &err {
        WorkspaceError::OverQuota { found, limit, .. } => assert_eq!((*found, *limit), (5000, 4999)),
        other => panic!("expected over-quota, got {other}"),
    }
    assert!(err.is_limit(), "the step's failure, not the host's");
    let patch = ws
        .diff_within(base, after, quota(5000))
        .expect("within")
        .expect("a patch");
    assert_eq!(patch.changed_files, vec!["new.bin", "old.bin"]);
}
#[test]
fn tree_ids_print_and_serialise_as_hex() {
    let id: TreeId = "4b825dc642cb6eb9a060e54bf8d69288fbee4904".parse().expect("parse");
    assert_eq!(id.to_string(), "4b825dc642cb6eb9a060e54bf8d69288fbee4904");
    assert_eq!(format!("{id:?}"), "TreeId(4b825dc642cb6eb9a060e54bf8d69288fbee4904)");
    let json = serde_json::to_string(&id).expect("serialise");
    assert_eq!(json, "\"4b825dc642cb6eb9a060e54bf8d69288fbee4904\"");
    assert_eq!(serde_json::from_str::<TreeId>(&json).expect("deserialise"), id);
    assert!(
        serde_json::from_str::<TreeId>("\"4b825dc\"").is_err(),
        "abbreviations are refused"
    );
    assert!("zz".parse::<TreeId>().is_err());
}

mod patches;
mod tracked;
