import sys
from pathlib import Path

import shapedsde  # noqa: F401  (first, before numpy: it limits OpenBLAS to one thread)

# make the test helpers (tests/_moments.py) importable
sys.path.insert(0, str(Path(__file__).parent))
