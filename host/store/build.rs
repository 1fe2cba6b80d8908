//! `sqlx::migrate!` embeds host/store/migrations/ at compile time; this
//! makes cargo recompile the store when a migration file changes.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
