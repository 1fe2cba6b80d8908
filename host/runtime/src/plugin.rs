//! Loading step plugins: read a `.wasm` file, prove it is a component of
//! the `stepd:plugin` world, compile it once and keep it ready to
//! instantiate. Every way a file can be wrong has its own error, so
//! `stepd plugin check` can tell a plugin author exactly what to fix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use stepd_plugin_file::{read_plugin_digested, remembered_digest, wasm_kind, PluginDigest, PluginFileError, WasmKind};
use wasmtime::component::{Component, Linker};
use wasmtime::Engine;

use super::bindings::StepPre;
use super::AttemptState;

/// Why a file is not a usable step plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The name is not a file and not in the plugin directory.
    #[error("plugin {name:?} not found (looked for {})", looked_in.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotFound {
        /// The name or path as given.
        name: String,
        /// Every place that was tried.
        looked_in: Vec<PathBuf>,
    },
    /// The file exists but could not be read.
    #[error("cannot read plugin {}: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not a file stepd reads as a plugin (a FIFO, a device, a directory,
    /// a file over the size limit).
    #[error("{reason}")]
    Refused {
        /// The file.
        path: PathBuf,
        /// Why, naming the path.
        reason: String,
    },
    /// Not WebAssembly at all.
    #[error("{} is not a WebAssembly file (no \\0asm header)", path.display())]
    NotWasm {
        /// The file.
        path: PathBuf,
    },
    /// A core wasm module, not a component.
    #[error(
        "{} is a core WebAssembly module, not a component; build the plugin with \
         `cargo build --release --target wasm32-wasip2`",
        path.display()
    )]
    CoreModule {
        /// The file.
        path: PathBuf,
    },
    /// A component wasmtime refused to compile.
    #[error("{} is not a valid component: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What the validator or compiler said.
        message: String,
    },
    /// A component that imports something stepd does not provide.
    #[error("{} imports something stepd does not provide: {message}", path.display())]
    UnsatisfiedImport {
        /// The file.
        path: PathBuf,
        /// The linker's message, naming the import.
        message: String,
    },
    /// A component that does not export `run` with the contract's type.
    #[error(
        "{} is not a stepd:plugin/step component: {message} \
         (a step exports `run: func(ctx: step-context) -> result<step-output, step-error>`)",
        path.display()
    )]
    WrongWorld {
        /// The file.
        path: PathBuf,
        /// What the type check said.
        message: String,
    },
}

/// A compiled, type-checked step plugin, ready to instantiate. Cheap to
/// clone.
#[derive(Clone)]
pub struct Plugin {
    name: String,
    sha256: String,
    pre: StepPre<AttemptState>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("sha256", &self.sha256)
            .finish()
    }
}

impl Plugin {
    /// The plugin's name (its file stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The sha256 (hex) of the component file, for pinning.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub(super) fn pre(&self) -> &StepPre<AttemptState> {
        &self.pre
    }
}

/// Compiled plugins by file hash: a plugin is compiled once per process
/// (and, through wasmtime's cache, once per host). Each hash has its own
/// slot, so a load of a component another thread is compiling (a worker's
/// warm-up, say: a Python step takes seconds) waits for that compile
/// instead of doing it again.
///
/// Every job loads its plugin again, and reading and hashing a Python or
/// JavaScript step (12–19 MB) costs tens of milliseconds, so the hash is
/// taken from `stepd-plugin-file`'s memory of it while the file's `stat`
/// is what it was when it was hashed, as git's index does.
#[derive(Default)]
pub(super) struct PluginCache {
    by_hash: Mutex<HashMap<String, Arc<Mutex<Option<Plugin>>>>>,
}

impl PluginCache {
    /// The plugin compiled from the bytes whose hash is `sha256`, if any.
    fn compiled(&self, sha256: &str) -> Option<Plugin> {
        let slot = self
            .by_hash
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(sha256)?
            .clone();
        let compiled = slot.lock().unwrap_or_else(PoisonError::into_inner);
        compiled.clone()
    }

    /// Load the plugin at `path`, compiling it only if these exact bytes
    /// were never loaded before, and reading it only if the file changed
    /// since it was last read.
    pub(super) fn load(
        &self,
        engine: &Engine,
        linker: &Linker<AttemptState>,
        path: &Path,
    ) -> Result<Plugin, PluginError> {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(plugin) = remembered_digest(path).and_then(|digest| self.compiled(&digest.sha256)) {
            return Ok(Plugin { name, ..plugin });
        }
        self.read_and_compile(engine, linker, path, name)
    }

    fn read_and_compile(
        &self,
        engine: &Engine,
        linker: &Linker<AttemptState>,
        path: &Path,
        name: String,
    ) -> Result<Plugin, PluginError> {
        let (bytes, digest) = read_plugin_digested(path).map_err(|e| match e {
            PluginFileError::Open { path, source } | PluginFileError::Read { path, source } => {
                PluginError::Unreadable { path, source }
            }
            refused => PluginError::Refused {
                path: path.to_owned(),
                reason: refused.to_string(),
            },
        })?;
        let Some(PluginDigest { sha256, .. }) = digest else {
            return Err(PluginError::NotWasm { path: path.to_owned() });
        };
        let slot = self
            .by_hash
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(sha256.clone())
            .or_default()
            .clone();
        let mut compiled = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(plugin) = compiled.as_ref() {
            return Ok(Plugin { name, ..plugin.clone() });
        }
        let pre = match compile(engine, linker, path, &bytes) {
            Ok(pre) => pre,
            Err(e) => {
                // The error is the file's: its slot goes (so bad files
                // submitted over time hold nothing), and the next load of
                // these bytes reports the error again.
                drop(compiled);
                self.by_hash
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&sha256);
                return Err(e);
            }
        };
        let plugin = Plugin { name, sha256, pre };
        *compiled = Some(plugin.clone());
        Ok(plugin)
    }
}

fn compile(
    engine: &Engine,
    linker: &Linker<AttemptState>,
    path: &Path,
    bytes: &[u8],
) -> Result<StepPre<AttemptState>, PluginError> {
    match wasm_kind(bytes) {
        None => return Err(PluginError::NotWasm { path: path.to_owned() }),
        Some(WasmKind::CoreModule) => return Err(PluginError::CoreModule { path: path.to_owned() }),
        Some(WasmKind::Component) => {}
    }
    let component = Component::new(engine, bytes).map_err(|e| PluginError::Invalid {
        path: path.to_owned(),
        message: format!("{e:#}"),
    })?;
    let instance_pre = linker
        .instantiate_pre(&component)
        .map_err(|e| PluginError::UnsatisfiedImport {
            path: path.to_owned(),
            message: format!("{e:#}"),
        })?;
    StepPre::new(instance_pre).map_err(|e| PluginError::WrongWorld {
        path: path.to_owned(),
        message: format!("{e:#}"),
    })
}

/// Resolve a plugin reference to a file: an existing path is used as is;
/// otherwise `<dir>/<name>.wasm` in the plugin directory.
pub fn resolve_plugin_path(reference: &str, plugin_dir: &Path) -> Result<PathBuf, PluginError> {
    let direct = PathBuf::from(reference);
    if direct.is_file() {
        return Ok(direct);
    }
    let in_dir = plugin_dir.join(format!("{reference}.wasm"));
    if in_dir.is_file() {
        return Ok(in_dir);
    }
    Err(PluginError::NotFound {
        name: reference.to_owned(),
        looked_in: vec![direct, in_dir],
    })
}
