import sys

from flashevolve.cli import main

sys.exit(main())
