"""Benchmarks (`make bench`): each figure beside a floor measured in the same run.

A benchmark is a module `bench.<name>` with `run(report: dict[str, object]) -> None`. It sets
`report["<name>"]` to its Markdown section; `python -m bench` runs every module in turn, prints
the sections and writes each into docs/benchmarks.md between `<!-- bench:<name>:start -->` and
`<!-- bench:<name>:end -->`, leaving the rest of the file as it is.

The house rule: a figure is only read as a ratio to a floor that the same run measured against
the same Postgres, on the same machine, at the same time. Absolute figures drift from machine
to machine and from minute to minute; the ratio is what a target is set on. Never a timed unit
test.
"""
