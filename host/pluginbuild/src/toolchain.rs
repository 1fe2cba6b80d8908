//! The Python and JavaScript step toolchains, installed on first use under
//! `<target>/toolchains` from the pins in the project's files, and the
//! files every build of those languages reads (the world's WIT, the SDKs).
//!
//! Those files are compiled into this crate, so `stepd plugin build` works
//! on a plugin directory anywhere, not only inside this repository; they
//! are written out next to the toolchains whenever they differ.

use std::cell::OnceCell;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{io_error, PluginBuildError, PluginLanguage};

/// A file the toolchains need, by its path under the toolchain directory.
type Embedded = (&'static str, &'static str);

/// The `stepd:plugin` world and the WASI packages it imports.
const WIT: &[Embedded] = &[
    ("wit/step.wit", include_str!("../../../sdk/rust/wit/step.wit")),
    ("wit/deps/cli.wit", include_str!("../../../sdk/rust/wit/deps/cli.wit")),
    (
        "wit/deps/clocks.wit",
        include_str!("../../../sdk/rust/wit/deps/clocks.wit"),
    ),
    (
        "wit/deps/filesystem.wit",
        include_str!("../../../sdk/rust/wit/deps/filesystem.wit"),
    ),
    ("wit/deps/http.wit", include_str!("../../../sdk/rust/wit/deps/http.wit")),
    ("wit/deps/io.wit", include_str!("../../../sdk/rust/wit/deps/io.wit")),
    (
        "wit/deps/random.wit",
        include_str!("../../../sdk/rust/wit/deps/random.wit"),
    ),
    (
        "wit/deps/sockets.wit",
        include_str!("../../../sdk/rust/wit/deps/sockets.wit"),
    ),
];

/// The Python toolchain's pin: a change reinstalls the virtual environment.
const PYTHON_REQUIREMENTS: &str = include_str!("../../../sdk/python/requirements.txt");

/// The JavaScript toolchain's lock: a change reinstalls `node_modules`.
const JS_LOCK: &str = include_str!("../../../sdk/js/package-lock.json");

/// The Python SDK (sdk/python).
const PYTHON: &[Embedded] = &[
    ("python/requirements.txt", PYTHON_REQUIREMENTS),
    (
        "python/sdk/stepd/__init__.py",
        include_str!("../../../sdk/python/stepd/__init__.py"),
    ),
    (
        "python/sdk/stepd_app.py",
        include_str!("../../../sdk/python/stepd_app.py"),
    ),
];

/// The JavaScript SDK and its build (sdk/js).
const JS: &[Embedded] = &[
    ("js/package.json", include_str!("../../../sdk/js/package.json")),
    ("js/package-lock.json", JS_LOCK),
    ("js/build.mjs", include_str!("../../../sdk/js/build.mjs")),
    ("js/stepd.js", include_str!("../../../sdk/js/stepd.js")),
];

/// The toolchain directory of one build. Each toolchain is checked (and
/// installed when its pin changed) once per build, however many plugins
/// use it.
#[derive(Debug)]
pub(crate) struct Toolchains {
    root: PathBuf,
    python: OnceCell<Python>,
    javascript: OnceCell<JavaScript>,
}

/// An installed Python toolchain.
#[derive(Debug)]
pub(crate) struct Python {
    /// The pinned componentize-py.
    pub componentize_py: PathBuf,
    /// The directory holding the `stepd` module and the entry module.
    pub sdk: PathBuf,
    /// The world's WIT directory.
    pub wit: PathBuf,
}

/// An installed JavaScript toolchain.
#[derive(Debug)]
pub(crate) struct JavaScript {
    /// The directory holding `build.mjs`, `stepd.js` and `node_modules`.
    pub dir: PathBuf,
    /// The world's WIT directory.
    pub wit: PathBuf,
}

impl Toolchains {
    pub(crate) fn new(target_dir: &Path) -> Self {
        // Absolute: the builders run elsewhere and resolve what they are
        // given from there (rolldown takes an alias only as an absolute path).
        let target_dir = std::path::absolute(target_dir).unwrap_or_else(|_| target_dir.to_owned());
        Toolchains {
            root: target_dir.join("toolchains"),
            python: OnceCell::new(),
            javascript: OnceCell::new(),
        }
    }

    /// Hold the toolchain directory for one build: `stepd plugin build` and
    /// the tests' build script may run at once over the same target, and an
    /// install or a build must not interleave with another.
    pub(crate) fn lock(&self) -> Result<std::fs::File, PluginBuildError> {
        std::fs::create_dir_all(&self.root).map_err(io_error(&self.root))?;
        let path = self.root.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_error(&path))?;
        file.lock().map_err(io_error(&path))?;
        Ok(file)
    }

    /// The directory a language's builds cache their components in.
    pub(crate) fn cache_dir(&self, language: PluginLanguage) -> PathBuf {
        self.root.join("built").join(language.to_string())
    }

    /// The pinned componentize-py in a virtual environment of its own,
    /// (re)installed when `sdk/python/requirements.txt` changed.
    pub(crate) fn python(&self) -> Result<&Python, PluginBuildError> {
        if let Some(python) = self.python.get() {
            return Ok(python);
        }
        let wit = self.write(WIT)?.join("wit");
        self.write(PYTHON)?;
        let dir = self.root.join("python");
        let venv = dir.join("venv");
        let stamp = venv.join(".stepd-requirements");
        let requirements = PYTHON_REQUIREMENTS;
        if std::fs::read_to_string(&stamp).ok().as_deref() != Some(requirements) {
            let fail = |reason: String| PluginBuildError::Toolchain {
                language: PluginLanguage::Python,
                reason,
            };
            let _ = std::fs::remove_dir_all(&venv);
            let python = std::env::var_os("STEPD_PYTHON").unwrap_or_else(|| "python3".into());
            eprintln!("installing the Python step toolchain into {}", venv.display());
            run(Command::new(&python).args(["-m", "venv"]).arg(&venv)).map_err(|e| {
                fail(format!(
                    "creating a virtual environment with {}: {e} (stepd needs python3 with venv; \
                     STEPD_PYTHON names another interpreter)",
                    Path::new(&python).display()
                ))
            })?;
            run(Command::new(venv.join("bin/python"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "--no-input",
                    "-q",
                    "-r",
                ])
                .arg(dir.join("requirements.txt")))
            .map_err(|e| fail(format!("pip install -r sdk/python/requirements.txt: {e}")))?;
            std::fs::write(&stamp, requirements).map_err(io_error(&stamp))?;
        }
        Ok(self.python.get_or_init(|| Python {
            componentize_py: venv.join("bin/componentize-py"),
            sdk: dir.join("sdk"),
            wit,
        }))
    }

    /// The pinned componentize-js and rolldown, (re)installed with `npm ci`
    /// when `sdk/js/package-lock.json` changed.
    pub(crate) fn javascript(&self) -> Result<&JavaScript, PluginBuildError> {
        if let Some(js) = self.javascript.get() {
            return Ok(js);
        }
        let wit = self.write(WIT)?.join("wit");
        self.write(JS)?;
        let dir = self.root.join("js");
        let stamp = dir.join("node_modules/.stepd-lock");
        let lock = JS_LOCK;
        if std::fs::read_to_string(&stamp).ok().as_deref() != Some(lock) {
            eprintln!("installing the JavaScript step toolchain into {}", dir.display());
            run(Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir))
            .map_err(|e| PluginBuildError::Toolchain {
                language: PluginLanguage::JavaScript,
                reason: format!("npm ci with sdk/js/package-lock.json: {e} (stepd needs node and npm on PATH)"),
            })?;
            std::fs::write(&stamp, lock).map_err(io_error(&stamp))?;
        }
        Ok(self.javascript.get_or_init(|| JavaScript { dir, wit }))
    }

    /// Write `files` under the toolchain directory where they differ.
    fn write(&self, files: &[Embedded]) -> Result<&Path, PluginBuildError> {
        for (relative, text) in files {
            let path = self.root.join(relative);
            if std::fs::read_to_string(&path).ok().as_deref() == Some(*text) {
                continue;
            }
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io_error(parent))?;
            }
            let tmp = path.with_extension("stepd-tmp");
            std::fs::write(&tmp, text)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(io_error(&path))?;
        }
        Ok(&self.root)
    }
}

/// A builder's command with none of this process's environment but what a
/// builder needs to start: a build snapshots the guest after running its
/// top-level code, and nothing of the build machine (a CI token, say) may
/// end up in a component.
pub(crate) fn builder(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    command.env_clear();
    for kept in ["PATH", "HOME", "TMPDIR", "LANG"] {
        if let Some(value) = std::env::var_os(kept) {
            command.env(kept, value);
        }
    }
    command
}

/// Run a command to completion; its output goes where this process's goes.
pub(crate) fn run(command: &mut Command) -> Result<(), String> {
    let status = command.status().map_err(|e| format!("cannot start it: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("it exited with {status}"))
    }
}

/// A key for everything a Python or JavaScript build reads: the plugin's
/// files, the SDK, the world and the toolchain's pins. An unchanged key
/// reuses the cached component (such a build takes 10–25 s). `DefaultHasher`
/// is stable for one build of this crate, which is all a cache key needs.
pub(crate) fn content_key(language: PluginLanguage, plugin_dir: &Path) -> Result<String, PluginBuildError> {
    let mut hasher = DefaultHasher::new();
    language.hash(&mut hasher);
    let embedded = match language {
        PluginLanguage::Python => PYTHON,
        PluginLanguage::JavaScript => JS,
        PluginLanguage::Rust => &[],
    };
    for (path, text) in WIT.iter().chain(embedded) {
        path.hash(&mut hasher);
        text.hash(&mut hasher);
    }
    let mut files = Vec::new();
    source_files(plugin_dir, plugin_dir, &mut files)?;
    files.sort();
    for (relative, path) in files {
        relative.hash(&mut hasher);
        std::fs::read(&path).map_err(io_error(&path))?.hash(&mut hasher);
    }
    Ok(format!("{:016x}", hasher.finish()))
}

/// The plugin's source files (skipping caches a toolchain leaves behind).
fn source_files(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<(), PluginBuildError> {
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let path = entry.path();
        let name = entry.file_name();
        if matches!(name.to_str(), Some("__pycache__" | "node_modules" | ".git")) {
            continue;
        }
        let kind = entry.file_type().map_err(io_error(&path))?;
        if kind.is_dir() {
            source_files(root, &path, out)?;
        } else if kind.is_file() {
            let relative = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
            out.push((relative, path));
        }
    }
    Ok(())
}

/// Build into the cache unless the cached component's key matches: `make`
/// writes the component to the given path.
pub(crate) fn cached_build(
    toolchains: &Toolchains,
    language: PluginLanguage,
    plugin_dir: &Path,
    name: &str,
    make: impl FnOnce(&Path) -> Result<(), PluginBuildError>,
) -> Result<PathBuf, PluginBuildError> {
    let cache = toolchains.cache_dir(language);
    std::fs::create_dir_all(&cache).map_err(io_error(&cache))?;
    let component = cache.join(format!("{name}.wasm"));
    let key_file = cache.join(format!("{name}.key"));
    let key = content_key(language, plugin_dir)?;
    if component.is_file() && std::fs::read_to_string(&key_file).ok().as_deref() == Some(key.as_str()) {
        return Ok(component);
    }
    let _ = std::fs::remove_file(&key_file);
    make(&component)?;
    std::fs::write(&key_file, key).map_err(io_error(&key_file))?;
    Ok(component)
}
