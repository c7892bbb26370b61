//! Compiles `webhooks/v1/*.proto` with protox (pure Rust), so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=webhooks");
    let files = protox::compile(["webhooks/v1/webhooks.proto"], ["."])?;
    prost_build::Config::new()
        .btree_map(["."])
        // One buffer per event, shared by every match, queued task and attempt body: a
        // `Bytes` clone is a reference count, where a `Vec<u8>` was a copy per subscription.
        .bytes([".webhooks.v1.Delivery.payload"])
        // Its `Debug` is written by hand (in `lib.rs`), so it never prints a secret.
        .skip_debug(["webhooks.v1.SigningSecret"])
        .compile_fds(files)?;
    Ok(())
}
