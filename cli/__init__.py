"""The `nasopt` command line (installed as `nasopt.cli`)."""
