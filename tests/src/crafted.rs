//! Components crafted from WebAssembly text for the sandbox probes no Rust
//! guest can express (many memories, a huge table, many core instances).
//! Each exports the real `run` of the `stepd:plugin` world, so it loads
//! like any plugin; what it declares beside it is the attack.

/// The `stepd:plugin` world's `run`, exported by a component whose `run`
/// traps at once; `extra` (core modules and instances) is instantiated
/// with it.
pub fn crafted_step(extra: &str) -> String {
    format!(
        r#"(component
  (type $retry-context' (record
    (field "failure-summary" string)
    (field "failure-class" string)
    (field "failure-signature" string)
    (field "changed-files" (list string))
    (field "diff-hash" (option string))
    (field "strategy" string)
    (field "constraints" (list string))))
  (export $retry-context "retry-context" (type $retry-context'))
  (type $step-context' (record
    (field "job-id" string)
    (field "step-id" string)
    (field "step-index" u32)
    (field "attempt" u32)
    (field "objective" string)
    (field "title" string)
    (field "instructions" string)
    (field "inputs" string)
    (field "retry-context" (option $retry-context))))
  (export $step-context "step-context" (type $step-context'))
  (type $step-output' (record (field "summary" string) (field "data" (option string))))
  (export $step-output "step-output" (type $step-output'))
  (type $step-error' (variant
    (case "retry" string) (case "contract" string) (case "policy" string)
    (case "repo" string) (case "other" string)))
  (export $step-error "step-error" (type $step-error'))
  (core module $main
    (memory (export "memory") 1)
    (global $next (mut i32) (i32.const 1024))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $at i32)
      (local.set $at (global.get $next))
      (global.set $next (i32.add (local.get $at)
        (i32.and (i32.add (local.get 3) (i32.const 15)) (i32.const -16))))
      (local.get $at))
    (func (export "run") (param i32) (result i32) unreachable))
  (core instance $main (instantiate $main))
  {extra}
  (func $run (param "ctx" $step-context) (result (result $step-output (error $step-error)))
    (canon lift (core func $main "run") (memory (core memory $main "memory")) (realloc (core func $main "realloc"))))
  (export "run" (func $run)))"#
    )
}

/// `count` instances of a core module that declares one memory of `pages`
/// 64 KiB pages.
pub fn memories(count: usize, pages: u32) -> String {
    let mut text = format!("(core module $mem (memory {pages}))\n");
    for _ in 0..count {
        text.push_str("(core instance (instantiate $mem))\n");
    }
    text
}

/// The binary component for `text`.
pub fn compile(text: &str) -> Vec<u8> {
    wat::parse_str(text).expect("the crafted component is valid text")
}
