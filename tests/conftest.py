import sys
from pathlib import Path

# make the test helpers (tests/_moments.py) importable
sys.path.insert(0, str(Path(__file__).parent))
