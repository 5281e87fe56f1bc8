"""Stage 5: what the views show beyond the spectrum: held-out coverage, angles, baselines, and their result types."""
