//! JavaScript steps: `step.js`, bundled with its imports (`stepd` is the
//! SDK, sdk/js/stepd.js) and built into a component of the world with the
//! pinned componentize-js, by the toolchain's `build.mjs`.

use std::path::{Path, PathBuf};

use crate::toolchain::{builder, cached_build, run, JavaScript, Toolchains};
use crate::{PluginBuildError, PluginLanguage, PluginSource};

/// The file that makes a directory a JavaScript step.
pub(crate) const ENTRY: &str = "step.js";

/// Build one JavaScript step (or reuse the cached component of the same
/// sources). Returns the component's path.
pub(crate) fn build(toolchains: &Toolchains, plugin: &PluginSource) -> Result<PathBuf, PluginBuildError> {
    cached_build(
        toolchains,
        PluginLanguage::JavaScript,
        &plugin.dir,
        &plugin.name,
        |out| {
            let js = toolchains.javascript()?;
            eprintln!("building the JavaScript step {} with componentize-js", plugin.name);
            componentize(js, &js.wit, "step", &plugin.dir.join(ENTRY), out).map_err(|reason| {
                PluginBuildError::Componentize {
                    dir: plugin.dir.clone(),
                    reason,
                }
            })
        },
    )
}

/// Run `build.mjs`: bundle `entry` (with `stepd` resolving to the SDK) and
/// make it a component of `world` (in `wit`), written to `out`.
pub(crate) fn componentize(js: &JavaScript, wit: &Path, world: &str, entry: &Path, out: &Path) -> Result<(), String> {
    run(builder("node")
        .arg(js.dir.join("build.mjs"))
        .arg(entry)
        .arg(js.dir.join("stepd.js"))
        .arg(wit)
        .arg(world)
        .arg(out))
    .map_err(|reason| format!("node build.mjs (componentize-js): {reason}"))
}
