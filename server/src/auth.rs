//! Bearer-token authentication and the admin side of tokens.
//!
//! A token is 32 random bytes shown once, as `bv_` + hex. The server stores only its BLAKE3 hash and
//! maps it to a tenant and a device name. No token, a malformed one or an unknown one is
//! `UNAUTHENTICATED`; nothing else is said, so a caller learns nothing about other tenants.

use bvfs_proto::AUTHORIZATION;
use rand::RngExt;
use tonic::{Request, Status};

use crate::store::sqlite::store_status;
use crate::store::{MetaStore, Principal, StoreError, TenantId};

const TOKEN_PREFIX: &str = "bv_";

/// A new random device token.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// The stored form of a token.
pub fn token_hash(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
}

/// The `authorization` header of a request, if it is readable text.
pub fn authorization_header<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Resolves a request's `authorization` header (`Bearer <token>`) to its principal.
pub fn authenticate(store: &dyn MetaStore, header: Option<&str>) -> Result<Principal, Status> {
    let unauthenticated = || {
        Status::unauthenticated(
            "a valid bearer token is required (authorization: Bearer bv_…); create one with `bvfs admin add-user`",
        )
    };
    let header = header.ok_or_else(unauthenticated)?;
    let token = header
        .strip_prefix("Bearer ")
        .ok_or_else(unauthenticated)?
        .trim();
    if !token.starts_with(TOKEN_PREFIX) {
        return Err(unauthenticated());
    }
    store
        .principal(&token_hash(token))
        .map_err(store_status)?
        .ok_or_else(unauthenticated)
}

/// What `add_user` created.
#[derive(Debug, Clone)]
pub struct NewDevice {
    pub tenant: TenantId,
    pub user: String,
    pub device: String,
    pub token: String,
    pub created_user: bool,
}

/// Creates the user (tenant) if it does not exist and a token for one of its devices.
pub fn add_device(
    store: &dyn MetaStore,
    user: &str,
    device: &str,
) -> Result<NewDevice, StoreError> {
    if user.is_empty() || device.is_empty() {
        return Err(StoreError::Meta(
            "user and device names must not be empty".into(),
        ));
    }
    let (tenant, created_user) = match store.tenant_by_name(user)? {
        Some(tenant) => (tenant, false),
        None => (store.create_tenant(user)?, true),
    };
    let token = new_token();
    store.add_token(tenant, &token_hash(&token), device)?;
    Ok(NewDevice {
        tenant,
        user: user.to_string(),
        device: device.to_string(),
        token,
        created_user,
    })
}
