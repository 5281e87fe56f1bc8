"""Stage 7: tables, curves, embeddings and decimation derived from analyses, for figures, pages and reports."""
