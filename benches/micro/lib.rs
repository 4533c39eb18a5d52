//! Criterion micro-benchmarks live in `benches/`; this package has no code of its own.
