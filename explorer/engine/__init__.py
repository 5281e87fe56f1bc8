"""Stage 4: the joint spectral decomposition.

Options and the Spectrum result, the solver plan, the dense / thin / factored / model / randomized
solvers, and the memory guard that asks the same plan.
"""
