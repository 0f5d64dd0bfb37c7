//! Sets `TIDEMILL_BUILD`, the build fingerprint compared in the cluster
//! handshake (see `build/fingerprint.rs`).

#[path = "build/fingerprint.rs"]
mod fingerprint;

fn main() {
    let root = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    for input in fingerprint::INPUTS {
        if root.join(input).exists() {
            println!("cargo:rerun-if-changed={input}");
        }
    }
    let build = fingerprint::fingerprint(&root)
        .unwrap_or_else(|e| panic!("cannot fingerprint the sources in {}: {e}", root.display()));
    println!("cargo:rustc-env=TIDEMILL_BUILD={build}");
}
