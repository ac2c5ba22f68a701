"""`python -m cxr_client`: the same as the `cxr-effusion` command."""

import sys

from cxr_client.predict import main

sys.exit(main())
