"""Test infrastructure that the tests and the benchmarks share: paths, the server launcher,
child processes, a local S3 server, model builders. Imports nothing from bench/."""
