# The ipacctd command. contrib/install.sh writes this file, under a #! line naming the
# environment's python, over the console script pip wrote for the same entry point
# (pyproject.toml: [project.scripts] ipacctd = "ipacctd.cli.main:main"). pip's script
# imports re to strip a Windows ".exe" from argv[0]; nothing else on the path of
# `ipacctd run` needs re, which costs that command ~1.5 ms of its ~40 ms (more on a
# cold CPU; bench/cli.py, tests/unit/test_launcher.py).
import sys

from ipacctd.cli.main import main

sys.exit(main())
