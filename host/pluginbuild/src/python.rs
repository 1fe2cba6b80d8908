//! Python steps: `step.py` plus the `stepd` module (sdk/python), built
//! into a component of the world with the pinned componentize-py. The
//! component's entry module is the SDK's `stepd_app`, which imports the
//! plugin's `step` module.

use std::path::{Path, PathBuf};

use crate::toolchain::{builder, cached_build, run, Python, Toolchains};
use crate::{PluginBuildError, PluginLanguage, PluginSource};

/// The file that makes a directory a Python step.
pub(crate) const ENTRY: &str = "step.py";

/// Build one Python step (or reuse the cached component of the same
/// sources). Returns the component's path.
pub(crate) fn build(toolchains: &Toolchains, plugin: &PluginSource) -> Result<PathBuf, PluginBuildError> {
    cached_build(toolchains, PluginLanguage::Python, &plugin.dir, &plugin.name, |out| {
        let python = toolchains.python()?;
        eprintln!("building the Python step {} with componentize-py", plugin.name);
        let tmp = out.with_extension("wasm.tmp");
        componentize(
            python,
            &python.wit,
            "step",
            &[&plugin.dir, &python.sdk],
            "stepd_app",
            &tmp,
        )
        .map_err(|reason| PluginBuildError::Componentize {
            dir: plugin.dir.clone(),
            reason,
        })?;
        std::fs::rename(&tmp, out).map_err(crate::io_error(out))
    })
}

/// Run componentize-py: `module`, found on `path`, as a component of
/// `world` (in `wit`), written to `out`.
pub(crate) fn componentize(
    python: &Python,
    wit: &Path,
    world: &str,
    path: &[&Path],
    module: &str,
    out: &Path,
) -> Result<(), String> {
    let mut command = builder(&python.componentize_py);
    command.arg("-d").arg(wit).args(["-w", world, "componentize"]);
    for dir in path {
        command.arg("-p").arg(dir);
    }
    run(command.arg(module).arg("-o").arg(out)).map_err(|reason| format!("componentize-py: {reason}"))
}
