//! Compiles every `.proto` file below this crate with `protox` (a pure-Rust
//! protobuf compiler), so building needs no system `protoc`.

use std::path::{Path, PathBuf};

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for top in ["elide", "hashicorp", "plugin"] {
        let dir = root.join(top);
        // Watched even while missing, so adding the folder triggers a rebuild.
        println!("cargo:rerun-if-changed={}", dir.display());
        if dir.is_dir() {
            collect(&dir, &mut files)?;
        }
    }
    files.sort();
    let relative: Vec<PathBuf> = files
        .iter()
        .map(|f| f.strip_prefix(&root).map(Path::to_path_buf))
        .collect::<Result<_, _>>()?;
    let fds = protox::compile(&relative, [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Ordered maps: encoded messages and iteration are deterministic,
        // which request fingerprints and the simulation rely on.
        .btree_map(".")
        .compile_fds(fds)?;
    Ok(())
}
