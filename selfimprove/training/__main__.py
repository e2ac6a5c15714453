"""``python -m selfimprove.training`` (also under ``accelerate launch -m``); see :mod:`.run`."""

import sys

from selfimprove.training.policy import main

sys.exit(main())
