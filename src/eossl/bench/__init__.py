"""``eossl benchmark``: every method, the same backbone and budget, every evaluation of the
registry (eossl.evaluate) that applies, each run beside its random twin and the spectral
baseline, resumable, one report.

plan.py      what to run (methods, seeds, budget) and the benchmark folder's bookkeeping
runner.py    pretrains the matrix and runs the evaluations step by step, recording failures,
             never recomputing what is finished
report.py    the report (Markdown + self-contained HTML) from the saved results
"""
