"""Stage 4: the joint spectral decomposition (options, solver plan, dense/thin/factored/model/randomized solvers, memory guard)."""
