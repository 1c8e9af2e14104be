"""Ray job entrypoint for the extract stage.

ray job submit --working-dir . -- python jobs/extract.py --config cluster/configs/demo.yaml
"""

import sys

from adapt.cli import main

if __name__ == "__main__":
    sys.exit(main(only="extract"))
