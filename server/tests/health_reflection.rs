//! The health and reflection services of the client address, served by the
//! same router-building function as `gaios-server` and called over a real
//! loopback connection with gRPC clients.

use std::time::Duration;

use gaios_server::ops::health;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Server};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const CELL: &str = "gaios.cell.v1.Cell";

async fn status(client: &mut HealthClient<Channel>, service: &str) -> ServingStatus {
    let response = client
        .check(HealthCheckRequest { service: service.to_owned() })
        .await
        .expect("health check answers")
        .into_inner();
    ServingStatus::try_from(response.status).expect("known status")
}

async fn reflect(client: &mut ServerReflectionClient<Channel>, request: MessageRequest) -> MessageResponse {
    let request = ServerReflectionRequest { host: String::new(), message_request: Some(request) };
    let mut answers =
        client.server_reflection_info(tokio_stream::iter([request])).await.expect("reflection answers").into_inner();
    let answer = answers.message().await.expect("one answer").expect("not the end");
    answer.message_response.expect("a response")
}

#[tokio::test]
async fn health_turns_serving_and_reflection_lists_cell() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (router, health) = health::client_router(Server::builder()).await.expect("router");
    let (stop, mut stopped) = watch::channel(false);
    let server = tokio::spawn(router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    }));
    let channel = Channel::from_shared(format!("http://{address}")).expect("uri").connect().await.expect("connect");

    let mut health_client = HealthClient::new(channel.clone());
    assert_eq!(status(&mut health_client, "").await, ServingStatus::NotServing, "not serving before the driver runs");
    assert_eq!(status(&mut health_client, CELL).await, ServingStatus::NotServing);
    health.serving().await;
    assert_eq!(status(&mut health_client, "").await, ServingStatus::Serving);
    assert_eq!(status(&mut health_client, CELL).await, ServingStatus::Serving);
    let unknown = health_client.check(HealthCheckRequest { service: "no.such.Service".to_owned() }).await;
    assert_eq!(unknown.expect_err("unknown service").code(), tonic::Code::NotFound);

    let mut reflection = ServerReflectionClient::new(channel);
    let MessageResponse::ListServicesResponse(list) =
        reflect(&mut reflection, MessageRequest::ListServices(String::new())).await
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.iter().map(|service| service.name.as_str()).collect();
    assert!(names.contains(&CELL), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    assert!(!names.contains(&"gaios.replica.v1.Replica"), "the peer service is not on the client address: {names:?}");
    // grpcurl's `describe` asks for the file defining a symbol.
    let MessageResponse::FileDescriptorResponse(files) =
        reflect(&mut reflection, MessageRequest::FileContainingSymbol(CELL.to_owned())).await
    else {
        panic!("expected the file defining {CELL}");
    };
    assert!(!files.file_descriptor_proto.is_empty());

    health.not_serving().await;
    assert_eq!(status(&mut health_client, CELL).await, ServingStatus::NotServing);
    stop.send(true).expect("server waits for shutdown");
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("stops").expect("no panic").expect("served");
}
