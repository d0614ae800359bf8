"""The workshop: benchmarks, figure generators and developer tools, run from the repository root as
`python -m benchmarks.NAME`. Not part of the installed package."""
