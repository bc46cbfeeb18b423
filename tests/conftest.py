import sys
from pathlib import Path

# Test helpers (reference.py, tiny_models.py, openapi.py) import as top-level modules.
sys.path.insert(0, str(Path(__file__).parent))
