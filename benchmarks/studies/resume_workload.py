"""The kill-and-resume workload of benchmarks/resume.py: long trials of fixed length, whose epochs take ~0.5 s.

A 16-feature Friedman #1 regression from scikit-learn's generator (no download), 20,000 training and 5,000
validation rows, a 16-64-64-1 MLP at batch 32: an epoch trains in about half a second on one thread of the 2-core
benchmark machine, so that a checkpoint interval of a few seconds is a few epochs. 40 epochs, no early stopping
(patience = max_epochs), and a learning rate and momentum narrowed so that no trial diverges: every trial trains
exactly 40 epochs, whichever params the sampler draws, and the epochs a run trains count only what kills cost.

Run: searchlab run benchmarks/studies/resume_workload.py --workers 2
"""

import dataclasses
from pathlib import Path

import searchlab as sl
from searchlab.study import load_study_file

# batch32_workload.py's data and model (the shape described above), with a budget and space of its own
study = dataclasses.replace(
    load_study_file(Path(__file__).with_name("batch32_workload.py")),
    name="resume-workload",
    space=sl.default_space(lr=sl.Float(1e-3, 3e-2, log=True), momentum=sl.Float(0.8, 0.95), batch_size=32),
    max_epochs=40,
    patience=40,
    n_trials=12,
)

if __name__ == "__main__":
    study.run()
