//! A provider that is known but cannot run here; every operation answers
//! `Unavailable` with the reason, and it lists itself as unavailable.

use async_trait::async_trait;

use super::{Capabilities, ExecOutput, ExecSpec, FileEntry, Provider, ProviderError, ProviderStatus};
use crate::sandbox::Sandbox;
use crate::sandbox::path::SandboxPath;

pub struct UnavailableProvider {
    name: &'static str,
    reason: String,
}

impl UnavailableProvider {
    pub fn new(name: &'static str, reason: impl Into<String>) -> Self {
        UnavailableProvider {
            name,
            reason: reason.into(),
        }
    }

    fn error(&self) -> ProviderError {
        ProviderError::Unavailable(format!("the {} provider is unavailable: {}", self.name, self.reason))
    }
}

#[async_trait]
impl Provider for UnavailableProvider {
    fn name(&self) -> &'static str {
        self.name
    }

    fn status(&self) -> ProviderStatus {
        ProviderStatus {
            name: self.name.to_string(),
            available: false,
            reason: Some(self.reason.clone()),
            images: vec![],
            capabilities: Capabilities::default(),
        }
    }

    fn resolve_image(&self, _requested: Option<&str>) -> Result<String, ProviderError> {
        Err(self.error())
    }
    async fn create(&self, _: &Sandbox) -> Result<(), ProviderError> {
        Err(self.error())
    }
    async fn destroy(&self, _: &Sandbox) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn exists(&self, _: &Sandbox) -> bool {
        // Keep the registry entry: the back end may come back.
        true
    }
    async fn remove_orphans(&self, _: &[Sandbox]) -> anyhow::Result<usize> {
        Ok(0)
    }
    async fn exec(&self, _: &Sandbox, _: ExecSpec) -> Result<ExecOutput, ProviderError> {
        Err(self.error())
    }
    async fn write_file(&self, _: &Sandbox, _: &SandboxPath, _: Vec<u8>, _: u32) -> Result<(), ProviderError> {
        Err(self.error())
    }
    async fn read_file(&self, _: &Sandbox, _: &SandboxPath) -> Result<Vec<u8>, ProviderError> {
        Err(self.error())
    }
    async fn delete_file(&self, _: &Sandbox, _: &SandboxPath, _: bool) -> Result<(), ProviderError> {
        Err(self.error())
    }
    async fn list_files(&self, _: &Sandbox, _: &SandboxPath) -> Result<Vec<FileEntry>, ProviderError> {
        Err(self.error())
    }
    async fn stat_file(&self, _: &Sandbox, _: &SandboxPath) -> Result<FileEntry, ProviderError> {
        Err(self.error())
    }
    async fn move_file(&self, _: &Sandbox, _: &SandboxPath, _: &SandboxPath) -> Result<(), ProviderError> {
        Err(self.error())
    }
    async fn chmod_file(&self, _: &Sandbox, _: &SandboxPath, _: u32) -> Result<(), ProviderError> {
        Err(self.error())
    }
    async fn glob(&self, _: &Sandbox, _: &str) -> Result<Vec<String>, ProviderError> {
        Err(self.error())
    }
}
