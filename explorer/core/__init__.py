"""Stage 0: errors, paths, backend (device/dtype), progress, version, and the shared linear-algebra kernels."""
