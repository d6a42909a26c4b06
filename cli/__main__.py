from nasopt.cli.main import entry

entry()
