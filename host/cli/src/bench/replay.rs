//! `stepd bench replay`: what a checkpoint (snapshot + patch of a step) and
//! a hard reset (rebuild from the baseline + replay of 10 patches) cost on
//! generated repositories of 1k and 10k files, beside the git CLI doing the
//! same rebuild (`git clone` of the baseline + `git apply` of the same 10
//! patches), all in one run.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};

use super::Summary;
use stepd_workspace::{TreeId, Workspace};

/// Arguments of `stepd bench replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayBenchArgs {
    /// Repository sizes to generate, in files.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub files: Vec<usize>,
    /// Steps (patches) per run.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Files each step changes.
    #[arg(long, default_value_t = 5)]
    pub changed_per_step: usize,
    /// Rebuilds timed per repository (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

struct SizeResult {
    files: usize,
    checkpoint: Option<Summary>,
    rebuild: Option<Summary>,
    git_cli: Option<Summary>,
}

/// Run the benchmark and print its report to stdout.
pub fn run_replay_bench(args: &ReplayBenchArgs) -> anyhow::Result<()> {
    if args.steps == 0 || args.changed_per_step == 0 || args.rounds == 0 {
        bail!("--steps, --changed-per-step and --rounds must be at least 1");
    }
    let scratch = tempfile_dir()?;
    // Every size's checkpoints first, then the rebuilds, and nothing is
    // deleted before the end: on a filesystem that skips recently freed
    // inodes when it creates a file (ext4 without a journal, as on this
    // project's machines), a rebuild's thousands of deletions would
    // otherwise slow the file creations the next checkpoint times.
    let mut stepped = Vec::new();
    for &files in &args.files {
        if files < args.changed_per_step {
            bail!("--files {files} is smaller than --changed-per-step");
        }
        stepped.push(run_steps(args, files, &scratch.join(format!("repo-{files}")))?);
    }
    let mut results = Vec::new();
    for steps in stepped {
        results.push(measure_rebuilds(args, steps)?);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    print!("{}", render(args, &results));
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("stepd-bench-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("git")
        .args(["-c", "user.name=stepd-bench", "-c", "user.email=bench@stepd.invalid"])
        .args(args)
        .current_dir(dir)
        .output()
        .with_context(|| format!("running git {args:?} (the git CLI is the baseline of this benchmark)"))?;
    if !out.status.success() {
        bail!("git {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// `files` files of about 200 bytes, 100 to a directory, committed on main.
fn generate_repo(dir: &Path, files: usize) -> anyhow::Result<()> {
    let repo = dir.join("baseline");
    for i in 0..files {
        let file = repo.join(format!("d{:03}/f{i:05}.txt", i / 100));
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(
            &file,
            format!("file {i}\n{}\n", "lorem ipsum dolor sit amet ".repeat(7)),
        )?;
    }
    git(&repo, &["init", "-q", "-b", "main"])?;
    git(&repo, &["add", "-A"])?;
    git(&repo, &["commit", "-q", "-m", "baseline"])?;
    Ok(())
}

/// One repository after its steps: what the rebuilds start from.
struct Stepped {
    files: usize,
    dir: std::path::PathBuf,
    repo_arg: String,
    workspace: Workspace,
    baseline: TreeId,
    final_tree: TreeId,
    patches: Vec<Vec<u8>>,
    checkpoint: Option<Summary>,
}

/// Generate a repository of `files`, materialise it, and time the
/// checkpoint of each step.
fn run_steps(args: &ReplayBenchArgs, files: usize, dir: &Path) -> anyhow::Result<Stepped> {
    generate_repo(dir, files)?;
    let baseline_repo = dir.join("baseline");
    let repo_arg = baseline_repo.to_string_lossy().into_owned();
    let (mut workspace, baseline) =
        Workspace::create_from_baseline(&repo_arg, "main", &dir.join("workspace"), &dir.join("git"))?;
    let mut tree: TreeId = workspace.snapshot()?;

    // Steps: each rewrites `changed_per_step` files, as a guest would, then
    // the host checkpoints it.
    let mut checkpoint = Vec::new();
    let mut patches: Vec<Vec<u8>> = Vec::new();
    for step in 0..args.steps {
        for k in 0..args.changed_per_step {
            let i = (step * args.changed_per_step + k) * 7919 % files;
            let file = workspace.root().join(format!("d{:03}/f{i:05}.txt", i / 100));
            std::fs::write(&file, format!("file {i}, changed by step {step}\n"))?;
        }
        let t = Instant::now();
        let after = workspace.snapshot()?;
        let patch = workspace.diff(tree, after)?;
        checkpoint.push(t.elapsed().as_secs_f64());
        patches.push(patch.map(|p| p.bytes).unwrap_or_default());
        tree = after;
    }
    Ok(Stepped {
        files,
        dir: dir.to_owned(),
        repo_arg,
        workspace,
        baseline,
        final_tree: tree,
        patches,
        checkpoint: Summary::of(checkpoint),
    })
}

/// Time the hard resets of a stepped repository, and the git CLI doing
/// the same.
fn measure_rebuilds(args: &ReplayBenchArgs, stepped: Stepped) -> anyhow::Result<SizeResult> {
    let Stepped {
        files,
        dir,
        repo_arg,
        mut workspace,
        baseline,
        final_tree,
        patches,
        checkpoint,
    } = stepped;
    let dir = dir.as_path();

    // Hard reset: delete, rebuild from the baseline, replay every patch.
    let refs: Vec<&[u8]> = patches.iter().map(Vec::as_slice).filter(|p| !p.is_empty()).collect();
    let mut rebuild = Vec::new();
    for _ in 0..args.rounds {
        let t = Instant::now();
        let rebuilt = workspace.rebuild_from_baseline(baseline, &refs)?;
        rebuild.push(t.elapsed().as_secs_f64());
        if rebuilt != final_tree {
            bail!("the rebuilt tree {rebuilt} differs from the tree the steps produced {final_tree}");
        }
    }

    // The git CLI doing the same: clone the baseline, apply the patches.
    let patch_dir = dir.join("patches");
    std::fs::create_dir_all(&patch_dir)?;
    let mut patch_files = Vec::new();
    for (i, patch) in refs.iter().enumerate() {
        let file = patch_dir.join(format!("step-{i:04}.patch"));
        std::fs::write(&file, patch)?;
        patch_files.push(file.to_string_lossy().into_owned());
    }
    let mut git_cli = Vec::new();
    for round in 0..args.rounds {
        let clone = dir.join(format!("clone-{round}"));
        let clone_arg = clone.to_string_lossy().into_owned();
        let t = Instant::now();
        git(dir, &["clone", "-q", &repo_arg, &clone_arg])?;
        for file in &patch_files {
            git(&clone, &["apply", file])?;
        }
        git_cli.push(t.elapsed().as_secs_f64());
    }
    Ok(SizeResult {
        files,
        checkpoint,
        rebuild: Summary::of(rebuild),
        git_cli: Summary::of(git_cli),
    })
}

fn ms(summary: Option<Summary>, pick: fn(&Summary) -> f64) -> String {
    summary.map_or_else(|| "n/a".to_owned(), |s| format!("{:.2} ms", pick(&s) * 1e3))
}

fn render(args: &ReplayBenchArgs, results: &[SizeResult]) -> String {
    let mut out = format!(
        "stepd bench replay ({} steps, {} files changed per step, {} rebuild rounds)\n\n",
        args.steps, args.changed_per_step, args.rounds
    );
    out.push_str(
        "| files | checkpoint p50 | checkpoint p99 | rebuild + replay p50 | git clone + apply p50 | ratio |\n",
    );
    out.push_str(
        "|------:|---------------:|---------------:|---------------------:|----------------------:|------:|\n",
    );
    for r in results {
        let ratio = match (r.rebuild, r.git_cli) {
            (Some(ours), Some(git)) => format!("{:.2}x", ours.p50 / git.p50),
            _ => "n/a".to_owned(),
        };
        out.push_str(&format!(
            "| {:>5} | {:>14} | {:>14} | {:>20} | {:>21} | {:>5} |\n",
            r.files,
            ms(r.checkpoint, |s| s.p50),
            ms(r.checkpoint, |s| s.p99),
            ms(r.rebuild, |s| s.p50),
            ms(r.git_cli, |s| s.p50),
            ratio
        ));
    }
    out.push_str("\ntargets (on the largest repository):\n");
    if let Some(r) = results.iter().max_by_key(|r| r.files) {
        if let (Some(cp), Some(rb), Some(git)) = (r.checkpoint, r.rebuild, r.git_cli) {
            let verdict = |met: bool| if met { "met" } else { "MISSED" };
            out.push_str(&format!(
                "- checkpoint p50 <= 20 ms: {:.2} ms ({})\n",
                cp.p50 * 1e3,
                verdict(cp.p50 <= 0.020)
            ));
            out.push_str(&format!(
                "- rebuild + replay <= 2 s: {:.2} ms ({})\n",
                rb.p50 * 1e3,
                verdict(rb.p50 <= 2.0)
            ));
            out.push_str(&format!(
                "- rebuild + replay no slower than git clone + apply: {:.2}x ({})\n",
                rb.p50 / git.p50,
                verdict(rb.p50 <= git.p50)
            ));
        }
    }
    out
}
