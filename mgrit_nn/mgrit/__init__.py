"""The MGRIT core: hierarchy, relax, restrict, correct, cycles, coarse solve, driver."""

from mgrit_nn.mgrit.hierarchy import Chain, Level, build_levels
from mgrit_nn.mgrit.propagator import Propagator, Selection
from mgrit_nn.mgrit.solver import MGRIT, MGRITDivergence, MGRITOptions, SolveResult

__all__ = ["Chain", "Level", "build_levels", "Propagator", "Selection", "MGRIT",
           "MGRITDivergence", "MGRITOptions", "SolveResult"]
