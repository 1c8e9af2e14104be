"""Ray job entrypoint for the nightly re-adaptation (extract -> train -> score -> promote).

ray job submit --working-dir . -- python jobs/nightly.py --config cluster/configs/demo.yaml
"""

import sys

from adapt.cli import main

if __name__ == "__main__":
    sys.exit(main(only="nightly"))
