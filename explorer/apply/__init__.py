"""Stage 7: use the shared basis — compress a family (basis + coefficients, bundle or PEFT
adapters) and project newcomers onto a fitted basis; above the pipeline, which fits the bases."""
