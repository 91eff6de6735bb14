"""Overhead benchmarks of async-inspect (see README.md); run `python -m benchmarks.overhead`."""
