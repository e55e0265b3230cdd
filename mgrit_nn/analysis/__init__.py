"""Analysis of training runs and scaling studies: read history.h5 / bench.json / study.json,
write PNG plots (matplotlib, headless) and Markdown tables.

    from mgrit_nn.analysis import report, plot_history, load_run, load_study
    report("studies/peaks_strong")          # what `mgrit-nn report` does
    run = load_run("out/peaks")             # columns as numpy arrays: run.steps["loss"]
"""

from mgrit_nn.analysis.load import (
    AnalysisError,
    RunData,
    Study,
    StudyPoint,
    find_runs,
    load_run,
    load_study,
)
from mgrit_nn.analysis.report import plot_history, report, scaling_metrics, span_model

__all__ = ["AnalysisError", "RunData", "Study", "StudyPoint", "find_runs", "load_run",
           "load_study", "plot_history", "report", "scaling_metrics", "span_model"]
