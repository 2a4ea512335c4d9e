//! Fault campaigns against real pika clusters (issue 5), and the checkers
//! their histories go through.
//!
//! Built so far: [`linearizability`], the per-path history checker. The
//! process harness and its faults come next.

pub mod linearizability;
