//! The JSON body of every gateway route, parsed with the route's own request type and run
//! through its own checks (`shoal_gateway::http::fuzzing::check_body`). The first
//! byte picks the route.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&route, body)) = data.split_first() else { return };
    let _ = shoal_gateway::http::fuzzing::check_body(route, body);
});
