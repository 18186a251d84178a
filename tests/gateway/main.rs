//! Binary-level tests: the real `backstop serve`, started on ephemeral
//! loopback ports in front of in-process toy model servers, driven over
//! real sockets. Every load loop is bounded in count and in time.

mod access;
mod capture;
mod errors;
mod feedback;
mod gameday;
mod grpc;
mod health;
mod incident;
mod profile;
mod prometheus;
mod registry;
mod rollout;
mod routing;
mod shadow;
mod signals;
mod swap;
mod telemetry;
mod tls;
mod util;
