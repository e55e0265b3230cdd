"""The MGRIT core: hierarchy, relax, restrict, correct, cycles, coarse solve, driver."""

from mgrit_nn.mgrit.hierarchy import Chain, Level, build_levels
from mgrit_nn.mgrit.propagator import Index, Propagator, Selection, Workspace
from mgrit_nn.mgrit.solver import MGRIT, MGRITDivergence, SolveResult, Warm

__all__ = ["Chain", "Level", "build_levels", "Propagator", "Selection", "Index", "Workspace",
           "MGRIT", "MGRITDivergence", "SolveResult", "Warm"]
