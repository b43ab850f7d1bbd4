//! End to end: digest authentication at the real `callfabric gateway`, driven by SIPp.

use std::path::{Path, PathBuf};
use std::time::Duration;

use integration::gateway::{GatewayProcess, GatewaySpec};
use integration::sipp::{run_scenario, SippOpts};

/// A REGISTER carrying two Authorization fields for our realm (RFC 3261 §22 allows several)
/// is answered 200, not 400: the field the gateway can verify (here the MD5 one SIPp computes;
/// SIPp 3.6.1 has no SHA-256, so the gateway offers MD5 only and ignores the SHA-256 field).
#[test]
fn register_with_two_authorization_fields_gets_200() {
    let mut spec = GatewaySpec::new("gw-a", &["1000"]);
    spec.realm = "site-a".into();
    spec.digest_algorithms = vec!["MD5".into()];
    let mut gw = GatewayProcess::start(&PathBuf::from(env!("CARGO_BIN_EXE_callfabric")), spec);
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("sipp")
        .join("register_two_authorizations.xml");
    let out = run_scenario(
        &scenario,
        gw.udp,
        SippOpts {
            keys: vec![("realm".into(), "site-a".into())],
            timeout: Duration::from_secs(20),
            ..SippOpts::user("1000", "secret")
        },
    )
    .expect("run sipp");
    assert!(
        out.passed(),
        "REGISTER with two Authorization fields: {}\n{}",
        out.describe(),
        gw.diag()
    );
    gw.device("1000", "NOT_INUSE", Duration::from_secs(15));
}
