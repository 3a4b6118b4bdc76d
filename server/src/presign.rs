//! Presigned chunk transfer (ADR-0011): the request checks and refusals of `PresignUploads`,
//! `ConfirmUploads` and `PresignDownloads`. The object store side (keys, signing, verification) is
//! in [`crate::store::s3`]; the handlers are in [`crate::service`].
//!
//! The trust argument: a client only ever names chunk ids (32 bytes) and refs the server drew; every
//! key is made by the store from the authenticated tenant, so no URL reaches another tenant's
//! objects. Uploads land on pending keys, which nothing reads as chunks; a chunk exists only after
//! `ConfirmUploads` read the pending bytes, found them at most `MAX_CHUNK_BYTES` long and hashing
//! (BLAKE3) to the id, and stored those same bytes under the chunk's key. So `FindMissingChunks`
//! and a commit's chunk check are unchanged, and no client can commit a chunk whose bytes do not
//! hash to its id.

use bvfs_proto::v1;
use bvfs_proto::{MAX_CHUNK_BYTES, MAX_PRESIGN_CHUNKS};
use tonic::Status;

use crate::namespace::{Reason, chunk_key, reject};
use crate::store::ChunkKey;
use crate::store::s3::{ConfirmError, UploadRef};

/// Refuses a request naming more than [`MAX_PRESIGN_CHUNKS`] chunks.
fn check_count(count: usize) -> Result<(), Status> {
    if count > MAX_PRESIGN_CHUNKS {
        return Err(reject(
            Reason::TooLarge,
            None,
            format!("at most {MAX_PRESIGN_CHUNKS} chunks per request, got {count}"),
        ));
    }
    Ok(())
}

/// The chunk ids of a `PresignUploads` request: each 32 bytes, its length 1 to `MAX_CHUNK_BYTES`.
pub fn upload_keys(chunks: &[v1::ChunkRef]) -> Result<Vec<ChunkKey>, Status> {
    check_count(chunks.len())?;
    chunks
        .iter()
        .map(|chunk| {
            let key = chunk_key(&chunk.id, "chunk id", None)?;
            if chunk.length == 0 || chunk.length as usize > MAX_CHUNK_BYTES {
                return Err(reject(
                    Reason::Malformed,
                    None,
                    format!(
                        "chunk {}: a chunk is 1 byte to {MAX_CHUNK_BYTES} bytes (the chunker's maximum), got {}",
                        hex::encode(key),
                        chunk.length
                    ),
                ));
            }
            Ok(key)
        })
        .collect()
}

/// The pending uploads a `ConfirmUploads` request names: 32-byte ids, 16-byte refs.
pub fn pending_uploads(
    uploads: &[v1::PendingUpload],
) -> Result<Vec<(ChunkKey, UploadRef)>, Status> {
    check_count(uploads.len())?;
    uploads
        .iter()
        .map(|upload| {
            let key = chunk_key(&upload.id, "chunk id", None)?;
            let reference = UploadRef::try_from(upload.upload_ref.as_slice()).map_err(|_| {
                reject(
                    Reason::Malformed,
                    None,
                    format!(
                        "chunk {}: an upload ref is 16 bytes (from PresignUploads), got {}",
                        hex::encode(key),
                        upload.upload_ref.len()
                    ),
                )
            })?;
            Ok((key, reference))
        })
        .collect()
}

/// The chunk ids of a `PresignDownloads` request.
pub fn download_keys(ids: &[Vec<u8>]) -> Result<Vec<ChunkKey>, Status> {
    check_count(ids.len())?;
    ids.iter()
        .map(|id| chunk_key(id, "chunk id", None))
        .collect()
}

/// The refusal of a pending upload that was not stored; store failures stay server errors.
pub fn confirm_refusal(id: &ChunkKey, error: ConfirmError) -> Status {
    let id = hex::encode(id);
    match error {
        ConfirmError::Missing => reject(Reason::NotFound, None, format!("chunk {id}: {error}")),
        ConfirmError::TooLarge(_) | ConfirmError::Mismatch(_) => reject(
            Reason::InvalidChunk,
            None,
            format!("chunk {id}: {error}; the upload was discarded, upload the chunk again"),
        ),
        ConfirmError::Store(e) => crate::store::sqlite::store_status(e),
    }
}

/// The refusal of every presigned call on a server that does not offer them.
pub fn unavailable() -> Status {
    reject(
        Reason::PresignUnavailable,
        None,
        "this server does not offer presigned chunk transfer (it needs --presigned-transfer and \
         --chunks s3://…); use PutChunks and GetChunks",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(status: &Status) -> &str {
        status
            .metadata()
            .get(crate::namespace::REASON_KEY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    #[test]
    fn requests_are_bounded_in_count() {
        let id = vec![7; 32];
        let refs = vec![
            v1::ChunkRef {
                id: id.clone(),
                length: 10
            };
            MAX_PRESIGN_CHUNKS + 1
        ];
        assert_eq!(reason(&upload_keys(&refs).unwrap_err()), "too-large");
        assert_eq!(upload_keys(&refs[1..]).unwrap().len(), MAX_PRESIGN_CHUNKS);
        let ids = vec![id; MAX_PRESIGN_CHUNKS + 1];
        assert_eq!(reason(&download_keys(&ids).unwrap_err()), "too-large");
        let pending = vec![
            v1::PendingUpload {
                id: vec![1; 32],
                upload_ref: vec![2; 16]
            };
            MAX_PRESIGN_CHUNKS + 1
        ];
        assert_eq!(reason(&pending_uploads(&pending).unwrap_err()), "too-large");
    }

    #[test]
    fn malformed_ids_lengths_and_refs_are_refused() {
        let bad_id = [v1::ChunkRef {
            id: vec![1; 31],
            length: 1,
        }];
        assert_eq!(reason(&upload_keys(&bad_id).unwrap_err()), "malformed");
        for length in [0, MAX_CHUNK_BYTES as u32 + 1] {
            let refs = [v1::ChunkRef {
                id: vec![1; 32],
                length,
            }];
            assert_eq!(reason(&upload_keys(&refs).unwrap_err()), "malformed");
        }
        let bad_ref = [v1::PendingUpload {
            id: vec![1; 32],
            upload_ref: vec![2; 15],
        }];
        assert_eq!(reason(&pending_uploads(&bad_ref).unwrap_err()), "malformed");
        assert_eq!(
            reason(&download_keys(&[vec![0; 33]]).unwrap_err()),
            "malformed"
        );
    }

    #[test]
    fn refusals_carry_their_reasons() {
        let id = [3; 32];
        let missing = confirm_refusal(&id, ConfirmError::Missing);
        assert_eq!(
            (missing.code(), reason(&missing)),
            (tonic::Code::NotFound, "not-found")
        );
        let bad = confirm_refusal(&id, ConfirmError::Mismatch("ab".into()));
        assert_eq!(
            (bad.code(), reason(&bad)),
            (tonic::Code::DataLoss, "invalid-chunk")
        );
        let big = confirm_refusal(&id, ConfirmError::TooLarge(1 << 30));
        assert_eq!(reason(&big), "invalid-chunk");
        let off = unavailable();
        assert_eq!(
            (off.code(), reason(&off)),
            (tonic::Code::FailedPrecondition, "presign-unavailable")
        );
    }
}
