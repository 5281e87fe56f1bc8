"""Stage 7: tables, curves, overlap scales, embeddings and decimation derived from analyses, for figures, pages and reports."""
