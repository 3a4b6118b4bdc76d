//! The whole server API suite (`server_api.rs`) against the scale-out backends: a real `bvfs serve`
//! on PostgreSQL (metadata), moto's S3 with SigV4 enforced (chunks) and nats-server (notify), all
//! started by each test on free loopback ports (`common/services.rs`).

#[path = "server_api.rs"]
mod suite;
