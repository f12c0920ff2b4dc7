import sys

from ganviews.cli import main

sys.exit(main())
