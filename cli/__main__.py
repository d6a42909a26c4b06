import sys

from nasopt.cli.main import main

sys.exit(main())
