"""Structure-aware fuzzing of the engine: planted seeds, raw-byte mutations, an independent leak check."""
