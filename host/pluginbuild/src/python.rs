//! Python steps: `step.py` plus the `stepd` module (sdk/python), built
//! into a component of the world with the pinned componentize-py. The
//! component's entry module is the SDK's `stepd_app`, which imports the
//! plugin's `step` module.

use std::path::PathBuf;

use crate::toolchain::{builder, cached_build, run, Toolchains};
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
        run(builder(&python.componentize_py)
            .arg("-d")
            .arg(&python.wit)
            .args(["-w", "step", "componentize", "-p"])
            .arg(&plugin.dir)
            .arg("-p")
            .arg(&python.sdk)
            .args(["stepd_app", "-o"])
            .arg(&tmp))
        .map_err(|reason| PluginBuildError::Componentize {
            dir: plugin.dir.clone(),
            reason: format!("componentize-py: {reason}"),
        })?;
        std::fs::rename(&tmp, out).map_err(crate::io_error(out))
    })
}
