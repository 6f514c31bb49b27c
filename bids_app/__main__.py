"""``python -m mmreg.bids_app`` runs the BIDS-App command line."""

import sys

from mmreg.bids_app.cli import main

if __name__ == "__main__":
    sys.exit(main())
