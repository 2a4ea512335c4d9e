.PHONY: run demo test lint bench

run:
	cargo run --release -- $(if $(CONFIG_FILE),--config $(CONFIG_FILE),)

# Three loopback nodes (example/cluster) in one terminal; Ctrl-C stops them.
demo:
	cargo build --release --bin pika
	example/cluster/demo.sh

test:
	cargo test --workspace

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

bench:
	cargo bench --workspace
