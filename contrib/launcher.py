# The ipacctd command. contrib/install.sh writes this file, under a #! line naming the
# environment's python with -S, over the console script pip wrote for the same entry point
# (pyproject.toml: [project.scripts] ipacctd = "ipacctd.cli.main:command").
#
# Why not pip's script: it imports re to strip a Windows ".exe" from argv[0]; nothing else
# on the path of `ipacctd run` needs re, which costs that command ~1.5 ms of its ~40 ms
# (more on a cold CPU; bench/cli.py, tests/unit/test_launcher.py).
#
# Why -S: the site module costs every command ~0.7-1.4 ms (bench/results-cli.txt) for what
# an installed ipacctd does not use: the environment's .pth files (setuptools'
# distutils hack), the distribution's sitecustomize (Debian's apport hook), the user's
# site directory. What the command needs of site is the environment's site-packages on
# sys.path, and that is added here, where site itself would put it (after the standard
# library): <env>/lib*/pythonX.Y/site-packages, <env> being the directory whose bin/ holds
# the interpreter of the #! line (sys.executable; without site, sys.prefix is the base
# interpreter's). An installation this does not find (an editable one, whose package a .pth
# file names) gets site after all.
#
# command() does not return: it exits with main()'s status.
import sys

_env = sys.executable.rpartition("/bin/")[0]
_version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
for _lib in dict.fromkeys((sys.platlibdir, "lib")):
    sys.path.append(f"{_env}/{_lib}/{_version}/site-packages")
try:
    from ipacctd.cli.main import command
except ModuleNotFoundError as _exc:
    if _exc.name != "ipacctd" or sys.flags.no_site == 0:
        raise
    import site

    site.main()
    from ipacctd.cli.main import command

command()
