//! Scenario tests of patches: replay and rebuild, `git apply` accepting our
//! patches, and patches or trees that try to reach outside the workspace.

use std::os::unix::fs::MetadataExt as _;

use super::*;

/// A baseline git repository with text, binary and executable files.
fn baseline_repo(area: &Area) -> PathBuf {
    let repo = area.path("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    git(&repo, &["init", "-q"]);
    write(&repo, "README.md", "# project\n\nline three\n");
    write(&repo, "src/lib.rs", "pub fn f() -> u32 {\n    1\n}\n");
    write(&repo, "assets/logo.bin", binary(7, 4000));
    write(&repo, "scripts/build.sh", "#!/bin/sh\nmake\n");
    set_exec(&repo, "scripts/build.sh", true);
    write(&repo, "old/notes.txt", "to be replaced by a directory\n");
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "baseline"]);
    repo
}

/// Three steps of edits, as a guest would make them.
fn step(ws: &Path, n: usize) {
    match n {
        0 => {
            write(ws, "src/new.rs", "pub const N: u8 = 0;\n");
            write(ws, "assets/blob.dat", binary(9, 2048));
            write(ws, "README.md", "# project\n\nline three, edited\n");
        }
        1 => {
            std::fs::remove_file(ws.join("src/lib.rs")).expect("rm");
            set_exec(ws, "scripts/build.sh", false);
            write(ws, "scripts/test.sh", "#!/bin/sh\ncargo test\n");
            set_exec(ws, "scripts/test.sh", true);
            symlink("../README.md", ws.join("src/readme")).expect("symlink");
            write(ws, "no-newline.txt", "no newline at the end");
        }
        _ => {
            std::fs::remove_file(ws.join("old/notes.txt")).expect("rm");
            std::fs::remove_dir(ws.join("old")).expect("rmdir");
            write(ws, "old", "now a file\n");
            let mut logo = std::fs::read(ws.join("assets/logo.bin")).expect("read");
            logo[100..110].copy_from_slice(&[0; 10]);
            logo.extend_from_slice(&binary(11, 300));
            write(ws, "assets/logo.bin", logo);
            std::fs::remove_file(ws.join("src/readme")).expect("rm link");
            symlink("new.rs", ws.join("src/readme")).expect("retarget");
        }
    }
}

#[test]
fn rebuild_from_baseline_reproduces_three_steps_byte_for_byte() {
    let area = Area::new();
    let repo = baseline_repo(&area);
    let (mut ws, baseline) =
        Workspace::create_from_baseline(repo.to_str().expect("utf8"), "main", &area.ws(), &area.git_dir())
            .expect("create");
    let mut trees = vec![baseline];
    let mut patches = Vec::new();
    for n in 0..3 {
        step(&area.ws(), n);
        let tree = ws.snapshot().expect("snapshot");
        let prev = *trees.last().expect("a tree");
        let patch = ws.diff(prev, tree).expect("diff").expect("each step changes something");
        // Replaying a patch onto its base gives exactly the snapshot's tree.
        assert_eq!(ws.apply_patch(prev, &patch.bytes).expect("apply"), tree, "step {n}");
        trees.push(tree);
        patches.push(patch);
    }
    let after_three = file_map(&area.ws());
    assert!(matches!(after_three["old"], Node::File { .. }));
    assert_eq!(after_three["src/readme"], Node::Link(PathBuf::from("new.rs")));

    // Wreck the workspace the way a stuck step might.
    std::fs::remove_dir_all(area.ws().join("src")).expect("rm");
    write(&area.ws(), "junk/deep/file", "junk");
    write(&area.ws(), "README.md", "garbage");
    symlink("/", area.ws().join("rootlink")).expect("symlink");
    let root_ino = std::fs::metadata(area.ws()).expect("stat").ino();

    let bytes: Vec<&[u8]> = patches.iter().map(|p| p.bytes.as_slice()).collect();
    let rebuilt = ws.rebuild_from_baseline(baseline, &bytes).expect("rebuild");
    assert_eq!(rebuilt, trees[3]);
    assert_eq!(file_map(&area.ws()), after_three);
    assert_eq!(
        std::fs::metadata(area.ws()).expect("stat").ino(),
        root_ino,
        "the directory itself stays"
    );
    // A small tree's files just written are racy after a reset: once the
    // racy window passed, one snapshot re-reads them and the next trusts
    // the cache.
    settle();
    assert_eq!(ws.snapshot().expect("snapshot"), trees[3]);
    assert_eq!(ws.snapshot().expect("snapshot"), trees[3]);
    assert_eq!(
        ws.last_snapshot_stats().files_hashed,
        0,
        "a reset leaves a cache trusted once the racy window passed"
    );

    // Resume from step 1: baseline + patch 0 only.
    let tree = ws
        .rebuild_from_baseline(baseline, &bytes[..1])
        .expect("rebuild to step 1");
    assert_eq!(tree, trees[1]);
    assert!(area.ws().join("old/notes.txt").is_file());
}

#[test]
fn git_apply_accepts_our_patches_binary_included() {
    let area = Area::new();
    let nul_bytes: Vec<u8> = (0..3000u32)
        .map(|i| if i % 5 == 0 { 0 } else { (i % 251) as u8 })
        .collect();
    let (mut ws, base) = area.workspace_from_plain(&[
        ("text.txt", b"alpha\nbeta\ngamma\n"),
        ("data.bin", &nul_bytes),
        ("gone.txt", b"delete me\n"),
        ("script.sh", b"#!/bin/sh\n"),
    ]);
    let mut changed = nul_bytes.clone();
    changed[17] = 0xff;
    changed.extend_from_slice(b"\0\0tail");
    write(&area.ws(), "data.bin", &changed);
    write(&area.ws(), "new.bin", [0u8, 1, 2, 0, 255, 0, 10, 13, 0]);
    write(&area.ws(), "text.txt", "alpha\nBETA\ngamma\ndelta");
    std::fs::remove_file(area.ws().join("gone.txt")).expect("rm");
    set_exec(&area.ws(), "script.sh", true);
    symlink("text.txt", area.ws().join("link")).expect("symlink");
    write(&area.ws(), "nested/deep/file.txt", "deep\n");
    let tree = ws.snapshot().expect("snapshot");
    let patch = ws.diff(base, tree).expect("diff").expect("patch");
    let text = String::from_utf8_lossy(&patch.bytes);
    assert!(text.contains("GIT binary patch"), "{text}");
    assert!(text.contains("\\ No newline at end of file"), "{text}");

    // A checkout of the baseline somewhere else entirely.
    let elsewhere = area.path("elsewhere");
    let status = Command::new("cp")
        .arg("-a")
        .arg(area.path("baseline"))
        .arg(&elsewhere)
        .status()
        .expect("cp");
    assert!(status.success());
    git(&elsewhere, &["init", "-q"]);
    let patch_file = area.path("step.patch");
    std::fs::write(&patch_file, &patch.bytes).expect("write patch");
    let patch_arg = patch_file.to_str().expect("utf8");
    git(&elsewhere, &["apply", "--check", patch_arg]);
    git(&elsewhere, &["apply", patch_arg]);
    assert_eq!(file_map(&elsewhere), file_map(&area.ws()));
    git(&elsewhere, &["add", "-A"]);
    assert_eq!(git(&elsewhere, &["write-tree"]), tree.to_string());
}

#[test]
fn a_patch_that_does_not_apply_changes_nothing() {
    let area = Area::new();
    let repo = baseline_repo(&area);
    let (mut ws, baseline) =
        Workspace::create_from_baseline(repo.to_str().expect("utf8"), "main", &area.ws(), &area.git_dir())
            .expect("create");
    step(&area.ws(), 0);
    let t1 = ws.snapshot().expect("snapshot");
    let p1 = ws.diff(baseline, t1).expect("diff").expect("patch");
    step(&area.ws(), 1);
    let t2 = ws.snapshot().expect("snapshot");
    let p2 = ws.diff(t1, t2).expect("diff").expect("patch");
    let files = file_map(&area.ws());
    assert_eq!(ws.apply_patch(t1, &p2.bytes).expect("the right base"), t2);

    // Altered: a context line the base does not have.
    let tampered = String::from_utf8(p1.bytes.clone())
        .expect("text")
        .replace(" # project", " # altered");
    assert_ne!(tampered.as_bytes(), p1.bytes.as_slice());
    for bad in [tampered.as_bytes(), b"this is not a patch\n".as_slice()] {
        let err = ws.apply_patch(baseline, bad).expect_err("must not apply");
        match err {
            WorkspaceError::PatchDoesNotApply { patch_sha256, reason } => {
                assert_eq!(patch_sha256, patch::sha256_hex(bad));
                assert!(!reason.is_empty());
            }
            other => panic!("expected PatchDoesNotApply, got {other}"),
        }
    }
    // Replayed twice (onto the wrong base): the files it adds already exist.
    let err = ws.apply_patch(t1, &p1.bytes).expect_err("wrong base");
    assert!(matches!(err, WorkspaceError::PatchDoesNotApply { .. }), "{err}");

    let err = ws
        .rebuild_from_baseline(baseline, &[&p1.bytes, tampered.as_bytes()])
        .expect_err("rebuild");
    assert!(matches!(err, WorkspaceError::PatchDoesNotApply { .. }), "{err}");
    assert_eq!(
        file_map(&area.ws()),
        files,
        "a failed rebuild leaves the directory untouched"
    );
    assert_eq!(ws.snapshot().expect("snapshot"), t2);
}

/// A patch creating `path` with one line, as git would print it.
fn add_file_patch(path: &str) -> Vec<u8> {
    format!(
        "diff --git a/{path} b/{path}\nnew file mode 100644\nindex 0000000..2c2e2ea\n--- /dev/null\n+++ b/{path}\n@@ -0,0 +1 @@\n+pwned\n"
    )
    .into_bytes()
}

#[test]
fn unsafe_patch_paths_are_refused_before_anything_is_written() {
    let area = Area::new();
    let outside = area.path("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    let (mut ws, _) = area.workspace_from_plain(&[("a/b.txt", b"b\n")]);
    symlink(&outside, area.ws().join("link")).expect("symlink");
    symlink("a", area.ws().join("inner")).expect("symlink in the workspace");
    let base = ws.snapshot().expect("snapshot");
    let files = file_map(&area.ws());

    let cases = [
        "../x",
        "/etc/x",
        "a/../../x",
        "link/x",
        "inner/x",
        "a/./x",
        "a//x",
        ".git/config",
        "a/.GIT/hooks/pre-commit",
    ];
    for path in cases {
        let bytes = add_file_patch(path);
        match ws.apply_patch(base, &bytes) {
            Err(WorkspaceError::UnsafePatchPath {
                path: named,
                reason,
                patch_sha256,
            }) => {
                assert_eq!(named, path, "{reason}");
                assert_eq!(patch_sha256, patch::sha256_hex(&bytes));
            }
            other => panic!("{path}: expected UnsafePatchPath, got {other:?}"),
        }
        let err = ws
            .rebuild_from_baseline(base, &[&bytes])
            .expect_err("rebuild refuses too");
        assert!(matches!(err, WorkspaceError::UnsafePatchPath { .. }), "{path}: {err}");
    }
    // A patch that creates a symlink and writes through it in one go.
    let mut sneaky = b"diff --git a/l b/l\nnew file mode 120000\nindex 0000000..6c2ec8b\n--- /dev/null\n+++ b/l\n@@ -0,0 +1 @@\n+/etc\n\\ No newline at end of file\n".to_vec();
    sneaky.extend_from_slice(&add_file_patch("l/passwd"));
    let err = ws.apply_patch(base, &sneaky).expect_err("through its own symlink");
    assert!(
        matches!(&err, WorkspaceError::UnsafePatchPath { path, .. } if path == "l/passwd"),
        "{err}"
    );

    assert_eq!(
        std::fs::read_dir(&outside).expect("ls").count(),
        0,
        "nothing written outside"
    );
    assert_eq!(file_map(&area.ws()), files, "nothing written inside");
    // The same file under a safe name applies fine.
    let ok = ws
        .apply_patch(base, &add_file_patch("a/x"))
        .expect("a safe path applies");
    assert_eq!(ws.diff(base, ok).expect("diff").expect("patch").changed_files, ["a/x"]);
}

#[test]
fn a_guest_symlink_is_recorded_not_followed_and_never_written_through() {
    let area = Area::new();
    let outside = area.path("outside");
    write(&outside, "secret.txt", "top secret\n");
    let (mut ws, base) = area.workspace_from_plain(&[("a.txt", b"a\n")]);
    symlink(&outside, area.ws().join("evil")).expect("plant evil -> outside");
    symlink("/", area.ws().join("root")).expect("plant root -> /");

    let tree = ws.snapshot().expect("snapshot");
    let patch = ws.diff(base, tree).expect("diff").expect("patch");
    assert_eq!(
        patch.changed_files,
        ["evil", "root"],
        "links only: nothing behind them was read"
    );
    let (hostile, blob) = {
        let git_tree = ws.repo.find_tree(tree.oid()).expect("tree");
        let evil = git_tree.get_name("evil").expect("evil recorded");
        assert_eq!(evil.filemode(), 0o120000);
        let target = ws.repo.find_blob(evil.id()).expect("blob");
        assert_eq!(
            target.content(),
            outside.as_os_str().as_encoded_bytes(),
            "the link's target, not the directory"
        );

        // A tree with `evil/x` as a regular path: the reset removes the link
        // (not its target) and creates a real directory.
        let mut inner = ws.repo.treebuilder(None).expect("builder");
        let blob = ws.repo.blob(b"written by reset\n").expect("blob");
        inner.insert("x", blob, 0o100644).expect("insert");
        let inner = inner.write().expect("write");
        let mut top = ws.repo.treebuilder(Some(&git_tree)).expect("builder");
        top.insert("evil", inner, 0o040000).expect("insert");
        (TreeId(top.write().expect("write")), blob)
    };
    ws.reset_to(hostile).expect("reset");
    assert_eq!(
        file_map(&outside).keys().collect::<Vec<_>>(),
        ["secret.txt"],
        "nothing written outside"
    );
    assert!(std::fs::symlink_metadata(area.ws().join("evil"))
        .expect("lstat")
        .is_dir());
    assert_eq!(
        std::fs::read(area.ws().join("evil/x")).expect("read"),
        b"written by reset\n"
    );
    assert!(std::fs::symlink_metadata(area.ws().join("root"))
        .expect("lstat")
        .file_type()
        .is_symlink());

    // The capability itself refuses to resolve through a link out of the
    // workspace, whatever code holds it.
    assert!(ws.root.write("root/tmp/stepd-escape", b"x").is_err());
    assert!(!Path::new("/tmp/stepd-escape").exists());

    // A tree entry named `..` (a hostile baseline) is refused, not written.
    let odb = ws.repo.odb().expect("odb");
    let mut bytes = b"100644 ok.txt\0".to_vec();
    bytes.extend_from_slice(blob.as_bytes());
    let good = odb.write(git2::ObjectType::Tree, &bytes).expect("tree");
    let mut bytes = b"100644 ..\0".to_vec();
    bytes.extend_from_slice(blob.as_bytes());
    let dotdot = odb.write(git2::ObjectType::Tree, &bytes).expect("raw tree");
    drop(odb);
    let err = ws.reset_to(TreeId(dotdot)).expect_err("'..' entry");
    assert!(
        matches!(&err, WorkspaceError::UnsafeTreeEntry { path, .. } if path == ".."),
        "{err}"
    );
    ws.reset_to(TreeId(good)).expect("a sane tree still resets");
    assert_eq!(file_map(&area.ws()).keys().collect::<Vec<_>>(), ["ok.txt"]);
}
