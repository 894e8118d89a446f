"""``python -m ipacctd``: the same entry point as the ``ipacctd`` command."""

from ipacctd.cli.main import command

command()
