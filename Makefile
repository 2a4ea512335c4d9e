.PHONY: run test lint bench

run:
	cargo run --release -- $(if $(CONFIG_FILE),--config $(CONFIG_FILE),)

test:
	cargo test --workspace

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

bench:
	cargo bench --workspace
