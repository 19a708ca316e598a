//! The public API of [`LinkService`] for API keys: create (hashed; the clear key shown
//! once), the first admin key, list, revoke, authenticate, and the restore path's.

use super::*;

impl LinkService {
    /// Stores a new key with `scopes`; returns it in clear text (to show once) and its record.
    pub async fn create_key(
        &self,
        name: String,
        scopes: Vec<Scope>,
    ) -> Result<(ApiKey, ApiKeyRecord), ServiceError> {
        self.store_key(ApiKey::generate(), name, scopes).await
    }

    async fn store_key(
        &self,
        key: ApiKey,
        name: String,
        scopes: Vec<Scope>,
    ) -> Result<(ApiKey, ApiKeyRecord), ServiceError> {
        let record = ApiKeyRecord {
            id: format!("key_{}", &key.hash().as_str()[..16]),
            name,
            hash: key.hash(),
            scopes,
            created_at: now_ms(),
            revoked_at: None,
        };
        match self
            .core
            .cx
            .meta
            .propose(MetaCommand::CreateKey(record))
            .await?
        {
            MetaOutcome::KeyCreated(record) => Ok((key, record)),
            MetaOutcome::KeyExists => Err(ServiceError::Invalid(Invalid::new(
                "key",
                "this key already exists",
            ))),
            other => Err(ServiceError::Internal(format!(
                "create key answered {other:?}"
            ))),
        }
    }

    /// Makes sure an admin key exists. With none stored yet, stores `operator_key` (if
    /// given) or a fresh one; returns a fresh key so it can be shown once.
    pub async fn ensure_admin_key(
        &self,
        operator_key: Option<&str>,
    ) -> Result<Option<ApiKey>, ServiceError> {
        if !self.core.cx.meta.directory.is_empty() {
            if operator_key.is_some() {
                tracing::info!(
                    "admin_key is only used for a new data directory; this one already has keys"
                );
            }
            return Ok(None);
        }
        let (key, generated) = match operator_key {
            Some(k) => (ApiKey::from_operator(k)?, false),
            None => (ApiKey::generate(), true),
        };
        let (key, _) = self
            .store_key(key, "bootstrap admin".into(), vec![Scope::Admin])
            .await?;
        Ok(generated.then_some(key))
    }

    /// Every key's record.
    pub fn keys(&self) -> Vec<ApiKeyRecord> {
        self.core.cx.meta.directory.all()
    }

    /// Revokes a key.
    pub async fn revoke_key(&self, id: &str) -> Result<ApiKeyRecord, ServiceError> {
        match self
            .core
            .cx
            .meta
            .propose(MetaCommand::RevokeKey {
                id: id.to_string(),
                at: now_ms(),
            })
            .await?
        {
            MetaOutcome::KeyRevoked(record) => Ok(record),
            MetaOutcome::KeyNotFound => Err(ServiceError::NotFound(format!("key {id:?}"))),
            other => Err(ServiceError::Internal(format!("revoke answered {other:?}"))),
        }
    }

    /// The record of the key presented in clear text, if it exists (revoked or not).
    pub fn authenticate(&self, clear: &str) -> Option<ApiKeyRecord> {
        self.core.cx.meta.directory.by_hash(&ApiKeyHash::of(clear))
    }

    /// Puts back an API key record (hash, scopes, times) exactly (`linkrift restore`).
    pub async fn restore_key(&self, record: ApiKeyRecord) -> Result<(), ServiceError> {
        match self
            .core
            .cx
            .meta
            .propose(MetaCommand::CreateKey(record))
            .await?
        {
            MetaOutcome::KeyCreated(_) => Ok(()),
            other => Err(ServiceError::Internal(format!(
                "restoring a key: {other:?}"
            ))),
        }
    }
}
