//! Constrained generation: JSON Schema compiled to a byte-level matcher (placeholder; being written).
