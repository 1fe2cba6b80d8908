//! The `stepd` binary: everything lives in the library's `cli` module.

fn main() -> std::process::ExitCode {
    stepd::cli::main()
}
