//! Rebuilds the crate when a migration is added: `sqlx::migrate!` embeds
//! the files under `migrations/` at compile time but does not tell cargo to
//! watch the folder.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
