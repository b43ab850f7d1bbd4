//! Start errors of the in-process gateway carry their typed cause.

use std::error::Error as _;
use std::sync::Arc;

use media::MediaError;
use gateway::server::{Gateway, GatewayError};
use statebus::{Eid, LocalBus};

/// An RTP port range without an even/odd pair fails the start with the relay's own error
/// (not its text), reachable as the error's source.
#[test]
fn relay_error_is_typed_and_is_the_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let udp = std::net::SocketAddr::from(([127, 0, 0, 1], integration::free_udp_port()));
    let mut cfg = integration::bench::gateway_config(
        udp,
        format!("sqlite://{}", dir.path().join("gw.db").display()),
    );
    cfg.rtp_ports = (20001, 20001);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let err = rt
        .block_on(Gateway::start(
            cfg,
            Arc::new(LocalBus::new(Eid([2, 0, 0, 0, 0, 11]))),
        ))
        .err()
        .expect("a port range without a pair must fail the start");
    assert!(
        matches!(
            err,
            GatewayError::Media(MediaError::InvalidPortRange {
                min: 20001,
                max: 20001
            })
        ),
        "{err:?}"
    );
    let source = err.source().expect("the relay error is the source");
    assert!(source.downcast_ref::<MediaError>().is_some(), "{source:?}");
    assert!(err.to_string().starts_with("RTP relay: "), "{err}");
}
