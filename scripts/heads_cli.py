#!/usr/bin/env python
"""Same as `heads ...` (train, predict, evaluate); see --help."""

import sys

from heads.cli import main

if __name__ == "__main__":
    sys.exit(main())
