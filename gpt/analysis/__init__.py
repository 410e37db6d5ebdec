"""What runs measured: evaluation on a whole split, reports and figures, sweeps, the course's
lessons and diagnostics. Imports every layer below it, ``data_prep`` included (sweeps prepare data)."""
