//! The runtime that drives the network backends' I/O (PostgreSQL connections, S3 requests) behind
//! the synchronous storage traits.
//!
//! The commit rules call the store one small step at a time from tokio's blocking pool
//! ([`crate::namespace`] reads a node, checks a name, writes a journal entry, ...), which suits an
//! embedded database and keeps every backend behind the same traits. An async client is driven here:
//! each step blocks its calling thread on a future that runs on this runtime's own workers, where
//! the connections' background tasks live too. So the backends work the same from the server's
//! blocking pool, from a plain thread (`bvfs admin`), and from an async worker thread (the call then
//! hands that worker's other tasks over first, with `block_in_place`, instead of stalling them).

use std::future::Future;

use super::{StoreError, StoreResult};

/// A small multi-threaded tokio runtime owned by a backend.
pub struct IoRuntime {
    /// `Some` until dropped (dropping a runtime inside an async context must not block).
    runtime: Option<tokio::runtime::Runtime>,
}

impl IoRuntime {
    /// Starts a runtime with `threads` workers named `name`.
    pub fn new(name: &str, threads: usize) -> StoreResult<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name(name)
            .enable_all()
            .build()
            .map_err(|e| StoreError::Meta(format!("cannot start the {name} runtime: {e}")))?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    /// Runs `future` on this runtime and waits for it.
    ///
    /// Panics if called from a current-thread runtime's async context (which cannot lend its only
    /// thread); the server, the CLI and the tests call it from the blocking pool, plain threads, or
    /// multi-threaded runtimes.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        let runtime = self.runtime.as_ref().expect("the runtime lives until drop");
        // Off any runtime (the blocking pool, a plain thread) this runs the closure as it is; on an
        // async worker it first moves that worker's queued tasks to another thread.
        tokio::task::block_in_place(|| runtime.block_on(future))
    }

    /// A handle to spawn background tasks (notification relays) on this runtime.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime
            .as_ref()
            .expect("the runtime lives until drop")
            .handle()
    }
}

impl Drop for IoRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Connections and relays end with it; nothing here waits for them (a drop may happen on
            // an async thread, where blocking would panic).
            runtime.shutdown_background();
        }
    }
}
