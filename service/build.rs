//! `sqlx::migrate!` embeds the migrations at compile time; without this, adding one would not
//! rebuild the crate (the build script `sqlx migrate build-script` generates).

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
