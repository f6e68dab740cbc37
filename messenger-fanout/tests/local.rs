//! The conformance suite on the local backend.

use messenger_fanout::local::LocalFanout;
use messenger_fanout::{Fanout, conformance};

#[tokio::test]
async fn local_passes_the_conformance_suite() {
    conformance::run(|delivery| Fanout::new(LocalFanout::new(delivery))).await;
}

/// The dyn form forwards `deliver`: the suite passes on a `DynFanout`.
#[tokio::test]
async fn local_as_dyn_passes_the_conformance_suite() {
    conformance::run(|delivery| Fanout::new_dyn(LocalFanout::new(delivery))).await;
}
