r"""``python -m cornernet_ref`` is the ``cornernet-ref`` command."""

import sys

from cornernet_ref.cli import main

sys.exit(main())
