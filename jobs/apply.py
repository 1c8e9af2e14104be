"""Ray job entrypoint for the apply stage.

ray job submit --working-dir . -- python jobs/apply.py --config cluster/configs/demo.yaml
"""

import sys

from adapt.cli import main

if __name__ == "__main__":
    sys.exit(main(only="apply"))
