"""Every figure the project draws, in one place: the training run's plots (train.py -> plots/) and the
explanation figures (explain_clinicalLF.py -> its save dir). Each function takes what it draws and a path, and
writes the PNG atomically (atomic_io.save_figure). matplotlib is imported on first use, so that scripts which
draw nothing do not pay for it.
"""
import atomic_io


def _plt():
    """matplotlib with the non-interactive Agg backend (no display on a GPU box or in CI)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt

# -----------------------------------------------------------------------------
# Training run figures

# TRAINING-FIGURES-GO-HERE

# -----------------------------------------------------------------------------
# Explanation figures

# EXPLANATION-FIGURES-GO-HERE
