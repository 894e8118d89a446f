# The ipacctd command. contrib/install.sh writes this file, under a #! line naming the
# environment's python, over the console script pip wrote for the same entry point
# (pyproject.toml: [project.scripts] ipacctd = "ipacctd.cli.main:command"). pip's script
# imports re to strip a Windows ".exe" from argv[0]; nothing else on the path of
# `ipacctd run` needs re, which costs that command ~1.5 ms of its ~40 ms (more on a
# cold CPU; bench/cli.py, tests/unit/test_launcher.py). command() does not return: it
# exits with main()'s status.
from ipacctd.cli.main import command

command()
