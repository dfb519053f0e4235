//! Embeds `runtimes/*.toml` and `wasm-images/*.toml` into the binary, so that
//! adding an interpreter is adding files, and the binary still runs alone.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let mut out = String::from("&[\n");
    for dir in ["runtimes", "wasm-images"] {
        println!("cargo:rerun-if-changed={dir}");
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("cannot read {dir}/: {e}"))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        entries.sort();
        for path in entries {
            println!("cargo:rerun-if-changed={}", path.display());
            let abs = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join(&path);
            writeln!(
                out,
                "    ({:?}, include_str!({:?})),",
                path.display().to_string(),
                abs.display().to_string()
            )
            .unwrap();
        }
    }
    out.push(']');
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("catalog_files.rs");
    std::fs::write(dest, out).unwrap();
}
