"""Stage 9: downloads and the self-contained HTML report."""
