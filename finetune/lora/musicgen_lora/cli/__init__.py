"""The command-line layer: parsers, flag checks, and the main() of every script."""
