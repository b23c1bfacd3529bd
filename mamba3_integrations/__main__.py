"""``python -m mamba3_integrations`` runs the ``mamba3-rag`` command line."""

import sys

from mamba3_integrations.cli import main

sys.exit(main())
