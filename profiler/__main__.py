"""`python -m profiler` is `async-inspect`."""

from profiler.cli import main

main()
