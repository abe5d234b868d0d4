//! The manager's behaviour, by feature, against a local usage endpoint on 127.0.0.1.

mod support;

mod backoff;
mod cross_process;
mod hardening;
mod header_frames;
mod identity;
mod pacing;
mod redis_hosts;
mod routes;
mod seeding;
mod single_flight;
