"""``eossl benchmark``: every method, the same backbone and budget, every evaluation that
applies, reference rows always present, resumable, one report.

plan.py      what to run (methods, seeds, budget) and the benchmark folder's bookkeeping
evaluations.py  the evaluations the benchmark knows, each with the runs it applies to
runner.py    pretrains the matrix and runs the evaluations, recording failures, never
             recomputing what is finished
report.py    Markdown + self-contained HTML report from the saved results
"""
