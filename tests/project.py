"""Where the tests find the project and its data (plain constants; everything else is a fixture in conftest)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "ebranchformer_ru" / "golos" / "golos_mini"
SHARED_EXAMPLE = ROOT.parent / "shared" / "golos_example"
