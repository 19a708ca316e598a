//! Frames on the peer port, as a peer (or a stranger) sends them: any bytes end in
//! frames, a clean end, or an error; never a crash or an allocation beyond the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linkrift_raft::transport::frame::read_frame;

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut input = data;
        while let Ok(Some(_)) = read_frame(&mut input, 1 << 20).await {}
    });
});
