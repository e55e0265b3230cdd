import sys

from mgrit_nn.cli import main

sys.exit(main())
