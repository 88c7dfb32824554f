#!/usr/bin/env python
"""Same as `embedcache precompute ...`; see --help."""

import sys

from embedcache.cli import main

if __name__ == "__main__":
    sys.exit(main(["precompute", *sys.argv[1:]]))
