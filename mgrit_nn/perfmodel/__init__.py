"""The calibrated performance model (issue 16): record what every rank does, replay it.

``trace``: a rank's schedule as it runs (compute segments between messages, with their
kernel and element counts, and every message and reduction); ``virtual``: the same solver
code on P virtual ranks in one process, to record the schedule of rank counts the
machine does not have; ``replay``: the schedule on a machine described by a few measured
numbers (``machine``), predicting the time of one gradient.
"""
