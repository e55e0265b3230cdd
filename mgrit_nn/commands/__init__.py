"""The commands of ``mgrit-nn`` (dispatched by :mod:`mgrit_nn.cli`)."""
