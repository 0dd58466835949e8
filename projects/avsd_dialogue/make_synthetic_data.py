"""Command-line entry of the synthetic AVSD-format data generator (see avsd_plugin/synthetic.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from avsd_plugin.synthetic import main  # noqa: E402

if __name__ == "__main__":
    main()
