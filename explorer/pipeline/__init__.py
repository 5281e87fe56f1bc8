"""Stage 6: one analysis end to end (analyze), its result type, serialisation and the content-addressed cache."""
