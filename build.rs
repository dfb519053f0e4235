//! Embeds `runtimes/*.toml`, `wasm-images/*.toml` and the image build recipes
//! under `images/<name>/` into the binary, so that adding an interpreter is
//! adding files, and the binary still runs alone.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());

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
            let abs = root.join(&path);
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
    std::fs::write(out_dir.join("catalog_files.rs"), out).unwrap();

    // Every file of every recipe, by path relative to its recipe directory.
    println!("cargo:rerun-if-changed=images");
    let mut out = String::from("&[\n");
    let mut recipes: Vec<_> = std::fs::read_dir("images")
        .map(|d| d.map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    recipes.sort();
    for recipe in recipes {
        let name = recipe.file_name().unwrap().to_string_lossy().into_owned();
        let mut files = vec![];
        collect(&recipe, &mut files);
        files.sort();
        writeln!(out, "    ({name:?}, &[").unwrap();
        for file in files {
            println!("cargo:rerun-if-changed={}", file.display());
            let rel = file.strip_prefix(&recipe).unwrap().display().to_string();
            let abs = root.join(&file).display().to_string();
            writeln!(out, "        ({rel:?}, include_bytes!({abs:?})),").unwrap();
        }
        writeln!(out, "    ]),").unwrap();
    }
    out.push(']');
    std::fs::write(out_dir.join("recipe_files.rs"), out).unwrap();
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    println!("cargo:rerun-if-changed={}", dir.display());
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy();
        // Build output of a Cargo recipe built in place is not part of it.
        if name.starts_with('.') || name == "__pycache__" || (name == "target" && path.is_dir()) {
            continue;
        }
        if path.is_dir() {
            collect(&path, files);
        } else {
            files.push(path);
        }
    }
}
