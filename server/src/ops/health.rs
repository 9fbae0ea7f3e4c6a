//! The standard gRPC services an operator expects next to the `Cell`
//! service on the client address: health checking (`grpc.health.v1.Health`)
//! and server reflection (`grpc.reflection.v1.ServerReflection` and
//! `grpc.reflection.v1alpha.ServerReflection`), so that
//! `grpcurl` and load balancers work without the `.proto` files.
//!
//! [`client_router`] starts the client listener's router with both; the
//! caller adds the `Cell` service and flips [`ClientHealth`] to serving once
//! the driver runs.

use gaios_proto::cell::v1::cell_server::SERVICE_NAME as CELL_SERVICE;
use tonic::transport::Server;
use tonic::transport::server::Router;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The services reflection advertises on the client address: the ones
/// actually served there. (The `Replica` service lives on the peer address.)
const ADVERTISED_SERVICES: [&str; 4] =
    [CELL_SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// Why the operations services cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OperationsError {
    /// The embedded descriptor set does not decode or is inconsistent; a
    /// build problem, not a runtime one.
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// The health statuses this replica reports: the whole server (`""`) and
/// `gaios.cell.v1.Cell`, both together.
#[derive(Debug, Clone)]
pub struct ClientHealth {
    reporter: HealthReporter,
}

impl ClientHealth {
    /// Reports the replica as serving: call once the driver runs.
    pub async fn serving(&self) {
        self.set(ServingStatus::Serving).await;
    }

    /// Reports the replica as not serving: before the driver runs and while
    /// it shuts down, so load balancers stop sending clients here.
    pub async fn not_serving(&self) {
        self.set(ServingStatus::NotServing).await;
    }

    async fn set(&self, status: ServingStatus) {
        for service in ["", CELL_SERVICE] {
            self.reporter.set_service_status(service, status).await;
        }
    }
}

/// Adds the health and reflection services to `server`, returning the
/// router (to which the caller adds the `Cell` service) and the health
/// handle, which starts out not serving.
pub async fn client_router(mut server: Server) -> Result<(Router, ClientHealth), OperationsError> {
    // Both versions of reflection: v1, and v1alpha, which many clients
    // still ask for (Python's grpcio-reflection, older grpcurl).
    let reflection = || {
        ADVERTISED_SERVICES
            .iter()
            .fold(tonic_reflection::server::Builder::configure(), |builder, name| builder.with_service_name(*name))
            .register_encoded_file_descriptor_set(gaios_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (v1, v1alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);
    let (reporter, health_server) = tonic_health::server::health_reporter();
    let health = ClientHealth { reporter };
    health.not_serving().await;
    let router = server.add_service(health_server).add_service(v1).add_service(v1alpha);
    Ok((router, health))
}
