"""Stage 3: the layer catalog of a family (from headers only) and the views the engine decomposes."""
