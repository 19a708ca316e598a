//! The listener's side of the peer handshake, against whatever a dialer sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 16);
        let bytes = data.to_vec();
        let dialer = async move {
            let _ = theirs.write_all(&bytes).await;
            let _ = theirs.shutdown().await;
            // Keep reading what the listener says until it is done.
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut theirs, &mut sink).await;
        };
        let listener = async move {
            let r = linkrift_raft::transport::auth::accept(&mut ours, b"fuzzing secret").await;
            drop(ours);
            r
        };
        let (result, ()) = tokio::join!(listener, dialer);
        // Random bytes cannot prove they hold the secret.
        assert!(result.is_err());
    });
});
